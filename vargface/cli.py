"""vargface: VarGFaceNet face recognition on MXNet.

Each sub-package contributes its subcommands through ``register(subparsers)`` in its
own ``cli`` module, so this file only dispatches."""
import argparse
import importlib
import os
import sys

COMMAND_MODULES = [
    "vargface.symbols.cli", "vargface.data.cli", "vargface.train.cli", "vargface.eval.cli", "vargface.demo",
    "vargface.experiment",
    "vargface.recipe",
]


def _use_all_cores():
    # MXNet reads this once, at import; without it MXNet used a single core on CPU. Extra engine worker threads
    # (MXNET_CPU_WORKER_NTHREADS) are left at 1: more made oneDNN fail intermittently on CPU.
    cores = str(os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", cores)


def build_parser():
    parser = argparse.ArgumentParser(prog="vargface", description=__doc__.split("\n")[0])
    from vargface import __version__

    parser.add_argument("--version", action="version", version=f"vargface {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None):
    _use_all_cores()
    from vargface.errors import VargfaceError

    from vargface.options import show_progress

    args = build_parser().parse_args(argv)
    show_progress(not getattr(args, "json", False))
    try:
        code = args.func(args)
    except VargfaceError as error:
        print(f"vargface {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # a file the command could not read or write: the reason, not a traceback
        from vargface.atomic import os_error_text

        where = f"{error.filename}: " if error.filename else ""
        print(f"vargface {args.command}: error: {where}{os_error_text(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"vargface {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
