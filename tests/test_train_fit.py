"""End-to-end training on tiny networks: learning on two devices, exact resume, the NaN guard, plot-log."""
import json
import os
import signal

import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.train.checkpoint import load_state
from vargface.train.config import generate_config, read_config_file, run_facts
from vargface.train.trainer import TrainerPlugin, fit

SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), 24, 10, size=SIZE, seed=3, progress=False)
    make_synthetic_bin(str(root / "heldout.bin"), 24, 160, size=SIZE, seed=3)
    return str(root)


def tiny_config(data_dir, prefix, **overrides):
    options = dict(ctx="cpu:0,cpu:1", kvstore="device", per_batch_size=8, lr=0.1, loss_s=16.0, loss_m2=0.3,
                   lr_schedule="cosine", warmup_steps=4, frequent=5, verbose=15, end_epoch=4, prefix=prefix)
    options.update(overrides)
    return generate_config("r18_tiny", data_dir, "arcface", **options)


def quiet(lines):
    return lambda text: lines.append(text)


def test_two_devices_lower_loss_and_raise_heldout_accuracy(data_dir, tmp_path):
    lines = []
    result = fit(tiny_config(data_dir, str(tmp_path / "m")), log=quiet(lines))
    train = [e for e in result["history"] if e["type"] == "train"]
    verify = [e for e in result["history"] if e["type"] == "verify"]
    assert train[0]["step"] == 5 and result["num_update"] == 4 * (240 // 16)
    assert np.mean([e["loss"] for e in train[-2:]]) < train[0]["loss"] - 1.0
    assert verify[0]["step"] == 0  # the untrained baseline
    assert verify[-1]["heldout_acc"] > verify[0]["heldout_acc"] + 0.05
    assert any(line.startswith("Epoch[") and "samples/sec" in line and "lr=" in line for line in lines)
    # InsightFace-format embedding checkpoint: symbol with fc1_output, arrays of the embedding only.
    from vargface.symbols.checkpoint import load_checkpoint

    sym, arg, aux = load_checkpoint(result["prefix"], result["epoch"])
    saved = mx.nd.load(f"{result['prefix']}-{result['epoch']:04d}.params")
    assert "arg:fc7_weight" not in saved and set(saved) == {"arg:" + k for k in arg} | {"aux:" + k for k in aux}
    best_prefix, best_epoch = result["best_checkpoint"].rsplit(",", 1)
    load_checkpoint(best_prefix, int(best_epoch))
    assert result["best"]["heldout"]["accuracy"] == max(e["score"] for e in verify[1:])
    saved_config = read_config_file(f"{result['prefix']}-config.py")
    assert saved_config["num_classes"] == 24 and run_facts(f"{result['prefix']}-config.py")["contexts"] == [
        "cpu(0)", "cpu(1)"]
    logged = [json.loads(line) for line in open(f"{result['prefix']}-log.jsonl")]
    assert logged == json.loads(json.dumps(result["history"]))

    from vargface.train.plot_log import plot_log

    out = plot_log(f"{result['prefix']}-log.jsonl", str(tmp_path / "curves.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


class Probe(TrainerPlugin):
    """An extra input and loss (pulls embeddings towards a fixed target), and a signal sent at one batch."""

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at = 0, interrupt_at

    def extra_inputs(self, batch_size):
        return [("probe_target", (batch_size, 64))]

    def extra_losses(self, embedding, config):
        target = mx.sym.Variable("probe_target")
        loss = mx.sym.MakeLoss(0.01 * mx.sym.sum(mx.sym.square(embedding - target), axis=1), name="probe")
        return [(loss, "probe_loss")]

    def extra_data(self, batch):
        self.calls += 1
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        rows = np.asarray(batch.index, dtype=np.float32)[:, None]
        return [mx.nd.array(np.sin(rows * np.arange(64, dtype=np.float32) / 7.0))]


def final_arrays(prefix):
    info, arg, aux, _ = load_state(prefix)
    return info, {**arg, **{"aux:" + k: v for k, v in aux.items()}}


def test_interrupted_and_resumed_equals_uninterrupted(data_dir, tmp_path):
    # Cosine + warm-up, mirror augmentation, Dropout (r18 'E' output) and momentum all have to line up.
    options = dict(end_epoch=2, verbose=10, frequent=4, data_rand_mirror=True)
    full = fit(tiny_config(data_dir, str(tmp_path / "full"), **options), plugin=Probe(), log=quiet([]))
    assert full["num_update"] == 30 and not full["interrupted"]

    first = Probe(interrupt_at=19)  # SIGINT during epoch 1, batch 4
    part = fit(tiny_config(data_dir, str(tmp_path / "part"), **options), plugin=first, log=quiet([]))
    assert part["interrupted"] and part["num_update"] == 19
    info = load_state(str(tmp_path / "part"))[0]
    assert (info["epoch"], info["batch"], info["num_update"]) == (1, 4, 19)

    second = Probe()
    resumed = fit(tiny_config(data_dir, str(tmp_path / "part"), resume=True, **options), plugin=second,
                  log=quiet([]))
    assert resumed["num_update"] == 30 and second.calls == 11  # extra_data for every remaining batch
    _, a = final_arrays(str(tmp_path / "full"))
    _, b = final_arrays(str(tmp_path / "part"))
    assert set(a) == set(b) and "fc7_weight" in a
    for name in a:
        np.testing.assert_allclose(b[name].asnumpy(), a[name].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    probe = [e["probe_loss"] for e in resumed["history"] if e["type"] == "train"]
    assert probe and all(np.isfinite(probe))


def test_params_read_after_a_step_hold_that_steps_moving_statistics(data_dir):
    """MXNet's CPU BatchNorm writes its moving statistics in the backward pass without declaring it, so a copy queued
    right after a step can miss that step's update; the trainer reads its weights through current_params."""
    from vargface.train.config import resolve_dataset
    from vargface.train.trainer import build_training_module, current_params

    config = resolve_dataset(tiny_config(data_dir, "unused", ctx="cpu"))
    module = build_training_module(config)[1]
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01})
    batch = mx.io.DataBatch([mx.nd.random.uniform(0, 255, (8, 3, SIZE, SIZE))], [mx.nd.array(np.arange(8))])
    executor = module._exec_group.execs[0]
    for _ in range(3):
        module.forward_backward(batch)
        module.update()
        _, aux = current_params(module)
        for name, value in aux.items():
            np.testing.assert_array_equal(value.asnumpy(), executor.aux_dict[name].asnumpy(), err_msg=name)


class NanAt(TrainerPlugin):
    """Makes the loss NaN/inf at chosen calls, through an extra input fed to log()."""

    def __init__(self, bad_calls):
        self.calls, self.bad_calls = 0, set(bad_calls)

    def extra_inputs(self, batch_size):
        return [("gate", (batch_size,))]

    def extra_losses(self, embedding, config):
        gate = mx.sym.Variable("gate")
        return [(mx.sym.MakeLoss(mx.sym.log(gate) + 0 * mx.sym.mean(embedding, axis=1), name="gate_loss"), "gate")]

    def extra_data(self, batch):
        self.calls += 1
        return [mx.nd.zeros((len(batch.index),)) if self.calls in self.bad_calls else mx.nd.ones((len(batch.index),))]


def test_nan_guard_stop_names_the_batch_and_keeps_the_last_good_state(data_dir, tmp_path):
    prefix = str(tmp_path / "stop")
    with pytest.raises(VargfaceError, match=r"gate became -inf at epoch 0 batch 7 \(update 8\)"):
        fit(tiny_config(data_dir, prefix, ctx="cpu", verbose=5, val_targets=""), plugin=NanAt({8}), log=quiet([]))
    info, arg, aux, _ = load_state(prefix)
    assert info["num_update"] == 5 and all(np.all(np.isfinite(v.asnumpy())) for v in arg.values())


class PoisonAt(TrainerPlugin):
    """At one call, a finite extra loss whose gradient is scaled to overflow the weights in that update."""

    def __init__(self, bad_call):
        self.calls, self.bad_call = 0, bad_call

    def extra_inputs(self, batch_size):
        return [("gate", (batch_size,))]

    def extra_losses(self, embedding, config):
        gated = mx.sym.broadcast_mul(embedding, mx.sym.reshape(mx.sym.Variable("gate"), (-1, 1)))
        return [(mx.sym.MakeLoss(mx.sym.sum(gated, axis=1), grad_scale=1e38, name="poison"), "poison")]

    def extra_data(self, batch):
        self.calls += 1
        return [mx.nd.full((len(batch.index),), float(self.calls == self.bad_call))]


def test_nan_guard_keeps_non_finite_weights_out_of_checkpoints(data_dir, tmp_path):
    # The update at call 5 leaves the loss finite and the weights infinite, right before the checkpoint at update 5.
    prefix = str(tmp_path / "poison")
    with pytest.raises(VargfaceError, match=r"weight \S+ became non-finite at epoch 0 batch 4 \(update 5\)"):
        fit(tiny_config(data_dir, prefix, ctx="cpu", verbose=5, val_targets=""), plugin=PoisonAt(5), log=quiet([]))
    info, arg, aux, _ = load_state(prefix)
    assert info["num_update"] == 0 and all(np.all(np.isfinite(v.asnumpy())) for v in arg.values())
    assert not os.path.exists(prefix + "-0001.params")


def test_nan_guard_rollback_lowers_the_learning_rate_and_finishes(data_dir, tmp_path):
    prefix = str(tmp_path / "rollback")
    lines = []
    result = fit(tiny_config(data_dir, prefix, ctx="cpu", verbose=5, frequent=1, end_epoch=1, val_targets="",
                             on_nan="rollback", lr_schedule="step", lr_steps="1000", warmup_steps=0),
                 plugin=NanAt({8}), log=quiet(lines))
    rollback = [e for e in result["history"] if e["type"] == "rollback"]
    assert rollback == [{"type": "rollback", "step": 5, "at": 8, "lr_scale": 0.1, "metric": "gate"}]
    lrs = {e["step"]: e["lr"] for e in result["history"] if e["type"] == "train"}
    assert lrs[5] == pytest.approx(0.1) and lrs[max(lrs)] == pytest.approx(0.01)
    assert result["num_update"] == 240 // 8
    _, arg, _, _ = load_state(prefix)
    assert all(np.all(np.isfinite(v.asnumpy())) for v in arg.values())


def test_repeated_nans_keep_lowering_the_learning_rate(data_dir, tmp_path):
    # The second NaN comes before any new state is saved: the reloaded state still says scale 1.0.
    result = fit(tiny_config(data_dir, str(tmp_path / "twice"), ctx="cpu", verbose=5, frequent=1, max_steps=9,
                             val_targets="", on_nan="rollback", lr_schedule="step", lr_steps="1000", warmup_steps=0),
                 plugin=NanAt({8, 10}), log=quiet([]))
    assert [e["lr_scale"] for e in result["history"] if e["type"] == "rollback"] == pytest.approx([0.1, 0.01])
    lrs = {e["step"]: e["lr"] for e in result["history"] if e["type"] == "train"}
    assert lrs[max(lrs)] == pytest.approx(0.001) and result["num_update"] == 9
