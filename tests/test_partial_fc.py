"""The sharded, sampled classifier (train/partial_fc.py): at sample ratio 1 on two cpu contexts it equals the full
margin-softmax head (loss, every gradient, the weights after SGD steps) for every margin loss; the sampling keeps
every positive, never repeats a centre and draws the same centres after a resume; its state refuses another
layout; its shards merge into the full classifier."""
import json
import os
import socket
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.train.config import generate_config
from vargface.train.losses import head_outputs, loss_head
from vargface.train.lr_scheduler import build
from vargface.train.partial_fc import (LOGIT_BUFFERS, PartialFC, ShardLayout, check_fits, fc7_memory,
                                       load_shards, merge_shards, sample_rows, save_shards)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTEXTS = [mx.cpu(0), mx.cpu(1)]
B, D, C, IN = 8, 6, 11, 5  # 11 classes over 2 shards: 6 + 5
MARGIN_LOSSES = ["arcface", "cosface", "combined", "arcneg", "nsoftmax"]


def make_config(loss, **overrides):
    settings = dict(num_classes=C, emb_size=D, loss_s=8.0, lr=0.1, mom=0.9, wd=5e-4, fc7_lr_mult=2.0,
                    fc7_wd_mult=0.5, lr_schedule="step", lr_steps=[2], lr_factor=0.5, seed=3)
    settings.update(overrides)
    return generate_config("r18_tiny", "emore", loss, **settings)


def batch(seed, weight, classes=C):
    """Labels with repeats (of the first ``classes`` classes), and embeddings near their class centre so every
    margin branch is exercised."""
    rng = np.random.RandomState(seed)
    label = rng.randint(0, classes, size=B)
    label[1] = label[0]
    emb = weight[label] * rng.uniform(20, 60, size=(B, 1)) + 0.5 * rng.randn(B, D)
    return emb.astype(np.float32), label


def full_head_module(config, symbol_input, data_shape, inputs_need_grad=False):
    sym = loss_head(symbol_input, config)
    module = mx.mod.Module(sym, data_names=["data"], label_names=["softmax_label"], context=CONTEXTS)
    module.bind(data_shapes=[("data", data_shape)], label_shapes=[("softmax_label", (B,))],
                inputs_need_grad=inputs_need_grad)
    return module


def loss_from_probabilities(prob, label):
    return float(-np.mean(np.log(prob[np.arange(len(label)), label])))


def engine_step(engine, emb, label, update):
    halves = [mx.nd.array(emb[i * B // 2:(i + 1) * B // 2], ctx=c) for i, c in enumerate(CONTEXTS)]
    return engine.forward_backward(halves, label, update)


# classes 6: every label on the first shard, none on the second (whose margin then has no target column)
@pytest.mark.parametrize("loss, classes", [(loss, C) for loss in MARGIN_LOSSES] +
                         [("arcface", 6), ("cosface", 6), ("combined", 6)])
def test_ratio_one_gradients_equal_the_full_head(loss, classes):
    config = make_config(loss)
    rng = np.random.RandomState(len(loss))
    weight = rng.randn(C, D).astype(np.float32)
    emb, label = batch(len(loss), weight, classes)

    module = full_head_module(config, mx.sym.Variable("data"), (B, D), inputs_need_grad=True)
    module.init_params(arg_params={"fc7_weight": mx.nd.array(weight)})
    module.forward_backward(mx.io.DataBatch([mx.nd.array(emb)], [mx.nd.array(label)]))
    prob = module.get_outputs()[0].asnumpy()
    ref_emb_grad = module.get_input_grads()[0].asnumpy()  # each device's own-batch mean
    group = module._exec_group
    fc7_grads = group.grad_arrays[group.param_names.index("fc7_weight")]
    ref_centre_grad = sum(g.asnumpy() for g in fc7_grads) / len(CONTEXTS)  # what the optimizer applies

    engine = PartialFC(config, CONTEXTS, sample_ratio=1.0)
    engine.set_weights(weight)
    result = engine_step(engine, emb, label, update=1)
    assert abs(float(result.loss.asscalar()) - loss_from_probabilities(prob, label)) < 1e-5
    assert float(result.accuracy.asscalar()) == np.mean(prob.argmax(axis=1) == label)
    np.testing.assert_allclose(np.concatenate([g.asnumpy() for g in result.grads]), ref_emb_grad, atol=1e-5)
    assert [g.context for g in result.grads] == CONTEXTS
    centre_grad = np.concatenate([w.grad.asnumpy() for w in engine.weights])
    np.testing.assert_allclose(centre_grad, ref_centre_grad, atol=1e-5)
    assert np.abs(ref_centre_grad).max() > 1e-3 and np.abs(ref_emb_grad).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_ratio_one_trains_like_the_full_head(loss):
    """Three SGD steps of a backbone (one FullyConnected layer) with momentum, weight decay, fc7 lr/wd
    multipliers and a step schedule: the same losses and the same weights, backbone and classifier."""
    config = make_config(loss)
    rng = np.random.RandomState(7)
    init = {"fc1_weight": rng.randn(D, IN).astype(np.float32), "fc1_bias": rng.randn(D).astype(np.float32),
            "fc7_weight": rng.randn(C, D).astype(np.float32)}
    steps = [(rng.randn(B, IN).astype(np.float32) * 3, rng.randint(0, C, size=B)) for _ in range(3)]
    schedule = build(config, iters_per_epoch=10)
    optimizer = dict(learning_rate=config.lr, momentum=config.mom, wd=config.wd, rescale_grad=1 / len(CONTEXTS))

    data = mx.sym.Variable("data")
    embedding = mx.sym.FullyConnected(data, num_hidden=D, name="fc1")
    reference = full_head_module(config, embedding, (B, IN))
    reference.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items()})
    reference.init_optimizer(kvstore="device", optimizer="sgd",
                             optimizer_params=dict(optimizer, lr_scheduler=build(config, iters_per_epoch=10)))

    backbone = mx.mod.Module(embedding, data_names=["data"], label_names=None, context=CONTEXTS)
    backbone.bind(data_shapes=[("data", (B, IN))])
    backbone.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items() if k.startswith("fc1")})
    backbone.init_optimizer(kvstore="device", optimizer="sgd", optimizer_params=dict(optimizer, lr_scheduler=schedule))
    engine = PartialFC(config, CONTEXTS, sample_ratio=1.0)
    engine.set_weights(init["fc7_weight"])

    for update, (x, label) in enumerate(steps, start=1):
        reference.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(label)]))
        ref_loss = loss_from_probabilities(reference.get_outputs()[0].asnumpy(), label)
        reference.update()

        result = engine.train_step(backbone, mx.io.DataBatch([mx.nd.array(x)]), label, update)
        backbone.update()
        engine.update(schedule(update))
        assert abs(float(result.loss.asscalar()) - ref_loss) < 1e-5, update

    arg, _ = reference.get_params()
    mine, _ = backbone.get_params()
    for name in ("fc1_weight", "fc1_bias"):
        np.testing.assert_allclose(mine[name].asnumpy(), arg[name].asnumpy(), atol=1e-5, err_msg=name)
    np.testing.assert_allclose(engine.full_weight(), arg["fc7_weight"].asnumpy(), atol=1e-5)
    assert np.abs(arg["fc7_weight"].asnumpy() - init["fc7_weight"]).max() > 1e-3  # the classifier did move


def head_module(config, contexts):
    """The full head's Module on (B, D) embeddings with every output of `head_outputs` (the smoothed loss,
    RegularFace), its input gradient kept."""
    outputs = head_outputs(mx.sym.Variable("data"), config)
    module = mx.mod.Module(mx.sym.Group([symbol for symbol, _ in outputs]), data_names=["data"],
                           label_names=["softmax_label"], context=contexts)
    module.bind(data_shapes=[("data", (B, D))], label_shapes=[("softmax_label", (B,))], inputs_need_grad=True)
    return module, [name for _, name in outputs]


@pytest.mark.parametrize("loss, contexts, terms", [
    ("arcface", CONTEXTS, dict(label_smoothing=0.1)),
    ("cosface", CONTEXTS, dict(label_smoothing=0.2)),
    # the RegularFace term's nearest centres are searched within a shard: one shard is the full head's
    ("arcface", CONTEXTS[:1], dict(regularface=2.0)),
    ("cosface", CONTEXTS[:1], dict(regularface=2.0, label_smoothing=0.1)),
])
def test_label_smoothing_and_regularface_at_ratio_one_equal_the_full_head(loss, contexts, terms):
    config = make_config(loss, **terms)
    rng = np.random.RandomState(5)
    weight = rng.randn(C, D).astype(np.float32)
    emb, label = batch(5, weight)
    module, names = head_module(config, contexts)
    module.init_params(arg_params={"fc7_weight": mx.nd.array(weight)})
    module.forward_backward(mx.io.DataBatch([mx.nd.array(emb)], [mx.nd.array(label)]))
    outputs = dict(zip(names, module.get_outputs()))
    group = module._exec_group
    ref_centre_grad = sum(g.asnumpy() for g in group.grad_arrays[group.param_names.index("fc7_weight")])
    ref_centre_grad /= len(contexts)

    engine = PartialFC(config, contexts, sample_ratio=1.0)
    engine.set_weights(weight)
    parts = np.array_split(emb, len(contexts))
    result = engine.forward_backward([mx.nd.array(x, ctx=c) for x, c in zip(parts, contexts)], label, 1)
    expected = float(outputs["loss"].asnumpy().mean()) if "label_smoothing" in terms else \
        loss_from_probabilities(outputs[None].asnumpy(), label)
    assert abs(float(result.loss.asscalar()) - expected) < 1e-5
    if "regularface" in terms:
        assert abs(float(result.extras["regularface"].asscalar()) - float(outputs["regularface"].asnumpy().mean())) \
            < 1e-6
    else:
        assert not result.extras
    np.testing.assert_allclose(np.concatenate([g.asnumpy() for g in result.grads]),
                               module.get_input_grads()[0].asnumpy(), atol=1e-5)
    np.testing.assert_allclose(np.concatenate([w.grad.asnumpy() for w in engine.weights]), ref_centre_grad,
                               atol=1e-5)


@pytest.mark.parametrize("loss, smoothing", [("arcface", 0.0), ("arcneg", 0.0), ("cosface", 0.1)])
def test_a_sampled_step_is_the_full_head_over_the_sampled_centres(loss, smoothing):
    """Label smoothing spreads its ε over the sampled centres, as a head of those centres alone would."""
    config = make_config(loss, num_classes=30, label_smoothing=smoothing)
    rng = np.random.RandomState(4)
    weight = rng.randn(30, D).astype(np.float32)
    label = rng.randint(0, 30, size=B)
    emb = (weight[label] * 30 + rng.randn(B, D)).astype(np.float32)
    engine = PartialFC(config, CONTEXTS, sample_ratio=0.3)
    engine.set_weights(weight)
    result = engine_step(engine, emb, label, update=4)
    sampled = np.concatenate(engine.sampled)
    assert len(sampled) < 30

    module, names = head_module(make_config(loss, num_classes=len(sampled), label_smoothing=smoothing), CONTEXTS)
    module.init_params(arg_params={"fc7_weight": mx.nd.array(weight[sampled])})
    remapped = np.searchsorted(sampled, label)
    module.forward_backward(mx.io.DataBatch([mx.nd.array(emb)], [mx.nd.array(remapped)]))
    outputs = dict(zip(names, module.get_outputs()))
    expected = float(outputs["loss"].asnumpy().mean()) if smoothing else \
        loss_from_probabilities(outputs[None].asnumpy(), remapped)
    assert abs(float(result.loss.asscalar()) - expected) < 1e-5
    np.testing.assert_allclose(np.concatenate([g.asnumpy() for g in result.grads]),
                               module.get_input_grads()[0].asnumpy(), atol=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_plugin_losses_and_a_detached_embedding(detach):
    """A backbone with a second, MakeLoss output (as distillation adds): the backbone's gradient is the margin
    loss's plus the plugin loss's, as with the full head; ``detach`` (--kd-only) leaves only the plugin's, while
    the classifier still learns."""
    config = make_config("arcface")
    rng = np.random.RandomState(9)
    init = {"fc1_weight": rng.randn(D, IN).astype(np.float32), "fc1_bias": rng.randn(D).astype(np.float32)}
    weight = rng.randn(C, D).astype(np.float32)
    x, label = rng.randn(B, IN).astype(np.float32), rng.randint(0, C, size=B)
    embedding = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=D, name="fc1")
    plugin = mx.sym.MakeLoss(mx.sym.sum(mx.sym.square(embedding), axis=1, keepdims=True) * 0.01,
                             normalization="batch", name="plugin")

    def fc1_grad(module):
        group = module._exec_group
        return sum(g.asnumpy() for g in group.grad_arrays[group.param_names.index("fc1_weight")])

    head = mx.sym.BlockGrad(embedding) if detach else embedding
    reference = mx.mod.Module(mx.sym.Group([loss_head(head, config), plugin]), context=CONTEXTS)
    reference.bind(data_shapes=[("data", (B, IN))], label_shapes=[("softmax_label", (B,))])
    reference.init_params(arg_params={"fc7_weight": mx.nd.array(weight),
                                      **{k: mx.nd.array(v) for k, v in init.items()}})
    reference.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(label)]))

    backbone = mx.mod.Module(mx.sym.Group([embedding, plugin]), label_names=None, context=CONTEXTS)
    backbone.bind(data_shapes=[("data", (B, IN))])
    backbone.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items()})
    engine = PartialFC(config, CONTEXTS)
    engine.set_weights(weight)
    engine.train_step(backbone, mx.io.DataBatch([mx.nd.array(x)]), label, 1, detach=detach)
    np.testing.assert_allclose(fc1_grad(backbone), fc1_grad(reference), atol=1e-4)
    assert np.abs(np.concatenate([w.grad.asnumpy() for w in engine.weights])).max() > 1e-3


def test_layout_splits_in_contiguous_ceil_ranges():
    layout = ShardLayout(num_classes=10, emb_size=4, devices=2, workers=2)
    assert layout.shards == 4 and layout.size == 3
    assert [layout.rows(s) for s in range(4)] == [(0, 3), (3, 3), (6, 3), (9, 1)]
    with pytest.raises(VargfaceError, match="3 classes cannot fill 4 shards"):
        ShardLayout(num_classes=3, emb_size=4, devices=2, workers=2)


def test_sampling_keeps_positives_never_repeats_and_is_seeded():
    rows, ratio = 1000, 0.1
    for update in range(1, 30):
        positives = np.random.RandomState(update).randint(0, rows, size=40)
        picked = sample_rows(positives, rows, ratio, seed=5, update=update, shard=1)
        assert len(picked) == 100 and len(np.unique(picked)) == len(picked)
        assert set(positives) <= set(picked) and picked.min() >= 0 and picked.max() < rows
        np.testing.assert_array_equal(picked, sample_rows(positives, rows, ratio, seed=5, update=update, shard=1))
    other = [sample_rows([], rows, ratio, seed=5, update=1, shard=s) for s in (0, 1)]
    assert not np.array_equal(*other)  # each shard draws its own negatives
    # more positives than r of the shard: all of them, nothing else
    np.testing.assert_array_equal(sample_rows(np.arange(0, 300, 2), rows, ratio, 5, 1, 0), np.arange(0, 300, 2))
    np.testing.assert_array_equal(sample_rows([3], 10, 1.0, 5, 1, 0), np.arange(10))


def test_negatives_are_uniform_over_the_other_rows():
    rows, positives = 20, [0, 1, 2, 10]
    counts = np.zeros(rows)
    for update in range(2000):
        counts[sample_rows(positives, rows, 0.5, seed=1, update=update, shard=0)] += 1
    assert (counts[positives] == 2000).all()
    negatives = np.delete(counts, positives) / 2000  # 6 of the 16 other rows each step
    assert np.abs(negatives - 6 / 16).max() < 0.05


def sampled_run(config, weight, steps, contexts, start=0, state=None):
    """Steps ``start``.. of a sampled engine on fixed embeddings, each update checked against SGD with momentum
    in NumPy on the sampled rows alone; returns (engine, sampled class ids per step)."""
    engine = PartialFC(config, contexts, sample_ratio=0.25)
    if state is None:
        engine.set_weights(weight)
    else:
        engine.load_state_arrays(state, "saved state")
    schedule = build(config, iters_per_epoch=10)
    seen = []
    for update in range(start + 1, len(steps) + 1):
        emb, label = steps[update - 1]
        halves = [mx.nd.array(emb[i * B // 2:(i + 1) * B // 2], ctx=c) for i, c in enumerate(contexts)]
        expected = [w.asnumpy() for w in engine.weights], [m.asnumpy() for m in engine.momenta]
        engine.forward_backward(halves, label, update)
        lr, wd = schedule(update) * config.fc7_lr_mult, config.wd * config.fc7_wd_mult
        for d, (index, rows) in enumerate(engine._pending):
            first, count = engine.layout.rows(engine.shard_ids[d])
            assert set(label[(label >= first) & (label < first + count)]) <= set(engine.sampled[d])  # positives
            picked = engine.sampled[d] - first
            assert index is not None and (index.asnumpy() == picked).all()
            weights, momenta = expected[0][d], expected[1][d]
            momenta[picked] = config.mom * momenta[picked] - lr * (rows.grad.asnumpy() + wd * weights[picked])
            weights[picked] += momenta[picked]
        engine.update(schedule(update))
        seen.append([s.copy() for s in engine.sampled])
        for d in range(len(contexts)):  # only the sampled centres and their momentum change, as SGD says
            np.testing.assert_allclose(engine.weights[d].asnumpy(), expected[0][d], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(engine.momenta[d].asnumpy(), expected[1][d], rtol=1e-6, atol=1e-7)
    return engine, seen


def test_sampled_training_resumes_exactly():
    config = make_config("arcface", num_classes=40)
    rng = np.random.RandomState(2)
    weight = rng.randn(40, D).astype(np.float32)
    steps = []
    for _ in range(5):
        label = rng.randint(0, 40, size=B)
        steps.append(((weight[label] * 30 + rng.randn(B, D)).astype(np.float32), label))
    whole, seen = sampled_run(config, weight, steps, CONTEXTS)
    for (_, label), step in zip(steps, seen):  # 2 shards of 20: a quarter (5) each, or all their positives
        for shard, picked in enumerate(step):
            positives = {c for c in label if 20 * shard <= c < 20 * (shard + 1)}
            assert len(picked) == max(5, len(positives))
    head, _ = sampled_run(config, weight, steps[:3], CONTEXTS)
    state = head.state_arrays()
    resumed, seen_after = sampled_run(config, weight, steps, CONTEXTS, start=3, state=state)
    for a, b in zip(seen[3:], seen_after):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(resumed.full_weight(), whole.full_weight())
    for m, n in zip(resumed.momenta, whole.momenta):
        np.testing.assert_array_equal(m.asnumpy(), n.asnumpy())


def test_state_of_another_layout_is_refused():
    config = make_config("cosface")
    engine = PartialFC(config, CONTEXTS)
    engine.init_weights()
    state = engine.state_arrays()
    with pytest.raises(VargfaceError, match=r"worker 0 as 2 shard\(s\) of 6 classes.*splits it as 1 shard\(s\) of "
                                            r"11 classes"):
        PartialFC(config, CONTEXTS[:1]).load_state_arrays(state, "saved state")
    other = PartialFC(config, CONTEXTS)
    other.load_state_arrays(state, "saved state")
    np.testing.assert_array_equal(other.full_weight(), engine.full_weight())
    assert abs(float(np.std(engine.full_weight())) - config.fc7_init_sigma) < 0.005


def test_plain_softmax_and_bad_ratio_are_refused():
    with pytest.raises(VargfaceError, match="needs a margin loss"):
        PartialFC(make_config("softmax"), CONTEXTS)
    for ratio in (0, 1.5, -0.1):
        with pytest.raises(VargfaceError, match="--sample-ratio must be in"):
            PartialFC(make_config("arcface"), CONTEXTS, sample_ratio=ratio)


class Worker:
    """A stand-in for worker ``rank`` of ``size`` (the shard ids and layout follow from them)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def test_shard_files_resume_refuse_another_worker_and_merge(tmp_path, run_cli):
    config = make_config("cosface", num_classes=21)
    engines = [PartialFC(config, CONTEXTS, group=Worker(rank, 2)) for rank in (0, 1)]
    files = [str(tmp_path / f"w{rank}-fc7.params") for rank in (0, 1)]
    for engine, path in zip(engines, files):
        engine.init_weights()
        save_shards(path, engine)
    assert [e.shard_ids for e in engines] == [[0, 1], [2, 3]]
    assert [w.shape[0] for e in engines for w in e.weights] == [6, 6, 6, 3]  # ceil(21 / 4) = 6

    again = PartialFC(config, CONTEXTS, group=Worker(1, 2))
    load_shards(files[1], again)
    for a, b in zip(again.weights + again.momenta, engines[1].weights + engines[1].momenta):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    with pytest.raises(VargfaceError, match="w1-fc7.params holds the classifier of worker 1 .* this run \\(worker 0"):
        load_shards(files[1], PartialFC(config, CONTEXTS, group=Worker(0, 2)))
    with pytest.raises(VargfaceError, match="holds no sharded classifier"):
        mx.nd.save(str(tmp_path / "plain.params"), {"arg:fc7_weight": mx.nd.zeros((21, D))})
        load_shards(str(tmp_path / "plain.params"), again)

    whole = np.concatenate([w.asnumpy() for e in engines for w in e.weights])
    np.testing.assert_array_equal(merge_shards(files[::-1]), whole)
    with pytest.raises(VargfaceError, match=r"shards \[2, 3\] of 4 are missing"):
        merge_shards(files[:1])
    out = tmp_path / "fc7.params"
    code, stdout, _ = run_cli("merge-fc7", *files, "--out", out)
    assert code == 0 and "21 x 6" in stdout
    np.testing.assert_array_equal(mx.nd.load(str(out))["arg:fc7_weight"].asnumpy(), whole)
    code, _, err = run_cli("merge-fc7", *files, "--out", out)
    assert code == 1 and "exists; pass --overwrite" in err
    code, _, err = run_cli("merge-fc7", files[0], files[0], "--out", tmp_path / "twice.params")
    assert code == 1 and "shard 0 was already read" in err and not (tmp_path / "twice.params").exists()
    broken = engines[0].state_arrays()
    broken["shard1:momentum"] = mx.nd.zeros((5, D))
    with pytest.raises(VargfaceError, match=r"shard1:momentum has shape \(5, 6\), expected \(6, 6\)"):
        engines[0].load_state_arrays(broken, "broken")
    broken["shard1:momentum"] = mx.nd.array(np.full((6, D), np.nan))
    with pytest.raises(VargfaceError, match="broken: array 'shard1:momentum' holds 36 NaN"):
        engines[0].load_state_arrays(broken, "broken")
    assert engines[0].first_nonfinite() is None
    engines[0].momenta[1][2, 3] = np.inf
    assert engines[0].first_nonfinite() == "its momentum in shard 1"


def test_memory_per_device_falls_with_shards_and_sampling():
    full = fc7_memory(1_000_000, 512, per_device_batch=64, devices=1, parallel=False)
    assert full.weights == 1_000_000 * 512 * 4 and full.gradients == 3 * full.weights
    assert full.logits == LOGIT_BUFFERS * 64 * 1_000_000 * 4
    shards = [fc7_memory(1_000_000, 512, 64, devices=k) for k in (1, 2, 4, 8)]
    assert [m.weights for m in shards] == [full.weights // k for k in (1, 2, 4, 8)]
    totals = [m.total for m in shards]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    # the global batch grows with the devices: k times the rows against 1/k of the centres
    assert {m.logits for m in shards} == {full.logits}
    two = fc7_memory(1_000_000, 512, 64, devices=2)
    sampled = fc7_memory(1_000_000, 512, 64, devices=2, sample_ratio=0.1)
    assert two.weights == sampled.weights == 500_000 * 512 * 4 and sampled.sampled == 50_000
    assert sampled.logits == two.logits / 10 and sampled.gradients == 3 * 50_000 * 512 * 4
    assert "fc7 per device: weights 0.95 GB, momentum 0.95 GB" in two.line() and "(128 x 500000 centres)" in two.line()
    # more positives than r of a shard: the shard's share of the batch
    assert fc7_memory(1000, 8, 64, devices=2, sample_ratio=0.01).sampled == 64


def test_a_classifier_that_cannot_fit_is_refused(monkeypatch):
    huge = fc7_memory(50_000_000, 512, 128, devices=1, parallel=False)
    with pytest.raises(VargfaceError, match=r"needs [\d.]+ GB of host memory on 2 cpu device\(s\), and [\d.]+ GB is "
                                            r"available \(fc7 per device: weights 95.37 GB"):
        check_fits(huge, CONTEXTS)
    check_fits(fc7_memory(1000, 512, 128, devices=2), CONTEXTS)  # small: fine
    monkeypatch.setattr(mx.context, "gpu_memory_info", lambda device_id: (4 * 1024 ** 3, 16 * 1024 ** 3))
    five_gb = fc7_memory(1_000_000, 512, 64, devices=2)
    assert 4 < five_gb.total / 1024 ** 3
    with pytest.raises(VargfaceError, match=r"on gpu\(1\), which has 4.00 GB free of 16.00 GB .*lower --sample-ratio"):
        check_fits(five_gb, [mx.gpu(1)])
    check_fits(fc7_memory(1_000_000, 512, 64, devices=2, sample_ratio=0.1), [mx.gpu(0), mx.gpu(1)])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_dist_sync_workers_train_like_the_full_head():
    """Two workers on loopback (scheduler, server and workers set up as scripts/dist_train.sh does), 4 shards:
    for ArcFace and CosFace every worker's losses, backbone and shards after three SGD steps equal the full head
    on four devices. The servers only sum (no optimizer reaches them), so they need no more than mxnet."""
    env = dict(os.environ, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(free_port()), DMLC_NUM_SERVER="1",
               DMLC_NUM_WORKER="2", DMLC_NODE_HOST="127.0.0.1", DMLC_INTERFACE="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    worker = [sys.executable, os.path.join(ROOT, "tests", "partial_fc_worker.py"), "arcface", "cosface"]
    commands = [[sys.executable, "-c", "import mxnet"]] * 2 + [worker] * 2
    processes = [subprocess.Popen(command, env=dict(env, DMLC_ROLE=role), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for command, role in zip(commands, ["scheduler", "server", "worker", "worker"])]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in processes), "\n".join(o[-2000:] for o in outputs)
    results = [json.loads(line) for o in outputs[2:] for line in o.splitlines() if line.startswith("{")]
    assert sorted((r["loss"], r["rank"], r["shards"]) for r in results) == [
        ("arcface", 0, [0, 1]), ("arcface", 1, [2, 3]), ("cosface", 0, [0, 1]), ("cosface", 1, [2, 3])]
    for r in results:
        assert r["max_difference"] < 1e-5 and r["moved"] > 1e-3, r
