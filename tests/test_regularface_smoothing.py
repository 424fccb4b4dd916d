"""RegularFace's exclusive regularization and label smoothing against float64 NumPy references, and both switched
off leaving the training graph and its updates exactly as the plain head's."""
import json

import mxnet as mx
import numpy as np
import pytest
from test_losses import LOSSES, arcneg_t, bind, inputs, numeric_grad, ref_logits, ref_logits_frozen_t

from vargface.train import regularface
from vargface.train.config import generate_config
from vargface.train.losses import head_outputs
from vargface.train.regularface import penalty, regularface_loss


# ---- RegularFace ---------------------------------------------------------------------------------------------------
def ref_partners(weight):
    """Each row's most similar other row (the first of tied ones), in float64."""
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    return cos.argmax(axis=1), cos.max(axis=1)


def ref_term(weight, lam, partners=None):
    """(λ / C) Σ_i cos(W_i, W_partner(i)); the partners default to the nearest others (then it is the max)."""
    partners = ref_partners(weight)[0] if partners is None else partners
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    return lam / len(weight) * np.sum(unit * unit[partners])


def centres(case):
    rng = np.random.RandomState(5)
    if case == "random":
        return rng.randn(7, 5)
    if case == "two":  # C = 2: each centre's only other one
        return rng.randn(2, 3)
    # ties: rows 1, 2 and 4 are all at 45° from row 0, row 4 equals row 1 (cosine 1), row 3 is orthogonal to all
    return np.array([[1.0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]])


@pytest.mark.parametrize("case", ["random", "two", "ties"])
@pytest.mark.parametrize("rows_per_block", [None, 2])
def test_regularface_value_and_gradient_equal_numpy(case, rows_per_block):
    weight, lam = centres(case), 0.7
    partners, maxima = ref_partners(weight)
    value, grad = penalty(mx.nd.array(weight), lam, rows_per_block=rows_per_block)
    np.testing.assert_allclose(value.asnumpy(), [lam * maxima.mean()], rtol=1e-5)
    # the gradient of each maximum flows to its row and to the partner found (the first of tied ones)
    expected = numeric_grad(lambda: ref_term(weight, lam, partners), weight)
    np.testing.assert_allclose(grad.asnumpy(), expected, rtol=1e-4, atol=1e-6)
    if case == "ties":
        assert list(partners) == [1, 4, 0, 0, 1]
        np.testing.assert_allclose(maxima, [0.5 ** 0.5, 1, 0.5 ** 0.5, 0, 1])
    if case == "random":  # without ties the max is differentiable: the same gradient, partners free to change
        np.testing.assert_allclose(grad.asnumpy(), numeric_grad(lambda: ref_term(weight, lam), weight), rtol=1e-4,
                                   atol=1e-6)


def test_regularface_in_the_graph_adds_its_gradient_to_the_centres():
    """The symbol's value and its gradient on fc7_weight are `penalty`'s, added to what the softmax gives."""
    weight = centres("random")
    sym = regularface_loss(mx.sym.Variable("fc7_weight"), 0.5, rows_per_block=3)
    grad = mx.nd.zeros(weight.shape)
    exe = sym.bind(mx.cpu(), {"fc7_weight": mx.nd.array(weight)}, args_grad={"fc7_weight": grad})
    out = exe.forward(is_train=True)[0].asnumpy()
    exe.backward()
    np.testing.assert_allclose(out, [ref_term(weight, 0.5)], rtol=1e-5)
    np.testing.assert_allclose(grad.asnumpy(), numeric_grad(lambda: ref_term(weight, 0.5), weight), rtol=1e-4,
                               atol=1e-6)

    cfg = generate_config("r18_tiny", "emore", "arcface", num_classes=7, emb_size=5, regularface=0.5)
    emb, _, _, label = inputs(3)
    with_term, grads = bind(lambda d, c: mx.sym.Group([s for s, _ in head_outputs(d, c)]), cfg, emb[:, :5], weight,
                            None, label)
    plain, plain_grads = bind(lambda d, c: head_outputs(d, c.replace(regularface=0.0))[0][0], cfg, emb[:, :5],
                              weight, None, label)
    for exe in (with_term, plain):
        exe.forward(is_train=True)
        exe.backward()
    assert with_term.outputs[1].asnumpy() == pytest.approx([ref_term(weight, 0.5)], rel=1e-5)
    np.testing.assert_allclose(grads["fc7_weight"].asnumpy() - plain_grads["fc7_weight"].asnumpy(),
                               grad.asnumpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(grads["data"].asnumpy(), plain_grads["data"].asnumpy())


def test_regularface_never_forms_a_classes_by_classes_matrix(monkeypatch):
    """Large C: the cosines are formed a block of rows at a time within the byte budget, never C x C."""
    count, budget = 1000, 4 * 1000 * 64  # 64 rows of cosines per block
    monkeypatch.setattr(regularface, "BLOCK_BYTES", budget)
    shapes, real_dot = [], mx.nd.dot
    monkeypatch.setattr(mx.nd, "dot", lambda *a, **k: shapes.append(real_dot(*a, **k).shape) or real_dot(*a, **k))
    weight = np.random.RandomState(1).randn(count, 16)
    value, _ = penalty(mx.nd.array(weight), 1.0)
    assert shapes and max(rows for rows, _ in shapes) == 64 and sum(rows for rows, _ in shapes) == count
    assert value.asscalar() == pytest.approx(ref_partners(weight)[1].mean(), rel=1e-5)


# ---- label smoothing ---------------------------------------------------------------------------------------------
def ref_smoothed(emb, weight, bias, label, cfg, eps, logits_of=None):
    """Per sample −Σ_j q_j log softmax(z)_j, q = 1−ε on the class and ε/(C−1) on each other."""
    z = (logits_of or ref_logits)(emb, weight, bias, label, cfg)
    z = z - z.max(axis=1, keepdims=True)
    log_prob = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = np.full(z.shape, eps / (z.shape[1] - 1))
    target[np.arange(len(label)), label] = 1 - eps
    return -(target * log_prob).sum(axis=1)


@pytest.mark.parametrize("name", LOSSES)
def test_label_smoothing_loss_and_gradient_equal_the_formula(name):
    eps = 0.2
    cfg = generate_config("r18_tiny", "emore", name, num_classes=5, emb_size=8, loss_s=8.0, label_smoothing=eps)
    emb, weight, bias, label = inputs(13)
    exe, grads = bind(lambda d, c: mx.sym.Group([s for s, _ in head_outputs(d, c)]), cfg, emb, weight, bias, label)
    outputs = exe.forward(is_train=True)
    assert [n for _, n in head_outputs(mx.sym.Variable("data"), cfg)] == [None, "loss"]
    np.testing.assert_allclose(outputs[1].asnumpy(), ref_smoothed(emb, weight, bias, label, cfg, eps), rtol=1e-4,
                               atol=1e-5)
    exe.backward()
    logits_of = None
    if name == "arcneg":  # its re-weighting t_j is a constant for back-propagation
        t = arcneg_t(emb, weight, label, cfg)
        logits_of = lambda e, w, b, y, c: ref_logits_frozen_t(e, w, y, c, t)  # noqa: E731
    expected = numeric_grad(lambda: ref_smoothed(emb, weight, bias, label, cfg, eps, logits_of).mean(), emb)
    np.testing.assert_allclose(grads["data"].asnumpy(), expected, rtol=2e-3, atol=1e-4)


def test_the_sharded_logit_gradient_is_the_heads_smoothed_one_and_a_row_of_another_shard_is_flat():
    """`logit_gradient` (the sharded classifier's, with its target as on/off values at the label positions) is
    SoftmaxOutput's gradient with smooth_alpha; a row whose class is on another shard has ε/(C−1) everywhere."""
    from vargface.train.losses import smoothing_weights
    from vargface.train.partial_fc import logit_gradient

    eps, classes = 0.3, 6
    z, label = np.random.RandomState(2).randn(4, classes), np.array([0, 5, 2, 2])
    data = mx.sym.Variable("z")
    exe = mx.sym.SoftmaxOutput(data, mx.sym.Variable("y"), normalization="valid", smooth_alpha=eps).simple_bind(
        mx.cpu(), z=z.shape, y=label.shape, grad_req={"z": "write", "y": "null"})
    prob = exe.forward(is_train=True, z=z, y=label)[0]
    exe.backward()
    on, off = smoothing_weights(eps, classes)
    where = mx.nd.array([np.arange(4), label], dtype="int32")
    grad = logit_gradient(prob.copy(), where, on, off, 1.0 / len(label)).asnumpy()
    np.testing.assert_allclose(grad, exe.grad_dict["z"].asnumpy(), atol=1e-6)
    # a shard of 3 of the 6 columns holding row 1's class only (at its column 1): every other row is flat
    part = prob[:, :3].copy()
    grad = logit_gradient(part.copy(), mx.nd.array([[1], [1]], dtype="int32"), on, off, 1.0).asnumpy()
    expected = part.asnumpy() - eps / 5
    expected[1, 1] = part.asnumpy()[1, 1] - (1 - eps)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    # without smoothing: the one-hot label
    grad = logit_gradient(part.copy(), mx.nd.array([[1], [1]], dtype="int32"), 1.0, 0.0, 0.5).asnumpy()
    expected = part.asnumpy() * 0.5
    expected[1, 1] -= 0.5
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


# ---- off means untouched -----------------------------------------------------------------------------------------
def plain_graph(config, contexts):
    """The training graph as it was before these settings: the embedding and the plain softmax head."""
    from vargface.train.losses import logits
    from vargface.train.trainer import embedding_symbol, training_embedding

    label = mx.sym.Variable("softmax_label")
    emb = training_embedding(embedding_symbol(config), config.train_graph, contexts)
    return mx.sym.Group([mx.sym.SoftmaxOutput(logits(emb, label, config), label, normalization="valid",
                                              name="softmax")])


def structure(sym):
    """Every node's op, settings and inputs, and the variables' names (other names are numbered per process)."""
    nodes = json.loads(sym.tojson())["nodes"]
    return [(n["op"], n.get("attrs"), n["inputs"], n["name"] if n["op"] == "null" else None) for n in nodes]


def weights_after_steps(config, sym=None, steps=3):
    from vargface.train.trainer import build_training_module

    mx.random.seed(config.seed)
    graph, module = build_training_module(config)
    if sym is not None:  # the same start in the other graph
        arg, aux = module.get_params()
        module = mx.mod.Module(sym, context=[mx.cpu()])
        module.bind(data_shapes=graph.data_shapes, label_shapes=graph.label_shapes)
        module.init_params(arg_params=arg, aux_params=aux)
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4})
    rng = np.random.RandomState(0)
    for _ in range(steps):
        batch = mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, (8, 3, 32, 32)))],
                                [mx.nd.array(rng.randint(0, 10, 8))])
        module.forward_backward(batch)
        module.update()
    mx.nd.waitall()
    return {k: v.asnumpy() for k, v in module.get_params()[0].items()}


def test_off_leaves_the_graph_and_the_updates_exactly_as_the_plain_head():
    from vargface.train.trainer import TrainerPlugin, training_graph

    config = generate_config("r18_tiny", "emore", "arcface", num_classes=10, emb_size=16, image_size=32,
                             net_multiplier=0.25, per_batch_size=8, ctx="cpu", seed=4)
    assert config.label_smoothing == 0 and config.regularface == 0
    graph = training_graph(config, TrainerPlugin(), 8, [mx.cpu()])
    plain = plain_graph(config, [mx.cpu()])
    assert structure(graph.train_sym) == structure(plain) and graph.extra_names == []
    ours, before = weights_after_steps(config), weights_after_steps(config, plain)
    assert ours.keys() == before.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], before[name], err_msg=name)
    # switched on, each changes the updates (so the comparison above can fail)
    for change in (dict(label_smoothing=0.1), dict(regularface=1.0)):
        other = weights_after_steps(config.replace(**change))
        assert not np.array_equal(other["fc7_weight"], before["fc7_weight"]), change


def test_training_logs_the_regularface_term_and_the_smoothed_loss(tmp_path, run_cli):
    from vargface.data.synth import make_synthetic_rec

    data = tmp_path / "data"
    make_synthetic_rec(str(data), 12, 4, size=32, seed=1, progress=False)
    prefix = tmp_path / "run" / "model"
    code, out, err = run_cli("train", "--network", "r18_tiny", "--net-multiplier", "0.25", "--dataset", data,
                             "--image-size", "32", "--emb-size", "16", "--per-batch-size", "8", "--max-steps", "4",
                             "--frequent", "2", "--target", "", "--prefix", prefix, "--regularface", "2",
                             "--label-smoothing", "0.1")
    assert code == 0, err
    entries = [json.loads(line) for line in open(f"{prefix}-log.jsonl")]
    train = [e for e in entries if e["type"] == "train"]
    assert len(train) == 2 and all(0 < e["regularface"] <= 2 and e["loss"] > 0 for e in train)
    assert "regularface=" in out
    saved = open(f"{prefix}-config.py").read()
    assert "regularface = 2.0" in saved and "label_smoothing = 0.1" in saved


@pytest.mark.parametrize("option, value, expected", [("--regularface", "-1", ">= 0"),
                                                     ("--label-smoothing", "1", "< 1")])
def test_bad_values_are_refused_naming_the_option(option, value, expected, run_cli):
    code, _, err = run_cli("train", option, value, "--dataset", "emore")
    assert code != 0 and option in err and expected in err and "Traceback" not in err
