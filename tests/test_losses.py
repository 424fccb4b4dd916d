"""Margin losses against a float64 NumPy reference: logits, and gradients by central differences."""
import math

import mxnet as mx
import numpy as np
import pytest

from vargface.train.config import generate_config
from vargface.train.losses import logits, loss_head

B, D, C = 6, 8, 5


def ref_logits(emb, weight, bias, label, cfg):
    """Straight from docs/losses.md#margin-softmax, in float64."""
    if cfg.loss_name == "softmax":
        return emb @ weight.T + bias
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (weight / np.linalg.norm(weight, axis=1,
                                                                                         keepdims=True)).T
    rows = np.arange(len(label))
    theta = np.arccos(np.clip(cos[rows, label], -1, 1))
    target = np.cos(cfg.loss_m1 * theta + cfg.loss_m2) - cfg.loss_m3
    out = cos.copy()
    if cfg.loss_name == "arcneg":
        t = cfg.loss_alpha * np.exp(-(cos - target[:, None]) ** 2 / cfg.loss_sigma)
        out = t * cos + t - 1
    out[rows, label] = target
    return cfg.loss_s * out


def ref_ce(emb, weight, bias, label, cfg):
    z = ref_logits(emb, weight, bias, label, cfg)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(label)), label].mean()


def numeric_grad(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def inputs(seed):
    rng = np.random.RandomState(seed)
    weight = rng.randn(C, D)
    label = rng.randint(0, C, size=B)
    # Embeddings near their class weight so true-class angles span (0, π/2) rather than all ≈ 90°.
    emb = weight[label] * rng.uniform(0.3, 2.0, size=(B, 1)) + 0.6 * rng.randn(B, D)
    return emb, weight, rng.randn(C), label


def bind(sym_fn, cfg, emb, weight, bias, label):
    data = mx.sym.Variable("data")
    sym = sym_fn(data, cfg)
    args = {"data": mx.nd.array(emb), "fc7_weight": mx.nd.array(weight), "softmax_label": mx.nd.array(label)}
    if "fc7_bias" in sym.list_arguments():
        args["fc7_bias"] = mx.nd.array(bias)
    grads = {k: mx.nd.zeros_like(v) for k, v in args.items() if k != "softmax_label"}
    return sym.bind(mx.cpu(), args, args_grad=grads, grad_req={k: ("null" if k == "softmax_label" else "write")
                                                                for k in args}), grads


LOSSES = ["softmax", "nsoftmax", "arcface", "cosface", "combined", "arcneg"]


@pytest.mark.parametrize("name", LOSSES + ["combined_m1"])
def test_logits_and_gradients_match_numpy(name):
    if name == "combined_m1":  # the multiplicative (SphereFace) margin too: cos(1.2·θ + 0.3) − 0.2
        cfg = generate_config("r18_tiny", "emore", "combined", num_classes=C, emb_size=D, loss_m1=1.2)
    else:
        cfg = generate_config("r18_tiny", "emore", name, num_classes=C, emb_size=D)
    emb, weight, bias, label = inputs(len(name))
    head = np.random.RandomState(7).randn(B, C)
    exe, grads = bind(lambda d, c: logits(d, mx.sym.Variable("softmax_label"), c), cfg, emb, weight, bias, label)
    out = exe.forward(is_train=True)[0].asnumpy()
    np.testing.assert_allclose(out, ref_logits(emb, weight, bias, label, cfg), rtol=1e-4, atol=2e-3)
    exe.backward(mx.nd.array(head))
    if name == "arcneg":
        # t_j is a constant for back-propagation: differentiate the reference with t frozen.
        def f():
            return (ref_logits_frozen_t(emb, weight, label, cfg, t_frozen) * head).sum()
        t_frozen = arcneg_t(emb, weight, label, cfg)
    else:
        def f():
            return (ref_logits(emb, weight, bias, label, cfg) * head).sum()
    np.testing.assert_allclose(grads["data"].asnumpy(), numeric_grad(f, emb), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(grads["fc7_weight"].asnumpy(), numeric_grad(f, weight), rtol=2e-3, atol=2e-3)


def arcneg_t(emb, weight, label, cfg):
    z = ref_logits(emb, weight, None, label, cfg) / cfg.loss_s
    cos = _cos(emb, weight)
    target = z[np.arange(B), label]
    return cfg.loss_alpha * np.exp(-(cos - target[:, None]) ** 2 / cfg.loss_sigma)


def _cos(emb, weight):
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (weight / np.linalg.norm(weight, axis=1,
                                                                                         keepdims=True)).T


def ref_logits_frozen_t(emb, weight, label, cfg, t):
    cos = _cos(emb, weight)
    rows = np.arange(B)
    out = t * cos + t - 1
    out[rows, label] = np.cos(np.arccos(cos[rows, label]) + cfg.loss_m2)
    return cfg.loss_s * out


@pytest.mark.parametrize("name", ["softmax", "arcface", "combined"])
def test_softmax_cross_entropy_gradient(name):
    """The full head (SoftmaxOutput) back-propagates the gradient of the mean cross-entropy."""
    cfg = generate_config("r18_tiny", "emore", name, num_classes=C, emb_size=D, loss_s=8.0)
    emb, weight, bias, label = inputs(11)
    exe, grads = bind(loss_head, cfg, emb, weight, bias, label)
    prob = exe.forward(is_train=True)[0].asnumpy()
    np.testing.assert_allclose(-np.log(prob[np.arange(B), label]).mean(),
                               ref_ce(emb, weight, bias, label, cfg), rtol=1e-4)
    exe.backward()
    np.testing.assert_allclose(grads["data"].asnumpy(), numeric_grad(lambda: ref_ce(emb, weight, bias, label, cfg),
                                                                     emb), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["arcface", "combined", "arcneg"])
def test_finite_and_monotone_at_the_edges(name):
    """θ = 0 exactly and θ + m > π: the true-class logit stays finite, decreases with θ, gradients finite."""
    cfg = generate_config("r18_tiny", "emore", name, num_classes=2, emb_size=2)
    angles = np.array([0.0, 0.01, 0.3, 1.5, math.pi - 0.6, math.pi - 0.4, math.pi - 0.1, math.pi])
    weight = np.array([[1.0, 0.0], [0.0, 1.0]])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    label = np.zeros(len(angles), dtype=int)
    global B
    saved, B = B, len(angles)
    try:
        exe, grads = bind(lambda d, c: logits(d, mx.sym.Variable("softmax_label"), c), cfg, emb, weight, None, label)
        out = exe.forward(is_train=True)[0].asnumpy()
        exe.backward(mx.nd.ones_like(exe.outputs[0]))
    finally:
        B = saved
    true = out[:, 0]
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grads["data"].asnumpy()))
    assert np.all(np.isfinite(grads["fc7_weight"].asnumpy()))
    assert np.all(np.diff(true) < 0), true
    # Below the threshold the margin is exact.
    m = cfg.loss_m2
    np.testing.assert_allclose(true[2:4] / cfg.loss_s, np.cos(cfg.loss_m1 * angles[2:4] + m) - cfg.loss_m3,
                               rtol=1e-4)
