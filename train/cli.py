"""`vargface` subcommands of vargface.train."""


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
