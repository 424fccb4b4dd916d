"""The shared vocabulary of the `vargface` subcommands: every command builds its parser from these helpers, so an
option name means one thing everywhere (`VOCABULARY`, the README's "CLI vocabulary" table).

Inputs are positional; every output is ``--out PATH`` and an existing output is refused unless ``--overwrite``;
``--dataset DIR`` is a data folder made by `vargface data`; ``--per-batch-size N`` counts images per device (as
InsightFace's trainer does), for training and inference alike; ``--json`` prints machine-readable results on
stdout and turns the progress bars off. Spellings the vocabulary replaced keep working as `ALIASES`.
`progress_bar` is the one place a progress bar is made."""
import argparse
import contextlib
import difflib
import os
import sys

from vargface.errors import VargfaceError


# option -> its meaning; every command spells these the same way.
VOCABULARY = {
    "--out": "the output (file or folder) of every command that writes one",
    "--overwrite": "replace an existing output; without it a command refuses, naming the output (`train`/`distill`: "
                   "start a new run on a `--prefix` that holds one, removing the old run's files first)",
    "--dataset": "a data folder made by `vargface data` (`train.rec`, `train.idx`, `property`, `.bin` packs); "
                 "`train`/`distill` also take a preset name",
    "--model": "a checkpoint: `PREFIX-symbol.json` + `PREFIX-EPOCH.params`",
    "--ctx": "`gpu:0,1,2,3`, `cpu:0,cpu:1` or `cpu`",
    "--per-batch-size": "images per device per batch, for training and inference alike (the batch is N x devices)",
    "--workers": "parallel workers decoding and encoding images (default: the usable cores)",
    "--seed": "the random seed",
    "--json": "machine-readable results on stdout, and no progress bars (bars are drawn on a terminal only)",
    "--image-size": "the image side in pixels (images are N x N)",
    "--target": "the evaluation set: verification packs (`.bin`), comma-separated; `ijb`: IJBB or IJBC",
    "--root": "the folder that relative image paths refer to",
}
# Older spellings, still accepted as aliases of the canonical option.
ALIASES = {"--image-size": ("--size", "--input-size"), "--target": ("--targets", "--val-targets"),
           "--root": ("--image-root", "--lfr-root")}


def positive_int(text):
    """An argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected a positive number")
    return value


def add_out(parser, help, required=True, default=None):
    parser.add_argument("--out", required=required, default=default, metavar="PATH", help=help)


def add_overwrite(parser, help="replace an existing output (without it, an existing output is refused)"):
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_ctx(parser, default="cpu", help="devices, e.g. gpu:0,1,2,3 | cpu:0,cpu:1 | cpu"):
    parser.add_argument("--ctx", default=default, metavar="DEVICES",
                        help=help + (f" (default: {default})" if default else ""))


def add_model(parser, required=True, help="checkpoint PREFIX-symbol.json + PREFIX-EPOCH.params (cut at fc1_output)"):
    parser.add_argument("--model", required=required, metavar="PREFIX,EPOCH", help=help)


def add_dataset(parser, required=True, help="data folder made by `vargface data` (train.rec, train.idx, property)"):
    parser.add_argument("--dataset", required=required, metavar="DIR", help=help)


def add_per_batch_size(parser, default):
    parser.add_argument("--per-batch-size", type=positive_int, default=default, metavar="N",
                        help=f"images per device per batch (default: {default})")


def add_workers(parser):
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="parallel workers (default: the usable cores)")


def image_side(text):
    """An argparse type: an image side in pixels, 8..4096."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 8 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"{value}: an image side must be 8..4096")
    return value


def add_image_size(parser, default=None, help="image side in pixels"):
    parser.add_argument("--image-size", *ALIASES["--image-size"], dest="image_size", type=image_side, default=default,
                        metavar="N", help=help + (f" (default: {default})" if default else ""))


def add_target(parser, required=False, default=None, help="verification packs (.bin), comma-separated"):
    parser.add_argument("--target", *ALIASES["--target"], dest="target", required=required, default=default,
                        metavar="PACKS", help=help + (f" (default: {default})" if default else ""))


def add_root(parser, default=".", help="folder the listed image paths are relative to"):
    parser.add_argument("--root", *ALIASES["--root"], dest="root", default=default, metavar="DIR",
                        help=help + (f" (default: {default})" if default else ""))


def add_json(parser, help="print the results as JSON on stdout (no progress bars)"):
    parser.add_argument("--json", action="store_true", help=help)


def add_seed(parser, default=0, help="random seed"):
    parser.add_argument("--seed", type=int, default=default, metavar="N", help=f"{help} (default: {default})")


def total_batch(args):
    """The batch bound across every device of ``--ctx``: ``--per-batch-size`` times the device count."""
    from vargface.context import parse_ctx

    return args.per_batch_size * len(parse_ctx(args.ctx))


def refuse_existing(path, overwrite, option="--out"):
    """Refuse to replace an existing output unless ``overwrite``; the message names the output and the option."""
    if path and not overwrite and os.path.lexists(path):
        raise VargfaceError(f"{option} {path} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def claimed(overwrite, *outputs):
    """Hold each output's lock while the command writes it, and refuse one that exists unless ``overwrite``:
    one writer at a time, nothing replaced unasked. ``outputs``: (path, option) pairs; a None path (an
    optional output not asked for) is skipped."""
    from vargface.locks import OutputLock

    with contextlib.ExitStack() as stack:
        for path, option in outputs:
            if path:
                stack.enter_context(OutputLock(path))
                refuse_existing(path, overwrite, option)
        yield


_progress = {"enabled": True}


def show_progress(enabled):
    """Turn every progress bar of this process on or off (`vargface --json` turns them off)."""
    _progress["enabled"] = bool(enabled)


def progress_bar(iterable=None, enabled=True, **kwargs):
    """A tqdm bar that is drawn only on a terminal, only when ``enabled`` and never under ``--json``."""
    from tqdm import tqdm

    shown = enabled and _progress["enabled"] and sys.stderr.isatty()
    return tqdm(iterable, disable=not shown, **kwargs)


def emit(args, text, result):
    """Print a command's outcome: ``result`` as JSON with ``--json``, else the human line ``text``."""
    import json

    print(json.dumps(result, indent=2) if getattr(args, "json", False) else text)


def explain_unknown(parser):
    """An unknown option gets the near option names in the error, not argparse's bare 'unrecognized arguments'."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = original(args, namespace)
        unknown = [a for a in extras if a.startswith("--")]
        if unknown:
            flag = unknown[0].split("=")[0]
            names = [o for o in parser._option_string_actions if o.startswith("--") and "_" not in o]
            near = difflib.get_close_matches(flag, names, n=4, cutoff=0.6)
            parser.error(f"unknown option {flag}" + (f"; did you mean {', '.join(near)}?" if near else ""))
        return namespace, extras

    parser.parse_known_args = parse_known_args
