"""`--fc-parallel` in the trainer on cpu:0,cpu:1: at sample ratio 1 the run equals the full softmax head (losses,
weights after SGD steps; with a plugin loss and a detached embedding too); a sampled run resumes exactly, learns,
and refuses another shard layout; the classifier's memory is stated and refused when it cannot fit."""
import mxnet as mx
import numpy as np
import pytest
from test_train_fit import data_dir  # noqa: F401  (24 identities of 10 images and a verification pack)

from vargface.errors import VargfaceError
from vargface.train.checkpoint import load_state
from vargface.train.config import generate_config
from vargface.train.partial_fc import merge_shards
from vargface.train.trainer import TrainerPlugin, fit

SIZE = 32


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory):
    """120 identities of 2 images: a shard of 60 samples a tenth of its classes beside the batch's."""
    from vargface.data.synth import make_synthetic_rec

    root = tmp_path_factory.mktemp("many") / "data"
    make_synthetic_rec(str(root), 120, 2, size=SIZE, seed=4, progress=False)
    return str(root)


def tiny_config(data_dir, prefix, loss="arcface", **overrides):
    options = dict(ctx="cpu:0,cpu:1", kvstore="device", per_batch_size=8, lr=0.1, loss_s=16.0, lr_schedule="step",
                   lr_steps="2", lr_factor=0.5, frequent=1, verbose=100, max_steps=3, val_targets=[],
                   fc7_lr_mult=2.0, prefix=prefix)
    options.update(overrides)
    return generate_config("r18_tiny", data_dir, loss, **options)


# Runs compared over several steps use a smooth activation: two runs equal to float rounding (1e-7) may still
# disagree where a ReLU or PReLU input sits within rounding of zero, and that kink changes the next gradients by
# far more than 1e-5 (seen with PReLU here). The classifier's exactness is what these tests check.
SMOOTH = dict(net_opts={"act_type": "softrelu"})


def quiet(lines=None):
    lines = [] if lines is None else lines
    return lines.append


def state_arrays(prefix):
    """(the embedding's arrays, the whole classifier) of the training state at ``prefix``."""
    info, arg, aux, _ = load_state(prefix)
    arrays = {**arg, **{"aux:" + k: v.asnumpy() for k, v in aux.items()}}
    arrays = {k: v.asnumpy() if hasattr(v, "asnumpy") else v for k, v in arrays.items()}
    if info.get("fc7_shards"):
        import os

        arrays["fc7_weight"] = merge_shards([os.path.join(os.path.dirname(prefix), info["fc7_shards"]["file"])])
    return info, arrays


def assert_same_run(a, b, tolerance=1e-5):
    (info_a, arrays_a), (info_b, arrays_b) = a, b
    assert info_a["num_update"] == info_b["num_update"]
    assert set(arrays_a) == set(arrays_b) and "fc7_weight" in arrays_a
    for name in arrays_a:
        np.testing.assert_allclose(arrays_b[name], arrays_a[name], rtol=tolerance, atol=tolerance, err_msg=name)


def losses(result):
    return [e["loss"] for e in result["history"] if e["type"] == "train"]


@pytest.mark.parametrize("loss, smoothing", [("arcface", 0.0), ("cosface", 0.1)])
def test_ratio_one_trains_exactly_like_the_full_head(data_dir, tmp_path, loss, smoothing):
    lines = []
    full = fit(tiny_config(data_dir, str(tmp_path / "full"), loss, label_smoothing=smoothing, **SMOOTH), log=quiet())
    sharded = fit(tiny_config(data_dir, str(tmp_path / "pfc"), loss, label_smoothing=smoothing, fc_parallel=True,
                              **SMOOTH), log=quiet(lines))
    assert len(losses(full)) == 3 and np.allclose(losses(sharded), losses(full), atol=1e-5)
    assert_same_run(state_arrays(str(tmp_path / "full")), state_arrays(str(tmp_path / "pfc")))
    assert any("fc7 per device: weights" in line and "2 shard(s) of 12 classes" in line for line in lines)
    # the checkpoints stay the embedding network alone
    saved = mx.nd.load(str(tmp_path / "pfc-0001.params"))
    assert saved and not any("fc7" in name for name in saved)


class Pull(TrainerPlugin):
    """A plugin loss on the embedding (as distillation adds), and optionally the embedding detached from the
    margin loss (distillation's --kd-only)."""

    def __init__(self, detach):
        self.detach = detach

    def extra_losses(self, embedding, config):
        loss = mx.sym.MakeLoss(0.01 * mx.sym.sum(mx.sym.square(embedding), axis=1), normalization="batch",
                               name="pull")
        return [(loss, "pull_loss")]

    def detach_margin_loss(self):
        return self.detach


@pytest.mark.parametrize("detach", [False, True])
def test_plugin_losses_and_a_detached_embedding_train_as_with_the_full_head(data_dir, tmp_path, detach):
    full = fit(tiny_config(data_dir, str(tmp_path / "full"), **SMOOTH), plugin=Pull(detach), log=quiet())
    fit(tiny_config(data_dir, str(tmp_path / "pfc"), fc_parallel=True, **SMOOTH), plugin=Pull(detach), log=quiet())
    assert all(np.isfinite(e["pull_loss"]) for e in full["history"] if e["type"] == "train")
    assert_same_run(state_arrays(str(tmp_path / "full")), state_arrays(str(tmp_path / "pfc")))


def test_sampled_run_resumes_exactly_and_refuses_another_layout(many_classes, tmp_path, run_cli):
    options = dict(fc_parallel=True, sample_ratio=0.1, verbose=3, max_steps=6)
    lines = []
    fit(tiny_config(many_classes, str(tmp_path / "whole"), **options), log=quiet(lines))
    assert any("loss and acc are over the sampled centres" in line for line in lines)
    part = str(tmp_path / "part")
    fit(tiny_config(many_classes, part, **dict(options, max_steps=3)), log=quiet())
    resumed = fit(tiny_config(many_classes, part, resume=True, **options), log=quiet())
    assert resumed["num_update"] == 6
    assert_same_run(state_arrays(str(tmp_path / "whole")), state_arrays(part), tolerance=1e-6)
    info = load_state(part)[0]
    assert info["fc7_shards"]["layout"].startswith("2 shard(s) of 60 classes") and info["optimizer"]
    code, stdout, _ = run_cli("merge-fc7", part + "-state.json", "--out", tmp_path / "fc7.params")
    assert code == 0 and "120 x 64" in stdout
    np.testing.assert_array_equal(mx.nd.load(str(tmp_path / "fc7.params"))["arg:fc7_weight"].asnumpy(),
                                  state_arrays(part)[1]["fc7_weight"])

    with pytest.raises(VargfaceError, match=r"holds the classifier as 2 shard\(s\) of 60 classes .* this run splits "
                                            r"it as 1 shard\(s\) of 120 classes"):
        fit(tiny_config(many_classes, part, resume=True, **dict(options, ctx="cpu", max_steps=9)), log=quiet())
    with pytest.raises(VargfaceError, match=r"holds a sharded classifier \(--fc-parallel\): resume with it"):
        fit(tiny_config(many_classes, part, resume=True, max_steps=9, verbose=3), log=quiet())
    fit(tiny_config(many_classes, str(tmp_path / "plain"), max_steps=1), log=quiet())
    with pytest.raises(VargfaceError, match="holds a classifier that is not sharded"):
        fit(tiny_config(many_classes, str(tmp_path / "plain"), resume=True, **options), log=quiet())


def test_a_sampled_run_learns(data_dir, tmp_path):
    result = fit(tiny_config(data_dir, str(tmp_path / "m"), fc_parallel=True, sample_ratio=0.1, max_steps=60,
                             loss_m2=0.3, lr_schedule="cosine", warmup_steps=4, frequent=5, verbose=60,
                             val_targets="heldout", regularface=0.5), log=quiet())
    train = losses(result)
    assert all(e["regularface"] > 0 for e in result["history"] if e["type"] == "train")
    verify = [e["heldout_acc"] for e in result["history"] if e["type"] == "verify"]
    assert np.mean(train[-2:]) < train[0] - 1.0
    assert verify[-1] > 0.7 and verify[-1] > verify[0] + 0.1  # above chance, and above the untrained network


def test_a_classifier_that_cannot_fit_is_refused_before_training(data_dir, tmp_path, monkeypatch):
    import vargface.train.partial_fc as partial_fc

    monkeypatch.setattr(partial_fc, "host_memory", lambda: 1024)  # 1 KB: even this tiny classifier does not fit
    for sharded in (False, True):
        with pytest.raises(VargfaceError, match=r"needs [\d.]+ GB of host memory on 2 cpu device\(s\), and 0.00 GB is "
                                                r"available \(fc7 per device: weights"):
            fit(tiny_config(data_dir, str(tmp_path / f"m{sharded}"), fc_parallel=sharded), log=quiet())


def test_settings_that_cannot_shard_are_refused():
    with pytest.raises(VargfaceError, match="--fc-parallel shards normalised class centres: it needs a margin loss"):
        generate_config("r18_tiny", "emore", "softmax", fc_parallel=True)
    with pytest.raises(VargfaceError, match="use --kvstore dist_sync or dist_device_sync, not dist_async"):
        generate_config("r18_tiny", "emore", "arcface", fc_parallel=True, kvstore="dist_async")
    with pytest.raises(VargfaceError, match="--sample-ratio 0.1 samples the centres of a sharded classifier: add "
                                            "--fc-parallel"):
        generate_config("r18_tiny", "emore", "arcface", sample_ratio=0.1)
    with pytest.raises(VargfaceError, match="--fc-parallel trains its classifier in float32: --dtype bfloat16"):
        generate_config("r18_tiny", "emore", "arcface", fc_parallel=True, dtype="bfloat16")
    with pytest.raises(VargfaceError, match=r"--sample-ratio 0: must be > 0 and <= 1"):
        generate_config("r18_tiny", "emore", "arcface", fc_parallel=True, sample_ratio="0")


def test_clipping_bounds_the_summed_embedding_gradient_and_leaves_the_classifier():
    """The training step with the sharded classifier: the embedding network's gradient is summed over the devices,
    its norm read once and clipped on every device; the classifier's centres are not clipped."""
    from vargface.train.partial_fc import PartialFC
    from vargface.train.step import TrainStep
    from vargface.train.trainer import build_training_module

    devices = [mx.cpu(0), mx.cpu(1)]
    config = generate_config("pocketnet_s128", "emore", "arcface", net_channels=4, net_layers=4, emb_size=8,
                             image_size=SIZE, num_classes=6, per_batch_size=2, fc_parallel=True)
    graph, module = build_training_module(config, contexts=devices)
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.0, "rescale_grad": 0.5})
    engine = PartialFC(config, devices)
    engine.init_weights()
    names = set(graph.emb_sym.list_arguments()) - {"data"}
    rng = np.random.RandomState(0)
    labels = np.array([0, 1, 4, 5])
    batch = mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, (4, 3, SIZE, SIZE)))], [mx.nd.array(labels)])
    group = module._exec_group
    engine.train_step(module, batch, labels, 1)  # each device's own gradient: what the step must sum
    applied = {n: sum(g.asnumpy() for g in grads) * 0.5 for n, grads in zip(group.param_names, group.grad_arrays)}
    centres = [w.grad.asnumpy() for w in engine.weights]
    norm = np.sqrt(sum(np.sum(applied[n].astype(np.float64) ** 2) for n in names))
    assert norm > 0.5

    def step(max_norm):  # learning rate 0: the weights, so each step's gradients, stay the same
        train_step = TrainStep(module, devices, [], kvstore=mx.kv.create("device"), clip=(names, max_norm),
                               rescale_grad=0.5, head=engine)
        train_step.start(None, lambda update: 0.0)
        outcome = train_step(train_step.stage(batch), [], (0, 0, 0))
        return outcome.row, {n: [g.asnumpy() * 0.5 for g in grads] for n, grads in zip(group.param_names,
                                                                                     group.grad_arrays)}

    row, loose = step(norm * 10)
    assert row[-1] == pytest.approx(norm, rel=1e-4) and np.isfinite(row[0]) and row[0] > 0
    for name, copies in loose.items():
        for copy in copies:
            np.testing.assert_allclose(copy, applied[name], rtol=1e-5, atol=1e-8, err_msg=name)
    row, tight = step(0.5)
    clipped = np.sqrt(sum(np.sum(tight[n][0].astype(np.float64) ** 2) for n in names))
    assert row[-1] == pytest.approx(norm, rel=1e-4) and clipped == pytest.approx(0.5, rel=1e-4)
    for name, copies in tight.items():
        for copy in copies:
            np.testing.assert_allclose(copy, applied[name] * 0.5 / norm, rtol=1e-4, atol=1e-8, err_msg=name)
    for mine, before in zip(engine.weights, centres):  # the classifier's gradient as it was, unclipped
        np.testing.assert_allclose(mine.grad.asnumpy(), before, rtol=1e-5, atol=1e-8)
