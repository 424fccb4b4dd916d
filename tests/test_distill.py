"""Distillation end to end on tiny networks: frozen teacher, recursive generations, resume, cache, bad input."""
import json
import os
import signal

import mxnet as mx
import numpy as np
import pytest
from test_distill_teacher import save_tiny

from vargface.errors import VargfaceError
from vargface.symbols.checkpoint import load_checkpoint, parse_model_arg
from vargface.train.config import generate_config
from vargface.train.distill import DistillPlugin, distill, make_plugin
from vargface.train.run_files import RunFiles
from vargface.train.teacher import Teacher
from vargface.train.teacher_cache import TeacherCache, build_cache

EMB = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), identities=6, per_identity=8, size=32, seed=0, progress=False)
    make_synthetic_bin(str(root / "lfw.bin"), identities=4, pairs=8, size=32, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory):
    return save_tiny(str(tmp_path_factory.mktemp("teacher") / "teacher"), emb_size=EMB, input_size=32)[0]


def student_config(data_dir, prefix, **overrides):
    """A `vargface distill` config of a tiny student, resolved as the command line's would be."""
    options = dict(emb_size=EMB, per_batch_size=8, max_steps=8, frequent=1, verbose=8, lr=0.05, ckpt=2,
                   ctx="cpu", prefix=str(prefix), seed=1)
    options.update(overrides)
    return generate_config("r18_tiny", data_dir, "arcface", command="distill", **options)


def manifest_path(prefix):
    return RunFiles(prefix).lineage


def _arrays(params):
    return {k: v.asnumpy().copy() for k, v in params.items()}


def test_recursive_generations_frozen_teacher_and_resume(tmp_path, data_dir, teacher_model, monkeypatch):
    _, arg_before, aux_before = load_checkpoint(*parse_model_arg(teacher_model))
    arg_before, aux_before = _arrays(arg_before), _arrays(aux_before)
    params_file = teacher_model.replace(",1", "-0001.params")
    file_before = open(params_file, "rb").read()

    # the weights every fit() starts from: captured when the trainer creates its (fresh) optimizer
    starts = []
    original = mx.mod.Module.init_optimizer

    def spy(module, *args, **kwargs):
        arg, aux = module.get_params()
        starts.append({**_arrays(arg), **_arrays(aux)})
        return original(module, *args, **kwargs)

    monkeypatch.setattr(mx.mod.Module, "init_optimizer", spy)

    # stop generation 2 at its 3rd update with SIGINT, as a user would, then resume the chain
    plugin_extra = DistillPlugin.extra_data
    calls = {"n": 0}
    teachers = set()

    def interrupting(self, batch):
        calls["n"] += 1
        teachers.add(self.teacher)
        if calls["n"] == 8 + 3:
            signal.raise_signal(signal.SIGINT)
        return plugin_extra(self, batch)

    monkeypatch.setattr(DistillPlugin, "extra_data", interrupting)
    prefix = tmp_path / "chain" / "student"
    lines = []
    config = student_config(data_dir, prefix, teacher=teacher_model, kd_type="angular", kd_weight=20.0, generations=2)
    first = distill(config, log=lines.append)
    assert first["interrupted"]
    assert [g["status"] for g in first["generations"]] == ["done", "running"]
    assert len(starts) == 2

    manifest = distill(config.replace(resume=True), log=lines.append)
    assert not manifest.get("interrupted")
    # generation 1 is not rerun; generation 2 continues at its 4th batch: 8 + 3 + 5 batches in all
    assert len(starts) == 3 and calls["n"] == 16
    assert any("resuming" in line and "batch 3" in line for line in lines)

    # the teacher was loaded once for the whole chain and never changed: in memory and on disk
    assert len(teachers) == 2  # one per distill call
    teacher = teachers.pop()
    arg_after, aux_after = (_arrays(p) for p in teacher.get_params())
    for before, after in ((arg_before, arg_after), (aux_before, aux_after)):
        assert before.keys() == after.keys()
        for name in before:
            assert np.array_equal(before[name], after[name]), name
    # ... and what its executors compute is still the checkpoint's network
    from vargface.eval.runner import InferenceRunner

    side = teacher.input_size
    images = np.random.RandomState(0).uniform(0, 255, (2, 3, side, side)).astype(np.float32)
    fresh = InferenceRunner(*load_checkpoint(*parse_model_arg(teacher_model)), ctx="cpu", batch_size=2)
    np.testing.assert_allclose(teacher.runner.forward(images), fresh.forward(images), rtol=1e-5, atol=1e-6)
    assert open(params_file, "rb").read() == file_before

    # generation 2 started from generation 1's final weights (and those differ from generation 1's start)
    gen1_final = manifest["generations"][0]["final"]
    assert gen1_final == f"{prefix}-gen1,1"
    _, final_args, final_aux = load_checkpoint(f"{prefix}-gen1", 1)
    for name, value in {**final_args, **final_aux}.items():
        assert np.array_equal(starts[1][name], value.asnumpy()), name
    assert any(not np.array_equal(starts[0][n], v.asnumpy()) for n, v in final_args.items())

    # the distillation loss fell during generation 1
    log = [json.loads(line) for line in open(f"{prefix}-gen1-log.jsonl")]
    kd = [e["kd_loss"] for e in log if e["type"] == "train"]
    assert len(kd) == 8 and np.mean(kd[-2:]) < 0.7 * np.mean(kd[:2])

    # the manifest lists every generation with its init, checkpoint, config and verification results
    on_disk = json.load(open(manifest_path(str(prefix))))
    assert on_disk["teacher"]["checksum"] == teacher.checksum
    gens = on_disk["generations"]
    assert [g["generation"] for g in gens] == [1, 2] and all(g["status"] == "done" for g in gens)
    assert gens[0]["init"] is None and gens[1]["init"] == gen1_final
    assert gens[1]["final"] == f"{prefix}-gen2,1" and os.path.exists(f"{prefix}-gen2-0001.params")
    assert all(0 <= g["verification"]["lfw"]["accuracy"] <= 1 for g in gens)
    assert gens[1]["config"]["pretrained"] == gen1_final
    table = lines[-1]
    assert "gen" in table and f"{prefix}-gen2,1" in table and len(table.splitlines()) == 4

    # a finished chain is not silently overwritten, nor continued with other distillation settings
    with pytest.raises(VargfaceError, match="--kd angular:embedding@20, not angular:embedding@1"):
        distill(config.replace(resume=True, kd_weight=1.0, generations=3), log=lines.append)
    with pytest.raises(VargfaceError, match=f"--prefix {prefix} already holds a run"):
        distill(config.replace(generations=1), log=lines.append)
    lines.clear()
    assert distill(config.replace(resume=True), log=lines.append)["generations"] == gens
    assert lines[-1] == f"distill: the chain at {prefix} already finished (2 generations); nothing changed"


def test_cache_matches_live_teacher_and_is_used_for_mirror_only(tmp_path, data_dir, teacher_model):
    from vargface.data.iterator import FaceRecordIter

    teacher = Teacher(teacher_model)
    path = build_cache(teacher, data_dir, path=str(tmp_path / "t.kdcache"), batch_size=20, progress=False)
    cache = TeacherCache(path, data_dir, teacher, image_shape=(3, 32, 32))
    it = FaceRecordIter(path_imgrec=data_dir, batch_size=16, data_shape=(3, 32, 32), shuffle=True,
                        rand_mirror=True, seed=5)
    mirrored = []
    for batch in it:
        live = teacher.embed(batch.data[0]).asnumpy()
        np.testing.assert_allclose(cache.lookup(batch.index, batch.mirrored), live, rtol=1e-4, atol=1e-4)
        mirrored.extend(batch.mirrored)
    assert 0 < sum(mirrored) < len(mirrored), "both plain and mirrored images must have been compared"
    it.close()

    lines = []
    config = student_config(data_dir, tmp_path / "s", kd="angular:embedding@1", teacher_cache=path)
    assert make_plugin(config, teacher, log=lines.append).cache is not None
    assert make_plugin(student_config(data_dir, tmp_path / "s", kd="angular:embedding@1", teacher_cache=path,
                                      data_color=1), teacher, log=lines.append).cache is None
    assert "live teacher runs instead" in lines[-2]


def test_cli_cache_then_distill_with_cache(tmp_path, data_dir, teacher_model, capsys):
    from vargface.cli import main

    def run(*argv):
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        return exit_info.value.code, capsys.readouterr()

    data_files = sorted(os.listdir(data_dir))
    code, out = run("distill", "cache", "--teacher", teacher_model, "--dataset", data_dir, "--per-batch-size", "16")
    path = teacher_model.rpartition(",")[0] + "-0001.data.kdcache"  # beside the teacher, not in the data folder
    assert code == 0 and path in out.out and os.path.isfile(path) and sorted(os.listdir(data_dir)) == data_files
    code, out = run("distill", "cache", "--teacher", teacher_model, "--dataset", data_dir)
    assert code == 1 and "exists" in out.err
    prefix = str(tmp_path / "cli" / "student")
    code, out = run("distill", "--teacher", teacher_model, "--teacher-cache", "auto", "--kd-weight", "5",
                    "--network", "r18_tiny", "--dataset", data_dir, "--emb-size", str(EMB), "--ctx", "cpu:0,cpu:1",
                    "--per-batch-size", "4", "--max-steps", "2", "--verbose", "2", "--frequent", "1", "--prefix", prefix)
    assert code == 0, out.err
    assert f"teacher embeddings from cache {path}" in out.out and "kd_loss=" in out.out
    manifest = json.load(open(manifest_path(prefix)))
    assert manifest["teacher_cache"] == path and manifest["generations"][0]["status"] == "done"
    assert np.isfinite(manifest["generations"][0]["kd_loss"])
    assert "distillation lineage" in out.out


def test_bad_input_stops_before_training(tmp_path, data_dir, teacher_model, capsys, monkeypatch):
    from vargface.data.synth import make_synthetic_rec

    from vargface.cli import main

    # missing teacher checkpoint / no fc1_output: clear CLI errors, exit 1
    model = str(tmp_path / "none") + ",1"
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--teacher", model, "--network", "r18_tiny", "--dataset", data_dir])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "vargface distill: error: --teacher" in err and "does not exist" in err
    data = mx.sym.Variable("data")
    mx.model.save_checkpoint(str(tmp_path / "cls"), 1, mx.sym.FullyConnected(data, num_hidden=3, name="fc"),
                             {"fc_weight": mx.nd.zeros((3, 3072)), "fc_bias": mx.nd.zeros(3)}, {})
    with pytest.raises(VargfaceError, match="--teacher .*fc1_output"):
        distill(student_config(data_dir, tmp_path / "a", teacher=str(tmp_path / "cls") + ",1"))

    teacher = Teacher(teacher_model)
    # feature maps of different sizes: refused before any checkpoint is written, naming both shapes
    prefix = tmp_path / "b" / "student"
    with pytest.raises(VargfaceError, match=r"--kd angular:stride8=stride16@1: the student's stride8 is 32x4x4 per "
                                            r"image but the teacher's stride16 \(.*\) is 64x2x2"):
        distill(student_config(data_dir, prefix, teacher=teacher_model, kd=["angular:stride8=stride16"]))
    assert not prefix.parent.exists() or not os.listdir(prefix.parent)
    with pytest.raises(VargfaceError, match="--kd-weight 0: must be > 0"):
        distill(student_config(data_dir, prefix, teacher=teacher_model, kd_weight=0))
    # a tap the student network does not have (a network without marked taps) is named when the settings resolve
    with monkeypatch.context() as patch:
        patch.setattr("vargface.symbols.taps.tap_outputs", lambda sym, size: {"embedding": "fc1_output"})
        with pytest.raises(VargfaceError, match="--kd angular:stride16@1: the student r18_tiny has no tap 'stride16' "
                                                r"\(it has embedding\)"):
            student_config(data_dir, prefix, kd="angular:stride16")
    assert not prefix.parent.exists() or not os.listdir(prefix.parent)
    # an error inside the trainer before training starts (here: generation 1's prefix is taken) leaves no
    # manifest behind either
    from vargface.train.checkpoint import PrefixLock

    with PrefixLock(f"{prefix}-gen1"):
        with pytest.raises(VargfaceError, match="another training writes to this prefix"):
            distill(student_config(data_dir, prefix, teacher=teacher_model))
    assert not os.path.exists(manifest_path(str(prefix)))

    # a cache made for other data, or stale after the data changed, is refused with the way out
    other = tmp_path / "other"
    make_synthetic_rec(str(other), identities=6, per_identity=8, size=32, seed=9, progress=False)
    path = build_cache(teacher, str(other), batch_size=48, progress=False)
    # at the default path again: refused, or kept once it checks out (--reuse), or refused for another image size
    mtime = os.path.getmtime(path)
    with pytest.raises(VargfaceError, match="exists; pass --overwrite to replace it or --reuse"):
        build_cache(teacher, str(other), progress=False)
    assert build_cache(teacher, str(other), reuse=True, progress=False) == path
    assert os.path.getmtime(path) == mtime
    with pytest.raises(VargfaceError, match="holds embeddings of"):
        build_cache(teacher, str(other), image_size=40, reuse=True, progress=False)
    with pytest.raises(VargfaceError, match="made for other data.*vargface distill cache"):
        distill(student_config(data_dir, tmp_path / "c", teacher=teacher_model, teacher_cache=path))
    with pytest.raises(VargfaceError, match="does not exist"):
        distill(student_config(data_dir, tmp_path / "d", teacher=teacher_model,
                               teacher_cache=str(tmp_path / "nope.kdcache")))
    with pytest.raises(VargfaceError, match="holds embeddings of"):
        TeacherCache(path, str(other), teacher, image_shape=(3, 56, 56))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(VargfaceError, match="truncated or damaged"):
        TeacherCache(path, str(other), teacher)
    (tmp_path / "junk.kdcache").write_bytes(b"not a cache at all")
    with pytest.raises(VargfaceError, match="not a vargface teacher cache"):
        TeacherCache(str(tmp_path / "junk.kdcache"), str(other), teacher)
    other_teacher = Teacher(save_tiny(str(tmp_path / "t2"), emb_size=EMB, input_size=32, seed=4)[0])
    with pytest.raises(VargfaceError, match="made by teacher"):
        TeacherCache(path, str(other), other_teacher)


def test_feature_map_terms_with_adapters_train_and_stay_out_of_the_checkpoint(tmp_path, data_dir, teacher_model):
    from vargface.symbols import get_symbol
    from vargface.train import checkpoint as ckpt

    # student: r18_tiny at twice the width (64 channels at stride 8, the teacher has 32) and a 16-d embedding
    # (the teacher's is 32-d): both terms need an adapter
    prefix = tmp_path / "maps" / "student"
    config = student_config(data_dir, prefix, emb_size=16, net_multiplier=0.25, max_steps=10, verbose=10,
                            teacher=teacher_model, kd=["angular:stride8@1", "mse:embedding@100"])
    manifest = distill(config, log=lambda line: None)
    assert manifest["terms"] == ["angular:stride8@1", "mse:embedding@100"]
    log = [json.loads(line) for line in open(f"{prefix}-gen1-log.jsonl")]
    train = [e for e in log if e["type"] == "train"]
    for name in ("kd_angular_stride8", "kd_mse_embedding"):
        values = [e[name] for e in train]
        assert len(values) == 10 and np.mean(values[-3:]) < 0.9 * np.mean(values[:3]), (name, values)

    # the adapters trained with the student (they are in the training state) ...
    _, state_args, state_aux, _ = ckpt.load_state(f"{prefix}-gen1")
    adapters = sorted(n for n in {**state_args, **state_aux} if n.startswith("kd_adapter"))
    assert adapters == ["kd_adapter_angular_stride8_bn_beta", "kd_adapter_angular_stride8_bn_gamma",
                        "kd_adapter_angular_stride8_bn_moving_mean", "kd_adapter_angular_stride8_bn_moving_var",
                        "kd_adapter_angular_stride8_conv_weight", "kd_adapter_mse_embedding_bn_beta",
                        "kd_adapter_mse_embedding_bn_gamma", "kd_adapter_mse_embedding_bn_moving_mean",
                        "kd_adapter_mse_embedding_bn_moving_var", "kd_adapter_mse_embedding_conv_weight"]
    assert state_args["kd_adapter_angular_stride8_conv_weight"].shape == (32, 64, 1, 1)
    # ... but the checkpoint holds exactly the plain preset's arrays
    sym = get_symbol("r18_tiny", emb_size=16, multiplier=0.25)
    _, arg, aux = load_checkpoint(f"{prefix}-gen1", 1)
    assert sorted(arg) == sorted(n for n in sym.list_arguments() if n != "data")
    assert sorted(aux) == sorted(sym.list_auxiliary_states())


def _final_weights(prefix):
    _, arg, aux = load_checkpoint(f"{prefix}-gen1", 1)
    return {k: v.asnumpy() for k, v in {**arg, **aux}.items()}


def test_kd_only_leaves_the_embedding_to_the_distillation_terms(tmp_path, data_dir, teacher_model):
    def run(name, kd_only, loss_s):
        config = student_config(data_dir, tmp_path / name / "student", max_steps=3, verbose=3, loss_s=loss_s,
                                teacher=teacher_model, kd_only=kd_only)
        distill(config, log=lambda line: None)
        return _final_weights(tmp_path / name / "student")

    only_a, only_b, both = run("a", True, 32.0), run("b", True, 8.0), run("c", False, 8.0)
    # with --kd-only the margin loss (here its scale) has no effect on the embedding; without it, it has
    for name in only_a:
        np.testing.assert_allclose(only_a[name], only_b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert any(not np.allclose(only_b[n], both[n], rtol=1e-3, atol=1e-5) for n in only_b)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A teacher's training run kept as checkpoints 1..3 (different weights each)."""
    prefix = str(tmp_path_factory.mktemp("teacher_run") / "model")
    for epoch in (1, 2, 3):
        save_tiny(prefix, emb_size=EMB, input_size=32, seed=10 + epoch, epoch=epoch)
    return prefix


def _spy_teacher(monkeypatch):
    """A fingerprint of the weights the live teacher computes with (its runner's copy), at every training batch
    (taken once per teacher object)."""
    seen, known = [], {}
    original = DistillPlugin.extra_data

    def spying(self, batch):
        out = original(self, batch)
        if self.teacher not in known:
            known[self.teacher] = _fingerprint(self.teacher.get_params()[0])
        seen.append(known[self.teacher])
        return out

    monkeypatch.setattr(DistillPlugin, "extra_data", spying)
    return seen


def _fingerprint(arg):
    return float(sum(np.abs(v.asnumpy()).sum() for k, v in sorted(arg.items())))


def test_teacher_schedule_per_epoch_and_per_updates(tmp_path, data_dir, teacher_run, monkeypatch):
    expected = {n: _fingerprint(load_checkpoint(teacher_run, n)[1]) for n in (1, 2, 3)}
    assert len(set(expected.values())) == 3
    seen = _spy_teacher(monkeypatch)

    # per epoch: 48 images / batch 16 = 3 updates per epoch; epoch e trains under checkpoint e + 1
    prefix = tmp_path / "epochs" / "student"
    config = student_config(data_dir, prefix, per_batch_size=16, max_steps=0, end_epoch=2, verbose=6,
                            val_targets="", teacher_schedule=teacher_run, kd=["mse:embedding@100"])
    manifest = distill(config, log=lambda line: None)
    spans = [{"teacher": f"{teacher_run},1", "epochs": [0, 0], "updates": [0, 2]},
             {"teacher": f"{teacher_run},2", "epochs": [1, 1], "updates": [3, 5]}]
    on_disk = json.load(open(manifest_path(str(prefix))))
    assert on_disk["teacher_schedule"] == {"prefix": teacher_run, "every": 0}
    assert [{k: s[k] for k in ("teacher", "epochs", "updates")} for s in on_disk["generations"][0]["teachers"]] == spans
    assert on_disk["generations"][0]["terms"] == ["mse:embedding@100"] == manifest["terms"]
    assert seen == [expected[1]] * 3 + [expected[2]] * 3

    # every 2 updates, two recursive generations: each generation runs the schedule from its start
    seen.clear()
    prefix = tmp_path / "updates" / "student"
    config = student_config(data_dir, prefix, max_steps=5, verbose=5, val_targets="", teacher_schedule=teacher_run,
                            teacher_every=2, generations=2)
    manifest = distill(config, log=lambda line: None)
    for generation in manifest["generations"]:
        assert [(s["teacher"], s["updates"]) for s in generation["teachers"]] == \
            [(f"{teacher_run},1", [0, 1]), (f"{teacher_run},2", [2, 3]), (f"{teacher_run},3", [4, 4])]
    assert seen == ([expected[1]] * 2 + [expected[2]] * 2 + [expected[3]]) * 2


def test_missing_scheduled_checkpoint_and_cache_refusals_stop_before_training(tmp_path, data_dir, teacher_run,
                                                                               teacher_model):
    prefix = tmp_path / "missing" / "student"
    with pytest.raises(VargfaceError, match=r"--teacher-schedule .*model-0004.params does not exist; the "
                                            r"student's 4 epochs need the teacher checkpoints 1 to 4"):
        distill(student_config(data_dir, prefix, max_steps=0, end_epoch=4, teacher_schedule=teacher_run))
    with pytest.raises(VargfaceError, match=r"model-0004.params does not exist; the student's 13 updates, a "
                                            r"teacher every 4"):
        distill(student_config(data_dir, prefix, max_steps=13, teacher_schedule=teacher_run, teacher_every=4))
    assert not prefix.parent.exists() or not os.listdir(prefix.parent)

    teacher = Teacher(teacher_model)
    path = build_cache(teacher, data_dir, path=str(tmp_path / "t.kdcache"), batch_size=48, progress=False)
    with pytest.raises(VargfaceError, match="--teacher-cache .*one teacher checkpoint, but --teacher-schedule"):
        distill(student_config(data_dir, prefix, teacher_schedule=teacher_run, teacher_cache=path))
    with pytest.raises(VargfaceError, match="--teacher-cache .*only the teacher's embeddings, but --kd "
                                            "angular:stride8@1 needs its stride8 feature map"):
        distill(student_config(data_dir, prefix, teacher=teacher_model, kd=["angular:embedding@7", "angular:stride8@1"],
                               teacher_cache=path))
    assert not prefix.parent.exists() or not os.listdir(prefix.parent)


@pytest.mark.parametrize("name, terms, stage", [
    ("vargfacenet_recursive", ["angular:embedding@7"], "generations"),
    ("pocketnet_multistep", ["mse:embedding@100"], "teacher_schedule"),
    ("shrinkteanet", ["angular:stride8@1", "angular:stride16@2", "angular:embedding@7"], "teacher")])
def test_recipe_configs_hold_valid_keys(name, terms, stage):
    """Each shipped distillation file resolves as `vargface distill --config FILE` would, into its terms."""
    from vargface.train.config import resolve

    config = resolve({}, file=os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py"),
                     command="distill")
    assert [str(t) for t in config.terms] == terms
    assert config[stage] and (stage != "generations" or config.generations == 2)


def test_distillation_options_are_config_keys_of_distill_only(capsys):
    from vargface.cli import build_parser
    from vargface.train.config import config_from_args
    from vargface.train.distill_loss import resolve_terms

    parser = build_parser()
    args = parser.parse_args(["distill", "--teacher-schedule", "runs/t/model", "--teacher-every", "3", "--kd",
                              "shrink:stride8@1", "--kd", "mse:embedding@100", "--kd-only", "--generations", "2",
                              "--network", "r18_tiny", "--dataset", "emore"])
    config = config_from_args(args)
    assert config.kd == ("shrink:stride8@1", "mse:embedding@100") and config.kd_only is True
    assert (config.teacher_schedule, config.teacher_every, config.generations) == ("runs/t/model", 3, 2)
    default = config_from_args(parser.parse_args(["distill", "--network", "r18_tiny", "--dataset", "emore"]))
    assert default.kd == ("angular:embedding@7",) and default.kd_only is False and default.teacher_every == 0
    # --kd-type / --kd-weight change the embedding term, or add one
    assert [str(t) for t in resolve_terms(default.kd, None, 5)] == ["angular:embedding@5"]
    assert [str(t) for t in resolve_terms(config.kd, "cosine", None)] == ["shrink:stride8@1", "cosine:embedding@100"]
    assert [str(t) for t in resolve_terms(["shrink:stride8"], "cosine", None)] == ["shrink:stride8@1",
                                                                                    "cosine:embedding@7"]
    with pytest.raises(VargfaceError, match="given twice"):
        resolve_terms(["angular:stride8@1", "angular:stride8@2"])
    # `vargface train` does not take them
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--kd", "angular:embedding@7", "--network", "r18_tiny"])
    assert "unknown option --kd" in capsys.readouterr().err


def test_teacher_cache_auto_finds_the_default_and_an_earlier_cache_beside_train_rec(tmp_path, teacher_model):
    from vargface.train.teacher_cache import auto_cache_path, default_cache_path

    teacher = Teacher(teacher_model)
    data = tmp_path / "faces_emore"
    data.mkdir()
    default = default_cache_path(str(data), teacher)
    assert default == teacher.prefix + "-0001.faces_emore.kdcache"
    assert auto_cache_path(str(data), teacher) == default  # neither exists: where `distill cache` writes
    earlier = data / f"train.{os.path.basename(os.path.dirname(teacher.prefix))}-teacher-0001.kdcache"
    earlier.write_bytes(b"")
    assert auto_cache_path(str(data), teacher) == str(earlier)


def test_a_stale_cache_names_the_command_that_rebuilds_it_and_that_command_works(tmp_path, teacher_model,
                                                                                  run_cli):
    import re
    import shlex

    from vargface.data.synth import make_synthetic_rec

    data = str(tmp_path / "stale_data")  # the cache is named after the data folder, beside the shared teacher
    make_synthetic_rec(data, identities=4, per_identity=4, size=32, seed=0, progress=False)
    teacher = Teacher(teacher_model)
    assert run_cli("distill", "cache", "--teacher", teacher_model, "--dataset", data).returncode == 0
    make_synthetic_rec(data, identities=4, per_identity=4, size=32, seed=1, progress=False, overwrite=True)
    config = student_config(data, tmp_path / "s", kd="angular:embedding@1", teacher_cache="auto")
    with pytest.raises(VargfaceError, match="made for other data") as error:
        make_plugin(config, teacher, log=lambda *_: None)
    command = shlex.split(re.search(r"rebuild it with `([^`]*)`", str(error.value)).group(1))
    assert command[:3] == ["vargface", "distill", "cache"] and command[-1] == "--overwrite"
    assert run_cli(*command[1:]).returncode == 0
    assert make_plugin(config, teacher, log=lambda *_: None).cache is not None
    # a missing cache: the command that makes it
    config = student_config(data, tmp_path / "s", kd="angular:embedding@1",
                            teacher_cache=str(tmp_path / "none.kdcache"))
    with pytest.raises(VargfaceError, match="does not exist; make it with `vargface distill cache") as error:
        make_plugin(config, teacher, log=lambda *_: None)
    command = shlex.split(re.search(r"make it with `([^`]*)`", str(error.value)).group(1))
    assert run_cli(*command[1:]).returncode == 0 and os.path.isfile(tmp_path / "none.kdcache")
