"""Signals reach the `vargface` process cleanly: SIGTERM at any time exits 143 with a message and releases what
the command held; a second Ctrl-C while the process shuts down prints nothing more."""
import subprocess
import sys

# The `flops` command replaced by one that receives the signal mid-command, then `vargface` run as a process.
SCRIPT = """
import os, signal, sys, threading, time
import vargface.symbols.cli as commands
from vargface.locks import OutputLock

def command(args):
    with OutputLock(OUT):
        {body}
        time.sleep(30)

commands.flops_command = command
OUT = sys.argv.pop()
sys.argv = ["vargface", "flops", "y1"]
from vargface.cli import main
main()
"""
SIGTERM = "os.kill(os.getpid(), signal.SIGTERM)"
TWICE = """def second():
            time.sleep(1.0)  # the process is shutting down by then, waiting for this thread
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        threading.Thread(target=second).start()
        os.kill(os.getpid(), signal.SIGINT)"""


def run(body, out):
    return subprocess.run([sys.executable, "-c", SCRIPT.format(body=body), str(out)], capture_output=True,
                          text=True, timeout=120)


def test_sigterm_during_a_command_exits_143_with_a_message_and_releases_its_lock(tmp_path):
    result = run(SIGTERM, tmp_path / "out")
    assert result.returncode == 143 and result.stderr == "vargface flops: terminated (SIGTERM)\n"
    assert not (tmp_path / "out.lock").exists()


def test_a_second_ctrl_c_while_shutting_down_prints_nothing_more(tmp_path):
    result = run(TWICE, tmp_path / "out")
    assert result.returncode == 130 and result.stderr == "vargface flops: interrupted\n"
    assert not (tmp_path / "out.lock").exists()
