"""`vargface` subcommands of vargface.eval."""


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
