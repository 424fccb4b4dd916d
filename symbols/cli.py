"""`vargface` subcommands of vargface.symbols: `flops` (parameters and LFR2019 FLOPs of a preset or checkpoint)."""
import ast

FLOPS_HELP = """\
Count learnable parameters, auxiliary states and FLOPs of a network preset or of the graph stored in a checkpoint.

FLOPs follow the LFR2019 challenge rule: only Convolution and FullyConnected layers count; a convolution costs
(2*Cin*kh*kw - 1)*Hout*Wout*Cout/groups without bias and 2*Cin*kh*kw*Hout*Wout*Cout/groups with bias, a fully
connected layer 2*in*out (minus out without bias), on one image. Multiply-adds are half of the FLOPs.
The challenge's light tracks (deepglint-light) require at most 1 GFLOPs as the organisers round it, to one
decimal ("1.0G"): the released VarGFaceNet counts 1.0229G, printed as 1.0G, and fits.

examples:
  vargface flops vargfacenet
  vargface flops vargfacenet --opt use_se=False --opt fc1_fix_gamma=True
  vargface flops vargfacenet --input-size 56 --opt multiplier=0.25 --json
  vargface flops r100 --opt num_layers=18
  vargface flops --model models/vargfacenet,1
"""


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
    import argparse

    from vargface.symbols import PRESETS

    p = subparsers.add_parser(
        "flops", help="parameters and LFR2019 FLOPs of a network", description=FLOPS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("preset", nargs="?", metavar="PRESET", help=f"network preset: {', '.join(PRESETS)}")
    p.add_argument("--model", metavar="PREFIX,EPOCH", help="count the graph stored in this checkpoint instead")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a get_symbol option, repeatable (e.g. use_se=False, multiplier=0.25, num_layers=18)")
    p.add_argument("--input-size", type=int, metavar="S",
                   help="input side (default: 112 for presets, the checkpoint's own size for --model)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=flops_command)


def parse_opts(items):
    """['use_se=False', 'multiplier=0.25'] -> {'use_se': False, 'multiplier': 0.25} (Python literals, else str)."""
    from vargface.errors import VargfaceError

    options = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise VargfaceError(f"--opt {item!r}: expected NAME=VALUE, e.g. --opt use_se=False")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        options[name.strip()] = value
    return options


def flops_command(args):
    import json

    from vargface.errors import VargfaceError
    from vargface.symbols import get_symbol
    from vargface.symbols.checkpoint import checkpoint_files, input_size_of, load_symbol, parse_model_arg
    from vargface.symbols.flops import BUDGET_GFLOPS, count

    if bool(args.preset) == bool(args.model):
        raise VargfaceError("give either a PRESET or --model PREFIX,EPOCH (exactly one)")
    if args.model:
        if args.opt:
            raise VargfaceError("--opt applies to presets only; a checkpoint's options are fixed in its graph")
        prefix, epoch = parse_model_arg(args.model)
        sym = load_symbol(prefix, epoch)
        size = args.input_size or input_size_of(sym)
        name = checkpoint_files(prefix, epoch)[0]
    else:
        options = parse_opts(args.opt)
        name = args.preset + "".join(f" {k}={v!r}" for k, v in options.items())
        if args.input_size is not None:
            options["input_size"] = args.input_size
        sym = get_symbol(args.preset, **options)
        size = input_size_of(sym)
    figures = count(sym, (1, 3, size, size))
    figures.update(network=name, input_shape=[1, 3, size, size], budget_gflops=BUDGET_GFLOPS)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    verdict = "fits" if figures["fits_budget"] else "exceeds"
    rows = [
        ("network", f"{name} (input 1x3x{size}x{size})"),
        ("parameters", f"{figures['params']} ({figures['params'] / 1e6:.2f}M)"),
        ("auxiliary states", str(figures["aux"])),
        ("FLOPs (LFR2019)", f"{figures['flops']} ({figures['short']})"),
        ("multiply-adds", f"{figures['macs']} ({figures['macs'] / 1e9:.2f}G)"),
        ("deepglint-light", f"{verdict} the {BUDGET_GFLOPS:.1f}G budget ({figures['short']} as the challenge rounds)"),
    ]
    for label, value in rows:
        print(f"{label:<18}{value}")
    return 0
