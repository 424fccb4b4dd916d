import subprocess
import sys


def test_cli_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "vargface", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: vargface" in result.stdout


def test_parse_ctx_rejects_missing_gpu_and_garbage():
    import pytest

    from vargface.context import parse_ctx
    from vargface.errors import VargfaceError

    assert [str(c) for c in parse_ctx("cpu:0,cpu:1")] == ["cpu(0)", "cpu(1)"]
    with pytest.raises(VargfaceError, match="gpu 0 does not exist"):
        parse_ctx("gpu:0")
    with pytest.raises(VargfaceError, match="--ctx"):
        parse_ctx("tpu:3")
