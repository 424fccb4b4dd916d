"""`vargface` subcommands of vargface.train: `train`, `plot-log`, and the `distill` group."""
from vargface.train import distill_cli


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
    distill_cli.register(subparsers)
