"""Distillation end to end on tiny networks: frozen teacher, recursive generations, resume, cache, bad input."""
import json
import os
import signal

import mxnet as mx
import numpy as np
import pytest
from test_distill_teacher import save_tiny

from vargface.errors import VargfaceError
from vargface.symbols.checkpoint import load_checkpoint
from vargface.train.config import generate_config
from vargface.train.distill import DistillPlugin, distill, make_plugin, manifest_path
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
    options = dict(emb_size=EMB, per_batch_size=8, max_steps=8, frequent=1, verbose=8, lr=0.05, ckpt=2,
                   ctx="cpu", prefix=str(prefix), seed=1)
    options.update(overrides)
    return generate_config("r18_tiny", data_dir, "arcface", **options)


def _arrays(params):
    return {k: v.asnumpy().copy() for k, v in params.items()}


def test_recursive_generations_frozen_teacher_and_resume(tmp_path, data_dir, teacher_model, monkeypatch):
    teacher = Teacher(teacher_model)
    arg_before, aux_before = (_arrays(p) for p in teacher.get_params())
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

    def interrupting(self, batch):
        calls["n"] += 1
        if calls["n"] == 8 + 3:
            signal.raise_signal(signal.SIGINT)
        return plugin_extra(self, batch)

    monkeypatch.setattr(DistillPlugin, "extra_data", interrupting)
    prefix = tmp_path / "chain" / "student"
    lines = []
    config = student_config(data_dir, prefix)
    first = distill(config, teacher, kd_type="angular", kd_weight=20.0, generations=2, log=lines.append)
    assert first["interrupted"]
    assert [g["status"] for g in first["generations"]] == ["done", "running"]
    assert len(starts) == 2

    config.resume = True
    manifest = distill(config, teacher, kd_type="angular", kd_weight=20.0, generations=2, log=lines.append)
    assert not manifest.get("interrupted")
    # generation 1 is not rerun; generation 2 continues at its 4th batch: 8 + 3 + 5 batches in all
    assert len(starts) == 3 and calls["n"] == 16
    assert any("resuming" in line and "batch 3" in line for line in lines)

    # the teacher never changed: in memory and on disk
    arg_after, aux_after = (_arrays(p) for p in teacher.get_params())
    for before, after in ((arg_before, arg_after), (aux_before, aux_after)):
        assert before.keys() == after.keys()
        for name in before:
            assert np.array_equal(before[name], after[name]), name
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
        distill(config, teacher, kd_type="angular", kd_weight=1.0, generations=3, log=lines.append)
    config.resume = False
    with pytest.raises(VargfaceError, match="lineage manifest .* exists"):
        distill(config, teacher, generations=1, log=lines.append)


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
    config = student_config(data_dir, tmp_path / "s")
    assert make_plugin(config, teacher, ["angular:embedding@1"], teacher_cache=path, log=lines.append).cache is not None
    config.data_color = 1
    assert make_plugin(config, teacher, ["angular:embedding@1"], teacher_cache=path, log=lines.append).cache is None
    assert "live teacher runs instead" in lines[-2]


def test_cli_cache_then_distill_with_cache(tmp_path, data_dir, teacher_model, capsys):
    from vargface.cli import main

    def run(*argv):
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        return exit_info.value.code, capsys.readouterr()

    code, out = run("distill", "cache", "--teacher", teacher_model, "--data-dir", data_dir, "--batch-size", "16")
    path = os.path.join(data_dir, "train.teacher0-teacher-0001.kdcache")
    assert code == 0 and path in out.out and os.path.isfile(path)
    code, out = run("distill", "cache", "--teacher", teacher_model, "--data-dir", data_dir)
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


def test_bad_input_stops_before_training(tmp_path, data_dir, teacher_model, capsys):
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
        distill(student_config(data_dir, tmp_path / "a"), str(tmp_path / "cls") + ",1")

    teacher = Teacher(teacher_model)
    # feature maps of different sizes: refused before any checkpoint is written, naming both shapes
    prefix = tmp_path / "b" / "student"
    with pytest.raises(VargfaceError, match=r"--kd angular:stride8=stride16@1: the student's stride8 is 32x4x4 per "
                                            r"image but the teacher's stride16 \(.*\) is 64x2x2"):
        distill(student_config(data_dir, prefix), teacher, kd=["angular:stride8=stride16"])
    assert not prefix.parent.exists() or not os.listdir(prefix.parent)
    with pytest.raises(VargfaceError, match="--kd-weight"):
        distill(student_config(data_dir, prefix), teacher, kd_weight=0)
    assert not prefix.parent.exists() or not os.listdir(prefix.parent)
    # an error inside the trainer before training starts leaves no manifest behind either
    with pytest.raises(VargfaceError, match="--kvstore"):
        distill(student_config(data_dir, prefix, kvstore="nccl"), teacher)
    assert not os.path.exists(manifest_path(str(prefix)))

    # a cache made for other data, or stale after the data changed, is refused with the way out
    other = tmp_path / "other"
    make_synthetic_rec(str(other), identities=6, per_identity=8, size=32, seed=9, progress=False)
    path = build_cache(teacher, str(other), batch_size=48, progress=False)
    with pytest.raises(VargfaceError, match="made for other data.*vargface distill cache"):
        distill(student_config(data_dir, tmp_path / "c"), teacher, teacher_cache=path)
    with pytest.raises(VargfaceError, match="does not exist"):
        distill(student_config(data_dir, tmp_path / "d"), teacher, teacher_cache=str(tmp_path / "nope.kdcache"))
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
