"""Cheap fingerprints of large files, for binding a cache, a training state or a teacher to the exact files
they were made from."""
import hashlib
import os

CHUNK = 1 << 20


def file_checksum(path, whole=False):
    """Size + sha1 over the first, middle and last MiB: still safe for multi-GB files.

    Any re-written, truncated, appended or re-packed file changes its size or one of those chunks; reading three
    MiB keeps this instant for a 20 GB .rec. ``whole`` hashes everything (for an .idx, where every record's
    offset matters); files under 3 MiB (-symbol.json, small .idx) are always hashed whole."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        if whole or size <= 3 * CHUNK:
            for block in iter(lambda: f.read(16 * CHUNK), b""):
                digest.update(block)
        else:
            for offset in (0, size // 2 - CHUNK // 2, size - CHUNK):
                f.seek(offset)
                digest.update(f.read(CHUNK))
    return f"{size}:{digest.hexdigest()}"
