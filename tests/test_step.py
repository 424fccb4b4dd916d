"""One training step (vargface.train.step): host syncs per step, clipping after the devices' gradients are summed,
and mixed precision (bfloat16 on this CPU): it trains, skips an overflowed step and resumes exactly."""
import json
import os
import signal

import mxnet as mx
import numpy as np
import pytest
from test_distill_teacher import save_tiny

from vargface.train.checkpoint import load_state
from vargface.train.config import generate_config
from vargface.train.trainer import TrainerPlugin, fit

SIZE = 32
DEVICES = [mx.cpu(0), mx.cpu(1)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), 12, 8, size=SIZE, seed=4, progress=False)
    return str(root)


# ---- clipping ---------------------------------------------------------------------------------------------------
def test_clipping_bounds_the_norm_of_the_summed_gradient_on_every_device():
    from vargface.train.step import TrainStep
    from vargface.train.trainer import build_training_module

    config = generate_config("pocketnet_s128", "emore", "arcface", net_channels=4, net_layers=4, emb_size=8,
                             image_size=SIZE, num_classes=6, per_batch_size=2)
    graph, module = build_training_module(config, contexts=DEVICES)
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.0, "rescale_grad": 0.5})
    names = set(graph.emb_sym.list_arguments()) - {"data"}
    rng = np.random.RandomState(0)
    batch = mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, (4, 3, SIZE, SIZE)))], [mx.nd.array([0, 1, 2, 3])])
    group = module._exec_group
    module.forward_backward(batch)  # each device's own gradient: what the step must sum
    applied = {n: sum(g.asnumpy() for g in grads) * 0.5 for n, grads in zip(group.param_names, group.grad_arrays)}
    norm = np.sqrt(sum(np.sum(applied[n].astype(np.float64) ** 2) for n in names))
    assert norm > 1.0

    def step(max_norm):  # lr 0: the weights, so each step's raw gradients, stay the same
        train_step = TrainStep(module, DEVICES, [], kvstore=mx.kv.create("device"), clip=(names, max_norm),
                               rescale_grad=0.5)
        train_step.start()
        reported = train_step(train_step.stage(batch), [], (0, 0, 0)).row[-1]
        return reported, {n: [g.asnumpy() * 0.5 for g in grads] for n, grads in zip(group.param_names,
                                                                                   group.grad_arrays)}

    reported, loose = step(norm * 10)
    assert reported == pytest.approx(norm, rel=1e-4)
    for name, copies in loose.items():  # summed over the devices, the same on each, not clipped
        for copy in copies:
            np.testing.assert_allclose(copy, applied[name], rtol=1e-5, atol=1e-8, err_msg=name)
    reported, tight = step(0.5)
    assert reported == pytest.approx(norm, rel=1e-4)
    clipped = np.sqrt(sum(np.sum(tight[n][0].astype(np.float64) ** 2) for n in names))
    assert clipped == pytest.approx(0.5, rel=1e-4)
    for name, copies in tight.items():  # one factor on every device (the direction kept); the classifier unclipped
        factor = 0.5 / norm if name in names else 1.0
        for copy in copies:
            np.testing.assert_allclose(copy, applied[name] * factor, rtol=1e-4, atol=1e-8, err_msg=name)


# ---- host syncs -------------------------------------------------------------------------------------------------
class Boundaries(TrainerPlugin):
    """Marks where each training step starts in the spy's record."""

    def __init__(self, record):
        self.record = record

    def before_batch(self, epoch, num_update):
        self.record.append("step")


def _syncs_per_step(monkeypatch, record):
    """Record every copy to the host and every merge of the devices' outputs."""
    for name in ("asnumpy", "asscalar"):
        original = getattr(mx.nd.NDArray, name)
        monkeypatch.setattr(mx.nd.NDArray, name, lambda self, *a, _o=original, _n=name, **k: (
            record.append(_n), _o(self, *a, **k))[1])
    original_outputs = mx.mod.Module.get_outputs

    def outputs(self, merge_multi_context=True):
        if merge_multi_context:
            record.append("merged outputs")
        return original_outputs(self, merge_multi_context)

    monkeypatch.setattr(mx.mod.Module, "get_outputs", outputs)


def _steps(record):
    """The calls made during each step but the last (which ends with the final checkpoint)."""
    text = " ".join(record)
    return [part.split() for part in text.split("step")[1:-1]]


@pytest.mark.parametrize("settings, per_step, logged", [
    (dict(), 0, 1),  # float32: nothing between logged lines, one copy per logged line
    (dict(clip_grad_norm=5.0), 1, 1),  # the norm (and the step's metrics with it) once a step, nothing more
    (dict(dtype="bfloat16"), 1, 1),  # the overflow flag (and the metrics) once a step
    # the sharded classifier samples on the host from the iterator's NumPy labels: no sync of its own
    (dict(fc_parallel=True, sample_ratio=0.5), 0, 1),
    (dict(fc_parallel=True, clip_grad_norm=5.0), 1, 1),
])
def test_a_step_syncs_the_host_at_most_as_stated(settings, per_step, logged, data_dir, tmp_path, monkeypatch):
    record = []
    _syncs_per_step(monkeypatch, record)
    config = generate_config("r18_tiny", data_dir, "arcface", ctx="cpu:0,cpu:1", per_batch_size=4, max_steps=9,
                             frequent=4, verbose=100, val_targets="", prefix=str(tmp_path / "m"), **settings)
    fit(config, plugin=Boundaries(record), log=lambda line: None)
    steps = _steps(record)
    assert len(steps) == 8
    for number, calls in enumerate(steps, 1):
        allowed = ["asnumpy"] * (per_step if per_step else logged if number % 4 == 0 else 0)
        assert calls == allowed, (number, calls)


def test_a_live_teacher_adds_no_host_sync(data_dir, tmp_path, monkeypatch):
    from vargface.eval.runner import InferenceRunner
    from vargface.train.distill import DistillPlugin, distill

    teacher = save_tiny(str(tmp_path / "teacher"), emb_size=16, input_size=SIZE)[0]
    record, original = [], DistillPlugin.before_batch

    def marking(self, epoch, num_update):
        record.append("step")
        return original(self, epoch, num_update)

    monkeypatch.setattr(DistillPlugin, "before_batch", marking)
    config = generate_config("r18_tiny", data_dir, "arcface", command="distill", teacher=teacher, emb_size=16,
                             kd=["angular:embedding@7", "l2:stride8=stride8"], ctx="cpu:0,cpu:1", per_batch_size=4,
                             max_steps=7, frequent=3, verbose=100, val_targets="", prefix=str(tmp_path / "s"))
    _syncs_per_step(monkeypatch, record)
    bind = InferenceRunner._bind

    def binding(self, batch_size):  # the teacher's one bind derives its inference graph's arrays on the host
        record.append("bind")
        size = len(record)
        bind(self, batch_size)
        del record[size:]

    monkeypatch.setattr(InferenceRunner, "_bind", binding)
    distill(config, log=lambda line: None)
    assert [calls for calls in _steps(record)] == [["bind"], [], ["asnumpy"], [], [], ["asnumpy"]]


# ---- mixed precision ----------------------------------------------------------------------------------------------
class OverflowAt(TrainerPlugin):
    """At one call, a finite extra loss whose gradient (1e36 per element) overflows float32 once the loss scale
    multiplies it; zero at the others. A signal at another call."""

    def __init__(self, overflow_call, signal_call=None):
        self.calls, self.overflow_call, self.signal_call = 0, overflow_call, signal_call

    def extra_inputs(self, batch_size):
        return [("gate", (batch_size,))]

    def extra_losses(self, embedding, config):
        gated = mx.sym.broadcast_mul(embedding, mx.sym.reshape(mx.sym.Variable("gate"), (-1, 1)))
        return [(mx.sym.MakeLoss(mx.sym.sum(gated, axis=1), name="poison"), "poison")]

    def extra_data(self, batch):
        self.calls += 1
        if self.calls == self.signal_call:
            os.kill(os.getpid(), signal.SIGINT)
        return [mx.nd.full((len(batch.index),), 1e36 if self.calls == self.overflow_call else 0.0)]


def test_bfloat16_trains_skips_an_overflow_and_resumes_exactly(data_dir, tmp_path):
    def config(prefix, **more):
        return generate_config("r18_tiny", data_dir, "arcface", dtype="bfloat16", ctx="cpu:0,cpu:1",
                               per_batch_size=4, lr=0.1, loss_s=16.0, loss_m2=0.3, end_epoch=2, frequent=3,
                               verbose=8, val_targets="", prefix=str(tmp_path / prefix), **more)

    lines = []
    full = fit(config("full"), plugin=OverflowAt(5), log=lines.append)
    batches = 2 * (96 // 8)
    assert full["num_update"] == batches - 1 and not full["interrupted"]  # the overflowed batch made no update
    overflow, = [e for e in full["history"] if e["type"] == "overflow"]
    assert overflow == {"type": "overflow", "step": 4, "epoch": 0, "batch": 4, "loss_scale": 32768.0}
    assert any("overflowed at loss scale 65536: batch skipped, loss scale now 32768" in line for line in lines)
    losses = [e["loss"] for e in full["history"] if e["type"] == "train"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3  # it learns (each line is 3 noisy batches of 8)
    info, arg, aux, _ = load_state(str(tmp_path / "full"))
    assert info["loss_scale"] == 32768.0 and all(v.dtype == np.float32 for v in {**arg, **aux}.values())
    saved = mx.nd.load(f"{tmp_path / 'full'}-0001.params")
    assert saved and all(v.dtype == np.float32 for v in saved.values())  # checkpoints stay float32

    part = fit(config("part"), plugin=OverflowAt(5, signal_call=14), log=lambda line: None)
    assert part["interrupted"] and part["num_update"] == 13
    resumed = fit(config("part", resume=True), plugin=OverflowAt(None), log=lambda line: None)
    assert resumed["num_update"] == full["num_update"]
    a, b = load_state(str(tmp_path / "full")), load_state(str(tmp_path / "part"))
    assert b[0]["loss_scale"] == a[0]["loss_scale"] and b[0]["loss_scale_clean"] == a[0]["loss_scale_clean"]
    for name in a[1]:
        np.testing.assert_allclose(b[1][name].asnumpy(), a[1][name].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    momentum = [mx.nd.load(os.path.join(tmp_path, load_state(str(tmp_path / p))[0]["optimizer"]["file"]))
                for p in ("full", "part")]
    assert momentum[0].keys() == momentum[1].keys()
    for key in momentum[0]:
        np.testing.assert_allclose(momentum[1][key].asnumpy(), momentum[0][key].asnumpy(), rtol=1e-5, atol=1e-6)
    logged = [json.loads(line) for line in open(f"{tmp_path / 'part'}-log.jsonl")]
    assert [e["type"] for e in logged].count("overflow") == 1


def test_loss_scaling_scales_every_loss_gradient_a_scalar_one_too_and_keeps_a_blocked_output():
    """The heads label smoothing and RegularFace add: a logged BlockGrad output (no gradient) and a one-number
    MakeLoss; with the loss scale S every gradient is S times the unscaled one, the forward values unchanged."""
    from vargface.train import precision

    x, label = mx.sym.Variable("x"), mx.sym.Variable("softmax_label")
    heads = [mx.sym.SoftmaxOutput(x, label, name="softmax"), mx.sym.BlockGrad(mx.sym.sum(x, axis=1), name="logged"),
             mx.sym.MakeLoss(mx.sym.sum(mx.sym.square(x)).reshape((1,)), name="scalar")]
    scaled = mx.sym.Group(precision.scale_loss_gradients(heads))
    rng = np.random.RandomState(0)
    values = {"x": mx.nd.array(rng.randn(4, 5)), "softmax_label": mx.nd.array([0, 1, 2, 3])}

    def run(symbol, scale=None):
        args = dict(values, **({precision.SCALE_INPUT: mx.nd.full((4,), scale)} if scale else {}))
        grad = mx.nd.zeros((4, 5))
        exe = symbol.bind(mx.cpu(), args, args_grad={"x": grad})
        outs = [o.asnumpy() for o in exe.forward(is_train=True)]
        exe.backward()
        return outs, grad.asnumpy()

    plain_outs, plain = run(mx.sym.Group(heads))
    outs, grad = run(scaled, 8.0)
    for a, b in zip(plain_outs, outs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(grad, 8.0 * plain, rtol=1e-6)
    assert np.abs(plain).max() > 0
