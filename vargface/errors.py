"""One exception type for user-facing faults: the CLI prints its message and exits 1, without a traceback."""


class VargfaceError(Exception):
    """Bad input or state the user can fix; the message names the file, record or option and what was expected."""
