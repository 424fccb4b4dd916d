"""Set-to-set face recognition as IJB-B/IJB-C define it: per-image features pooled into template features,
template pairs scored by a dot product (1:1), and probe templates searched in a gallery (1:N, open set).

Per image the network's raw output is kept as two L2-normalised halves, [image, horizontal flip]; a test mode
``NxDyFz`` (InsightFace's names, default N1D1F2) turns them into the image's feature:
F0 the image half only, F1 both halves concatenated, F2 their sum; then N0 L2-normalises that feature while N1
keeps its norm (a confidence); then D1 multiplies it by the detector's faceness score (D0 does not).
A template is the sum over its media of the mean of each media's frames, L2-normalised. docs/metric.md has the
formulas."""
import math
import re

import numpy as np

from vargface.errors import VargfaceError

DEFAULT_MODE = "N1D1F2"
RANKS = (1, 5, 10)
FPIRS = (0.01, 0.1)


def parse_mode(text, option="--mode"):
    """'N1D1F2' -> {'N': 1, 'D': 1, 'F': 2}."""
    match = re.fullmatch(r"N([01])D([01])F([012])", str(text).strip().upper())
    if not match:
        raise VargfaceError(f"{option} {text!r}: expected N0|N1, D0|D1, F0|F1|F2 in that order, e.g. {DEFAULT_MODE}")
    return dict(zip("NDF", (int(g) for g in match.groups())))


def mode_name(mode):
    return "".join(f"{key}{mode[key]}" for key in "NDF")


def l2_normalise_rows(x):
    """x / sqrt(sum(x^2) + 1e-10) row by row, in float32: MXNet's L2Normalization, as InsightFace applies it to
    each output of the network."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.sqrt(np.sum(x * x, axis=1, keepdims=True) + np.float32(1e-10))


def image_features(raw, faceness, mode):
    """Features of images from their raw rows [image half, flip half] and faceness scores under ``mode``."""
    raw = np.asarray(raw, dtype=np.float32)
    half = raw.shape[1] // 2
    if mode["F"] == 0:
        feats = raw[:, :half]
    elif mode["F"] == 1:
        feats = raw
    else:
        feats = raw[:, :half] + raw[:, half:]
    if mode["N"] == 0:
        feats = feats / np.sqrt(np.sum(feats * feats, axis=1, keepdims=True))
    if mode["D"] == 1:
        feats = feats * np.asarray(faceness, dtype=np.float32)[:, None]
    return feats


def template_features(raw, faceness, templates, medias, mode, chunk=65536):
    """(sorted template ids, (T, d) float64 L2-normalised template features) from per-image raw rows.

    A template is the sum over its media of the mean of the media's frames; this is one sparse product, each
    image weighted by 1 / (frames of its media in its template), taken ``chunk`` rows at a time so that a
    memory-mapped (N, 2D) matrix is read once and never held whole."""
    import scipy.sparse
    from sklearn.preprocessing import normalize

    templates, medias = np.asarray(templates), np.asarray(medias)
    ids, template_row = np.unique(templates, return_inverse=True)
    _, media_group, media_frames = np.unique(np.stack([templates, medias], 1), axis=0, return_inverse=True,
                                             return_counts=True)
    media_group = media_group.reshape(-1)
    weight = 1.0 / media_frames[media_group]
    n = len(templates)
    pool = scipy.sparse.csc_matrix((weight, (template_row, np.arange(n))), shape=(len(ids), n))
    sums = None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        part = pool[:, start:stop] @ image_features(raw[start:stop], faceness[start:stop], mode).astype(np.float64)
        sums = part if sums is None else sums + part
    if sums is None:
        raise VargfaceError("no images: a template needs at least one")
    return ids, normalize(sums)


def rows_of(ids, wanted):
    """Positions of ``wanted`` ids in the sorted ``ids``, and a mask of the ones found."""
    wanted = np.asarray(wanted)
    pos = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return pos, ids[pos] == wanted


def pair_scores(feats, first, second, block=256):
    """Dot products of rows ``first[i]`` and ``second[i]`` of ``feats``.

    Pairs are grouped by first template, ``block`` first templates at a time, and each group is scored by one
    matrix product against the second templates it names (every template when it names most): a template row is
    then read once per group, not once per pair, and no per-pair rows are gathered."""
    feats = np.ascontiguousarray(feats)
    first, second = np.asarray(first), np.asarray(second)
    order = np.argsort(first, kind="stable")
    bounds = np.searchsorted(first[order], np.arange(0, len(feats) + block, block))
    scores = np.empty(len(first), feats.dtype)
    buffer = np.empty(min(block, len(feats)) * len(feats), feats.dtype)  # reused: no page faults per group
    for start, lo, hi in zip(range(0, len(feats), block), bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        group = order[lo:hi]
        rows = feats[start:start + block]
        names, column = np.unique(second[group], return_inverse=True)
        if 2 * len(names) > len(feats):
            names, column = None, second[group]
        others = feats if names is None else feats[names]
        products = buffer[:len(rows) * len(others)].reshape(len(rows), len(others))
        np.dot(rows, others.T, out=products)
        scores[group] = products[first[group] - start, column.reshape(-1)]
    return scores


def fpir_count(n_non_mated, fpir):
    """ceil(fpir * n): the rank, among non-mated probes' top scores, of the threshold (1e-6 absorbs binary rounding
    of products such as 0.1 * 30)."""
    return int(math.ceil(fpir * n_non_mated - 1e-6))


def open_set_identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects, ranks=RANKS, fpirs=FPIRS,
                            chunk=4096):
    """1:N search of probe templates in a gallery holding one template per subject (IJB-B/C's G1, G2).

    Probes whose subject is in the gallery are mated. A mated probe's rank is 1 + the number of other gallery
    templates scoring at least its mate's score (ties count against it). rank-k: the share of mated probes with
    rank <= k. TPIR at FPIR f: threshold t = the ceil(f * n)-th highest top score of the n non-mated probes; the
    share of mated probes whose mate is ranked first with a score above t."""
    probe_subjects, gallery_subjects = np.asarray(probe_subjects), np.asarray(gallery_subjects)
    order = np.argsort(gallery_subjects, kind="stable")
    column = np.full(len(probe_subjects), -1)
    pos, found = rows_of(gallery_subjects[order], probe_subjects)
    column[found] = order[pos[found]]
    mated = column >= 0
    rank = np.zeros(len(probe_subjects), np.int64)
    mate_score = np.full(len(probe_subjects), -np.inf)
    top_score = np.full(len(probe_subjects), -np.inf)
    gallery_t = np.ascontiguousarray(np.asarray(gallery_feats, dtype=np.float64).T)
    for start in range(0, len(probe_subjects), chunk):
        stop = min(start + chunk, len(probe_subjects))
        scores = np.asarray(probe_feats[start:stop], dtype=np.float64) @ gallery_t
        top_score[start:stop] = scores.max(axis=1)
        here = np.flatnonzero(mated[start:stop])
        mates = scores[here, column[start + here]]
        mate_score[start + here] = mates
        rank[start + here] = np.sum(scores[here] >= mates[:, None], axis=1)
    n_mated, non_mated = int(mated.sum()), np.sort(top_score[~mated])[::-1]
    if n_mated == 0:
        raise VargfaceError("no probe's subject is in the gallery: rank and TPIR are undefined")
    result = {"gallery_templates": int(len(gallery_subjects)), "mated_probes": n_mated,
              "non_mated_probes": int(len(non_mated)),
              "rank": {str(k): float(np.mean(rank[mated] <= k)) for k in ranks}, "tpir_at_fpir": {}}
    for fpir in fpirs:
        k = fpir_count(len(non_mated), fpir)
        if k < 1:
            continue  # too few non-mated probes to resolve this FPIR
        threshold = non_mated[min(k, len(non_mated)) - 1]
        hits = (rank[mated] == 1) & (mate_score[mated] > threshold)
        result["tpir_at_fpir"][f"{fpir:g}"] = float(np.mean(hits))
    return result


def mean_identification(results):
    """The mean of each rank-k and TPIR over galleries (IJB-B/C report G1, G2 and their mean)."""
    ranks = set.intersection(*(set(r["rank"]) for r in results))
    fpirs = set.intersection(*(set(r["tpir_at_fpir"]) for r in results))
    return {"rank": {k: float(np.mean([r["rank"][k] for r in results])) for k in sorted(ranks, key=float)},
            "tpir_at_fpir": {f: float(np.mean([r["tpir_at_fpir"][f] for r in results]))
                             for f in sorted(fpirs, key=float)}}
