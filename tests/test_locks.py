"""Output locks (vargface.locks): one writer at a time, the holder named, a dead holder's lock taken over, the lock
file gone on every exit path."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from vargface.errors import VargfaceError
from vargface.locks import OutputLock

HOLD = ("import sys, time\n"
        "from vargface.locks import OutputLock\n"
        "lock = OutputLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def holder_process(tmp_path):
    """A second process holding the lock of tmp_path/out until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out"), "--marker"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder_process):
    out = tmp_path / "out"
    lock = json.loads((tmp_path / "out.lock").read_text())
    assert lock["pid"] == holder_process.pid and lock["host"] == socket.gethostname()
    assert lock["started"] and "--marker" in lock["command"]
    with pytest.raises(VargfaceError) as error:
        OutputLock(out, hint="choose another --out").acquire()
    message = str(error.value)
    assert f"{tmp_path / 'out.lock'}: another process writes {out}" in message
    assert f"pid {holder_process.pid} on {socket.gethostname()}" in message and "--marker" in message
    assert message.endswith("choose another --out")
    assert json.loads((tmp_path / "out.lock").read_text())["pid"] == holder_process.pid  # the refusal changed nothing


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder_process):
    holder_process.send_signal(signal.SIGKILL)
    holder_process.wait()
    assert (tmp_path / "out.lock").exists()  # kill -9 leaves the file, but not the lock
    with OutputLock(tmp_path / "out") as lock:
        assert lock.held and json.loads((tmp_path / "out.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out.lock").exists()


def test_one_holder_per_output_within_a_process_too(tmp_path):
    first = OutputLock(tmp_path / "data").acquire()
    with pytest.raises(VargfaceError, match=rf"pid {os.getpid()} on "):
        OutputLock(tmp_path / "data").acquire()
    OutputLock(tmp_path / "other").acquire().release()  # other outputs are free
    first.release()
    first.release()  # a second release is harmless
    OutputLock(tmp_path / "data").acquire().release()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ending", [VargfaceError, KeyboardInterrupt, SystemExit])
def test_the_lock_file_goes_on_every_exit_path(tmp_path, ending):
    with pytest.raises(ending):
        with OutputLock(tmp_path / "out"):
            assert (tmp_path / "out.lock").exists()
            raise ending("stop")
    assert not (tmp_path / "out.lock").exists()
    OutputLock(tmp_path / "out").acquire().release()


def test_the_lock_sits_beside_the_output(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with OutputLock("."):
        assert os.path.exists(tmp_path / "here.lock") and os.listdir(".") == []
    with OutputLock("models/run/model"):  # a prefix; its folder is made for the lock
        assert os.path.exists("models/run/model.lock")
