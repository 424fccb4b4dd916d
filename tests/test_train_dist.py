"""dist_sync on loopback, started as scripts/dist_train.sh starts it (one scheduler, one server, two workers on
disjoint shards of the data): the workers end with identical weights; a --fc-parallel run, stopped and resumed,
ends where the full softmax head ends, momentum included; a NaN on one worker stops both with a clear error.
(The sharded classifier itself equals the full head on two workers for ArcFace and CosFace in
tests/test_partial_fc.py.)"""
import json
import os
import signal
import socket
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from vargface.train.config import run_facts
from vargface.train.partial_fc import merge_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A smooth activation: runs equal to float rounding can disagree later where a PReLU input sits within rounding
# of zero (tests/test_train_pfc.py), and these runs are compared over 8 updates.
COMMON = ["--network", "r18_tiny", "--kvstore", "dist_sync", "--ctx", "cpu", "--per-batch-size", "8", "--lr", "0.1",
          "--loss-s", "16", "--end-epoch", "2", "--frequent", "2", "--net-opt", "act_type=softrelu"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env():
    return dict(os.environ, DMLC_NUM_WORKER="2", DMLC_NUM_SERVER="1", DMLC_PS_ROOT_PORT=str(free_port()),
                VENV_BIN=os.path.dirname(sys.executable), OMP_NUM_THREADS="1")


def finish(process, timeout=240):
    """The output of a started process group (killed, with the test failed, when it runs past ``timeout``)."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the distributed run did not finish:\n" + process.communicate()[0][-3000:])


def train(*options):
    """`scripts/dist_train.sh local` with two workers: (return code, output)."""
    process = subprocess.Popen([os.path.join(ROOT, "scripts", "dist_train.sh"), "local", *COMMON, *map(str, options)],
                               env=dist_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    output = finish(process)
    return process.returncode, output


def worker_states(prefix):
    return [json.load(open(f"{p}-state.json")) for p in (prefix, prefix + "-worker1")]


def final_arrays(prefix):
    """Per worker: the state's arrays, the whole classifier as arg:fc7_weight (merged from the shards)."""
    states = worker_states(prefix)
    folder = os.path.dirname(prefix)
    arrays = [{k: v.asnumpy() for k, v in mx.nd.load(os.path.join(folder, s["params"])).items()} for s in states]
    if states[0]["fc7_shards"]:
        whole = merge_shards([os.path.join(folder, s["fc7_shards"]["file"]) for s in states])
        for worker in arrays:
            worker["arg:fc7_weight"] = whole
    return arrays


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), 8, 8, size=32, seed=5, progress=False)
    make_synthetic_bin(str(root / "heldout.bin"), 8, 20, size=32, seed=5)
    return str(root)


@pytest.fixture(scope="module")
def full_head(data_dir, tmp_path_factory):
    """The full softmax head trained by two workers for two epochs: (prefix, output)."""
    prefix = str(tmp_path_factory.mktemp("full") / "m")
    code, output = train("--dataset", data_dir, "--verbose", "4", "--prefix", prefix)
    assert code == 0, output[-3000:]
    return prefix, output


def test_dist_sync_workers_end_with_identical_weights(full_head):
    prefix, output = full_head
    # both workers log to one stream: each line says whose it is
    assert "[worker 0/2] Epoch[" in output and "[worker 1/2] Epoch[" in output

    states = worker_states(prefix)
    assert [s["num_update"] for s in states] == [8, 8]  # 64 images / 2 shards / batch 8, two epochs
    configs = [run_facts(f"{p}-config.py") for p in (prefix, prefix + "-worker1")]
    assert [(c["rank"], c["workers"]) for c in configs] == [(0, 2), (1, 2)]
    params = final_arrays(prefix)
    learned = sorted(k for k in params[0] if k.startswith("arg:"))
    assert "arg:fc7_weight" in learned and learned == sorted(k for k in params[1] if k.startswith("arg:"))
    for name in learned:  # each worker applies the same update to the same summed gradient: bit-identical
        np.testing.assert_array_equal(params[0][name], params[1][name], err_msg=name)
    # ... while each worker saw its own shard (BatchNorm running statistics stay local, as in MXNet)
    logs = [[json.loads(line) for line in open(f"{p}-log.jsonl")] for p in (prefix, prefix + "-worker1")]
    losses = [[e["loss"] for e in log if e["type"] == "train"] for log in logs]
    assert len(losses[0]) == len(losses[1]) == 4 and losses[0] != losses[1]
    # the optimizer runs on the workers, so each state keeps its momentum for --resume
    assert all(s["optimizer"] and s["optimizer"]["num_update"] == 8 for s in states)


def assert_same_training(reference, other):
    for worker, (a, b) in enumerate(zip(final_arrays(reference), final_arrays(other))):
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=f"worker {worker}: {name}")


def test_fc_parallel_stopped_and_resumed_ends_where_the_full_head_ends(full_head, data_dir, tmp_path):
    """ArcFace over 2 shards (one per worker): stopped at update 4, resumed to 8; without the momentum in the
    workers' states the resumed updates would differ."""
    prefix = str(tmp_path / "pfc")
    options = ["--dataset", data_dir, "--verbose", "4", "--prefix", prefix, "--fc-parallel"]
    code, output = train(*options, "--max-steps", "4")
    assert code == 0, output[-3000:]
    assert "fc7 per device: weights" in output and "2 shard(s) of 4 classes (2 worker(s) x 1 device(s))" in output
    code, output = train(*options, "--resume")
    assert code == 0, output[-3000:]
    assert "resuming" in output and [s["num_update"] for s in worker_states(prefix)] == [8, 8]
    assert_same_training(full_head[0], prefix)


def test_dist_sync_workers_clip_the_norm_of_their_summed_gradient(full_head, data_dir, tmp_path):
    """--clip-grad-norm with dist_sync: every worker reads the norm of the gradient summed over all workers (the
    same on both, over the bound: the clip acts), scales by it, and the workers stay bit-identical."""
    prefix = str(tmp_path / "clip")
    code, output = train("--dataset", data_dir, "--verbose", "4", "--prefix", prefix, "--clip-grad-norm", "0.5",
                         "--frequent", "1")
    assert code == 0, output[-3000:]
    logs = [[json.loads(line) for line in open(f"{p}-log.jsonl")] for p in (prefix, prefix + "-worker1")]
    norms = [[e["grad_norm"] for e in log if e["type"] == "train"] for log in logs]
    assert len(norms[0]) == 8 and norms[0] == norms[1] and min(norms[0]) > 0.5
    clipped, plain = final_arrays(prefix), final_arrays(full_head[0])
    for name in (k for k in clipped[0] if k.startswith("arg:")):  # (BatchNorm's running statistics stay local)
        np.testing.assert_array_equal(clipped[0][name], clipped[1][name], err_msg=name)
    assert not np.allclose(clipped[0]["arg:fc7_weight"], plain[0]["arg:fc7_weight"])  # the clip changed the updates


def test_a_nan_on_one_worker_stops_both_with_a_clear_error(data_dir, tmp_path):
    """The gate loss of one worker becomes -inf at its third batch: both workers stop before that update, each
    saying what happened where, and every process of the run ends."""
    settings = dict(network="r18_tiny", dataset=data_dir, loss="arcface", kvstore="dist_sync", ctx="cpu",
                    per_batch_size=8, lr=0.1, loss_s=16.0, max_steps=6, verbose=2, val_targets=[], fc_parallel=True,
                    prefix=str(tmp_path / "m"))
    env = dict(dist_env(), DMLC_PS_ROOT_URI="127.0.0.1", DMLC_NODE_HOST="127.0.0.1", DMLC_INTERFACE="lo",
               PYTHONPATH=ROOT)
    worker = [sys.executable, os.path.join(ROOT, "tests", "dist_fit_worker.py"), json.dumps(settings)]
    roles = [("scheduler", [sys.executable, "-c", "import mxnet"], {}), ("server", [sys.executable, "-c",
             "import mxnet"], {}), ("worker", worker, {}), ("worker", worker, {"NAN_AT": "3"})]
    processes = [subprocess.Popen(command, env=dict(env, DMLC_ROLE=role, **extra), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
                 for role, command, extra in roles]
    outputs = [finish(p, timeout=120) for p in processes]
    errors = [line for output in outputs[2:] for line in output.splitlines() if line.startswith("error: ")]
    assert [p.returncode for p in processes[2:]] == [1, 1], "\n".join(o[-2000:] for o in outputs)
    assert all(p.returncode == 0 for p in processes[:2])
    assert len(errors) == 2
    nan, other = sorted(errors, key=lambda e: "gate became" not in e)
    rank = nan.split("on worker ")[1][0]
    assert "training stopped: gate became -inf at epoch 0 batch 2 (update 3) on worker " in nan
    assert f"training stopped: the loss of worker {rank} became non-finite at epoch 0 batch 2 (update 3)" in other
    for prefix in (settings["prefix"], settings["prefix"] + "-worker1"):
        assert json.load(open(f"{prefix}-state.json"))["num_update"] == 2  # the last good state, on both


def other_worker(monkeypatch, decision, flag, at):
    """Stands in for a second worker of a one-process run: the run's group has two workers, whose sums are this
    one's alone, and the other raises ``flag`` at the ``at``-th decision named ``decision``."""
    from vargface.train.workers import WorkerGroup

    original, calls = WorkerGroup.__init__, []

    def two_workers(group, kv=None):
        original(group, kv)
        group.size = 2

    def raised(group, name, flags):
        answer = {k: [0] if v else [] for k, v in flags.items()}
        calls.extend([name] if name == decision else [])
        if name == decision and len(calls) == at:
            answer[flag] = answer[flag] + [1]
        return answer

    monkeypatch.setattr(WorkerGroup, "__init__", two_workers)
    monkeypatch.setattr(WorkerGroup, "raised", raised)
    monkeypatch.setattr(WorkerGroup, "sum", lambda group, name, array: array)


@pytest.mark.parametrize("name, flag, at, expected", [
    ("start", "failed", 1, r"worker\(s\) 1 of this run could not start \(their output says why\); this worker "
                           r"stops too"),
    ("step", "nonfinite", 3, r"training stopped: the loss of worker 1 became non-finite at epoch 0 batch 2 "
                             r"\(update 3\); the last good state is"),
    ("weights", "bad", 1, r"training stopped: a weight of worker 1 became non-finite at epoch 0 batch 1 "
                          r"\(update 2\)"),
])
def test_what_another_worker_raises_stops_this_one(data_dir, tmp_path, monkeypatch, name, flag, at, expected):
    from vargface.errors import VargfaceError
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    other_worker(monkeypatch, name, flag, at)
    config = generate_config("r18_tiny", data_dir, "arcface", ctx="cpu", per_batch_size=8, max_steps=6, verbose=2,
                             val_targets=[], prefix=str(tmp_path / "m"))
    with pytest.raises(VargfaceError, match=expected):
        fit(config, log=lambda line: None)
    if name != "start":  # nothing past the last good state was saved
        assert json.load(open(tmp_path / "m-state.json"))["num_update"] == (2 if name == "step" else 0)


def test_a_signal_to_another_worker_stops_this_one_with_its_state_saved(data_dir, tmp_path, monkeypatch):
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    other_worker(monkeypatch, "step", "signal", 2)
    lines = []
    result = fit(generate_config("r18_tiny", data_dir, "arcface", ctx="cpu", per_batch_size=8, max_steps=6,
                                 val_targets=[], prefix=str(tmp_path / "m")), log=lines.append)
    assert result["interrupted"] == signal.SIGTERM and result["num_update"] == 2
    assert any("stopping on a signal to worker 1 at update 2; continue with --resume" in line for line in lines)
    assert json.load(open(tmp_path / "m-state.json"))["num_update"] == 2
