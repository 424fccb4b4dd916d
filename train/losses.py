"""Classification heads on the embedding (docs/losses.md): plain softmax, and the margin-softmax family
``s·(cos(m1·θ + m2) − m3)`` for the true class (nsoftmax, ArcFace, CosFace, combined) plus ArcNegFace.

The angle enters only through ``arccos`` of a clipped cosine, and past ``m1·θ + m2 = π`` the target logit continues
linearly (it would otherwise rise again), so logits and gradients stay finite at θ = 0 and at θ + m > π."""
import math

import mxnet as mx

from vargface.errors import VargfaceError

# Keeps arccos' derivative finite (≈ 1/sqrt(2·EPS)) where the cosine touches ±1.
EPS = 1e-6


def margin_target(F, cos_t, m1, m2, m3):
    """cos(m1·θ + m2) − m3 for the true-class cosine ``cos_t`` (shape (B,)), monotone decreasing in θ. ``F`` is
    mx.sym or mx.nd: the full head builds it into its graph, the sharded head (train/partial_fc.py) runs it on
    NDArrays."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_t - m3
    theta = F.arccos(F.clip(cos_t, -1.0 + EPS, 1.0 - EPS))
    target = F.cos(theta * m1 + m2)
    theta_max = (math.pi - m2) / m1
    if theta_max < math.pi:
        # Past θ_max, cos(m1·θ + m2) would increase again: continue it as cos_t − (cos θ_max + 1), which equals
        # −1 at θ_max and keeps decreasing (InsightFace's "threshold" trick, made continuous).
        cos_max = math.cos(theta_max)
        target = F.where(cos_t > cos_max, target, cos_t - (cos_max + 1.0))
    return target - m3


# Rows of the initial classifier drawn from one seed: any range of classes is the same however it is split.
INIT_BLOCK = 4096


def initial_classifier(seed, sigma, start, stop, emb_size):
    """Rows [start, stop) of the initial class centres, Normal(0, sigma) as InsightFace's, float32 NumPy: drawn
    per block of INIT_BLOCK rows from (seed, block), so the full head and every shard layout of the sharded one
    start from the same classifier."""
    import numpy as np

    parts = []
    for block in range(start // INIT_BLOCK, (max(stop, start + 1) - 1) // INIT_BLOCK + 1):
        first = block * INIT_BLOCK
        values = np.random.default_rng([int(seed), block]).standard_normal((INIT_BLOCK, emb_size), dtype=np.float32)
        parts.append(values[max(start, first) - first:min(stop, first + INIT_BLOCK) - first] * np.float32(sigma))
    return np.concatenate(parts)[:stop - start]


def _fc7_options(config):
    return dict(lr_mult=float(config.get("fc7_lr_mult", 1.0)), wd_mult=float(config.get("fc7_wd_mult", 1.0)),
                sigma=float(config.get("fc7_init_sigma", 0.01)))


def softmax_logits(embedding, label, config, num_classes):
    """Plain FullyConnected `fc7` (with a bias unless ``fc7_no_bias``)."""
    o = _fc7_options(config)
    weight = mx.sym.Variable("fc7_weight", lr_mult=o["lr_mult"], wd_mult=o["wd_mult"], init=mx.init.Normal(o["sigma"]))
    if config.get("fc7_no_bias", False):
        return mx.sym.FullyConnected(embedding, weight, no_bias=True, num_hidden=num_classes, name="fc7")
    bias = mx.sym.Variable("fc7_bias", lr_mult=2.0, wd_mult=0.0)
    return mx.sym.FullyConnected(embedding, weight, bias, num_hidden=num_classes, name="fc7")


def margin_from_cosines(F, cos_all, label, depth, config, cos_t=None):
    """The margin logits of ``config.loss_name`` from the cosines ``cos_all`` (B, depth) of the embeddings to
    ``depth`` class centres: s·(cos(m1·θ + m2) − m3) at the label's column, s·cos θ elsewhere (nsoftmax, ArcFace,
    CosFace, combined), or ArcNegFace's re-weighted negatives.

    ``label`` (B,) indexes the columns; a row whose class is not among them has label −1 (the sharded head: its
    class lives on another shard) and gets no target column. ``cos_t`` (B,) is the true class's cosine, by default
    picked from ``cos_all``; the sharded head passes it in because ArcNegFace's negatives need it on every shard.
    Where only the true class changes, the sharded head writes the same logits in place
    (train/partial_fc.py `PartialFC._target_logits`)."""
    s, m1, m2, m3 = float(config.loss_s), float(config.loss_m1), float(config.loss_m2), float(config.loss_m3)
    if config.loss_name == "margin_softmax" and (m1, m2, m3) == (1.0, 0.0, 0.0):
        return cos_all * s
    if cos_t is None:
        cos_t = F.pick(cos_all, label, axis=1)
    one_hot = F.one_hot(label, depth=depth)
    target = margin_target(F, cos_t, m1, m2, m3)
    if config.loss_name == "arcneg":
        # t_j = α·exp(−(cos θ_j − cos(θ_y + m))² / σ), not back-propagated
        near = F.broadcast_sub(cos_all, F.expand_dims(target, 1))
        t = F.BlockGrad(float(config.loss_alpha) * F.exp(-F.square(near) / float(config.loss_sigma)))
        negative = t * cos_all + t - 1.0
        positive = F.broadcast_mul(one_hot, F.expand_dims(target, 1))
        return (positive + (1.0 - one_hot) * negative) * s
    # Only the true class changes: add (target − cos θ_y) at the label position.
    return (cos_all + F.broadcast_mul(one_hot, F.expand_dims(target - cos_t, 1))) * s


def margin_logits(embedding, label, config, num_classes):
    """The margin-softmax family (nsoftmax, ArcFace, CosFace, combined) and ArcNegFace on the cosines to all
    ``num_classes`` centres of ``fc7_weight``."""
    cos_all = cosine_logits(embedding, num_classes, int(config.emb_size), **_fc7_options(config))
    return margin_from_cosines(mx.sym, cos_all, label, num_classes, config)


# The losses whose logits come from cosines (margin_from_cosines): the ones the sharded classifier supports.
MARGIN_LOSSES = ("margin_softmax", "arcneg")


# config.loss_name -> its logits; a new loss is one function here (a margin form: a branch of margin_from_cosines,
# which the sharded classifier shares), its loss_name choice and, if it has settings, a preset in LOSSES of
# train/schema.py (docs/README.md#where-a-new-piece-goes).
LOGITS = {"softmax": softmax_logits, **dict.fromkeys(MARGIN_LOSSES, margin_logits)}


def logits(embedding, label, config, num_classes=None):
    """The (B, C) logits fed to the softmax cross-entropy for ``config.loss_name`` and its margins."""
    if config.loss_name not in LOGITS:
        raise VargfaceError(f"--loss-name {config.loss_name!r}: expected one of {', '.join(LOGITS)}")
    return LOGITS[config.loss_name](embedding, label, config, num_classes or config.num_classes)


def cosine_logits(embedding, num_classes, emb_size, lr_mult=1.0, wd_mult=1.0, sigma=0.01):
    """cos θ between L2-normalised embeddings and L2-normalised class weights ``fc7_weight``: (B, C)."""
    weight = mx.sym.Variable("fc7_weight", shape=(num_classes, emb_size), lr_mult=lr_mult, wd_mult=wd_mult,
                             init=mx.init.Normal(sigma))
    return cosines(mx.sym, embedding, weight, num_classes, name="fc7")


def cosines(F, embedding, weight, num_rows, **name):
    """cos θ between the rows of ``embedding`` (B, D) and the ``num_rows`` rows of ``weight``, both
    L2-normalised: (B, num_rows). ``F``: mx.sym or mx.nd (as in `margin_target`)."""
    norm_emb = F.L2Normalization(embedding, mode="instance")
    norm_w = F.L2Normalization(weight, mode="instance")
    return F.FullyConnected(norm_emb, norm_w, no_bias=True, num_hidden=num_rows, **name)


def loss_head(embedding, config, num_classes=None):
    """Softmax cross-entropy over the head's logits (label-smoothed by ``config.label_smoothing``); its output is
    the class probability (B, C)."""
    return head_outputs(embedding, config, num_classes)[0][0]


def head_outputs(embedding, config, num_classes=None):
    """[(Symbol, metric name)] of the head: first the softmax cross-entropy's class probabilities (B, C) (name
    None), then what the config adds: with ``label_smoothing`` ε the smoothed cross-entropy per sample, not
    back-propagated, logged as ``loss`` (the objective the head then trains, in place of −log p_y); with
    ``regularface`` λ the RegularFace term on ``fc7_weight`` (docs/losses.md#regularface), logged as
    ``regularface``. With both at 0 the head is the plain softmax cross-entropy, op for op.

    Gradients are averaged over the device batch (``normalization='valid'``); the trainer rescales by the number
    of devices/workers whose gradients the KVStore sums. SoftmaxOutput's ``smooth_alpha`` targets exactly
    `smoothing_weights` (1 − ε on the label, ε / (C − 1) elsewhere), as the sharded head's gradient does."""
    from vargface.train.regularface import regularface_loss

    label = mx.sym.Variable("softmax_label")
    fc7 = logits(embedding, label, config, num_classes)
    eps, lam = float(config.label_smoothing), float(config.regularface)
    smoothing = {"smooth_alpha": eps} if eps else {}
    outputs = [(mx.sym.SoftmaxOutput(fc7, label, normalization="valid", name="softmax", **smoothing), None)]
    if eps:
        log_prob = mx.sym.log_softmax(fc7, axis=1)
        loss = smoothed_cross_entropy(mx.sym, mx.sym.pick(log_prob, label, axis=1), mx.sym.sum(log_prob, axis=1),
                                      eps, num_classes or config.num_classes)
        outputs.append((mx.sym.BlockGrad(loss, name="smoothed_loss"), "loss"))
    if lam:
        outputs.append((regularface_loss(fc7.get_internals()["fc7_weight"], lam), "regularface"))
    return outputs


# ---- label smoothing (docs/losses.md#label-smoothing) -----------------------------------------------------------
def smoothing_weights(eps, num_classes):
    """(target on the true class, target on each other class): 1 − ε and ε / (C − 1) over C classes."""
    return 1.0 - eps, eps / max(1, num_classes - 1)


def smoothed_cross_entropy(F, true_log_prob, log_prob_sum, eps, num_classes):
    """−Σ_j target_j · log p_j per sample from log p_y (``true_log_prob``) and Σ_j log p_j over all
    ``num_classes`` logits (``log_prob_sum``): −(1 − ε − ε/(C − 1)) · log p_y − ε/(C − 1) · Σ_j log p_j."""
    on, off = smoothing_weights(eps, num_classes)
    return -(true_log_prob * (on - off) + log_prob_sum * off)


def negatives_need_target(config):
    """Whether the logits of the other classes depend on the true class's margin target (ArcNegFace's t_j): the
    sharded head then shares the true class's cosine between the shards."""
    return config.loss_name == "arcneg"
