"""`vargface` subcommands of vargface.data."""


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
