import subprocess
import sys


def test_cli_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "vargface", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: vargface" in result.stdout
    for command in ("flops", "data", "train", "distill", "verify", "lfr", "tar-at-far", "export", "embed", "compare",
                    "demo", "recipe"):
        assert command in result.stdout, command


def test_building_the_parser_stays_light():
    """`vargface --help` must stay fast: no package's cli module may import MXNet or another heavy library."""
    heavy = ("mxnet", "cv2", "sklearn", "matplotlib", "onnx", "gluoncv")
    code = (f"import sys; from vargface.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_parse_ctx_rejects_missing_gpu_and_garbage():
    import pytest

    from vargface.context import parse_ctx
    from vargface.errors import VargfaceError

    assert [str(c) for c in parse_ctx("cpu:0,cpu:1")] == ["cpu(0)", "cpu(1)"]
    with pytest.raises(VargfaceError, match="gpu 0 does not exist"):
        parse_ctx("gpu:0")
    with pytest.raises(VargfaceError, match="--ctx"):
        parse_ctx("tpu:3")
