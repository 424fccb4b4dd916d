"""Every command in README.md works as written.

Blocks marked `<!-- readme-test: run -->` run line by line on synthetic data in a temporary folder and must exit
0. Every `vargface` command in every block (and every command `scripts/reproduce_lfr_light.sh` prints in a dry
run, and the `vargface train` options given to `scripts/dist_train.sh worker`) must parse with the real parser and,
for train/distill, resolve to a valid config; `make` targets must exist in the Makefile."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\n)?```(\w*)\n(.*?)```", re.S)


def readme_blocks():
    """-> list of (mark or None, language, [command argv lists]) for the shell blocks of README.md."""
    found = []
    for mark, lang, body in BLOCK.findall((ROOT / "README.md").read_text()):
        if lang not in ("sh", "bash"):
            continue
        commands = []
        for line in body.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line.rstrip("&").strip())
            env = {}
            while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # leading VAR=value assignments
                key, _, value = argv.pop(0).partition("=")
                env[key] = value
            commands.append((env, argv))
        found.append((mark or None, lang, commands))
    return found


def check_vargface(argv):
    """Parse `vargface ARGV` with the real parser; train/distill options (with their --config file) must also make
    a valid config."""
    from vargface.cli import build_parser
    from vargface.train.config import config_from_args

    argv = list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        raise AssertionError(f"`vargface {shlex.join(argv)}` does not parse (exit {exit.code})") from None
    if args.command in ("train", "distill") and getattr(args, "distill_command", None) is None:
        config_from_args(args)
    return args


def test_readme_has_run_and_parse_blocks():
    marks = [mark for mark, _, _ in readme_blocks()]
    assert "run" in marks and "parse" in marks
    text = (ROOT / "README.md").read_text()
    for needed in ("make demo", "make test", "mxnet-cu112", "sm_50", "Hopper", "dist_train.sh", "distill",
                   "numpy", "NaN", "OMP_NUM_THREADS"):
        assert needed in text, needed


def test_every_command_exists(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    checked = 0
    for _, _, commands in readme_blocks():
        for env, argv in commands:
            if not argv:
                continue
            if argv[0] == "vargface":
                check_vargface(argv[1:])
                checked += 1
            elif argv[0] == "make":
                for target in argv[1:]:
                    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"
            elif argv[0] == "scripts/dist_train.sh":
                assert argv[1] in ("scheduler", "server", "worker", "local")
                if argv[1] in ("worker", "local"):
                    check_vargface(["train"] + argv[2:])
                    checked += 1
            elif argv[0] == "scripts/reproduce_lfr_light.sh":
                printed = dry_run_recipe(tmp_path, env)
                for command in printed:
                    check_vargface(command)
                checked += len(printed)
            elif argv[0].startswith(("scripts/", "bench/")):
                assert (ROOT / argv[0]).is_file(), argv[0]
    assert checked >= 20


def dry_run_recipe(tmp_path, env):
    """The `vargface` commands the recipe script prints with DRY_RUN=1 (its own settings from ``env``), run from
    the repository; DATA becomes an existing empty folder so that `--dataset DATA` resolves when checked."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    run_env = {**os.environ, **env, "DRY_RUN": "1", "WORK": str(tmp_path / "lfr"), "DATA": str(data)}
    out = subprocess.run(["bash", str(ROOT / "scripts/reproduce_lfr_light.sh")], env=run_env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line[len("$ vargface "):]) for line in out.stdout.splitlines()
            if line.startswith("$ vargface ")]


def test_run_blocks_on_synthetic_data(tmp_path, monkeypatch, capsys):
    """The short blocks, line by line through the `vargface` entry point, in a folder holding only the shipped
    config files (the README's commands name them as `configs/NAME.py`, from the repository's top)."""
    from vargface.cli import main

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for mark, _, commands in readme_blocks():
        if mark != "run":
            continue
        for env, argv in commands:
            assert argv[0] == "vargface" and not env, f"run blocks hold plain vargface commands: {argv}"
            with pytest.raises(SystemExit) as exit:
                main(argv[1:])
            assert exit.value.code == 0, f"`{shlex.join(argv)}` exited {exit.value.code}: {capsys.readouterr().err}"
            ran += 1
    assert ran >= 5
    assert (tmp_path / "data" / "train.rec").is_file()
    assert (tmp_path / "r18.onnx").is_file() and (tmp_path / "emb.npy").is_file()
    out = capsys.readouterr().out
    assert "Accuracy-Flip" in out and "FLOPs" in out


def test_console_script_runs():
    """The `vargface` the README runs is the installed entry point."""
    exe = Path(sys.executable).with_name("vargface")
    out = subprocess.run([str(exe), "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout
