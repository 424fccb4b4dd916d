"""InsightFace RecordIO sets: ``train.rec`` + ``train.idx`` + ``property``
(docs/formats.md#recordio-training-set-trainrec-trainidx-property).

Layout: record 0 is a header whose label ``[N+1, N+1+K]`` gives the image records ``1..N`` and the identity
records ``N+1..N+K``; identity record ``N+1+c`` holds ``[first, end)``, the image records of class ``c``; each
image record holds an encoded image and its class id as label.

Writing goes through ``mx.recordio`` (so the dmlc framing is MXNet's own). Reading uses ``os.pread`` on the raw
file instead of ``MXIndexedRecordIO``: one shared handle is then safe to use from many decoder threads, which
the MXNet reader (seek + read on one handle) is not.
"""
import os
import struct

import numpy as np

from vargface.atomic import atomic_files
from vargface.errors import VargfaceError, last_line

REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"
# The files a data set is made of, ``property`` last: written last and removed first when a set is replaced.
SET_FILES = (REC_NAME, IDX_NAME, PROPERTY_NAME)
_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", _MAGIC)
_LEN_MASK = (1 << 29) - 1


def rec_paths(path):
    """``(rec, idx, data_dir)`` for a data directory or a ``.rec`` path (the ``.idx`` sits beside it, as
    InsightFace expects)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        rec = os.path.join(path, REC_NAME)
    else:
        rec = path
    return rec, os.path.splitext(rec)[0] + ".idx", os.path.dirname(os.path.abspath(rec))


def read_property(data_dir):
    """``(num_classes, height, width)`` from ``DATA_DIR/property`` (``num_classes,112,112``)."""
    path = os.path.join(os.fspath(data_dir), PROPERTY_NAME)
    if not os.path.isfile(path):
        raise VargfaceError(f"{path}: missing; a RecordIO data set needs a 'property' file holding "
                            "'num_classes,height,width' beside train.rec")
    expected = "expected one line 'num_classes,height,width', e.g. '85742,112,112'"
    with open(path, "rb") as f:
        raw = f.read(4096)  # a few bytes; a huge or binary file is refused below, not read whole
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise VargfaceError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); {expected}") from None
    try:
        num_classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise VargfaceError(f"{path}: cannot parse {shown!r}; {expected}") from None
    if num_classes <= 0 or height <= 0 or width <= 0:
        raise VargfaceError(f"{path}: {text!r} has a non-positive value")
    return num_classes, height, width


def write_property(data_dir, num_classes, height, width):
    with open(os.path.join(data_dir, PROPERTY_NAME), "w", encoding="utf-8") as f:
        f.write(f"{int(num_classes)},{int(height)},{int(width)}\n")


def image_label(header):
    """Class id of an image record: its float label, or the first element of an array label."""
    label = header.label
    return float(label[0]) if isinstance(label, np.ndarray) else float(label)


class RecReader:
    """Random access to an indexed .rec, safe to share between threads.

    Attributes: ``imgidx`` (record keys of the images, numpy int64), ``id_ranges`` (list of ``(first, end)``
    per identity, in identity-record order; empty when the file has no header), ``has_header``.
    """

    def __init__(self, path, check_offsets=True):
        self.rec_path, self.idx_path, self.data_dir = rec_paths(path)
        for p in (self.rec_path, self.idx_path):
            if not os.path.isfile(p):
                raise VargfaceError(f"{p}: missing; expected an MXNet indexed RecordIO pair train.rec/train.idx")
        self.keys, self.offsets = _read_idx(self.idx_path)
        self.size = os.path.getsize(self.rec_path)
        self.past_end = self.keys[self.offsets + 8 > self.size]
        order = np.argsort(self.offsets, kind="stable")
        ends = np.empty_like(self.offsets)
        ends[order[:-1]] = self.offsets[order[1:]]
        ends[order[-1:]] = self.size
        self.ends = np.maximum(ends, self.offsets)
        self._fd = os.open(self.rec_path, os.O_RDONLY)
        if check_offsets and len(self.past_end):
            self.read(self.past_end[0])  # raises, naming the record
        self._read_layout()

    def _read_layout(self):
        self.has_header, self.id_ranges = False, []
        if not len(self.keys):
            raise VargfaceError(f"{self.idx_path}: empty index; the data set has no records")
        header, _ = self.unpack(self.keys[0])
        if self.keys[0] == 0 and header.flag > 0:
            label = np.atleast_1d(header.label)
            if len(label) < 2:
                raise VargfaceError(f"{self.rec_path}: record 0 is a header but its label {label.tolist()} is not "
                                    "[N+1, N+1+K]")
            first_id, end_id = int(label[0]), int(label[1])
            if first_id < 1 or end_id < first_id:
                raise VargfaceError(f"{self.rec_path}: header label [{first_id}, {end_id}] is not [N+1, N+1+K]")
            self.has_header = True
            self.imgidx = np.arange(1, first_id, dtype=np.int64)
            self.identity_keys = np.arange(first_id, end_id, dtype=np.int64)
        else:
            self.imgidx = self.keys.copy()
            self.identity_keys = np.zeros(0, dtype=np.int64)

    def unpack(self, key):
        """``(IRHeader, data)`` of record ``key``."""
        import mxnet as mx

        raw = self.read(key)
        try:
            return mx.recordio.unpack(raw)
        except struct.error:
            raise VargfaceError(f"{self.rec_path}: record {key} is {len(raw)} bytes, too short for an image "
                                "record header") from None

    def identity_range(self, key):
        """``(first, end)`` image-record range stored in identity record ``key``."""
        header, _ = self.unpack(key)
        label = np.atleast_1d(header.label)
        if header.flag <= 0 or len(label) < 2:
            raise VargfaceError(f"{self.rec_path}: identity record {key} has label {label.tolist()}, "
                                "expected [first, end)")
        return int(label[0]), int(label[1])

    def load_id_ranges(self):
        """Read the identity records: a list of ``(first, end)`` image-record ranges."""
        self.id_ranges = [self.identity_range(int(key)) for key in self.identity_keys]
        return self.id_ranges

    def __contains__(self, key):
        i = np.searchsorted(self.keys, key)
        return i < len(self.keys) and self.keys[i] == key

    def read(self, key):
        """Raw record payload (``IRHeader`` + data) of record ``key``."""
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            raise VargfaceError(f"{self.rec_path}: record {key} is not in {self.idx_path}")
        offset, end = int(self.offsets[i]), int(self.ends[i])
        if offset + 8 > self.size:
            raise VargfaceError(f"{self.idx_path}: record {key} points at offset {offset}, past the end of "
                                f"{self.rec_path} ({self.size} bytes); the .rec is truncated or the .idx belongs "
                                "to another file")
        buf = os.pread(self._fd, end - offset, offset)
        parts, pos = [], 0
        while True:  # dmlc framing: a record is split where its data holds the magic word (cflag 1,2,..,3)
            if pos + 8 > len(buf):
                raise VargfaceError(f"{self.rec_path}: record {key} (offset {offset}) is truncated: the file "
                                    f"ends before its header")
            magic, lrec = struct.unpack_from("<II", buf, pos)
            if magic != _MAGIC:
                raise VargfaceError(f"{self.rec_path}: record {key} (offset {offset + pos}) has no RecordIO magic "
                                    "number; the .idx does not match the .rec, or the file is damaged")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            start = pos + 8
            if start + length > len(buf):
                raise VargfaceError(f"{self.rec_path}: record {key} (offset {offset}) is truncated: it needs "
                                    f"{length} bytes, {len(buf) - start} are left")
            parts.append(buf[start:start + length])
            if cflag in (0, 3):
                return b"".join(parts) if len(parts) > 1 else parts[0]
            parts.append(_MAGIC_BYTES)
            pos = start + ((length + 3) & ~3)

    def read_image(self, key):
        """``(label, encoded_bytes)`` of an image record."""
        header, payload = self.unpack(key)
        return image_label(header), payload

    def decode(self, key, flags=1):
        """Decoded image (HWC uint8, BGR as OpenCV gives it) and label; a record that does not decode is an
        error naming it."""
        import cv2

        label, payload = self.read_image(key)
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), flags) if payload else None
        if image is None:
            raise VargfaceError(f"{self.rec_path}: record {key} does not decode as an image "
                                f"({len(payload)} bytes; corrupt JPEG/PNG data)")
        return image, label

    def close(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __getstate__(self):  # processes (e.g. a DataLoader fork) reopen the file
        state = dict(self.__dict__)
        state["_fd"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = os.open(self.rec_path, os.O_RDONLY)


def _read_idx(path):
    """Keys and offsets of an MXNet ``.idx`` (``key<TAB>offset`` lines), sorted by key."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file warns
            table = np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)
    except ValueError as error:
        raise VargfaceError(f"{path}: not an MXNet .idx file (expected 'key<TAB>offset' lines): "
                            f"{last_line(error)}") from None
    if table.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if table.shape[1] != 2:
        raise VargfaceError(f"{path}: expected 2 columns 'key<TAB>offset', found {table.shape[1]}")
    order = np.argsort(table[:, 0], kind="stable")
    keys, offsets = table[order, 0], table[order, 1]
    if (offsets < 0).any() or (keys < 0).any():
        bad = int(np.argmax((offsets < 0) | (keys < 0)))
        raise VargfaceError(f"{path}: record {keys[bad]} has offset {offsets[bad]}; keys and offsets cannot be "
                            f"negative (a damaged .idx)")
    if len(keys) > 1 and (np.diff(keys) == 0).any():
        dup = keys[1:][np.diff(keys) == 0][0]
        raise VargfaceError(f"{path}: record {dup} is listed twice")
    return keys, offsets


def write_rec(out_dir, samples, image_size=(112, 112), num_classes=None, overwrite=False, total=None,
              progress=True, desc="writing train.rec"):
    """Write ``train.rec``/``train.idx``/``property`` from ``samples``, an iterable of ``(label, encoded_bytes)``
    in identity-contiguous order (a ``None`` payload is a skipped image). Labels must be ``0..K-1``; each class
    one contiguous run. The three files appear together when complete, and ``overwrite`` replaces only them:
    packs, caches and anything else in ``out_dir`` stay. Returns ``(num_images, num_classes)``.
    """
    import mxnet as mx
    from vargface.options import progress_bar

    height, width = image_size
    with atomic_files(out_dir, SET_FILES, overwrite=overwrite) as tmp:
        rec, idx = os.path.join(tmp, REC_NAME), os.path.join(tmp, IDX_NAME)
        writer = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
        try:
            num_images, k = _write_records(writer, progress_bar(samples, total=total, desc=desc, unit="img",
                                                        enabled=progress), num_classes)
        finally:
            writer.close()
        with open(rec, "r+b") as f:  # the header needs N and K, known only now: same size, patched in place
            f.seek(8)
            f.write(_header(num_images, k))
        write_property(tmp, k, height, width)
    return num_images, k


def _header(num_images, num_classes):
    """Record 0: flag 2, label [N+1, N+1+K] (fixed size, so a placeholder can be patched in place)."""
    import mxnet as mx

    return mx.recordio.pack(mx.recordio.IRHeader(2, [float(num_images + 1), float(num_images + 1 + num_classes)],
                                                 0, 0), b"")


def _write_records(writer, samples, num_classes):
    """Header placeholder, image records, identity records; returns ``(num_images, num_classes)``."""
    import mxnet as mx

    writer.write_idx(0, _header(0, 0))
    runs, key = [], 1  # runs: [label, first, end)
    for label, payload in samples:
        if payload is None:
            continue
        label = int(label)
        if runs and runs[-1][0] == label:
            runs[-1][2] = key + 1
        elif runs and label != runs[-1][0] + 1:
            raise VargfaceError(f"label {label} follows label {runs[-1][0]}: class {runs[-1][0] + 1} has no (readable) "
                                "images, or the images are not grouped by identity; labels must be 0..K-1, in order")
        elif not runs and label != 0:
            raise VargfaceError(f"the first image has label {label}; labels must start at 0 (class 0 has no images)")
        else:
            runs.append([label, key, key + 1])
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), payload))
        key += 1
    if key == 1:
        raise VargfaceError("no images to write")
    if num_classes is not None and len(runs) != num_classes:
        raise VargfaceError(f"{num_classes} classes expected but only {len(runs)} have images "
                            f"(class {len(runs)} is the first without any)")
    num_images = key - 1
    for c, (_, first, end) in enumerate(runs):
        writer.write_idx(num_images + 1 + c, mx.recordio.pack(mx.recordio.IRHeader(2, [float(first), float(end)], 0, 0),
                                                              b""))
    return num_images, len(runs)
