"""Pair verification as reported for LFW / CFP-FP / AgeDB-30 (InsightFace's verification.py protocol).

Each image and its horizontal flip are embedded, the two embeddings summed and L2-normalised; pair i is rows
2i and 2i+1; distance is squared L2; thresholds 0, 0.01, ..., 3.99; 10 folds without shuffling: the threshold
with the best accuracy on 9 folds (the first one on ties) is scored on the 10th; "Accuracy-Flip" is the mean and
std of the 10 fold accuracies.
"""
import numpy as np

from vargface.errors import VargfaceError

THRESHOLDS = np.arange(0, 4, 0.01)


def _folds(n_pairs, nrof_folds):
    if nrof_folds <= 1:
        indices = np.arange(n_pairs)
        return [(indices, indices)]
    from sklearn.model_selection import KFold

    return KFold(n_splits=nrof_folds, shuffle=False).split(np.arange(n_pairs))


def _rates(dist, issame, thresholds):
    """Per threshold: TPR, FPR and accuracy of 'same iff dist < threshold' (InsightFace's calculate_accuracy)."""
    predict = dist[None, :] < thresholds[:, None]
    tp = np.sum(predict & issame, axis=1)
    fp = np.sum(predict & ~issame, axis=1)
    positives, negatives = issame.sum(), (~issame).sum()
    tpr = tp / positives if positives else np.zeros(len(thresholds))
    fpr = fp / negatives if negatives else np.zeros(len(thresholds))
    accuracy = np.mean(predict == issame, axis=1)
    return tpr, fpr, accuracy


def evaluate(embeddings, issame_list, nrof_folds=10, thresholds=THRESHOLDS):
    """Accuracy-Flip (docs/metric.md) on flip-summed, L2-normalised embeddings (2P rows for P pairs).

    Returns a dict: accuracy (mean over folds), std, fold_accuracy, fold_thresholds, best_threshold (the mean of
    the fold thresholds), tpr/fpr (fold-averaged, per threshold, as InsightFace's ROC), thresholds, and
    tar_at_far (exact, on all pairs with cosine score, at the decades of FAR the set has impostor pairs for)."""
    from vargface.eval.tar_at_far import tar_at_far_pairs

    embeddings = np.asarray(embeddings, dtype=np.float64)
    issame = np.asarray(issame_list, dtype=bool).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != 2 * len(issame):
        raise VargfaceError(f"evaluate: expected {2 * len(issame)} embedding rows (2 per pair) for {len(issame)} "
                            f"pairs, got shape {embeddings.shape}")
    if len(issame) < max(nrof_folds, 1):
        raise VargfaceError(f"evaluate: {len(issame)} pairs cannot be split into {nrof_folds} folds")
    dist = np.sum(np.square(embeddings[0::2] - embeddings[1::2]), axis=1)
    folds = max(nrof_folds, 1)
    tprs, fprs = np.zeros((folds, len(thresholds))), np.zeros((folds, len(thresholds)))
    accuracy, best = np.zeros(folds), np.zeros(folds)
    for fold, (train, test) in enumerate(_folds(len(issame), nrof_folds)):
        best_index = int(np.argmax(_rates(dist[train], issame[train], thresholds)[2]))
        tprs[fold], fprs[fold], test_accuracy = _rates(dist[test], issame[test], thresholds)
        accuracy[fold], best[fold] = test_accuracy[best_index], thresholds[best_index]
    cosine = 1.0 - dist / 2.0  # unit vectors: |a-b|^2 = 2 - 2 cos
    return {
        "accuracy": float(np.mean(accuracy)), "std": float(np.std(accuracy)),
        "fold_accuracy": accuracy.tolist(), "fold_thresholds": best.tolist(),
        "best_threshold": float(np.mean(best)),
        "tpr": tprs.mean(0), "fpr": fprs.mean(0), "thresholds": np.asarray(thresholds),
        "tar_at_far": tar_at_far_pairs(cosine, issame),
        "pairs": int(len(issame)), "distances": dist, "issame": issame,
    }


def load_pairs(path, image_size):
    """A verification .bin -> (images float32 NCHW RGB 0..255 at ``image_size``, issame bool array).

    Images of another side are resized by the inference rule (`vargface.eval.images.to_input`), as every other
    image the networks are evaluated on."""
    from vargface.data.images import decode_rgb
    from vargface.data.parallel import imap_ordered
    from vargface.data.verification import load_bin
    from vargface.eval.images import to_input

    bins, issame = load_bin(path)
    images = np.empty((len(bins), 3, image_size, image_size), np.float32)
    decoded = imap_ordered(lambda item: to_input(decode_rgb(item[1], None, f"{path}: image {item[0]}"), image_size),
                           enumerate(bins))
    for i, image in enumerate(decoded):
        images[i] = image[0]
    return images, np.asarray(issame, dtype=bool)


def verify_model(prefix, epoch, targets, ctx=None, batch_size=64, nrof_folds=10, progress=True):
    """Load a checkpoint and evaluate it on each .bin in ``targets`` -> {set name: evaluate() dict}.

    Every pack's pair count is checked against ``nrof_folds`` before any embedding work."""
    import os

    from vargface.data.verification import load_bin
    from vargface.eval.embedder import FaceEmbedder

    if nrof_folds < 1:
        raise VargfaceError(f"--nfolds {nrof_folds}: expected a positive number of folds")
    for path in targets:
        pairs = len(load_bin(path)[1])
        if pairs < nrof_folds:
            raise VargfaceError(f"{path}: {pairs} pairs cannot be split into {nrof_folds} folds (--nfolds)")
    embedder = FaceEmbedder(prefix, epoch, ctx=ctx, batch_size=batch_size)
    results = {}
    for path in targets:
        images, issame = load_pairs(path, embedder.input_size)
        name = os.path.splitext(os.path.basename(path))[0]
        name = path if name in results else name  # two packs with one file name: keep both
        embeddings = embedder.embed_prepared(images, dtype=np.float64, progress=progress, desc=name)
        results[name] = evaluate(embeddings, issame, nrof_folds=nrof_folds)
    return results
