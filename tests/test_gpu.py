"""What a GPU machine exercises, checked on CPU: the CPU-only environment decision, device lists with eight GPUs,
the training graph GPUs get, the devices every network of a run binds on, kvstores and precisions per device, and
the GPU settings the shipped configs and recipes carry."""
import glob
import os

import mxnet as mx
import pytest
from test_distill import data_dir  # noqa: F401  (a tiny data folder with a verification pack)
from test_distill_teacher import save_tiny

from vargface.errors import VargfaceError
from vargface.train.config import generate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the one-CPU-device decision (vargface.openmp: spinning OpenMP threads only on one CPU, one process) ----------
@pytest.mark.parametrize("argv, environment, one_cpu_device", [
    (["train", "--ctx", "cpu:0"], {}, True),
    (["train", "--ctx", "cpu:0,cpu:1"], {}, False),  # two engine threads at once: spinning takes the other's cores
    (["recipe", "lfr-light", "--ctx", "cpu", "--eval-ctx", "cpu:1"], {}, False),  # two CPU devices, no comma
    (["train", "--ctx", "gpu:0"], {}, False),
    (["train", "--config", "configs/r100_retina.py"], {}, False),  # the file asks for eight GPUs
    (["train", "--config", "configs/r100_retina.py", "--ctx", "cpu"], {}, True),  # the command line wins
    (["train", "--config", "configs/r18_tiny_synthetic.py"], {}, True),
    (["train", "--kvstore", "dist_sync", "--ctx", "cpu"], {}, False),
    (["train", "--ctx", "cpu"], {"DMLC_ROLE": "worker"}, False),
    (["verify", "--model", "m,1", "--target", "a.bin", "--ctx", "gpu:1"], {}, False),
    (["recipe", "lfr-light", "--ctx", "cpu", "--eval-ctx", "gpu:0"], {}, False),
    (["recipe", "lfr-light", "--ctx", "cpu", "--eval-ctx", "cpu"], {}, True),
    (["recipe", "lfr-light"], {}, False),  # the defaults: eight GPUs
    (["recipe", "recursive"], {}, False),
    (["recipe", "recursive", "--ctx", "cpu"], {}, True),
])
def test_one_cpu_device_decision_for_every_way_to_ask_for_devices(argv, environment, one_cpu_device, monkeypatch):
    from vargface.cli import _one_cpu_device, build_parser

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert _one_cpu_device(build_parser().parse_args(argv)) is one_cpu_device


@pytest.mark.parametrize("files, affinity, cores", [
    ({"cpu.max": "150000 100000\n"}, 64, 2),  # cgroup v2: 1.5 cores' quota -> 2 threads
    ({"cpu.max": "max 100000\n"}, 64, 64),  # no quota: the affinity
    ({"cpu.max": "800000 100000\n"}, 4, 4),  # a quota above the affinity: the affinity
    ({"quota": "300000\n", "period": "100000\n"}, 256, 3),  # cgroup v1
    ({"quota": "-1\n", "period": "100000\n"}, 256, 256),
    ({}, 12, 12),  # no cgroup files
])
def test_usable_cores_are_the_affinity_within_the_container_quota(files, affinity, cores, tmp_path, monkeypatch):
    from vargface import openmp

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    quotas = ((str(tmp_path / "cpu.max"), None), (str(tmp_path / "quota"), str(tmp_path / "period")))
    monkeypatch.setattr(openmp, "CGROUP_QUOTAS", quotas)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    assert openmp.usable_cores() == cores


# ---- eight GPUs ---------------------------------------------------------------------------------------------------
def test_eight_gpus_parse_a_ninth_is_refused_and_auto_trains_the_rewrite(monkeypatch):
    from vargface.context import parse_ctx
    from vargface.symbols import fast
    from vargface.train.trainer import TrainerPlugin, chosen_train_graph, training_graph

    monkeypatch.setattr(mx.context, "num_gpus", lambda: 8)
    gpus = parse_ctx("gpu:0,1,2,3,4,5,6,7")
    assert [(c.device_type, c.device_id) for c in gpus] == [("gpu", i) for i in range(8)]
    with pytest.raises(VargfaceError, match="--ctx: gpu 8 does not exist; this machine has 8 GPU"):
        parse_ctx("gpu:0,8")
    # the check finds no right PReLU kernel (here it cannot even run on a GPU): the rewrite trains
    config = generate_config("vargfacenet_tiny", "emore", "arcface", num_classes=10, image_size=32)

    def prelus(contexts):
        graph = training_graph(config, TrainerPlugin(), 2 * len(contexts), contexts)
        return '"LeakyReLU"' in graph.train_sym.tojson()

    assert chosen_train_graph("auto", gpus) == "fast" and not prelus(gpus[:2])
    assert chosen_train_graph("faithful", gpus) == "faithful"
    # were MXNet's GPU kernel shown right, auto would train the network's own PReLU there, never on CPUs
    monkeypatch.setattr(fast, "prelu_kernel_right", lambda ctx: ctx.device_type == "gpu")
    assert chosen_train_graph("auto", gpus) == "faithful" and prelus(gpus[:2])
    assert chosen_train_graph("auto", [mx.cpu(0), mx.cpu(1)]) == "fast"


def test_the_prelu_check_finds_a_gpu_of_this_build_not_right():
    from vargface.symbols.fast import prelu_kernel_right

    assert prelu_kernel_right(mx.cpu()) is False  # the defect (tests/test_fast_graph.py)
    assert prelu_kernel_right(mx.gpu(0)) is False  # no GPU in this build: not shown right


# ---- kvstores and precisions per device ---------------------------------------------------------------------------
def test_kvstores_and_precisions_fit_the_devices():
    from vargface.train.trainer import check_devices

    gpus, cpus = [mx.gpu(0), mx.gpu(1)], [mx.cpu(0), mx.cpu(1)]

    def config(**settings):
        return generate_config("r18_tiny", **settings)

    assert check_devices(config(kvstore="nccl"), gpus) == [] and check_devices(config(kvstore="device"), gpus) == []
    with pytest.raises(VargfaceError, match="--kvstore nccl .*--ctx cpu:0,cpu:1 names CPUs; use --kvstore device"):
        check_devices(config(kvstore="nccl"), cpus)
    warning, = check_devices(config(kvstore="local"), gpus)
    assert "sums the 2 GPUs' gradients on the host" in warning and "--kvstore device" in warning
    assert check_devices(config(kvstore="local"), cpus) == check_devices(config(kvstore="local"), gpus[:1]) == []
    assert check_devices(config(dtype="float16"), gpus) == check_devices(config(dtype="bfloat16"), cpus) == []
    with pytest.raises(VargfaceError, match="--dtype float16 trains on GPUs.*--dtype bfloat16"):
        check_devices(config(dtype="float16"), cpus)
    with pytest.raises(VargfaceError, match="--dtype bfloat16 trains on CPUs.*--dtype float16"):
        check_devices(config(dtype="bfloat16"), gpus)
    with pytest.raises(VargfaceError, match="--dtype bfloat16 .*--kvstore dist_sync every worker"):
        config(dtype="bfloat16", kvstore="dist_sync")  # refused with the settings, before anything starts


# ---- every network of a run binds on the devices it was given --------------------------------------------------
def test_teacher_cache_and_verification_run_on_the_given_devices(data_dir, tmp_path, monkeypatch, run_cli):
    from vargface.eval.runner import InferenceRunner
    from vargface.train.distill import distill

    bound, original = [], InferenceRunner._bind

    def spy(self, batch_size):
        bound.append((str(self.output), [str(c) for c in self.contexts]))
        return original(self, batch_size)

    monkeypatch.setattr(InferenceRunner, "_bind", spy)
    devices = ["cpu(0)", "cpu(1)"]
    teacher = save_tiny(str(tmp_path / "teacher"), emb_size=16, input_size=32)[0]
    done = run_cli("distill", "cache", "--teacher", teacher, "--dataset", data_dir, "--ctx", "cpu:0,cpu:1", "--out",
                   str(tmp_path / "t.kdcache"))
    assert done.returncode == 0, done.stderr
    assert bound == [("['fc1_output']", devices)]  # the cache builder's teacher (its taps: the embedding)
    bound.clear()
    # a live teacher (a feature-map term cannot be cached) and the verification rounds of a distillation run
    config = generate_config("r18_tiny", data_dir, "arcface", command="distill", teacher=teacher, emb_size=16,
                             kd=["angular:embedding@7", "l2:stride8=stride8"], per_batch_size=4, max_steps=2,
                             verbose=2, ctx="cpu:0,cpu:1", prefix=str(tmp_path / "s"))
    distill(config, log=lambda line: None)
    teacher_taps = "['fc1_output', 'vargface_stage_3_unit_7_out_data_act_output']"  # embedding and stride8
    # the teacher once; verification (bound again when new weights need another inference graph)
    assert sorted({output for output, _ in bound}) == [teacher_taps, "fc1_output"]
    assert [output for output, _ in bound].count(teacher_taps) == 1
    assert all(contexts == devices for _, contexts in bound), bound


# ---- the shipped GPU settings -------------------------------------------------------------------------------------
def test_every_full_scale_config_trains_on_gpus_and_the_recipes_match_them(capsys):
    from vargface.cli import build_parser
    from vargface.context import device_specs
    from vargface.train.config import read_config_file
    from vargface.train.schema import DATASETS

    tuned = set()
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        settings = read_config_file(path)
        if settings.get("dataset") in DATASETS:  # a full-scale data set: an 8- or 4-GPU recipe
            assert str(settings.get("ctx", "")).startswith("gpu:"), f"{path} sets no GPU ctx"
            tuned.add((len(device_specs(settings["ctx"])), os.path.basename(path)))
    parser = build_parser()
    for recipe in ("lfr-light", "recursive"):  # their configs are tuned for 8 GPUs, and so are their defaults
        assert len(device_specs(parser.parse_args(["recipe", recipe]).ctx)) == 8
    assert {(8, "r100_retina.py"), (8, "vargfacenet_retina.py"), (8, "vargfacenet_recursive.py")} <= tuned


def test_a_recipe_on_fewer_devices_says_how_to_keep_the_batch(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    done = run_cli("recipe", "recursive", "--dry-run", "--out", str(tmp_path / "w"), "--dataset", "d", "--ctx",
                   "gpu:0,1,2,3")
    notes = [line for line in done.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and all("global batch of 512 (64 x 8 devices); --ctx gives 4" in n for n in notes)
    assert all("--set per_batch_size=128 keeps 512" in n for n in notes)
    done = run_cli("recipe", "recursive", "--dry-run", "--out", str(tmp_path / "w"), "--dataset", "d", "--ctx",
                   "gpu:0,1,2,3", "--set", "per_batch_size=128")
    assert "note: " not in done.stdout


# ---- bench/gpu_check.py, run on CPUs standing in for GPUs ----------------------------------------------------------
def test_the_gpu_check_compares_two_devices_with_one_and_finds_the_prelu_kernel_here_wrong():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "bench", "gpu_check.py"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    (kernel_right, _), (rewrite_right, rewrite_ratio) = gpu_check.prelu_check(mx.cpu())
    assert not kernel_right and rewrite_right  # the defect this build has; the rewrite's ratios are 1
    assert abs(rewrite_ratio - 1).max() < 1e-3
    assert gpu_check.two_device_step([mx.cpu(0), mx.cpu(1)], "r18_tiny", 2, 32) < 1e-4
