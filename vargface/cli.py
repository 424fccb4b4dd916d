"""vargface: VarGFaceNet face recognition on MXNet.

Each sub-package contributes its subcommands through ``register(subparsers)`` in its
own ``cli`` module, so this file only dispatches."""
import argparse
import importlib
import os
import signal
import sys

COMMAND_MODULES = [
    "vargface.symbols.cli", "vargface.data.cli", "vargface.train.cli", "vargface.train.distill_cli",
    "vargface.train.partial_fc",
    "vargface.eval.cli", "vargface.demo", "vargface.experiment", "vargface.recipe",
]


def _one_cpu_device(args):
    """Whether the command runs on one CPU device, in one process: its devices (--ctx, --eval-ctx, or a --config
    file's ctx) name no GPU and no second CPU, and no distributed role or kvstore is in play (vargface.openmp)."""
    from vargface.errors import VargfaceError

    settings = {}
    if getattr(args, "config", None):
        from vargface.train.config import read_config_file

        try:
            settings = read_config_file(args.config)
        except VargfaceError:  # the command reports it
            pass
    from vargface.context import device_specs

    lists = [getattr(args, "ctx", None) or settings.get("ctx") or "cpu", getattr(args, "eval_ctx", None)]
    try:
        devices = {spec for text in lists if text for spec in device_specs(text)}
    except VargfaceError:  # the command reports it
        return False
    kvstore = str(getattr(args, "kvstore", None) or settings.get("kvstore") or "")
    return (len(devices) == 1 and all(kind == "cpu" for kind, _ in devices) and not kvstore.startswith("dist")
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


class Terminated(BaseException):
    """SIGTERM, raised where the process happens to be, so that cleanups (locks, temporaries) run on the way out."""


def _terminated(signum, frame):
    raise Terminated


def _quiet_shutdown(code):
    """Further Ctrl-C or SIGTERM while Python shuts down (joining threads) end the process at once with ``code``,
    instead of printing 'Exception ignored ...' tracebacks."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(code))


def main(argv=None):
    """The `vargface` command: exit code 0, 1 with a one-line error, 130 on Ctrl-C, 143 on SIGTERM (each with a
    message). Without ``argv`` this is the `vargface` process itself and its shutdown is made quiet; a call with
    ``argv`` (tests, scripts) gets its signal handlers back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ)}
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over `ulimit -f`: an error naming it, not a kill
    code = 1
    try:
        code = _run(argv)
    finally:
        if argv is None:
            _quiet_shutdown(code)
        else:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    sys.exit(code)


def _run(argv):
    """Parse and run one command -> its exit code; user-facing faults become one line on stderr."""
    from vargface.errors import VargfaceError
    from vargface.options import show_progress

    name = "vargface"
    try:
        args = build_parser().parse_args(argv)
        name = f"vargface {args.command}"
        from vargface.openmp import configure

        configure(one_cpu_device=_one_cpu_device(args))
        show_progress(not getattr(args, "json", False))
        return args.func(args) or 0
    except VargfaceError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
    except OSError as error:  # a file the command could not read or write: the reason, not a traceback
        from vargface.atomic import os_error_text

        where = f"{error.filename}: " if error.filename else ""
        print(f"{name}: error: {where}{os_error_text(error)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    return 1


if __name__ == "__main__":
    main()
