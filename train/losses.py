"""Classification heads on the embedding (docs/losses.md): plain softmax, and the margin-softmax family
``s·(cos(m1·θ + m2) − m3)`` for the true class (nsoftmax, ArcFace, CosFace, combined) plus ArcNegFace.

The angle enters only through ``arccos`` of a clipped cosine, and past ``m1·θ + m2 = π`` the target logit continues
linearly (it would otherwise rise again), so logits and gradients stay finite at θ = 0 and at θ + m > π."""
import math

import mxnet as mx

from vargface.errors import VargfaceError

# Keeps arccos' derivative finite (≈ 1/sqrt(2·EPS)) where the cosine touches ±1.
EPS = 1e-6


def margin_target(cos_t, m1, m2, m3):
    """cos(m1·θ + m2) − m3 for the true-class cosine ``cos_t`` (shape (B,)), monotone decreasing in θ."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_t - m3
    theta = mx.sym.arccos(mx.sym.clip(cos_t, -1.0 + EPS, 1.0 - EPS))
    target = mx.sym.cos(theta * m1 + m2)
    theta_max = (math.pi - m2) / m1
    if theta_max < math.pi:
        # Past θ_max, cos(m1·θ + m2) would increase again: continue it as cos_t − (cos θ_max + 1), which equals
        # −1 at θ_max and keeps decreasing (InsightFace's "threshold" trick, made continuous).
        cos_max = math.cos(theta_max)
        target = mx.sym.where(cos_t > cos_max, target, cos_t - (cos_max + 1.0))
    return target - m3


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


def _margin_parts(embedding, label, config, num_classes):
    """(all cosines (B, C), one-hot labels, the true class's margin target (B,), its cosine (B,))."""
    cos_all = cosine_logits(embedding, num_classes, int(config.emb_size), **_fc7_options(config))
    cos_t = mx.sym.pick(cos_all, label, axis=1)
    target = margin_target(cos_t, float(config.loss_m1), float(config.loss_m2), float(config.loss_m3))
    return cos_all, mx.sym.one_hot(label, depth=num_classes), target, cos_t


def margin_softmax_logits(embedding, label, config, num_classes):
    """s·(cos(m1·θ + m2) − m3) for the true class, s·cos θ for the others (nsoftmax, ArcFace, CosFace,
    combined)."""
    s = float(config.loss_s)
    if (float(config.loss_m1), float(config.loss_m2), float(config.loss_m3)) == (1.0, 0.0, 0.0):
        return cosine_logits(embedding, num_classes, int(config.emb_size), **_fc7_options(config)) * s
    cos_all, one_hot, target, cos_t = _margin_parts(embedding, label, config, num_classes)
    # Only the true class changes: add (target − cos θ_y) at the label position.
    return (cos_all + mx.sym.broadcast_mul(one_hot, mx.sym.expand_dims(target - cos_t, 1))) * s


def arcneg_logits(embedding, label, config, num_classes):
    """ArcNegFace: the margin target for the true class, negatives re-weighted by
    t_j = α·exp(−(cos θ_j − cos(θ_y + m))² / σ), t_j not back-propagated."""
    cos_all, one_hot, target, _ = _margin_parts(embedding, label, config, num_classes)
    near = mx.sym.broadcast_sub(cos_all, mx.sym.expand_dims(target, 1))
    t = mx.sym.BlockGrad(float(config.loss_alpha) * mx.sym.exp(-mx.sym.square(near) / float(config.loss_sigma)))
    negative = t * cos_all + t - 1.0
    positive = mx.sym.broadcast_mul(one_hot, mx.sym.expand_dims(target, 1))
    return (positive + (1.0 - one_hot) * negative) * float(config.loss_s)


# config.loss_name -> its logits; a new loss is one function here, its loss_name choice and, if it has settings,
# a preset in LOSSES of train/schema.py (docs/README.md#where-a-new-piece-goes).
LOGITS = {"softmax": softmax_logits, "margin_softmax": margin_softmax_logits, "arcneg": arcneg_logits}


def logits(embedding, label, config, num_classes=None):
    """The (B, C) logits fed to the softmax cross-entropy for ``config.loss_name`` and its margins."""
    if config.loss_name not in LOGITS:
        raise VargfaceError(f"--loss-name {config.loss_name!r}: expected one of {', '.join(LOGITS)}")
    return LOGITS[config.loss_name](embedding, label, config, num_classes or config.num_classes)


def cosine_logits(embedding, num_classes, emb_size, lr_mult=1.0, wd_mult=1.0, sigma=0.01):
    """cos θ between L2-normalised embeddings and L2-normalised class weights ``fc7_weight``: (B, C)."""
    weight = mx.sym.Variable("fc7_weight", shape=(num_classes, emb_size), lr_mult=lr_mult, wd_mult=wd_mult,
                             init=mx.init.Normal(sigma))
    norm_emb = mx.sym.L2Normalization(embedding, mode="instance")
    norm_w = mx.sym.L2Normalization(weight, mode="instance")
    return mx.sym.FullyConnected(norm_emb, norm_w, no_bias=True, num_hidden=num_classes, name="fc7")


def loss_head(embedding, config, num_classes=None):
    """Softmax cross-entropy over the head's logits; its output is the class probability (B, C).

    Gradients are averaged over the device batch (``normalization='valid'``); the trainer rescales by the number
    of devices/workers whose gradients the KVStore sums."""
    label = mx.sym.Variable("softmax_label")
    fc7 = logits(embedding, label, config, num_classes)
    return mx.sym.SoftmaxOutput(fc7, label, normalization="valid", name="softmax")
