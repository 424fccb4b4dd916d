"""Output locks: one writer holds an output at a time.

The lock of an output is the file ``OUTPUT.lock`` beside it (``PREFIX.lock`` for a training prefix,
``FOLDER.lock`` beside a folder). Its writer holds an OS advisory lock on that file (portalocker: ``flock``) for as
long as it writes, and the file names the holder in one JSON line: pid, host, start time and command. A second
writer is refused with the holder's name. The operating system drops the lock of a process however it ends
(``kill -9`` included), so the lock file of a dead holder is simply taken over; a writer that ends normally, by an
error or by a signal the CLI handles removes the file as well."""
import contextlib
import json
import os
import shlex
import socket
import sys
import time

from vargface.errors import VargfaceError


def lock_path(output):
    """``OUTPUT.lock``, absolute, so that ``--out .`` locks ``../FOLDER.lock``."""
    return os.path.abspath(os.fspath(output)).rstrip(os.sep) + ".lock"


def describe_holder(holder):
    """'pid 123 on host, started 2024-05-01 10:00:00 UTC: vargface lfr features ...' from a lock file's JSON."""
    if not holder.get("pid"):
        return "its holder did not name itself"
    command = str(holder.get("command") or "")
    command = command if len(command) <= 160 else command[:157] + "..."
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            + (f": {command}" if command else ""))


def _read_holder(handle, attempts=20):
    """The holder's JSON; a holder writes it right after taking the lock, so an empty file is read again briefly."""
    for _ in range(attempts):
        handle.seek(0)
        text = handle.read()
        if text.strip():
            try:
                holder = json.loads(text)
            except ValueError:
                return {}
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.05)
    return {}


def _same_file(handle, path):
    """Whether ``path`` still names the file ``handle`` has open (a releasing holder removes it)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


class OutputLock:
    """The lock of ``output``: ``acquire()`` (or ``with``) takes it or raises a `VargfaceError` naming the holder;
    ``release()`` gives it back and removes the lock file.

    ``what`` says in the refusal who is in the way (default: 'another process writes OUTPUT'), ``hint`` what to
    do about it. Locks are per open file, so a second lock of the same output in the same process is refused too."""

    def __init__(self, output, what=None, hint="wait for it to finish, or choose another --out"):
        self.output, self.path = os.fspath(output), lock_path(output)
        self.what, self.hint = what or f"another process writes {self.output}", hint
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                       "command": shlex.join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])}
        self._handle = None

    @property
    def held(self):
        return self._handle is not None

    def acquire(self):
        import portalocker

        from vargface.atomic import make_folder, os_error_text

        make_folder(os.path.dirname(self.path), self.path)
        for _ in range(10):
            try:
                handle = open(self.path, "a+", encoding="utf-8")
            except OSError as error:
                raise VargfaceError(f"cannot write the lock {self.path}: {os_error_text(error)}") from None
            try:
                portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
            except portalocker.AlreadyLocked:
                holder = _read_holder(handle)
                handle.close()
                raise VargfaceError(f"{self.path}: {self.what} ({describe_holder(holder)}); {self.hint}") from None
            except portalocker.LockException as error:
                handle.close()
                raise VargfaceError(f"cannot lock {self.path}: {error}") from None
            if _same_file(handle, self.path):
                try:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(json.dumps(self.holder) + "\n")
                    handle.flush()
                except OSError as error:
                    handle.close()
                    raise VargfaceError(f"cannot write the lock {self.path}: {os_error_text(error)}") from None
                self._handle = handle
                return self
            handle.close()  # its holder released it between our open and our lock: lock the new file
        raise VargfaceError(f"{self.path}: cannot take the lock (other writers keep racing for it)")

    def release(self):
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(handle, self.path):
                os.remove(self.path)  # before unlocking, so nobody locks a file that is about to vanish
        handle.close()  # closing drops the lock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
