"""`vargface` subcommands of vargface.symbols: `flops` (parameters and LFR2019 FLOPs of a preset or checkpoint)."""
FLOPS_HELP = """\
Count learnable parameters, auxiliary states and FLOPs of a network preset or of the graph stored in a checkpoint.

FLOPs follow the LFR2019 challenge rule: only Convolution and FullyConnected layers count; a convolution costs
(2*Cin*kh*kw - 1)*Hout*Wout*Cout/groups without bias and 2*Cin*kh*kw*Hout*Wout*Cout/groups with bias, a fully
connected layer 2*in*out (minus out without bias), on one image. Multiply-adds are half of the FLOPs.
The count is at the network's input side: the preset's, --image-size, or the side a checkpoint was trained at.
The challenge's light tracks (deepglint-light) require at most 1 GFLOPs on one 112x112 image as the organisers
round it, to one decimal ("1.0G"): the released VarGFaceNet counts 1.0229G, printed as 1.0G, and fits. A count at
another side is not judged against the budget (fits_budget null with --json).

examples:
  vargface flops --list
  vargface flops vargfacenet
  vargface flops vargfacenet --net-opt use_se=False --net-opt fc1_fix_gamma=True
  vargface flops vargfacenet --image-size 56 --net-multiplier 0.25 --json
  vargface flops r50 --taps
  vargface flops --model models/vargfacenet,1
"""


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
    import argparse

    from vargface import options
    from vargface.symbols.registry import NETWORK_ALIASES

    p = subparsers.add_parser(
        "flops", help="parameters and LFR2019 FLOPs of a network", description=FLOPS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("preset", nargs="?", metavar="PRESET", help="network preset (`vargface flops --list` names them)")
    options.add_model(p, required=False, help="count the graph stored in this checkpoint instead")
    p.add_argument("--net-opt", "--opt", dest="net_opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a network option, repeatable (e.g. use_se=False, multiplier=0.25, num_layers=18)")
    for key, (_, kind, text) in NETWORK_ALIASES.items():
        p.add_argument("--" + key.replace("_", "-"), "--" + key, dest=key, type=kind,
                       metavar="N" if kind is int else "X", help=text)
    p.add_argument("--emb-size", "--emb_size", dest="emb_size", type=int, metavar="N", help="embedding size")
    options.add_image_size(p, help="input side (default: the preset's, or the checkpoint's own size for --model)")
    p.add_argument("--taps", action="store_true", help="also list the named taps with their output shapes")
    p.add_argument("--list", action="store_true", help="list the network presets and exit")
    options.add_json(p, help="print the figures as JSON")
    p.set_defaults(func=flops_command)


def _list_presets():
    from vargface.symbols import presets

    for name, preset in presets().items():
        print(f"{name:<26}{preset.description}")
    return 0


def flops_command(args):
    import json

    from vargface.errors import VargfaceError
    from vargface.symbols import get_symbol
    from vargface.symbols.checkpoint import checkpoint_files, input_size_of, load_symbol, parse_model_arg
    from vargface.symbols.flops import BUDGET_GFLOPS, BUDGET_INPUT_SIZE, count
    from vargface.symbols.registry import NETWORK_ALIASES, parse_net_opts
    from vargface.symbols.taps import tap_shapes

    if args.list:
        return _list_presets()
    if bool(args.preset) == bool(args.model):
        raise VargfaceError("give either a PRESET or --model PREFIX,EPOCH (exactly one)")
    options = {option: getattr(args, key) for key, (option, _, _) in NETWORK_ALIASES.items()
               if getattr(args, key) is not None}
    if args.emb_size is not None:
        options["emb_size"] = args.emb_size
    options.update(parse_net_opts(args.net_opt))
    if args.model:
        if options:
            raise VargfaceError("the network options apply to presets only; a checkpoint's options are fixed in its "
                                "graph")
        prefix, epoch = parse_model_arg(args.model)
        sym = load_symbol(prefix, epoch)
        size = args.image_size or input_size_of(sym)
        name = checkpoint_files(prefix, epoch)[0]
    else:
        name = args.preset + "".join(f" {k}={v!r}" for k, v in options.items())
        if args.image_size is not None:
            options["input_size"] = args.image_size
        sym = get_symbol(args.preset, **options)
        size = args.image_size or input_size_of(sym)
    figures = count(sym, (1, 3, size, size))
    figures.update(network=name, input_shape=[1, 3, size, size], budget_gflops=BUDGET_GFLOPS)
    if args.taps:
        figures["taps"] = {tap: {"output": output, "shape": list(shape)}
                           for tap, (output, shape) in tap_shapes(sym, size).items()}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    if figures["fits_budget"] is None:
        verdict = (f"not judged: the {BUDGET_GFLOPS:.1f}G budget counts {BUDGET_INPUT_SIZE}x{BUDGET_INPUT_SIZE} "
                   f"inputs, this count is at {size}x{size}")
    else:
        verdict = (f"{'fits' if figures['fits_budget'] else 'exceeds'} the {BUDGET_GFLOPS:.1f}G budget "
                   f"({figures['short']} as the challenge rounds)")
    rows = [
        ("network", f"{name} (input 1x3x{size}x{size})"),
        ("parameters", f"{figures['params']} ({figures['params'] / 1e6:.2f}M)"),
        ("auxiliary states", str(figures["aux"])),
        ("FLOPs (LFR2019)", f"{figures['flops']} ({figures['short']})"),
        ("multiply-adds", f"{figures['macs']} ({figures['macs'] / 1e9:.2f}G)"),
        ("deepglint-light", verdict),
    ]
    for tap, entry in figures.get("taps", {}).items():
        rows.append((f"tap {tap}", f"{'x'.join(map(str, entry['shape']))}  ({entry['output']})"))
    for label, value in rows:
        print(f"{label:<18}{value}")
    return 0
