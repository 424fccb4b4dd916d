"""1:N identification against distractors, the MegaFace challenge 1 protocol.

Probes are images of identities (FaceScrub in MegaFace); for each identity every image in turn is the probe, with
one other image of the same identity in the gallery among D distractors, over every ordered pair of its images. A
trial is a hit at rank k when fewer than k distractors score at least the mate's score (ties count against it);
the rank-k identification rate is the share of hits. The first D distractors (after removing listed noise) are the
gallery of size D, so the galleries are nested: D = 10, 100, ..., 1M come out of one pass.

Distractors are read a block of rows at a time (memory-mapped .npy or LFR2019-format files) and scored against
every probe by one matrix product per block, keeping each probe's running top-k distractor scores; no probes x
distractors matrix is ever held."""
import os

import numpy as np

from vargface.errors import VargfaceError

SIZES = tuple(10 ** k for k in range(1, 7))


def read_names(path, option):
    """The image names of a list file, one per feature row (blank lines ignored; an empty list is allowed)."""
    from vargface.eval.lfr import read_list

    return read_list(path, option, empty=True)


def read_noise(paths):
    """Names listed in noise files (MegaFace's and FaceScrub's lists of mislabelled images)."""
    noise = set()
    for path in paths or ():
        noise.update(read_names(path, "--noise"))
    return noise


def is_noise(names, noise):
    """A listed name is noise when its whole path or its file name is in ``noise`` (the lists name either)."""
    return np.array([name in noise or os.path.basename(name) in noise for name in names], dtype=bool)


def identities_of(names):
    """The identity of each probe image: the folder it is in (FaceScrub's and `vargface data synth`'s layout)."""
    labels = [os.path.dirname(os.path.normpath(name)) for name in names]
    if any(not label for label in labels):
        bad = next(name for name, label in zip(names, labels) if not label)
        raise VargfaceError(f"probe {bad!r} is in no folder; the probe list names images as IDENTITY/IMAGE")
    return np.array(labels)


def _unit_rows(rows, numbers, what):
    """An L2-normalised float32 copy (a memory-mapped input is read-only)."""
    from vargface.eval.tar_at_far import unit_rows

    return unit_rows(np.array(rows, dtype=np.float32), numbers, what)


def _trials(labels):
    """(probe index, mate index) of every ordered pair of distinct images of one identity."""
    probe, mate = [], []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        members = order[start:stop]
        if len(members) > 1:
            a, b = np.meshgrid(members, members, indexing="ij")
            off = a != b
            probe.append(a[off])
            mate.append(b[off])
    if not probe:
        raise VargfaceError("no identity has two probe images; each trial needs a probe and its mate")
    return np.concatenate(probe), np.concatenate(mate)


def identify(probes, labels, distractors, keep=None, sizes=None, max_rank=10, tile=8192, progress=True,
             probe_rows=None):
    """Rank-1..``max_rank`` identification rates at each gallery size.

    ``probes`` (P, d) and ``labels`` (P,) are the probe images and identities (already without noise);
    ``distractors`` (N, d), any array-like that slices rows (a memmap), with ``keep`` the rows to use (None: all);
    ``probe_rows`` are the probes' row numbers in their file (for errors; default 0..P-1).
    Returns {"probes", "identities", "trials", "distractors", "results": {D: {"rank": {k: rate}}}, "skipped"}."""
    from vargface.options import progress_bar

    rows = np.arange(len(distractors)) if keep is None else np.flatnonzero(keep)
    available = len(rows)
    sizes = sorted(set(SIZES if sizes is None else sizes))
    measured = [d for d in sizes if d <= available]
    skipped = [{"distractors": d, "reason": f"{d} distractors requested, {available} available"}
               for d in sizes if d > available]
    if not measured:
        raise VargfaceError(f"DISTRACTORS: {available} distractors, fewer than the smallest gallery size asked for "
                            f"({sizes[0]})")
    if probes.shape[1] != distractors.shape[1]:
        raise VargfaceError(f"PROBES are {probes.shape[1]}-d but DISTRACTORS are {distractors.shape[1]}-d")
    x = _unit_rows(probes, np.arange(len(probes)) if probe_rows is None else probe_rows, "PROBES")
    probe, mate = _trials(np.asarray(labels))
    mate_score = np.einsum("ij,ij->i", x[probe], x[mate])
    k = int(max_rank)
    top = np.full((len(x), k), -np.inf, np.float32)  # each probe's k highest distractor scores so far, unordered
    flat = np.empty(len(x) * min(tile, measured[-1]), np.float32)  # one score buffer: no page faults per block
    results, done = {}, 0
    with progress_bar(total=measured[-1], unit="distractor", unit_scale=True, desc="identify",
                      enabled=progress) as bar:
        for size in measured:
            while done < size:
                stop = min(done + tile, size)
                block = _unit_rows(distractors[done:stop] if keep is None else distractors[rows[done:stop]],
                                   rows[done:stop], "DISTRACTORS")
                scores = flat[:len(x) * len(block)].reshape(len(x), len(block))
                np.dot(x, block.T, out=scores)
                # only probes with a score above their current k-th best change their top k
                rising = np.flatnonzero(scores.max(axis=1) > top.min(axis=1))
                if rising.size:
                    merged = np.concatenate([top[rising], scores[rising]], axis=1)
                    top[rising] = np.partition(merged, merged.shape[1] - k, axis=1)[:, -k:]
                bar.update(stop - done)
                done = stop
            # per trial, its probe's distractor scores best first (-inf where the gallery has fewer than k):
            # rank <= r iff the r-th best distractor scores below the mate
            hits = mate_score[:, None] > -np.sort(-top, axis=1)[probe]
            results[str(size)] = {"rank": {str(r): float(np.mean(hits[:, r - 1])) for r in range(1, k + 1)}}
    return {"probes": int(len(x)), "identities": int(len(np.unique(np.asarray(labels)[probe]))),
            "trials": int(len(probe)), "distractors": available, "results": results, "skipped": skipped}
