"""`vargface` subcommands of vargface.symbols."""


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
