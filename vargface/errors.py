"""One exception type for user-facing faults: the CLI prints its message and exits 1, without a traceback."""


class VargfaceError(Exception):
    """Bad input or state the user can fix; the message names the file, record or option and what was expected."""


def last_line(error):
    """The cause of an exception in one line: MXNet errors carry a C++ stack dump whose last line says what
    failed (``MXNetError: Check failed: ...``)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1].removeprefix("MXNetError: ")


def summarize(problems, limit=5, sep="; "):
    """The first ``limit`` problems joined by ``sep``, then '... and N more': a wrong file can mismatch hundreds
    of arrays, and a message must stay readable."""
    problems = list(problems)
    text = sep.join(problems[:limit])
    return text + (f"{sep}... and {len(problems) - limit} more" if len(problems) > limit else "")
