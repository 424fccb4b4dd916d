"""The shared vocabulary of the `vargface` subcommands: every command builds its parser from these helpers, so an
option name means one thing everywhere.

Inputs are positional; every output is ``--out PATH`` and an existing output is refused unless ``--overwrite``;
``--dataset DIR`` is a data folder made by `vargface data`; ``--per-batch-size N`` counts images per device (as
InsightFace's trainer does), for training and inference alike; ``--json`` prints machine-readable results on
stdout and turns the progress bars off. `progress_bar` is the one place a progress bar is made."""
import argparse
import os
import sys

from vargface.errors import VargfaceError


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
    parser.add_argument("--ctx", default=default, help=help + (f" (default: {default})" if default else ""))


def add_model(parser, required=True, help="checkpoint PREFIX-symbol.json + PREFIX-EPOCH.params (cut at fc1_output)"):
    parser.add_argument("--model", required=required, metavar="PREFIX,EPOCH", help=help)


def add_dataset(parser, required=True, help="data folder made by `vargface data` (train.rec, train.idx, property)"):
    parser.add_argument("--dataset", required=required, metavar="DIR", help=help)


def add_per_batch_size(parser, default):
    parser.add_argument("--per-batch-size", type=positive_int, default=default, metavar="N",
                        help=f"images per device per batch (default: {default})")


def add_workers(parser):
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="parallel worker processes (default: all cores)")


def add_json(parser, help="print the results as JSON on stdout (no progress bars)"):
    parser.add_argument("--json", action="store_true", help=help)


def add_seed(parser, default=0):
    parser.add_argument("--seed", type=int, default=default, help=f"random seed (default: {default})")


def total_batch(args):
    """The batch bound across every device of ``--ctx``: ``--per-batch-size`` times the device count."""
    from vargface.context import parse_ctx

    return args.per_batch_size * len(parse_ctx(args.ctx))


def refuse_existing(path, overwrite, option="--out"):
    """Refuse to replace an existing output unless ``overwrite``; the message names the output and the option."""
    if path and not overwrite and os.path.lexists(path):
        raise VargfaceError(f"{option} {path} exists; pass --overwrite to replace it")


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
