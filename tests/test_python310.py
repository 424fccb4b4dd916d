"""The package keeps working on Python 3.10 (NVIDIA's NGC MXNet container, the Dockerfile's base): every Python
file parses as 3.10, setup.py admits 3.10, and the container installs vargface beside the image's own MXNet."""
import ast
import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".venv", ".git", "build", "dist", "__pycache__"}
PYTHON_FILES = sorted(p for p in ROOT.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts))


def test_the_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in PYTHON_FILES}
    assert {"setup.py", "eval/runner.py", "symbols/inference.py", "tests/test_python310.py"} <= names


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_parses_as_python_3_10(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_newer_syntax_is_caught():
    with pytest.raises(SyntaxError):  # except* is Python 3.11
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))


def test_setup_admits_python_3_10():
    calls = [node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"]
    requires = {kw.arg: kw.value for kw in calls[0].keywords}["python_requires"]
    assert SpecifierSet(ast.literal_eval(requires)).contains("3.10.12")


def test_container_keeps_the_images_mxnet_and_numpy():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/mxnet:24\.06-py3$", dockerfile, re.M)
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in dockerfile
    assert "-c /tmp/image-pins.txt -r requirements-ngc.txt" in dockerfile
    pins = [line.split("==") for line in (ROOT / "requirements-ngc.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins)  # every need pinned
    assert not {name.lower() for name, _ in pins} & {"mxnet", "mxnet-cu112", "numpy", "opencv-python"}
