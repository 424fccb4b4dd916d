"""LFR2019 image-track feature files: header of four little-endian int32 (rows, cols, cols*4, 5), then rows x cols
little-endian float32; row i is the L2-normalised sum of the embeddings of image i of the test list and its flip.

Extraction is resumable: rows go into ``OUT.partial``, allocated whole at the start (a full disk is reported at
once) and written with plain writes (a failed write is an error; through a memory map it was a SIGBUS), with a
JSON sidecar recording how many rows are done and for which weights (checksum), list and root; a rerun with the
same ones continues there, with others it refuses to append; the finished file is renamed into place."""
import hashlib
import json
import os

import numpy as np

from vargface.errors import VargfaceError

HEADER = np.dtype("<i4")
ROW = np.dtype("<f4")
HEADER_BYTES = 4 * HEADER.itemsize


def write_header(handle, rows, cols):
    handle.write(np.array([rows, cols, cols * 4, 5], dtype=HEADER).tobytes())


def write_features(path, features):
    """Write an (N, D) array as an LFR2019 feature file (atomically)."""
    from vargface.atomic import atomic_path

    features = np.asarray(features, dtype=ROW)
    if features.ndim != 2:
        raise VargfaceError(f"{path}: features must be (rows, cols), got shape {features.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write_header(handle, *features.shape)
        handle.write(np.ascontiguousarray(features).tobytes())


def read_features(path, mmap=False):
    """Read an LFR2019 feature file -> float32 (rows, cols) array (a read-only memmap when ``mmap``)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header = np.frombuffer(handle.read(HEADER_BYTES), dtype=HEADER)
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read the feature file ({error.strerror})") from None
    if header.size != 4 or header[3] != 5 or header[2] != header[1] * 4 or header[0] < 0 or header[1] < 1:
        raise VargfaceError(f"{path}: not an LFR2019 feature file; expected the header (rows, cols, cols*4, 5), "
                            f"found {header.tolist()}")
    rows, cols = int(header[0]), int(header[1])
    if size != HEADER_BYTES + rows * cols * ROW.itemsize:
        raise VargfaceError(f"{path}: {size} bytes, but its header (rows={rows}, cols={cols}) needs "
                            f"{HEADER_BYTES + rows * cols * ROW.itemsize}; the file is truncated or corrupt")
    if mmap:
        return np.memmap(path, dtype=ROW, mode="r", offset=HEADER_BYTES, shape=(rows, cols))
    return np.fromfile(path, dtype=ROW, offset=HEADER_BYTES).reshape(rows, cols).astype(np.float32)


def read_list(list_file, option="--list", empty=False):
    """Image paths (or names) of a list file, one per line (blank lines ignored), in order; an empty list is
    refused unless ``empty``. Errors name the ``option`` that gave the file."""
    try:
        with open(list_file, encoding="utf-8") as handle:
            paths = [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise VargfaceError(f"{option} {list_file}: cannot read it ({getattr(error, 'strerror', None) or error})") \
            from None
    if not paths and not empty:
        raise VargfaceError(f"{option} {list_file}: no image paths in it; expected one path per line")
    return paths


def _digest(paths):
    return hashlib.sha1("\n".join(paths).encode("utf-8")).hexdigest()


def resume_files(out):
    """``(OUT.partial, OUT.partial.json)``: the rows so far and the sidecar saying how many and for what."""
    return out + ".partial", out + ".partial.json"


def _resume_point(partial, sidecar, identity, size):
    """Rows already in ``partial`` when its sidecar records this very identity; anything else refuses to append."""
    if not (os.path.exists(partial) and os.path.exists(sidecar)):
        return 0
    try:
        with open(sidecar, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {}
    state = state if isinstance(state, dict) else {}
    changed = [what for key, what in (("weights", "the model's weights or graph"), ("list", "the --list"),
                                      ("root", "the --root"), ("rows", "the number of images"),
                                      ("cols", "the embedding size")) if state.get(key) != identity[key]]
    if not changed and os.path.getsize(partial) != size:
        changed = [f"the size of {partial}"]
    if changed:
        raise VargfaceError(f"{partial} was started with other inputs ({', '.join(changed)} changed), so its rows "
                            f"cannot be continued with these; remove {partial} and {sidecar} to start over, or "
                            f"write to another --out")
    return int(state.get("done", 0))


def create_partial(partial, rows, cols):
    """A new partial feature file: its header, and the room for every row reserved now, so that a full disk is
    reported before any work, not hours into it."""
    from vargface.atomic import reserve_space, write_errors

    with write_errors(partial), open(partial, "wb") as handle:
        write_header(handle, rows, cols)
    try:
        reserve_space(partial, HEADER_BYTES + rows * cols * ROW.itemsize)
    except VargfaceError:
        os.remove(partial)
        raise


def write_rows(handle, block, first, cols):
    """Write the rows ``block`` from row ``first`` of the feature file open as ``handle``, on disk before this
    returns (so a sidecar may count them); returns the row after them. Plain writes, not a memory map: a failed
    write is an error, never a SIGBUS."""
    block = np.ascontiguousarray(block, ROW)
    os.pwrite(handle.fileno(), block.tobytes(), HEADER_BYTES + first * cols * ROW.itemsize)
    os.fdatasync(handle.fileno())
    return first + len(block)


def extract_features(embedder, list_file, root, out, chunk=None, progress=True):
    """Embed every image of ``list_file`` (paths relative to ``root``) into the LFR2019 file ``out``, resumably.

    ``embedder`` is a `FaceEmbedder`; the partial file is keyed on its checkpoint's checksum, the list and the
    root, so a rerun with other weights or images refuses to append. Rows are written in blocks of ``chunk``
    images (default: eight batches), each decoded in threads while the block before it is embedded. Returns the
    number of rows computed in this run."""
    from vargface.options import progress_bar
    from vargface.atomic import atomic_path, move_into_place, write_errors

    paths = read_list(list_file)
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    rows, cols = len(paths), embedder.embedding_size
    partial, sidecar = resume_files(out)
    identity = {"rows": rows, "cols": cols, "list": _digest(paths), "weights": embedder.checksum,
                "root": os.path.abspath(os.fspath(root))}
    size = HEADER_BYTES + rows * cols * ROW.itemsize
    done = _resume_point(partial, sidecar, identity, size)
    if done == 0:
        create_partial(partial, rows, cols)
    bar = progress_bar(total=rows, initial=done, unit="img", desc="lfr features", enabled=progress)
    start = done
    # one stream of blocks: the images of the next block decode in threads while this one is embedded and written
    blocks = embedder.embed_stream([os.path.join(root, name) for name in paths[done:]], step=chunk)
    with write_errors(partial), open(partial, "r+b") as handle:
        for block in blocks:
            done = write_rows(handle, block, done, cols)
            with atomic_path(sidecar) as tmp, open(tmp, "w", encoding="utf-8") as state:
                json.dump({**identity, "done": done}, state)
            bar.update(len(block))
    bar.close()
    move_into_place(partial, out)
    os.remove(sidecar)
    return rows - start
