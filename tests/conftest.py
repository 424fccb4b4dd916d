"""Shared test fixtures. Tests run on CPU with small networks and synthetic data they make themselves."""
import os

from vargface.openmp import configure  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")
# The test process runs on CPU alone, as `vargface` would set it up; the processes tests start decide for
# themselves (several at once, as in the distributed tests, must not spin), so the wait policy leaves the
# environment once MXNet has read it.
if "OMP_WAIT_POLICY" in configure(one_cpu_device=True):
    import mxnet  # noqa: E402,F401  (OpenMP reads its settings now)

    del os.environ["OMP_WAIT_POLICY"]

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
