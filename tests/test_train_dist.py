"""dist_sync on loopback through scripts/dist_train.sh: one scheduler, one server, two workers on disjoint shards
end with identical weights."""
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), 8, 8, size=32, seed=5, progress=False)
    make_synthetic_bin(str(root / "heldout.bin"), 8, 20, size=32, seed=5)
    return str(root)


def test_dist_sync_workers_end_with_identical_weights(data_dir, tmp_path):
    prefix = str(tmp_path / "m")
    env = dict(os.environ, DMLC_NUM_WORKER="2", DMLC_NUM_SERVER="1", DMLC_PS_ROOT_PORT=str(free_port()),
               VENV_BIN=os.path.dirname(sys.executable), OMP_NUM_THREADS="1")
    command = [os.path.join(ROOT, "scripts", "dist_train.sh"), "local", "--network", "r18_tiny", "--dataset",
               data_dir, "--kvstore", "dist_sync", "--ctx", "cpu", "--per-batch-size", "8", "--lr", "0.1",
               "--loss-s", "16", "--end-epoch", "2", "--frequent", "2", "--verbose", "4", "--prefix", prefix]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        pytest.fail("dist_sync run did not finish in 240 s:\n" + output[-3000:])
    assert process.returncode == 0, output[-3000:]
    # both workers log to one stream: each line says whose it is
    assert "[worker 0/2] Epoch[" in output and "[worker 1/2] Epoch[" in output

    states = [json.load(open(f"{p}-state.json")) for p in (prefix, prefix + "-worker1")]
    assert [s["num_update"] for s in states] == [8, 8]  # 64 images / 2 shards / batch 8, two epochs
    configs = [run_facts(f"{p}-config.py") for p in (prefix, prefix + "-worker1")]
    assert [(c["rank"], c["workers"]) for c in configs] == [(0, 2), (1, 2)]
    params = [mx.nd.load(os.path.join(tmp_path, s["params"])) for s in states]
    learned = sorted(k for k in params[0] if k.startswith("arg:"))
    assert "arg:fc7_weight" in learned and learned == sorted(k for k in params[1] if k.startswith("arg:"))
    for name in learned:  # the server applies one update to both: bit-identical learnable weights
        np.testing.assert_array_equal(params[0][name].asnumpy(), params[1][name].asnumpy(), err_msg=name)
    # ... while each worker saw its own shard (BatchNorm running statistics stay local, as in MXNet).
    logs = [[json.loads(line) for line in open(f"{p}-log.jsonl")] for p in (prefix, prefix + "-worker1")]
    losses = [[e["loss"] for e in log if e["type"] == "train"] for log in logs]
    assert len(losses[0]) == len(losses[1]) == 4 and losses[0] != losses[1]
