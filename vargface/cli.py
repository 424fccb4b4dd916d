"""vargface: VarGFaceNet face recognition on MXNet.

Each sub-package contributes its subcommands through ``register(subparsers)`` in its
own ``cli`` module, so this file only dispatches."""
import argparse
import importlib
import os
import sys

COMMAND_MODULES = [
    "vargface.symbols.cli", "vargface.data.cli", "vargface.train.cli", "vargface.train.distill_cli",
    "vargface.eval.cli", "vargface.demo", "vargface.experiment", "vargface.recipe",
]


def _cpu_only(args):
    """Whether the command runs on CPUs alone, in one process: its devices (--ctx, --eval-ctx, or a --config
    file's ctx) name no GPU, and no distributed role or kvstore is in play (vargface.openmp)."""
    from vargface.errors import VargfaceError

    settings = {}
    if getattr(args, "config", None):
        from vargface.train.config import read_config_file

        try:
            settings = read_config_file(args.config)
        except VargfaceError:  # the command reports it
            pass
    devices = [getattr(args, "ctx", None) or settings.get("ctx") or "cpu", getattr(args, "eval_ctx", None) or ""]
    kvstore = str(getattr(args, "kvstore", None) or settings.get("kvstore") or "")
    return (not any("gpu" in str(d) for d in devices) and not kvstore.startswith("dist")
            and "DMLC_ROLE" not in os.environ)


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
    from vargface.errors import VargfaceError

    from vargface.options import show_progress

    args = build_parser().parse_args(argv)
    from vargface.openmp import configure

    configure(cpu_only=_cpu_only(args))
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
