"""Exact TAR at fixed FAR, from pair scores or over all pairs of N features (N up to millions).

Tie rule (the same everywhere): for FAR ``f`` over ``n`` impostor pairs at most ``k = floor(f * n)`` false accepts
are allowed. The threshold ``t`` is the (k+1)-th highest impostor score and a pair is accepted iff its score is
strictly greater than ``t``; so no more than ``k`` impostors pass, and a genuine pair tied with ``t`` is rejected.
This is the highest TPR among the points of ``sklearn.metrics.roc_curve`` with FPR <= f.

All-pairs: features are L2-normalised, sorted by label and multiplied tile by tile over the upper triangle. Genuine
scores (sum over identities of n_i choose 2) are kept exactly; of the impostor scores only a buffer of the highest
``k_max + 1`` is kept (np.partition merges), so memory does not grow with N^2.
"""
import math

import numpy as np

from vargface.errors import VargfaceError


DEFAULT_FARS = (1e-8, 1e-6, 1e-4)  # the LFR2019 image track's


def parse_fars(text, option="--far"):
    """'1e-8,1e-6' -> [1e-08, 1e-06]; each must be a number in (0, 1]."""
    fars = []
    for item in str(text).split(","):
        try:
            far = float(item)
        except ValueError:
            raise VargfaceError(f"{option}: {item!r} is not a number; expected e.g. 1e-8,1e-6,1e-4") from None
        if not 0 < far <= 1:
            raise VargfaceError(f"{option}: FAR {item} is outside (0, 1]")
        fars.append(far)
    return fars


def _floor_accepts(far, n_impostors):
    # The 1e-6 keeps exact products such as 1e-3 * 1000 at 1 despite binary rounding.
    return int(math.floor(far * n_impostors + 1e-6))


def allowed_false_accepts(far, n_impostors):
    """k = floor(far * n_impostors); a FAR below 1/n_impostors cannot be measured and is an error."""
    if not 0 < far <= 1:
        raise VargfaceError(f"FAR {far:g} is outside (0, 1]")
    k = _floor_accepts(far, n_impostors)
    if k < 1:
        raise VargfaceError(f"FAR {far:g} is below 1/(number of impostor pairs) = 1/{n_impostors} = "
                            f"{1.0 / n_impostors:.3g}; it cannot be measured on this data")
    return min(k, n_impostors)


def split_measurable(fars, n_impostors):
    """(FARs this many impostor pairs can resolve, [{far, reason}] for the others): FAR f needs at least 1/f."""
    measurable, skipped = [], []
    for far in fars:
        if _floor_accepts(far, n_impostors) >= 1:
            measurable.append(far)
        else:
            skipped.append({"far": far, "reason": f"FAR {far:g} needs at least {math.ceil(1 / far - 1e-6)} impostor "
                                                  f"pairs; this set has {n_impostors}"})
    return measurable, skipped


def no_tar_reason(n_impostors, highest=1e-1):
    """Why a set gives no TAR at any decade of FAR: no impostor pairs at all, or fewer than ``1/highest``."""
    if n_impostors == 0:
        return "no impostor pairs"
    return f"too few impostor pairs for FAR {highest:g}: {n_impostors}, need {math.ceil(1 / highest - 1e-6)}"


def decade_fars(n_impostors, highest=1e-1):
    """FARs 1e-1, 1e-2, ... down to the lowest decade that still has at least one allowed false accept."""
    fars, far = [], highest
    while _floor_accepts(far, n_impostors) >= 1:
        fars.append(far)
        far = float(f"{far / 10:.0e}")
    return fars


def tar_from_scores(genuine, impostor_top, n_impostors, fars):
    """TAR per FAR from all genuine scores and (at least) the k_max+1 highest impostor scores.

    Returns a list of dicts: far, tar, threshold (accept iff score > threshold), false_accepts (the k used)."""
    genuine = np.sort(np.asarray(genuine, dtype=np.float64))
    top = np.sort(np.asarray(impostor_top, dtype=np.float64))[::-1]
    if genuine.size == 0:
        raise VargfaceError("no genuine pairs (every identity has a single image); TAR is undefined")
    results = []
    for far in fars:
        k = allowed_false_accepts(far, n_impostors)
        if k < n_impostors and k >= top.size:
            raise ValueError(f"impostor buffer holds {top.size} scores; FAR {far:g} needs {k + 1}")
        threshold = top[k] if k < n_impostors else -np.inf
        passed = genuine.size - np.searchsorted(genuine, threshold, side="right")
        results.append({"far": far, "tar": passed / genuine.size, "threshold": float(threshold),
                        "false_accepts": int(np.sum(top[:k] > threshold)) if k < n_impostors else n_impostors})
    return results


def tar_at_far_pairs(scores, issame, fars=None):
    """TAR@FAR on a list of labelled pairs (higher score = more alike); default FARs are the decades the set has."""
    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    n_impostors = int((~issame).sum())
    if n_impostors == 0:
        return []
    fars = decade_fars(n_impostors) if fars is None else fars
    return tar_from_scores(scores[issame], scores[~issame], n_impostors, fars)


def tar_at_far_nearest(scores, issame, fars):
    """TAR at each FAR by InsightFace's IJB rule, so published IJB numbers compare: the point of
    ``sklearn.metrics.roc_curve`` (its default thinning of collinear points included) whose FPR is nearest the FAR,
    the highest-FPR one of equally near points. That point's FPR may exceed the FAR; `tar_from_scores` is exact.
    Returns [{far, tar, fpr}] (fpr: the FPR of the point taken)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(issame, dtype=bool), np.asarray(scores, dtype=np.float64))
    fpr, tpr = fpr[::-1], tpr[::-1]  # np.argmin's first minimum is then the highest-FPR point among ties
    results = []
    for far in fars:
        nearest = int(np.argmin(np.abs(fpr - far)))
        results.append({"far": far, "tar": float(tpr[nearest]), "fpr": float(fpr[nearest])})
    return results


def unit_rows(features, rows, what="features"):
    """Unit rows, in place when ``features`` is already a float32 copy; ``rows`` maps back to the rows of the input
    ``what`` (named in the error about a row that is zero or not finite)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    bad = np.flatnonzero((norms[:, 0] == 0) | ~np.isfinite(norms[:, 0]))
    if bad.size:
        raise VargfaceError(f"{what}: row {int(rows[bad[0]])} is zero or not finite; cannot normalise it")
    features /= norms
    return features


class _TopBuffer:
    """The ``size`` highest values seen, merged lazily with np.partition; ``floor`` only rises."""

    def __init__(self, size):
        self.size, self.parts, self.count, self.floor = size, [], 0, -np.inf

    def add(self, values):
        if values.size:
            self.parts.append(values)
            self.count += values.size
            if self.count >= 2 * self.size + (1 << 20):
                self._merge()

    def _merge(self):
        merged = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        if merged.size > self.size:
            merged = np.partition(merged, merged.size - self.size)[merged.size - self.size:]
        self.parts, self.count = [merged], merged.size
        if merged.size >= self.size:
            self.floor = float(merged.min())

    def values(self):
        if not self.parts:
            return np.zeros(0, np.float32)
        self._merge()
        return self.parts[0]


def tar_at_far(features, labels, fars=None, tile=2048, progress=True):
    """Exact TAR at each FAR over all N(N-1)/2 pairs of ``features`` (cosine similarity) with identity ``labels``.

    ``fars`` None: 1e-8, 1e-6, 1e-4 as far as this set resolves them, else every decade it resolves.
    Returns a dict with n_images, n_genuine, n_impostors, ``results`` (see tar_from_scores) and ``skipped``: the
    FARs below 1/(impostor pairs), which this set cannot resolve, each with the reason."""
    features = np.asarray(features)
    labels = np.asarray(labels).reshape(-1)
    if features.ndim != 2:
        raise VargfaceError(f"features: expected an (N, D) array, got shape {features.shape}")
    if len(features) != len(labels):
        raise VargfaceError(f"features have {len(features)} rows but labels have {len(labels)}; "
                            "expected one label per feature row")
    order = np.argsort(labels, kind="stable")
    x, y = unit_rows(features[order], order), labels[order]  # fancy indexing copies: normalise that copy
    n = len(y)
    counts = np.unique(y, return_counts=True)[1].astype(np.int64)
    n_pairs = n * (n - 1) // 2
    n_genuine = int(np.sum(counts * (counts - 1) // 2))
    n_impostors = n_pairs - n_genuine
    if n_impostors == 0:
        raise VargfaceError("labels: all images share one identity, so there are no impostor pairs")
    if n_genuine == 0:
        raise VargfaceError("labels: every identity has a single image, so there are no genuine pairs")
    fars, skipped = split_measurable(DEFAULT_FARS if fars is None else fars, n_impostors)
    if not fars and len(skipped) == len(DEFAULT_FARS) and all(s["far"] in DEFAULT_FARS for s in skipped):
        fars = decade_fars(n_impostors)  # a small set: the decades it can resolve
    if not fars:
        raise VargfaceError("--far: no requested FAR can be measured on this set: "
                            + "; ".join(s["reason"] for s in skipped))
    keep = min(max(allowed_false_accepts(f, n_impostors) for f in fars) + 1, n_impostors)

    genuine, top = [], _TopBuffer(keep)
    scores = np.empty(tile * tile, np.float32)  # flat, so every tile view is C-contiguous for np.dot(out=)
    starts = range(0, n, tile)
    from vargface.options import progress_bar

    bar = progress_bar(total=n_pairs, unit="pair", unit_scale=True, desc="tar-at-far", enabled=progress)
    for r0 in starts:
        r1 = min(r0 + tile, n)
        rows = x[r0:r1]
        for c0 in range(r0, n, tile):
            c1 = min(c0 + tile, n)
            s = scores[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            np.dot(rows, x[c0:c1].T, out=s)
            if c0 == r0:  # diagonal tile: only pairs i < j
                s[np.tril_indices(r1 - r0)] = -np.inf
            if c0 == r0 or y[r1 - 1] == y[c0]:  # labels are sorted: only these tiles hold genuine pairs
                same = y[r0:r1, None] == y[None, c0:c1]
                if c0 == r0:
                    same &= np.triu(np.ones_like(same), 1)
                if same.any():
                    genuine.append(s[same].copy())
                    s[same] = -np.inf
            top.add(s[s > top.floor])
            bar.update((r1 - r0) * (c1 - c0) - ((r1 - r0) * (r1 - r0 + 1) // 2 if c0 == r0 else 0))
    bar.close()
    genuine = np.concatenate(genuine) if genuine else np.zeros(0, np.float32)
    results = tar_from_scores(genuine, top.values(), n_impostors, fars)
    return {"n_images": n, "n_genuine": n_genuine, "n_impostors": n_impostors, "results": results,
            "skipped": skipped}
