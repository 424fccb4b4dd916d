"""Distillation loss symbols against NumPy references, values and gradients."""
import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.train.distill_loss import distill_loss


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(kind, s, t):
    """Per-sample loss and d(mean loss)/ds, written from the definitions."""
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    u, v = _unit(s), _unit(t)
    cos = (u * v).sum(1, keepdims=True)
    if kind == "angular":  # ||u - v||^2 = 2 - 2cos
        return ((u - v) ** 2).sum(1), 2 * (u * cos - v) / norm
    if kind == "cosine":
        return 1 - cos[:, 0], (u * cos - v) / norm
    return ((s - t) ** 2).sum(1), 2 * (s - t)


@pytest.mark.parametrize("kind", ["angular", "cosine", "l2"])
def test_loss_and_gradient_match_numpy(kind):
    rng = np.random.RandomState(3)
    s, t = rng.randn(6, 16).astype(np.float32), rng.randn(6, 16).astype(np.float32) * 3
    weight = 0.7
    loss = distill_loss(mx.sym.Variable("s"), mx.sym.Variable("t"), kind, weight)
    ex = loss.simple_bind(mx.cpu(), s=s.shape, t=t.shape)
    ex.arg_dict["s"][:], ex.arg_dict["t"][:] = s, t
    out = ex.forward(is_train=True)[0].asnumpy()
    assert out.shape == (6, 1)
    out = out[:, 0]
    ex.backward()
    value, grad = _reference(kind, s, t)
    np.testing.assert_allclose(out, value, rtol=1e-4, atol=1e-5)
    # total objective = weight * mean over the batch
    np.testing.assert_allclose(ex.grad_dict["s"].asnumpy(), weight * grad / len(s), rtol=1e-3, atol=1e-6)
    assert not ex.grad_dict["t"].asnumpy().any(), "the teacher side must not receive gradients"


def test_angular_is_two_minus_two_cos_and_scale_invariant():
    rng = np.random.RandomState(0)
    s, t = rng.randn(4, 8).astype(np.float32), rng.randn(4, 8).astype(np.float32)
    loss = distill_loss(mx.sym.Variable("s"), mx.sym.Variable("t"), "angular")
    out = loss.eval(mx.cpu(), s=mx.nd.array(s), t=mx.nd.array(t))[0].asnumpy()[:, 0]
    scaled = loss.eval(mx.cpu(), s=mx.nd.array(s * 5), t=mx.nd.array(t * 0.1))[0].asnumpy()[:, 0]
    np.testing.assert_allclose(out, 2 - 2 * (_unit(s) * _unit(t)).sum(1), rtol=1e-5)
    np.testing.assert_allclose(out, scaled, rtol=1e-4)


def test_bad_options_are_named():
    with pytest.raises(VargfaceError, match="--kd-type"):
        distill_loss(mx.sym.Variable("s"), mx.sym.Variable("t"), "kl")
    with pytest.raises(VargfaceError, match="--kd-weight"):
        distill_loss(mx.sym.Variable("s"), mx.sym.Variable("t"), "angular", 0)
