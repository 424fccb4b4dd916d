"""Shared test fixtures. Tests run on CPU with small networks and synthetic data they make themselves."""
import os

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


class Done:
    """A finished command like subprocess's result; unpacks as (returncode, stdout, stderr)."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))


@pytest.fixture
def run_cli(capsys):
    """Run `vargface ARGS...` in this process (no MXNet start-up per call) -> returncode, stdout, stderr."""
    from vargface.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run
