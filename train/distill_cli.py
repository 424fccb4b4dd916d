"""`vargface distill` subcommands: recursive distillation from a frozen teacher and the teacher-embedding cache."""


def register(subparsers):
    """Add the `distill` command group to the `vargface` parser."""
