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

from vargface.locks import OutputLock


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
             errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EFBIG: "the file would exceed the file size limit (ulimit -f, or the file system's)"}
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


def write_errors(path):
    """A context in which an OSError that can only mean ``path`` cannot be written (full disk, quota, read-only,
    size limit) becomes a VargfaceError naming ``path`` and the reason."""
    return _reported(path, WRITE_ERRNOS)


def reserve_space(path, size, target=None):
    """Allocate the file ``path`` to ``size`` bytes now (posix_fallocate), so a full disk is reported before the
    work instead of being met by a write, or by a store into a memory map (which dies of SIGBUS), much later.
    A file system that cannot preallocate gets a sparse file, as ``truncate`` makes."""
    from vargface.errors import VargfaceError

    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise VargfaceError(f"cannot write {target or path}: {os_error_text(error)} ({size:,} bytes "
                                f"needed)") from None
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def is_device(path):
    """Whether ``path`` exists as neither a regular file nor a folder: a device such as /dev/null, a FIFO. Such an
    output is written into, never replaced: a rename over it would destroy it (as root, /dev/null itself)."""
    return os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path))


def move_into_place(tmp, path):
    """Rename the finished ``tmp`` over ``path``; a device output (`is_device`) gets its bytes instead."""
    if not is_device(path):
        os.replace(tmp, path)
        return
    with open(tmp, "rb") as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's directory; on success rename it over ``path``, on error remove it.
    A device output (`is_device`, e.g. /dev/null) is yielded itself and written in place."""
    path = os.path.abspath(os.fspath(path))
    if is_device(path):
        with _reported(path, WRITE_ERRNOS):
            yield path
        return
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


def _foreign(directory, own):
    """Entries of an existing ``directory`` whose names ``own`` (a compiled regex) does not match."""
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if not own.fullmatch(name))


@contextlib.contextmanager
def atomic_dir(path, overwrite=False, own=None):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (refused if ``path`` exists
    and ``overwrite`` is false), on error it is removed and ``path`` is untouched. The output is locked while it
    is written (`vargface.locks`).

    The folder is the command's alone: an existing ``path`` holding an entry that ``own`` (a compiled regex of the
    names the command writes) does not match is refused, even with ``overwrite``, naming what is there, and so is
    the working directory or a folder holding it."""
    from vargface.errors import VargfaceError, summarize
    from vargface.options import refuse_existing

    path = os.path.abspath(os.fspath(path))
    with OutputLock(path):
        if os.path.lexists(path) and not os.path.isdir(path):
            raise VargfaceError(f"output {path} is a file, not a folder this command wrote; remove it or choose "
                                f"another --out")
        foreign = summarize(_foreign(path, own), sep=", ") if own is not None else ""
        if foreign:
            raise VargfaceError(f"output {path} holds what this command does not write ({foreign}); it replaces "
                                f"only its own output, so move those away or choose another --out")
        if os.path.isdir(path) and (os.getcwd() + os.sep).startswith(path.rstrip(os.sep) + os.sep):
            raise VargfaceError(f"output {path} is the working directory or holds it, and the command replaces "
                                f"its output folder as a whole; choose a new folder")
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


def refuse_existing_files(directory, names, overwrite):
    """Refuse to replace any of the files ``names`` in ``directory`` unless ``overwrite``."""
    from vargface.errors import VargfaceError

    directory = os.path.abspath(os.fspath(directory))
    existing = [name for name in names if os.path.lexists(os.path.join(directory, name))]
    if existing and not overwrite:
        raise VargfaceError(f"output {directory} holds {', '.join(existing)}; pass --overwrite to replace "
                            f"{'it' if len(existing) == 1 else 'them'} (nothing else there is touched)")


@contextlib.contextmanager
def atomic_files(directory, names, overwrite=False):
    """Write the files ``names`` into ``directory`` as one set, beside whatever else it holds.

    Yields a temporary folder inside ``directory`` to write them in; on success each replaces its namesake and
    nothing else in ``directory`` is touched. The last name is removed first and moved in last, so the set is
    complete exactly when that file exists (a crash in between leaves it missing, never a mix that looks whole).
    Existing files of the set are refused unless ``overwrite``; the output is locked while it is written."""
    directory = os.path.abspath(os.fspath(directory))
    with OutputLock(directory):
        refuse_existing_files(directory, names, overwrite)
        marker, created = os.path.join(directory, names[-1]), not os.path.isdir(directory)
        _prepare(marker)
        try:
            with _reported(directory):
                tmp = tempfile.mkdtemp(prefix=f".{names[-1]}.{os.getpid()}.", suffix=".tmp", dir=directory)
            try:
                with _reported(directory, WRITE_ERRNOS):
                    yield tmp
                with _reported(directory):
                    if os.path.lexists(marker):
                        os.remove(marker)
                    for name in names:
                        os.replace(os.path.join(tmp, name), os.path.join(directory, name))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            if created:  # a folder made for this output goes with it
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise
