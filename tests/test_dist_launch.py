"""scripts/dist_train.sh with a stub interpreter: each process announces its own machine's address, never another
machine's, and gets its share of the machine's cores."""
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "dist_train.sh")
STUB = """#!/bin/sh
# records how dist_train.sh started it: its arguments and the environment it was given
"$REAL_PYTHON" - "$@" <<'EOF'
import json, os, sys, tempfile
keys = [k for k in os.environ if k.startswith("DMLC_") or k == "OMP_NUM_THREADS"]
fd, path = tempfile.mkstemp(dir=os.environ["CALLS"], suffix=".json")
with os.fdopen(fd, "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ[k] for k in keys}}, f)
EOF
"""


def _tool(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def launch(tmp_path):
    """Run dist_train.sh ROLE ARGS with the stub as its Python and fake `ip`/`nproc` when given -> (returncode,
    stderr, [each started process's {'argv', 'env'}])."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    _tool(bin_dir, "python", STUB)

    def run(*args, ip=None, nproc=None, **env):
        if ip is not None:  # `ip -o route get ADDRESS` as the machine would answer (exit 1 when empty)
            _tool(bin_dir, "ip", f"#!/bin/sh\n[ -n '{ip}' ] || exit 1\necho '{ip}'\n")
        if nproc is not None:
            _tool(bin_dir, "nproc", f"#!/bin/sh\necho {nproc}\n")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_") and k not in (
            "OMP_NUM_THREADS", "NODE_PROCESSES")}
        environment.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(bin_dir / "python"),
                           REAL_PYTHON=os.path.realpath(sys.executable), CALLS=str(calls), **env)
        done = subprocess.run([SCRIPT, *args], env=environment, capture_output=True, text=True, timeout=60)
        started = [json.loads(p.read_text()) for p in sorted(calls.glob("*.json"))]
        for p in calls.glob("*.json"):
            p.unlink()
        return done.returncode, done.stderr, started

    return run


def _role(call):
    return "worker" if call["argv"][:2] == ["-m", "vargface"] else call["argv"][-1].split("'")[1]


def test_a_worker_on_another_machine_announces_its_own_address(launch):
    route = "10.0.0.1 via 10.0.0.254 dev eth0 src 10.0.0.7 uid 0 \\    cache"
    code, err, started = launch("worker", "--kvstore", "dist_sync", ip=route, DMLC_PS_ROOT_URI="10.0.0.1")
    assert code == 0, err
    env = started[0]["env"]
    assert env["DMLC_NODE_HOST"] == "10.0.0.7" and env["DMLC_PS_ROOT_URI"] == "10.0.0.1"
    assert env["DMLC_ROLE"] == "worker" and "DMLC_INTERFACE" not in env
    # on the root's own machine the route's source is the root address itself
    code, _, started = launch("server", ip="local 10.0.0.1 dev lo src 10.0.0.1 uid 0", DMLC_PS_ROOT_URI="10.0.0.1")
    assert code == 0 and started[0]["env"]["DMLC_NODE_HOST"] == "10.0.0.1"
    # an address set by hand is kept
    code, _, started = launch("worker", ip=route, DMLC_PS_ROOT_URI="10.0.0.1", DMLC_NODE_HOST="10.0.0.8")
    assert code == 0 and started[0]["env"]["DMLC_NODE_HOST"] == "10.0.0.8"


def test_without_a_route_it_asks_for_the_address_and_starts_nothing(launch):
    code, err, started = launch("worker", ip="", DMLC_PS_ROOT_URI="10.0.0.1")
    assert code == 2 and started == []
    assert "cannot find this machine's address" in err and "set DMLC_NODE_HOST" in err


def test_loopback_runs_bind_loopback(launch):
    code, err, started = launch("local", "--ctx", "cpu", DMLC_NUM_WORKER="2", DMLC_NUM_SERVER="1")
    assert code == 0, err
    assert sorted(_role(c) for c in started) == ["scheduler", "server", "worker", "worker"]
    for call in started:
        assert call["env"]["DMLC_NODE_HOST"] == "127.0.0.1" and call["env"]["DMLC_INTERFACE"] == "lo"


def test_each_process_gets_its_share_of_the_cores(launch):
    code, err, started = launch("local", "--ctx", "cpu", nproc=12, DMLC_NUM_WORKER="2", DMLC_NUM_SERVER="1")
    assert code == 0, err
    threads = sorted((_role(c), c["env"]["OMP_NUM_THREADS"]) for c in started)
    assert threads == [("scheduler", "1"), ("server", "4"), ("worker", "4"), ("worker", "4")]  # 12 cores / 3
    workers = [c["argv"] for c in started if _role(c) == "worker"]
    assert all(argv[:5] == ["-m", "vargface", "train", "--workers", "4"] and argv[-2:] == ["--ctx", "cpu"]
               for argv in workers)  # the user's own --workers would come later and win
    # one role per call: a server and a worker per machine unless NODE_PROCESSES says otherwise
    assert launch("worker", nproc=12)[2][0]["env"]["OMP_NUM_THREADS"] == "6"
    assert launch("worker", nproc=12, NODE_PROCESSES="3")[2][0]["env"]["OMP_NUM_THREADS"] == "4"
    assert launch("worker", nproc=12, OMP_NUM_THREADS="5")[2][0]["env"]["OMP_NUM_THREADS"] == "5"
    code, err, _ = launch("worker", NODE_PROCESSES="0")
    assert code == 2 and "NODE_PROCESSES=0" in err
