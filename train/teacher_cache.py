"""Teacher-embedding cache: the frozen teacher's embedding of every record and of its mirror, computed once.

With mirror-only augmentation the teacher only ever sees two versions of each record, so training can read
``cache[record, mirrored]`` instead of running a ResNet teacher every step. The sidecar file is bound to the data
(.rec + .idx) and to the teacher checkpoint by checksums (`vargface.fingerprint.file_checksum`), so a cache made
for other data or another teacher is refused instead of silently teaching the wrong targets.

File layout (little-endian): 8-byte magic ``VARGKD01``, uint64 header length, JSON header, then (64-byte
aligned) the int64 record indices (N,) and the float32 embeddings (N, 2, D) [:, 0] plain, [:, 1] mirrored.
The header's ``body`` is the SHA-256 of everything after the header, checked whenever the cache is opened, so a
damaged file is refused even where its values stay finite. The file is allocated whole before the teacher runs (a
full disk is reported at once) and written with plain writes; readers memory-map the embeddings, so a 5.8M-image
data set needs no RAM for them."""
import contextlib
import json
import math
import os
import struct
import time

import numpy as np

from vargface.errors import VargfaceError
from vargface.locks import OutputLock

MAGIC = b"VARGKD01"
UNFINISHED = b"VARGKD--"  # the magic while the file is written: an interrupted temporary never loads
VERSION = 2  # 1 had no checksum over the body
BODY_PLACEHOLDER = "sha256:" + "0" * 64  # written first, patched in place (same length) once the body is done


def default_cache_path(data_dir, teacher):
    """Where `vargface distill cache` writes by default: beside the teacher's checkpoint, named after it and the
    data folder, e.g. models/r100/model-0001.ms1m-retinaface-t1.kdcache. The teacher's folder holds the user's
    runs; the data folder is often shared and read-only."""
    data_name = os.path.basename(os.path.normpath(os.path.abspath(data_dir)))
    return f"{teacher.prefix}-{teacher.epoch:04d}.{data_name}.kdcache"


def auto_cache_path(data_dir, teacher):
    """The cache `--teacher-cache auto` uses: the default path, or where earlier versions wrote it (beside
    train.rec) when only that one exists."""
    path = default_cache_path(data_dir, teacher)
    folder = os.path.basename(os.path.dirname(os.path.abspath(teacher.prefix)))
    name = f"{folder}-{os.path.basename(teacher.prefix)}" if folder else os.path.basename(teacher.prefix)
    earlier = os.path.join(data_dir, "train.%s-%04d.kdcache" % (name, teacher.epoch))
    return earlier if not os.path.exists(path) and os.path.exists(earlier) else path


def cache_command(teacher, data_dir, path, image_shape=None):
    """The `vargface distill cache` command that writes the cache ``path`` for this teacher, data and size."""
    import shlex

    size = ["--image-size", str(image_shape[-1])] if image_shape is not None else []
    return "vargface distill cache " + shlex.join(["--teacher", teacher.model, "--dataset", str(data_dir), *size,
                                                    "--out", str(path)])


def _layout(header_length, count, emb_size):
    """Byte offsets of the index and embedding arrays, and the file size."""
    start = 16 + header_length
    index_offset = (start + 63) // 64 * 64
    emb_offset = (index_offset + 8 * count + 63) // 64 * 64
    return index_offset, emb_offset, emb_offset + 4 * count * 2 * emb_size


def build_cache(teacher, data_dir, path=None, batch_size=64, image_size=None, overwrite=False, reuse=False,
                progress=True):
    """Embed every record of ``data_dir``/train.rec and its mirror with ``teacher``; write the cache atomically.

    Images come from `FaceRecordIter` without shuffling or augmentation, at ``image_size`` (the student's input
    side; default the stored size), so they are decoded and resized exactly as in training; the mirror is the same
    horizontal flip the iterator applies. An existing file is refused, replaced (``overwrite``) or, with
    ``reuse``, kept when it checks out for this data, teacher and image size (a mismatch is an error).
    Returns the cache path. The cache is locked while it is written (`vargface.locks`)."""
    from vargface.data.source import open_training_set

    if not path:
        path = default_cache_path(data_dir, teacher)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.access(folder, os.W_OK):
            raise VargfaceError(f"cannot write the cache beside the teacher: {folder} is not writable; pass --out "
                                f"PATH here and --teacher-cache PATH to `vargface distill`")
    height = width = int(image_size or open_training_set(data_dir).image_size[0])
    with OutputLock(path):
        if os.path.exists(path) and not overwrite:
            if reuse:
                TeacherCache(path, data_dir, teacher, image_shape=(3, height, width), progress=progress)
                return path
            raise VargfaceError(f"output {path} exists; pass --overwrite to replace it or --reuse to keep it")
        _write_cache(teacher, data_dir, path, batch_size, (3, height, width), progress)
    return path


def _write_cache(teacher, data_dir, path, batch_size, image_shape, progress):
    import mxnet as mx
    from vargface.options import progress_bar
    from vargface.atomic import atomic_path, reserve_space, write_errors
    from vargface.data.source import open_training_set

    data = open_training_set(data_dir)
    checksums = data.fingerprint()
    it = data.iterator(batch_size, image_shape[-1], shuffle=False, rand_mirror=False, last_batch="pad")
    count, emb_size = int(it.num_samples), teacher.emb_size
    header = {"version": VERSION, "count": count, "emb_size": emb_size, "image_shape": list(image_shape),
              "data_dir": os.path.abspath(data_dir), "data": checksums, "teacher": teacher.describe(),
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "body": BODY_PLACEHOLDER}
    header_bytes = json.dumps(header, sort_keys=True).encode()
    index_offset, emb_offset, end = _layout(len(header_bytes), count, emb_size)
    with atomic_path(path) as tmp, contextlib.closing(it):
        with open(tmp, "wb") as f:
            f.write(UNFINISHED + struct.pack("<Q", len(header_bytes)) + header_bytes)
        reserve_space(tmp, end, target=path)
        with write_errors(path), open(tmp, "r+b") as f:
            fd, row = f.fileno(), 0
            for batch in progress_bar(it, total=math.ceil(count / batch_size), desc="teacher cache", unit="batch",
                                      enabled=progress):
                valid = batch_size - (batch.pad or 0)
                images = batch.data[0]
                both = teacher.embed(mx.nd.concat(images, mx.nd.flip(images, axis=3), dim=0)).asnumpy()  # + mirror
                pairs = np.stack([both[:valid], both[batch_size:batch_size + valid]], axis=1)  # (valid, 2, D)
                os.pwrite(fd, np.asarray(batch.index, "<i8")[:valid].tobytes(), index_offset + 8 * row)
                os.pwrite(fd, np.ascontiguousarray(pairs, "<f4").tobytes(), emb_offset + 8 * emb_size * row)
                row += valid
            if row != count:
                raise VargfaceError(f"{data.rec}: read {row} images, but the iterator announced {count}")
            os.pwrite(fd, _body_digest(fd, index_offset, end).encode(),
                      16 + header_bytes.index(BODY_PLACEHOLDER.encode()))
            os.fsync(fd)
            os.pwrite(fd, MAGIC, 0)  # complete: only now does it carry the magic a reader accepts


def _body_digest(fd, start, end, progress=False):
    """'sha256:HEX' of bytes [start, end) of an open cache file: its record indices and embeddings."""
    import hashlib

    from vargface.options import progress_bar

    digest, offset = hashlib.sha256(), start
    with progress_bar(total=end - start, unit="B", unit_scale=True, desc="teacher cache checksum",
                      enabled=progress) as bar:
        while offset < end:
            block = os.pread(fd, min(1 << 24, end - offset), offset)
            if not block:
                break
            digest.update(block)
            offset += len(block)
            bar.update(len(block))
    return "sha256:" + digest.hexdigest()


def read_header(path):
    """The JSON header of a cache file (raises a clear error for anything that is not one; the version and the
    body are the opener's to check, and it says how to rebuild the cache)."""
    if not os.path.isfile(path):
        raise VargfaceError(f"--teacher-cache: {path} does not exist")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) == 16 and head[:8] == UNFINISHED:
            raise VargfaceError(f"--teacher-cache: {path} is an unfinished cache (its writer was interrupted)")
        if len(head) < 16 or head[:8] != MAGIC:
            raise VargfaceError(f"--teacher-cache: {path} is not a vargface teacher cache (bad magic)")
        (length,) = struct.unpack("<Q", head[8:])
        if length > size - 16:
            raise VargfaceError(f"--teacher-cache: {path} has a damaged header (length {length} beyond the end of "
                                f"the {size}-byte file)")
        try:
            header = json.loads(f.read(length).decode())
        except ValueError:
            raise VargfaceError(f"--teacher-cache: {path} has a damaged header") from None
    if not isinstance(header, dict):
        raise VargfaceError(f"--teacher-cache: {path} has a damaged header (not a JSON object)")
    expected = {"count": int, "emb_size": int, "image_shape": list, "data_dir": str, "data": dict, "teacher": dict}
    wrong = [key for key, kind in expected.items() if not isinstance(header.get(key), kind)]
    wrong += [f"data.{k}" for k in ("rec", "idx") if k not in header.get("data", {})]
    wrong += [f"teacher.{k}" for k in ("checksum", "checkpoint") if k not in header.get("teacher", {})]
    if wrong or header["count"] < 0 or header["emb_size"] < 1:
        raise VargfaceError(f"--teacher-cache: {path} has a damaged header ("
                            f"{', '.join(wrong) or 'count/emb_size'} missing or of the wrong type)")
    return header, length


class TeacherCache:
    """Read-only view of a cache file, checked against the data and teacher it is used with."""

    def __init__(self, path, data_dir, teacher, image_shape=None, progress=True):
        make = cache_command(teacher, data_dir, path, image_shape)
        if not os.path.lexists(path):
            raise VargfaceError(f"--teacher-cache: {path} does not exist; make it with `{make}`")
        rebuild = f"; rebuild it with `{make} --overwrite`"
        try:
            header, length = read_header(path)
        except VargfaceError as error:
            raise VargfaceError(f"{error}{rebuild}") from None
        if header.get("version") != VERSION:
            found = ("has no checksum over its embeddings (an older format)" if header.get("version") == 1 else
                     f"has version {header.get('version')}, expected {VERSION}")
            raise VargfaceError(f"--teacher-cache: {path} {found}{rebuild}")
        if not isinstance(header.get("body"), str):
            raise VargfaceError(f"--teacher-cache: {path} has a damaged header (body missing){rebuild}")
        from vargface.data.source import open_training_set

        data = open_training_set(data_dir)
        current = data.fingerprint()
        for key in ("rec", "idx"):
            if header["data"][key] != current[key]:
                raise VargfaceError(f"--teacher-cache: {path} was made for other data: train.{key} of "
                                    f"{header['data_dir']} had checksum {header['data'][key]}, but "
                                    f"{getattr(data, key)} has {current[key]}{rebuild}")
        made_by = header["teacher"]
        if made_by["checksum"] != teacher.checksum:
            raise VargfaceError(f"--teacher-cache: {path} was made by teacher {made_by['checkpoint']} "
                                f"(checksum {made_by['checksum']}), not by --teacher {teacher.model} "
                                f"(checksum {teacher.checksum}){rebuild}")
        if image_shape is not None and tuple(header["image_shape"]) != tuple(image_shape):
            raise VargfaceError(f"--teacher-cache: {path} holds embeddings of {tuple(header['image_shape'])} images, "
                                f"but training feeds {tuple(image_shape)}{rebuild}")
        self.path, self.header = path, header
        count, emb_size = header["count"], header["emb_size"]
        index_offset, emb_offset, end = _layout(length, count, emb_size)
        if os.path.getsize(path) != end:
            raise VargfaceError(f"--teacher-cache: {path} has {os.path.getsize(path)} bytes, expected {end} "
                                f"(truncated or damaged){rebuild}")
        with open(path, "rb") as f:
            if _body_digest(f.fileno(), index_offset, end, progress) != header["body"]:
                raise VargfaceError(f"--teacher-cache: {path} is damaged: its record indices and embeddings do not "
                                    f"match the checksum in its header{rebuild}")
        indices = np.fromfile(path, dtype="<i8", count=count, offset=index_offset)
        self._order = np.argsort(indices, kind="stable")
        self._sorted = indices[self._order]
        self.embeddings = np.memmap(path, dtype="<f4", mode="r", offset=emb_offset, shape=(count, 2, emb_size))
        self.emb_size = emb_size

    def lookup(self, index, mirrored):
        """Teacher embeddings (N,D) float32 of records ``index`` (N,), mirrored where ``mirrored`` (N,) is true."""
        index = np.asarray(index, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, index), len(self._sorted) - 1)
        missing = self._sorted[pos] != index
        if missing.any():
            raise VargfaceError(f"--teacher-cache: {self.path} has no entry for record {int(index[missing][0])}; "
                                f"it was made for other data")
        return np.asarray(self.embeddings[self._order[pos], np.asarray(mirrored, dtype=bool).astype(np.int64)])
