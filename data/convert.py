"""Conversions between image folders, ``.lst`` files, ``.rec`` sets and ``.bin`` verification packs, plus the
``check`` of a .rec set. An image root holds one folder per identity; labels follow the sorted folder names."""
import collections
import glob
import os
import re
import warnings

import numpy as np

from vargface.data.images import IMAGE_EXTENSIONS
from vargface.errors import VargfaceError, last_line

Item = collections.namedtuple("Item", "path label bbox landmarks")


class DataWarning(UserWarning):
    """Input that was skipped (rejected instead under ``strict``)."""


def _skip(message, strict):
    if strict:
        raise VargfaceError(message + " (--strict)")
    warnings.warn(message + ", skipped", DataWarning, stacklevel=3)


def scan_image_root(root, strict=False):
    """``[(folder_name, [image paths])]`` for the identity folders of ``root``, sorted by name. Non-image files,
    stray files and empty identity folders are skipped with a warning, or rejected when ``strict``."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise VargfaceError(f"{root}: not a directory; expected an image root with one folder per identity")
    groups = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            _skip(f"{folder}: a file directly in the image root, not in an identity folder", strict)
            continue
        images = []
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if os.path.isdir(path):
                _skip(f"{path}: a folder inside identity folder {name}", strict)
            elif not entry.lower().endswith(IMAGE_EXTENSIONS):
                _skip(f"{path}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})", strict)
            else:
                images.append(path)
        if images:
            groups.append((name, images))
        else:
            _skip(f"{folder}: empty identity folder (no images)", strict)
    if not groups:
        raise VargfaceError(f"{root}: no identity folder with images")
    return groups


def items_from_root(root, strict=False):
    return [Item(p, label, None, None) for label, (_, paths) in enumerate(scan_image_root(root, strict))
            for p in paths]


def read_lst(path, image_root=None):
    """Items of an InsightFace ``.lst``: ``aligned<TAB>path<TAB>label[<TAB>x1 y1 x2 y2[<TAB>5 x then 5 y]]``.
    ``aligned`` 1 takes the image as it is (resized if needed); 0 aligns it by the landmarks, else crops the box.
    Relative paths are taken from ``image_root`` (default: the .lst's folder). Items are returned grouped by label
    (stable order); labels must be 0..K-1."""
    path = os.fspath(path)
    base = image_root or os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise VargfaceError(f"{path}:{n}: not UTF-8 text ({error.reason} at byte {error.start}); a .lst "
                                    f"is a UTF-8 text file") from None
            if not line.strip():
                continue
            vec = line.rstrip("\n").split("\t")
            try:
                if len(vec) < 3 or len(vec) not in (3, 7, 17):
                    raise ValueError(f"{len(vec)} tab-separated fields")
                aligned, label = int(vec[0]), int(float(vec[2]))
                bbox = [int(float(v)) for v in vec[3:7]] if len(vec) >= 7 and not aligned else None
                marks = np.array([float(v) for v in vec[7:17]]).reshape(2, 5).T if len(vec) == 17 else None
                marks = None if aligned else marks
            except ValueError as error:
                raise VargfaceError(f"{path}:{n}: cannot parse ({error}); expected 'aligned<TAB>path<TAB>label', "
                                    "optionally followed by 4 bbox and 10 landmark values") from None
            if label < 0:
                raise VargfaceError(f"{path}:{n}: negative label {label}")
            items.append(Item(os.path.join(base, vec[1]), label, bbox, marks))
    if not items:
        raise VargfaceError(f"{path}: no images listed")
    items.sort(key=lambda item: item.label)
    present = np.unique([item.label for item in items])
    if present[-1] != len(present) - 1:
        missing = int(np.setdiff1d(np.arange(present[-1] + 1), present)[0])
        raise VargfaceError(f"{path}: labels must be 0..K-1; label {missing} has no image (max label {present[-1]})")
    return items


def write_lst(path, items, overwrite=False):
    """Write an InsightFace ``.lst`` (absolute paths, as InsightFace's dir2lst does)."""
    from vargface.atomic import atomic_path

    _refuse_existing(path, overwrite)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            fields = [str(int(item.landmarks is None and item.bbox is None)), os.path.abspath(item.path),
                      str(item.label)]
            if item.bbox is not None:
                fields += [str(int(v)) for v in item.bbox]
            if item.landmarks is not None:
                fields += [f"{v:g}" for v in np.asarray(item.landmarks).T.reshape(-1)]
            f.write("\t".join(fields) + "\n")


def _refuse_existing(path, overwrite):
    from vargface.options import refuse_existing

    refuse_existing(os.path.abspath(path), overwrite, option="output")


def _read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read ({error.strerror})") from None


def prepared_samples(items, size=112, quality=95, workers=None, strict=False):
    """Yield ``(label, bytes)`` for each item in order: aligned/cropped/resized as needed, decoded in parallel.
    An unreadable image yields ``None`` bytes with a warning (an error when ``strict``)."""
    from vargface.data.images import prepare
    from vargface.data.parallel import imap_ordered

    def one(item):
        try:
            return item.label, prepare(_read_file(item.path), (size, size), quality, item.path, item.landmarks,
                                       item.bbox)
        except VargfaceError as error:
            if strict:
                raise VargfaceError(f"{error} (--strict)") from None
            return item.label, error

    for label, payload in imap_ordered(one, items, workers):
        if isinstance(payload, VargfaceError):
            warnings.warn(f"{payload}, skipped", DataWarning, stacklevel=2)
            payload = None
        yield label, payload


def to_rec(source, out_dir, size=112, quality=95, workers=None, strict=False, overwrite=False, image_root=None,
           progress=True):
    """Image root or ``.lst`` -> ``OUT_DIR/train.rec, train.idx, property``. Returns ``(images, classes)``."""
    from vargface.atomic import refuse_existing_files
    from vargface.data.recordio import SET_FILES, write_rec

    if os.path.isdir(source):
        items = items_from_root(source, strict)
    elif os.path.isfile(source):
        items = read_lst(source, image_root)
    else:
        raise VargfaceError(f"{source}: not found; expected an image root (one folder per identity) or a .lst file")
    refuse_existing_files(out_dir, SET_FILES, overwrite)  # fail before the work, not after
    num_classes = items[-1].label + 1
    return write_rec(out_dir, prepared_samples(items, size, quality, workers, strict), (size, size), num_classes,
                     overwrite=overwrite, total=len(items), progress=progress, desc="rec")


_EXT = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"BM", ".bmp"), (b"RIFF", ".webp"))
UNPACKED = re.compile(r"\d{6,}")  # the identity folders `unpack` writes


def unpack(data_dir, out_dir, overwrite=False, progress=True):
    """.rec -> ``OUT_DIR/<label:06d>/<record:08d>.<ext>`` with the stored bytes unchanged, so packing the folder
    again gives the same images and labels. Returns the number of images."""
    from vargface.options import progress_bar
    from vargface.atomic import atomic_dir
    from vargface.data.recordio import RecReader

    with RecReader(data_dir) as reader, atomic_dir(out_dir, overwrite=overwrite, own=UNPACKED) as tmp:
        for key in progress_bar(reader.imgidx, desc="unpack", unit="img", enabled=progress):
            label, payload = reader.read_image(int(key))
            if label != int(label) or label < 0:
                raise VargfaceError(f"{reader.rec_path}: record {key} has label {label}; expected a class id")
            folder = os.path.join(tmp, f"{int(label):06d}")
            os.makedirs(folder, exist_ok=True)
            ext = next((e for magic, e in _EXT if payload.startswith(magic)), ".jpg")
            with open(os.path.join(folder, f"{int(key):08d}{ext}"), "wb") as f:
                f.write(payload)
        return len(reader.imgidx)


def pairs_from_root(root, out_bin, pairs, seed=0, size=112, quality=95, workers=None, strict=False,
                    overwrite=False, progress=True):
    """A balanced verification pack from an image root. Returns the number of pairs."""
    from vargface.options import progress_bar
    from vargface.data.images import prepare
    from vargface.data.parallel import imap_ordered
    from vargface.data.verification import make_pairs, write_bin

    _refuse_existing(out_bin, overwrite)
    chosen = make_pairs([paths for _, paths in scan_image_root(root, strict)], pairs, seed)
    paths = [p for a, b, _ in chosen for p in (a, b)]
    unique = sorted(set(paths))
    encoded = dict(zip(unique, progress_bar(imap_ordered(lambda p: prepare(_read_file(p), (size, size), quality, p),
                                                 unique, workers), total=len(unique), desc="pairs", unit="img",
                                    enabled=progress)))
    write_bin(out_bin, [encoded[p] for p in paths], [same for _, _, same in chosen])
    return len(chosen)


def check(data_dir, workers=None, max_faults=20, progress=True):
    """Verify a .rec set: property, header, identity ranges, .idx offsets, labels, that every image decodes and
    has the property's size. Returns a report dict; ``report['faults']`` lists ``(record, message)``, record
    ``None`` for file-level faults, at most ``max_faults`` (``report['num_faults']`` counts all)."""
    from vargface.options import progress_bar
    from vargface.data.parallel import imap_ordered
    from vargface.data.recordio import RecReader, read_property
    from vargface.data.verification import load_bin

    faults, counter = [], [0]

    def fault(key, message):
        counter[0] += 1
        if len(faults) < max_faults:
            faults.append((None if key is None else int(key), message))

    report = dict(images=0, identities=0, num_classes=None, image_size=None, has_header=False, faults=faults)
    try:
        num_classes, height, width = read_property(data_dir)
        report.update(num_classes=num_classes, image_size=(height, width))
    except VargfaceError as error:
        fault(None, str(error))
        num_classes = height = width = None
    for pack in sorted(glob.glob(os.path.join(glob.escape(os.fspath(data_dir)), "*.bin"))):
        try:
            load_bin(pack)  # the restricted loader: a hostile pack is reported, never run
        except VargfaceError as error:
            fault(None, str(error))
    try:
        reader = RecReader(data_dir, check_offsets=False)
    except VargfaceError as error:
        fault(None, str(error))
        report["num_faults"] = counter[0]
        return report
    with reader:
        for key in reader.past_end:
            fault(key, f"{reader.idx_path}: offset points past the end of {reader.rec_path} ({reader.size} bytes)")
        report.update(images=len(reader.imgidx), has_header=reader.has_header)
        missing = np.setdiff1d(np.concatenate([reader.imgidx, reader.identity_keys]), reader.keys)
        for key in missing[:max_faults]:
            fault(key, f"listed by the header but missing from {reader.idx_path}")
        owner = np.full(len(reader.imgidx) + 1, -1, np.int64)  # image record -> identity number
        if reader.has_header:
            expected, ranges = 1, []
            for c, key in enumerate(reader.identity_keys):
                if key in missing:
                    continue
                try:
                    first, end = reader.identity_range(int(key))
                except VargfaceError as error:
                    fault(key, str(error))
                    continue
                if first != expected or end <= first:
                    fault(key, f"identity {c} range [{first}, {end}) does not continue at image record {expected}"
                               f" (ranges must be non-empty, contiguous and in order)")
                ranges.append((c, first, end))
                expected = max(expected, end)
            if expected != len(reader.imgidx) + 1:
                fault(None, f"identity ranges end at record {expected}, but the header says images are records "
                            f"1..{len(reader.imgidx)}")
            for c, first, end in ranges:
                owner[max(first, 0):max(end, 0)] = c
            report["identities"] = len(reader.identity_keys)
            if num_classes is not None and len(reader.identity_keys) != num_classes:
                fault(None, f"property says {num_classes} classes but the header lists {len(reader.identity_keys)}"
                            " identities")

        def inspect(key):
            try:
                image, label = reader.decode(int(key))
            except VargfaceError as error:
                return key, str(error)
            except Exception as error:  # a damaged IRHeader
                return key, f"{reader.rec_path}: record {key} cannot be unpacked ({last_line(error)})"
            if label != int(label) or label < 0 or (num_classes is not None and label >= num_classes):
                return key, f"label {label:g} is not a class id in 0..{(num_classes or 0) - 1} (property)"
            if key < len(owner) and owner[key] >= 0 and owner[key] != int(label):
                return key, f"label {int(label)} but the record lies in identity {owner[key]}'s range"
            if height is not None and image.shape[:2] != (height, width):
                return key, f"image is {image.shape[1]}x{image.shape[0]}, property says {width}x{height}"
            return key, None

        keys = np.setdiff1d(reader.imgidx, missing)
        for key, message in progress_bar(imap_ordered(inspect, keys, workers), total=len(keys), desc="check", unit="img",
                                 enabled=progress):
            if message:
                fault(key, message)
    report["num_faults"] = counter[0]
    return report

