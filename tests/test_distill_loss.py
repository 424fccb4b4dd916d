"""Distillation terms against NumPy: every form's value, and its gradient by finite differences, on embeddings
and on feature maps; term parsing."""
import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.train.distill_loss import FORMS, Term, distill_loss, parse_term


def _reference(form, s, t):
    """Per-sample distance from the definitions (float64): per location over channels, then the mean over
    locations for a feature map."""
    if form != "l2":
        s = s / np.sqrt((s ** 2).sum(1, keepdims=True))
        t = t / np.sqrt((t ** 2).sum(1, keepdims=True))
    distance = {"angular": lambda: ((s - t) ** 2).sum(1), "l2": lambda: ((s - t) ** 2).sum(1),
                "mse": lambda: ((s - t) ** 2).mean(1), "cosine": lambda: 1 - (s * t).sum(1),
                "shrink": lambda: (1 - (s * t).sum(1)) ** 2}[form]()
    return distance.reshape(len(distance), -1).mean(1)


def _finite_difference(f, x, eps=1e-5):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("shape", [(5, 12), (3, 4, 2, 3)], ids=["embedding", "feature_map"])
@pytest.mark.parametrize("form", FORMS)
def test_value_and_gradient_match_numpy(form, shape):
    rng = np.random.RandomState(3)
    s, t = rng.randn(*shape), rng.randn(*shape) * 3
    weight = 0.7
    loss = distill_loss(mx.sym.Variable("s"), mx.sym.Variable("t"), form, weight, spatial=len(shape) == 4)
    ex = loss.simple_bind(mx.cpu(), s=shape, t=shape)
    ex.arg_dict["s"][:], ex.arg_dict["t"][:] = s, t
    out = ex.forward(is_train=True)[0].asnumpy()
    assert out.shape == (shape[0], 1)
    ex.backward()
    np.testing.assert_allclose(out[:, 0], _reference(form, s, t), rtol=1e-4, atol=1e-5)
    # the objective is weight * the mean over the batch
    numeric = _finite_difference(lambda x: weight * _reference(form, x, t).mean(), s)
    np.testing.assert_allclose(ex.grad_dict["s"].asnumpy(), numeric, rtol=2e-3, atol=1e-5)
    assert np.abs(numeric).max() > 1e-3, "the gradient must not be trivially zero"
    assert not ex.grad_dict["t"].asnumpy().any(), "the teacher side must not receive gradients"


def test_forms_relate_as_published():
    rng = np.random.RandomState(0)
    s, t = rng.randn(4, 8), rng.randn(4, 8)
    value = {}
    for form in FORMS:
        loss = distill_loss(mx.sym.Variable("s"), mx.sym.Variable("t"), form)
        value[form] = loss.eval(mx.cpu(), s=mx.nd.array(s), t=mx.nd.array(t))[0].asnumpy()[:, 0]
        scaled = loss.eval(mx.cpu(), s=mx.nd.array(s * 5), t=mx.nd.array(t * 0.1))[0].asnumpy()[:, 0]
        assert np.allclose(value[form], scaled, rtol=1e-4) == (form != "l2"), form  # only l2 sees the norm
    cos = (s * t).sum(1) / np.linalg.norm(s, axis=1) / np.linalg.norm(t, axis=1)
    np.testing.assert_allclose(value["angular"], 2 - 2 * cos, rtol=1e-5)
    np.testing.assert_allclose(value["cosine"], value["angular"] / 2, rtol=1e-5)
    np.testing.assert_allclose(value["shrink"], (1 - cos) ** 2, rtol=1e-4)
    np.testing.assert_allclose(value["mse"], value["angular"] / 8, rtol=1e-5)


def test_terms_parse_and_bad_specs_are_named():
    assert parse_term("angular:embedding@7") == Term("angular", "embedding", "embedding", 7.0)
    assert parse_term("mse:stride8=stride16") == Term("mse", "stride8", "stride16", 1.0)
    assert str(parse_term("shrink:stride4=stride8@0.5")) == "shrink:stride4=stride8@0.5"
    for bad, message in (("kl:embedding", "unknown form 'kl'"), ("angular:stride3", "unknown tap 'stride3'"),
                         ("angular:embedding@x", "weight 'x'"), ("angular:embedding@0", "must be > 0"),
                         ("angular:embedding@inf", "must be > 0 and finite"), ("angular:embedding@nan", "must be > 0"),
                         ("angular", "expected FORM:TAP")):
        with pytest.raises(VargfaceError, match=f"--kd '{bad}'.*{message}"):
            parse_term(bad)
