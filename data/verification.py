"""Verification packs (``lfw.bin`` style, docs/formats.md#verification-pack-bin): a pickle of
``(bins, issame_list)`` where ``bins`` holds 2*P encoded images (pair i = items 2i, 2i+1) and ``issame_list`` P
booleans."""
import builtins
import os
import pickle

import numpy as np

from vargface.errors import VargfaceError

PICKLE_PROTOCOL = 4  # Python 3 readers load it with or without encoding='bytes'


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for ``bytes``; other codecs are refused."""
    if encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed in a verification pack")
    return text.encode("latin1", errors)


def _safe_globals():
    """The only callables a pack may name: NumPy's own array/dtype/scalar rebuilders and the bytes codec."""
    import numpy.core.multiarray as multiarray
    import numpy.core.numeric as numeric

    allowed = {("_codecs", "encode"): _latin1_encode, ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        allowed[(module + ".multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(module + ".multiarray", "scalar")] = multiarray.scalar
        allowed[(module + ".numeric", "_frombuffer")] = numeric._frombuffer
    for name in ("list", "tuple", "bytes", "bytearray", "bool"):
        allowed[("builtins", name)] = allowed[("__builtin__", name)] = getattr(builtins, name)
    return allowed


class _PackUnpickler(pickle.Unpickler):
    """Unpickles what a verification pack holds (lists, tuples, bytes, str, bools, NumPy arrays) and refuses
    every other global, so a hostile pack cannot run code."""

    def find_class(self, module, name):
        found = _safe_globals().get((module, name))
        if found is None:
            raise _Hostile(f"{module}.{name}")
        return found


class _Hostile(pickle.UnpicklingError):
    pass


def _is_image(item):
    return isinstance(item, (bytes, bytearray)) or (isinstance(item, np.ndarray) and item.dtype == np.uint8)


def load_bin(path):
    """Read any InsightFace .bin, Python 2 pickles included: ``(bins, issame_list)`` with ``bins`` a list of
    ``bytes`` (encoded images) and ``issame_list`` a list of bools. Packs come from third parties, so the pickle
    is read by a restricted unpickler: anything beyond plain data and NumPy arrays is refused, never run."""
    path = os.fspath(path)
    if os.path.isdir(path):
        packs = sorted(name for name in os.listdir(path) if name.endswith(".bin"))
        example = ", ".join(os.path.join(path, name) for name in packs[:3]) or os.path.join(path, "lfw.bin")
        raise VargfaceError(f"{path}: a folder, not a verification pack; name pack files, e.g. {example}")
    if not os.path.isfile(path):
        raise VargfaceError(f"{path}: verification pack not found")
    _refuse_training_data(path)
    try:
        with open(path, "rb") as f:
            data = _PackUnpickler(f, encoding="bytes").load()  # Python 2 str -> bytes
    except _Hostile as error:
        raise VargfaceError(f"{path}: refused: the pickle calls {error}, which a verification pack never does; "
                            f"the file may be hostile (it was not run)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeError) as error:
        raise VargfaceError(f"{path}: not a verification pack (a pickle of (bins, issame_list)): {error}") from None
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(x, (list, tuple, np.ndarray))
                                                                       for x in data)):
        raise VargfaceError(f"{path}: not a verification pack: the pickle holds {type(data).__name__} "
                            f"{_preview(data)}, expected a pair (bins, issame_list) of lists")
    bins, issame = data
    bad = next((i for i, b in enumerate(bins) if not _is_image(b)), None)
    if bad is not None:
        raise VargfaceError(f"{path}: image {bad} is a {type(bins[bad]).__name__}, expected encoded image bytes")
    if not all(isinstance(v, (bool, int, np.bool_, np.integer)) for v in issame):
        raise VargfaceError(f"{path}: issame_list must hold booleans")
    bins = [b.tobytes() if isinstance(b, np.ndarray) else bytes(b) for b in bins]
    issame = [bool(v) for v in issame]
    if len(bins) != 2 * len(issame):
        raise VargfaceError(f"{path}: {len(bins)} images for {len(issame)} pairs; expected 2 images per pair")
    return bins, issame


def _refuse_training_data(path):
    """A RecordIO training set given where a pack is expected: say what it is and how a pack is made."""
    from vargface.data.recordio import PROPERTY_NAME, _MAGIC_BYTES

    with open(path, "rb") as f:
        head = f.read(len(_MAGIC_BYTES))
    sibling_rec = path.endswith(".idx") and os.path.isfile(path[:-len(".idx")] + ".rec")
    if head == _MAGIC_BYTES or sibling_rec or os.path.basename(path) == PROPERTY_NAME:
        raise VargfaceError(f"{path}: training data (a RecordIO set), not a verification pack of image pairs; make "
                            f"a pack from held-out images with `vargface data pairs IMAGE_FOLDER --out PACK.bin`")


def _preview(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_bin(path, bins, issame_list):
    """Write a pack atomically; it loads with a plain ``pickle.load(f, encoding='bytes')`` (InsightFace's
    ``load_bin``)."""
    from vargface.atomic import atomic_path

    bins = [bytes(b) for b in bins]
    issame = [bool(v) for v in issame_list]
    if len(bins) != 2 * len(issame):
        raise VargfaceError(f"{path}: {len(bins)} images for {len(issame)} pairs; expected 2 per pair")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump((bins, issame), f, protocol=PICKLE_PROTOCOL)


def make_pairs(groups, pairs, seed=0):
    """A balanced list of ``(a, b, issame)``: ``pairs // 2`` distinct same-identity pairs (from groups with at
    least 2 items) and the rest different-identity pairs, shuffled by ``seed``. ``groups`` is a list of item
    lists, one per identity."""
    rng = np.random.default_rng(seed)
    pairs = int(pairs)
    if pairs < 2:
        raise VargfaceError(f"--pairs {pairs}: need at least 2 (one positive, one negative)")
    multi = [g for g in groups if len(g) >= 2]
    if not multi:
        raise VargfaceError("no identity has 2 or more images; same-identity pairs are impossible")
    if len([g for g in groups if g]) < 2:
        raise VargfaceError("fewer than 2 identities; different-identity pairs are impossible")
    n_pos, n_neg = pairs // 2, pairs - pairs // 2
    possible = sum(len(g) * (len(g) - 1) // 2 for g in multi)
    if n_pos > possible:
        raise VargfaceError(f"--pairs {pairs} needs {n_pos} distinct same-identity pairs; the images allow only "
                            f"{possible}")
    nonempty = [g for g in groups if g]
    seen, out = set(), []
    while len(out) < n_pos:
        gi = int(rng.integers(len(multi)))
        i, j = sorted(rng.choice(len(multi[gi]), 2, replace=False).tolist())
        if ("p", gi, i, j) not in seen:
            seen.add(("p", gi, i, j))
            out.append((multi[gi][i], multi[gi][j], True))
    tries = 0
    while len(out) < pairs:
        ga, gb = rng.choice(len(nonempty), 2, replace=False).tolist()
        i, j = int(rng.integers(len(nonempty[ga]))), int(rng.integers(len(nonempty[gb])))
        key = ("n",) + tuple(sorted([(ga, i), (gb, j)]))
        tries += 1
        if key not in seen or tries > 50 * pairs:
            seen.add(key)
            out.append((nonempty[ga][i], nonempty[gb][j], False))
    order = rng.permutation(len(out))
    return [out[k] for k in order]


def make_synthetic_bin(path, identities, pairs, size=112, seed=0, per_identity=4, difficulty=1.0,
                       first_identity=1_000_000, workers=None):
    """A pack of synthetic identities held out from training: identity numbers start at ``first_identity``
    (training sets start at 0), so the same ``seed`` never shares a face with a training set."""
    from vargface.data.synth import synthetic_samples

    groups = [[] for _ in range(identities)]
    images = []
    for label, jpeg in synthetic_samples(identities, per_identity, size, seed, difficulty, first_identity,
                                         workers=workers):
        groups[label].append(len(images))
        images.append(jpeg)
    chosen = make_pairs(groups, pairs, seed)
    bins = [images[k] for a, b, _ in chosen for k in (a, b)]
    write_bin(path, bins, [same for _, _, same in chosen])
    return len(chosen)
