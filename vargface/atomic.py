"""Atomic outputs: write under a temporary name beside the target, then rename, so a crash never leaves a
half-written file where a good one was.

Temporaries are named ``.NAME.PID.RANDOM.tmp``: a temporary whose writer died (``kill -9``) is swept by the next
run writing the same output. Outputs get the permissions of a plain ``open`` (0666/0777 minus the umask), not the
0600/0700 that ``tempfile`` gives its files."""
import contextlib
import errno
import glob
import os
import shutil
import tempfile


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(path):
    """Remove the temporaries of ``path`` left by writers that no longer run (this host's pids)."""
    directory, name = os.path.split(os.path.abspath(path))
    for leftover in glob.glob(os.path.join(glob.escape(directory), glob.escape("." + name) + ".*.tmp*")):
        parts = os.path.basename(leftover)[len(name) + 2:].split(".")
        if not parts[0].isdigit() or int(parts[0]) == os.getpid() or _pid_alive(int(parts[0])):
            continue
        if os.path.isdir(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(leftover)


def make_folder(directory, target):
    """``os.makedirs(directory)`` with a clear error naming ``target`` (the output that needs the folder)."""
    from vargface.errors import VargfaceError

    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VargfaceError(f"cannot write {target}: {_existing_file(directory)} is a file, not a folder") from None
    except OSError as error:
        raise VargfaceError(f"cannot write {target}: {os_error_text(error)}") from None


def _prepare(path):
    """Create the target's folder and sweep its old temporaries."""
    directory = os.path.dirname(path)
    make_folder(directory, path)
    sweep_temporaries(path)
    return directory


def _existing_file(directory):
    while directory and not os.path.exists(directory):
        directory = os.path.dirname(directory)
    return directory


def os_error_text(error):
    """A one-line reason for an OSError that a user can act on."""
    hints = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
             errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder"}
    return hints.get(error.errno, error.strerror or str(error))


# Errors that can only mean the output cannot be written (others, e.g. reading an input, pass unchanged).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextlib.contextmanager
def _reported(path, errnos=None):
    """Turn an OSError while writing ``path`` into a VargfaceError naming it and the reason."""
    from vargface.errors import VargfaceError

    try:
        yield
    except OSError as error:
        if errnos is not None and error.errno not in errnos:
            raise
        raise VargfaceError(f"cannot write {path}: {os_error_text(error)}") from None
    except Exception as error:
        # MXNet's C++ writers report a failed fwrite (disk full, quota) as MXNetError "FileStream.Write incomplete"
        if type(error).__name__ != "MXNetError" or "Write incomplete" not in str(error):
            raise
        raise VargfaceError(f"cannot write {path}: the write was incomplete (is the disk full?)") from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's directory; on success rename it over ``path``, on error remove it."""
    path = os.path.abspath(os.fspath(path))
    directory = _prepare(path)
    with _reported(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp",
                                   dir=directory)
        os.close(fd)
    try:
        with _reported(path, WRITE_ERRNOS):
            yield tmp
        with _reported(path):
            if os.path.isfile(tmp):
                os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path, overwrite=False):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (refused if ``path`` exists
    and ``overwrite`` is false), on error it is removed and ``path`` is untouched."""
    from vargface.options import refuse_existing

    path = os.path.abspath(os.fspath(path))
    refuse_existing(path, overwrite, option="output")
    parent = _prepare(path)
    with _reported(path):
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())
    try:
        with _reported(path, WRITE_ERRNOS):
            yield tmp
        with _reported(path):
            if os.path.exists(path):
                old = tmp + ".old"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
            else:
                os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
