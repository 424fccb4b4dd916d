"""Every command in README.md and docs/ works as written.

Blocks marked `<!-- readme-test: run -->` run line by line on synthetic data in a temporary folder and must exit
0. Every `vargface` command in every block of the README and docs (and every command
`scripts/reproduce_lfr_light.sh` prints in a dry run, and the `vargface train` options given to
`scripts/dist_train.sh worker`) must parse with the real parser and, for train/distill, resolve to a valid config;
every option an inline `vargface COMMAND --option` mention shows must be one that command takes, and any other
`--option` shown in prose one that some command takes; `make` targets must exist in the Makefile."""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- readme-test: (\w+) -->\n)?```(\w*)\n(.*?)```", re.S)
INLINE = re.compile(r"(?<!`)`(vargface [^`]+)`(?!`)")
OTHER_TOOLS = {"--no-deps", "--no-build-isolation", "--upgrade"}  # pip's, named where the install is explained


def readme_blocks(path=ROOT / "README.md"):
    """-> list of (mark or None, language, [command argv lists]) for the shell blocks of ``path``."""
    found = []
    for mark, lang, body in BLOCK.findall(path.read_text()):
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
    for _, _, commands in [block for path in DOCS for block in readme_blocks(path)]:
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


def inline_mentions():
    """(file name, code span, argv after `vargface`) of every inline `vargface ...` code span of README.md and docs/
    (code blocks excluded)."""
    found = []
    for path in DOCS:
        prose = BLOCK.sub("", path.read_text())
        for span in INLINE.findall(prose):
            span = " ".join(span.split())
            try:
                argv = shlex.split(span)[1:]
            except ValueError:
                argv = span.split()[1:]
            found.append((path.name, span, argv))
    return found


def command_parser(parser, argv):
    """(the parser of the (sub)command ``argv`` starts with, its words): `data rec ...` -> `vargface data rec`."""
    words = []
    while argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or argv[0] not in subparsers[0].choices:
            break
        parser, words, argv = subparsers[0].choices[argv[0]], words + [argv[0]], argv[1:]
    return parser, words


def options_of(parser):
    """Every option string of ``parser`` and of its subcommands."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= options_of(sub)
    return found


def test_every_option_an_inline_mention_shows_is_one_its_command_takes():
    """`vargface CMD --opt` in prose (placeholders and '...' included) names options that CMD's parser accepts, and
    any other `--option` the prose shows in code is one that some command takes."""
    from vargface.cli import build_parser

    parser, checked = build_parser(), 0
    for name, span, argv in inline_mentions():
        command, words = command_parser(parser, argv)
        accepted = {option for action in command._actions for option in action.option_strings}
        for word in argv[len(words):]:
            if word.startswith("--"):
                option = word.split("=")[0]
                assert option in accepted, f"{name}: `{span}`: `vargface {' '.join(words)}` has no option {option}"
                checked += 1
    assert checked >= 5
    known = options_of(parser)
    for path in DOCS + [ROOT / "data" / "README.md"]:
        for span in re.findall(r"`([^`]+)`", BLOCK.sub("", path.read_text())):
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span):
                assert option in known or option in OTHER_TOOLS, f"{path.name}: `{span}`: no command takes {option}"
                checked += 1
    assert checked >= 100


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
