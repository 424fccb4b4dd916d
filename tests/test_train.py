"""Trainer pieces without long training: config, CLI options, LR schedules, checkpoints, bad input."""
import glob
import json
import math
import os

import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.train import checkpoint as ckpt
from vargface.train.config import generate_config, resolve_dataset
from vargface.train.lr_scheduler import build


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), 6, 4, size=32, seed=1, progress=False)
    return str(root)


# ---- config ------------------------------------------------------------------------------------------------------
def test_presets_merge_in_insightface_order():
    c = generate_config("r100", "emore", "cosface")
    assert (c.network, c.emb_size, c.num_classes, c.image_size) == ("r100", 512, 85742, (112, 112))
    assert (c.loss_m1, c.loss_m2, c.loss_m3, c.loss_s) == (1.0, 0.0, 0.35, 64.0)
    assert (c.per_batch_size, c.lr, c.wd, c.mom, c.kvstore) == (128, 0.1, 0.0005, 0.9, "device")
    r = generate_config("y1", "retina", "combined", lr="0.01", lr_steps="10,20", data_rand_mirror="false")
    assert (r.num_classes, r.emb_size, r.lr, r.lr_steps, r.data_rand_mirror) == (93431, 128, 0.01, (10, 20), False)
    assert (r.loss_m2, r.loss_m3) == (0.3, 0.2)


def test_unknown_preset_or_key_names_near_matches():
    with pytest.raises(VargfaceError, match="unknown network preset 'r10'.*did you mean r100"):
        generate_config("r10")
    with pytest.raises(VargfaceError, match="--loss arcfase: expected one of .*did you mean arcface"):
        generate_config("y1", "emore", "arcfase")
    with pytest.raises(VargfaceError, match="unknown config key 'per_bach_size'.*per_batch_size"):
        generate_config("y1", per_bach_size=3)
    with pytest.raises(VargfaceError, match="--lr fast: expected a number"):
        generate_config("y1", lr="fast")


def test_folder_dataset_reads_property_and_checks_it(data_dir):
    c = resolve_dataset(generate_config("r18_tiny", data_dir, "arcface", val_targets=""))
    assert c.dataset == data_dir and c.num_classes == 6 and c.val_targets == ()
    with pytest.raises(VargfaceError, match=r"property says 6 classes but the config says num_classes=85742"):
        resolve_dataset(generate_config("r18_tiny", "emore", "arcface", dataset_path=data_dir))
    with pytest.raises(VargfaceError, match="verification pack .*lfw.bin does not exist"):
        resolve_dataset(generate_config("r18_tiny", data_dir, "arcface", val_targets="lfw"))


def test_cli_takes_every_key_and_rejects_unknown_options(capsys):
    from vargface.cli import build_parser
    from vargface.train.config import config_from_args

    args = build_parser().parse_args(["train", "--network", "y2", "--loss", "arcneg", "--per-batch-size", "32",
                                      "--lr_steps", "5,9", "--resume", "--ctx", "cpu:0,cpu:1"])
    c = config_from_args(args)
    assert (c.per_batch_size, c.lr_steps, c.resume, c.ctx, c.loss_name, c.emb_size) == \
        (32, (5, 9), True, "cpu:0,cpu:1", "arcneg", 256)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--lr-stepz", "5"])
    assert exit_info.value.code == 2 and "did you mean --lr-steps" in capsys.readouterr().err


# ---- learning-rate schedules ---------------------------------------------------------------------------------------
def test_step_schedule_with_warmup_drives_the_optimizer():
    c = generate_config("r18_tiny", lr_schedule="step", lr=0.1, lr_steps="10,20", warmup_steps=4, warmup_lr=0.0)
    schedule = build(c, iters_per_epoch=100)
    opt = mx.optimizer.SGD(learning_rate=0.1, lr_scheduler=schedule)
    rates = []
    for update in range(1, 26):  # what mx.optimizer asks for on its k-th update
        opt.num_update = update
        rates.append(opt._get_lr(0))
    np.testing.assert_allclose(rates[:4], [0.0, 0.1 / 3, 0.2 / 3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(rates[4:10], 0.1)
    np.testing.assert_allclose(rates[10:20], 0.01)
    np.testing.assert_allclose(rates[20:], 0.001)


def test_cosine_schedule_follows_the_formula_and_holds_its_end():
    c = generate_config("vargfacenet", lr=0.2, lr_min=0.002, warmup_steps=0, lr_total_steps=101)
    schedule = build(c, iters_per_epoch=10)
    for done in (0, 25, 50, 100):
        expected = 0.002 + (0.2 - 0.002) * (1 + math.cos(math.pi * done / 100)) / 2
        assert schedule(done + 1) == pytest.approx(expected)
    assert schedule(500) == pytest.approx(0.002)
    schedule.scale = 0.1  # the NaN rollback's lowered rate
    assert schedule(1) == pytest.approx(0.02)
    with pytest.raises(VargfaceError, match="lr-steps"):
        build(generate_config("y1", lr_schedule="step", lr_steps="30,20"), 10)


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def small_arrays(seed):
    rng = np.random.RandomState(seed)
    return {"w": mx.nd.array(rng.randn(3, 4)), "fc7_weight": mx.nd.array(rng.randn(5, 4))}, \
        {"bn_moving_mean": mx.nd.array(rng.randn(4))}


def test_a_failed_write_leaves_the_last_state_and_checkpoint_readable(tmp_path, monkeypatch):
    prefix = str(tmp_path / "m")
    arg, aux = small_arrays(0)
    emb = mx.sym.FullyConnected(mx.sym.Variable("data"), mx.sym.Variable("w"), no_bias=True, num_hidden=3,
                                name="fc1")
    ckpt.save_embedding(prefix, 1, emb, arg, aux)
    ckpt.save_state(prefix, {"num_update": 10, "epoch": 0, "batch": 10}, arg, aux)
    real_save = mx.nd.save

    def crash(path, arrays):  # a kill in the middle of writing: half a file, then the process dies
        real_save(path, arrays)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(mx.nd, "save", crash)
    new_arg, new_aux = small_arrays(1)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_state(prefix, {"num_update": 20, "epoch": 0, "batch": 20}, new_arg, new_aux)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_embedding(prefix, 1, emb, new_arg, new_aux)
    monkeypatch.setattr(mx.nd, "save", real_save)
    info, loaded_arg, loaded_aux, states = ckpt.load_state(prefix)
    assert info["num_update"] == 10 and states is None
    np.testing.assert_array_equal(loaded_arg["fc7_weight"].asnumpy(), arg["fc7_weight"].asnumpy())
    saved = mx.nd.load(f"{prefix}-0001.params")
    assert set(saved) == {"arg:w"}  # the embedding's arrays only: no classifier, nothing the graph does not use
    np.testing.assert_array_equal(saved["arg:w"].asnumpy(), arg["w"].asnumpy())
    assert not glob.glob(str(tmp_path / ".*tmp")) and not glob.glob(str(tmp_path / "*state-00000020*"))
    # A later good save replaces the pointer and removes the previous state's files.
    ckpt.save_state(prefix, {"num_update": 30, "epoch": 1, "batch": 0}, new_arg, new_aux)
    assert ckpt.load_state(prefix)[0]["num_update"] == 30
    assert sorted(os.path.basename(p) for p in glob.glob(prefix + "-state*")) == \
        ["m-state-00000030.params", "m-state.json"]


# ---- bad input: clear errors before any training -------------------------------------------------------------------
def test_bad_input_fails_before_training(data_dir, tmp_path):
    from vargface.train.trainer import fit

    logs = []
    base = dict(per_batch_size=4, val_targets="", max_steps=2, frequent=1, ctx="cpu")
    with pytest.raises(VargfaceError, match="gpu 0 does not exist"):
        fit(generate_config("r18_tiny", data_dir, "arcface", **dict(base, ctx="gpu:0")), log=logs.append)
    with pytest.raises(VargfaceError, match="--kvstore nccl sums gradients between the GPUs.*--ctx cpu:0 names CPUs"):
        fit(generate_config("r18_tiny", data_dir, "arcface", kvstore="nccl", **base), log=logs.append)
    with pytest.raises(VargfaceError, match="--kvstore fast: expected one of"):
        fit(generate_config("r18_tiny", data_dir, "arcface", kvstore="fast", **base), log=logs.append)
    with pytest.raises(VargfaceError, match="property says 6 classes.*num_classes=7"):
        fit(generate_config("r18_tiny", data_dir, "arcface", num_classes=7, **base), log=logs.append)
    with pytest.raises(VargfaceError, match="no training state"):
        fit(generate_config("r18_tiny", data_dir, "arcface", resume=True, prefix=str(tmp_path / "none"), **base),
            log=logs.append)
    assert logs == []
    prefix = str(tmp_path / "r18")
    fit(generate_config("r18_tiny", data_dir, "arcface", prefix=prefix, **base), log=logs.append)
    logs.clear()
    with pytest.raises(VargfaceError, match="trained with network 'r18_tiny'.*'vargfacenet_tiny'"):
        fit(generate_config("vargfacenet_tiny", data_dir, "arcface", prefix=prefix, resume=True, **base),
            log=logs.append)
    with pytest.raises(VargfaceError, match="does not belong to this network.*fc7_weight"):
        fit(generate_config("r18_tiny", data_dir, "arcface", prefix=prefix, resume=True, emb_size=32, **base),
            log=logs.append)
    assert logs == []
    saved = json.load(open(prefix + "-state.json"))
    assert saved["num_update"] == 2 and saved["network"] == "r18_tiny"


def test_pretrained_loads_the_embedding_only(data_dir, tmp_path):
    from vargface.symbols.checkpoint import load_checkpoint
    from vargface.train.trainer import fit

    base = dict(per_batch_size=4, val_targets="", frequent=1, ctx="cpu")
    first = fit(generate_config("r18_tiny", data_dir, "arcface", prefix=str(tmp_path / "a"), max_steps=2, **base),
                log=lambda line: None)
    spec = f"{first['prefix']},{first['epoch']}"
    # lr 0: the second run's weights stay exactly what --pretrained loaded (its classifier starts fresh).
    second = fit(generate_config("r18_tiny", data_dir, "arcface", prefix=str(tmp_path / "b"), max_steps=1, lr=0,
                                 pretrained=spec, **base), log=lambda line: None)
    _, arg_a, _ = load_checkpoint(first["prefix"], first["epoch"])
    _, arg_b, _ = load_checkpoint(second["prefix"], second["epoch"])
    assert set(arg_a) == set(arg_b)
    for name in set(arg_a) - {"fc1_gamma"}:  # fix_gamma: MXNet's BatchNorm resets it to 1 in each forward
        np.testing.assert_array_equal(arg_a[name].asnumpy(), arg_b[name].asnumpy(), err_msg=name)
    fc7_a = ckpt.load_state(first["prefix"])[1]["fc7_weight"].asnumpy()
    fc7_b = ckpt.load_state(second["prefix"])[1]["fc7_weight"].asnumpy()
    assert not np.array_equal(fc7_a, fc7_b) and second["num_update"] == 1
    with pytest.raises(VargfaceError, match="--pretrained .* does not fit the network"):
        fit(generate_config("vargfacenet_tiny", data_dir, "arcface", prefix=str(tmp_path / "c"), max_steps=1,
                            pretrained=spec, **base), log=lambda line: None)


# ---- optimizer state, locks, resume settings, option ranges --------------------------------------------------------
def small_run(data_dir, prefix, **overrides):
    from vargface.train.trainer import fit

    options = dict(per_batch_size=4, val_targets="", max_steps=2, frequent=1, ctx="cpu", prefix=str(prefix))
    options.update(overrides)
    return fit(generate_config("r18_tiny", data_dir, "arcface", **options), log=lambda line: None)


def test_optimizer_state_is_an_ndarray_file_and_pickles_are_refused(data_dir, tmp_path):
    import pickle

    prefix = tmp_path / "opt"
    small_run(data_dir, prefix)
    info, _, _, optimizer = ckpt.load_state(str(prefix))
    assert optimizer[0] == "arrays" and not glob.glob(str(tmp_path / "*.states"))
    momentum = mx.nd.load(optimizer[1])  # a plain NDArray file: no pickle anywhere in a state
    assert momentum and info["optimizer"]["num_update"] == 2
    assert any(np.abs(v.asnumpy()).sum() > 0 for v in momentum.values())
    with open(optimizer[1], "rb") as f:
        assert f.read(2) != b"\x80\x04"

    # A state from the pickle era: refused (nothing unpickled) unless the user vouches for it.
    marker = tmp_path / "ran"
    legacy = dict(info, version=1, states="opt-legacy.states", optimizer=None)
    (tmp_path / "opt-legacy.states").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    json.dump(legacy, open(tmp_path / "opt-state.json", "w"))
    with pytest.raises(VargfaceError, match="pickle.*can run code.*--trust-states"):
        small_run(data_dir, prefix, resume=True, max_steps=3)
    assert not marker.exists()
    (tmp_path / "opt-legacy.states").write_bytes(pickle.dumps({}))  # an empty but genuine MXNet updater state
    assert small_run(data_dir, prefix, resume=True, max_steps=3, trust_states=True)["num_update"] == 3

    # Damaged states are clear errors.
    small_run(data_dir, tmp_path / "dmg")
    optimizer = ckpt.load_state(str(tmp_path / "dmg"))[3]
    with open(optimizer[1], "r+b") as f:
        f.truncate(os.path.getsize(optimizer[1]) // 2)
    with pytest.raises(VargfaceError, match="optimizer state .* is damaged"):
        small_run(data_dir, tmp_path / "dmg", resume=True, max_steps=3)
    pointer = json.load(open(tmp_path / "dmg-state.json"))
    del pointer["params"]
    json.dump(pointer, open(tmp_path / "dmg-state.json", "w"))
    with pytest.raises(VargfaceError, match="not a complete training state: no params"):
        small_run(data_dir, tmp_path / "dmg", resume=True, max_steps=3)


def test_one_training_per_prefix_and_stale_locks_are_taken_over(data_dir, tmp_path):
    import socket
    import subprocess

    from vargface.train.trainer import TrainerPlugin, fit

    prefix = str(tmp_path / "locked")
    refusals = []

    class SecondTraining(TrainerPlugin):
        def extra_data(self, batch):
            if not refusals:
                with pytest.raises(VargfaceError) as error:
                    small_run(data_dir, prefix)
                refusals.append(str(error.value))
            return []

    fit(generate_config("r18_tiny", data_dir, "arcface", per_batch_size=4, val_targets="", max_steps=2, ctx="cpu",
                        prefix=prefix), plugin=SecondTraining(), log=lambda line: None)
    assert "another training writes to this prefix" in refusals[0] and f"pid {os.getpid()}" in refusals[0]
    assert not glob.glob(prefix + ".lock*")  # released at the end, nothing left beside it
    dead = subprocess.Popen(["true"])
    dead.wait()
    json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}, open(prefix + ".lock", "w"))
    assert small_run(data_dir, prefix, resume=True, max_steps=3)["num_update"] == 3  # a killed holder's lock
    assert not os.path.exists(prefix + ".lock")


def test_resume_refuses_settings_that_break_exactness(data_dir, tmp_path):
    small_run(data_dir, tmp_path / "r")
    with pytest.raises(VargfaceError, match=r"per_batch_size 4 -> 2.*seed 0 -> 7"):
        small_run(data_dir, tmp_path / "r", resume=True, per_batch_size=2, seed=7, max_steps=3)
    with pytest.raises(VargfaceError, match=r"loss_s 64.0 -> 32.0"):
        small_run(data_dir, tmp_path / "r", resume=True, loss_s="32", max_steps=3)
    with pytest.raises(VargfaceError, match=r"contexts 1 -> 2"):
        small_run(data_dir, tmp_path / "r", resume=True, ctx="cpu:0,cpu:1", max_steps=3)
    assert small_run(data_dir, tmp_path / "r", resume=True, max_steps=3, lr=0.05)["num_update"] == 3


def test_numeric_options_are_range_checked_and_one_warmup_step_works(data_dir, tmp_path):
    for key, value, message in [("warmup_steps", -1, "--warmup-steps -1: must be >= 0"),
                                ("lr", -0.1, "--lr -0.1: must be >= 0"),
                                ("lr_factor", 0, "--lr-factor 0: must be > 0"),
                                ("nan_lr_factor", 2, "--nan-lr-factor 2: must be > 0 and <= 1"),
                                ("data_color", 5, "--data-color 5: must be >= 0 and <= 2"),
                                ("lr_steps", "0,5", "--lr-steps 0,5: must be >= 1"),
                                ("loss_s", "nan", "--loss-s nan")]:
        with pytest.raises(VargfaceError, match=message):
            small_run(data_dir, tmp_path / key, **{key: value})
        assert not glob.glob(str(tmp_path / key) + "*")
    c = generate_config("r18_tiny", lr_schedule="step", lr=0.1, lr_steps="10", warmup_steps=1, warmup_lr=0.01)
    schedule = build(c, iters_per_epoch=100)
    assert [schedule(k) for k in (1, 2, 11)] == pytest.approx([0.01, 0.1, 0.01])
    assert small_run(data_dir, tmp_path / "w1", warmup_steps=1)["num_update"] == 2


def test_loss_name_option_and_sigterm_exit_code(data_dir, tmp_path, monkeypatch, capsys):
    import signal

    from vargface.cli import build_parser, main
    from vargface.train.config import config_from_args
    from vargface.train.trainer import TrainerPlugin

    args = build_parser().parse_args(["train", "--network", "r18_tiny", "--loss-name", "softmax"])
    assert config_from_args(args).loss_name == "softmax"
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        monkeypatch.setattr(TrainerPlugin, "extra_data", lambda self, batch, sig=sig: os.kill(os.getpid(), sig) or [])
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--network", "r18_tiny", "--dataset", data_dir, "--per-batch-size", "4", "--max-steps",
                  "5", "--target", "", "--ctx", "cpu", "--prefix", str(tmp_path / f"sig{code}")])
        assert exit_info.value.code == code
    assert "stopped at update 1" in capsys.readouterr().out
