"""`vargface recipe lfr-light` / `recursive` as dry runs, their config files, the FLOPs gate, and the two scripts
that wrap them. (The end-to-end run on tiny synthetic data is in tests/test_demo.py, beside the demo's data.)"""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import check_vargface

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = ("r100_retina.py", "vargfacenet_retina.py", "vargfacenet_recursive.py")


def run(argv, capsys):
    from vargface.cli import main

    with pytest.raises(SystemExit) as exit:
        main(argv)
    captured = capsys.readouterr()
    return exit.value.code, captured.out, captured.err


def printed_commands(out):
    return [shlex.split(line[len("$ vargface "):]) for line in out.splitlines() if line.startswith("$ vargface ")]


def test_lfr_light_dry_run_lists_every_step_with_its_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    work = tmp_path / "lfr"
    (tmp_path / "data").mkdir()  # `--dataset DIR` resolves to the folder preset only when DIR exists
    code, out, _ = run(["recipe", "lfr-light", "--dry-run", "--out", str(work), "--dataset", str(tmp_path / "data"),
                        "--ctx", "cpu", "--eval-ctx", "cpu", "--lfr-list", "list.txt", "--root", "imgs",
                        "--set", "student.per_batch_size=32"], capsys)
    assert code == 0 and not work.exists()
    titles = [line for line in out.splitlines() if line.startswith("== [")]
    assert len(titles) == 11 and titles[0].startswith("== [1/11] FLOPs gate") and "[11/11]" in titles[-1]
    commands = printed_commands(out)
    kinds = [c[0] if c[0] not in ("distill", "lfr") else " ".join(c[:2]) for c in commands]
    assert kinds == ["flops", "train", "train", "distill cache", "distill --teacher", "flops"] + ["verify"] * 4 + [
        "lfr features"]
    configs = [c[c.index("--config") + 1] for c in commands if "--config" in c]
    assert configs == ["configs/r100_retina.py", "configs/vargfacenet_retina.py", "configs/vargfacenet_recursive.py"]
    teacher, scratch, _, distill = commands[1:5]
    assert teacher[teacher.index("--prefix") + 1] == str(work / "r100-arcface" / "model")
    assert "--per-batch-size" not in teacher and scratch[-2:] == distill[-2:] == ["--per-batch-size", "32"]
    assert distill[distill.index("--teacher-cache") + 1] == "auto" and "--reuse" in commands[3]
    assert commands[5][commands[5].index("--model") + 1] == str(work / "vargfacenet-distill" / "model-gen2") + ",1"
    assert commands[-1][:3] == ["lfr", "features", "list.txt"]
    for command in commands:
        check_vargface(command)

    # verification packs by name, file name or path, as `train --target` takes them
    _, out, _ = run(["recipe", "lfr-light", "--dry-run", "--out", str(work), "--dataset", "/d", "--target",
                     "lfw,cfp_fp.bin,/elsewhere/agedb_30.bin"], capsys)
    verify = [c for c in printed_commands(out) if c[0] == "verify"][0]
    assert verify[verify.index("--target") + 1] == "/d/lfw.bin,/d/cfp_fp.bin,/elsewhere/agedb_30.bin"

    # without a test list there is no feature-file step
    _, out, _ = run(["recipe", "lfr-light", "--dry-run", "--out", str(work)], capsys)
    assert "[10/10]" in out and "lfr features" not in out


def test_recursive_dry_run_trains_a_teacher_unless_given(tmp_path, capsys):
    _, out, _ = run(["recipe", "recursive", "--dry-run", "--out", str(tmp_path / "w"), "--dataset", "d"], capsys)
    assert [c[:2] for c in printed_commands(out)] == [["train", "--config"], ["distill", "cache"],
                                                      ["distill", "--teacher"]]
    _, out, _ = run(["recipe", "recursive", "--dry-run", "--out", str(tmp_path / "w"), "--dataset", "d", "--teacher",
                     "t/model,3", "--set", "distill.kd_weight=2"], capsys)
    commands = printed_commands(out)
    assert [c[:2] for c in commands] == [["distill", "cache"], ["distill", "--teacher"]]
    assert commands[0][commands[0].index("--teacher") + 1] == "t/model,3" and commands[1][-2:] == ["--kd-weight", "2"]


def test_dry_run_prints_the_commands_when_the_folder_holds_another_run(tmp_path, capsys):
    """A folder a real run would refuse (another run's settings, or files of no run): the dry run says so and still
    prints every command, changing nothing."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    code, out, _ = run(["recipe", "recursive", "--dry-run", "--out", str(work), "--dataset", "d"], capsys)
    assert code == 0 and "(dry run) " + str(work) + ": exists and is not a recipe output" in out
    assert "a real run there is refused (choose another --out" in out and len(printed_commands(out)) == 3
    code, _, err = run(["recipe", "recursive", "--out", str(work), "--dataset", "d"], capsys)
    assert code == 1 and "is not a recipe output" in err and "choose another --out" in err

    state = {"settings": {"other": 1}, "steps": {}, "outputs": []}
    (work / "notes.txt").unlink()
    (work / "recipe-state.json").write_text(json.dumps(state))
    code, out, _ = run(["recipe", "recursive", "--dry-run", "--out", str(work), "--dataset", "d"], capsys)
    assert code == 0 and "holds a recipe run with other settings" in out and len(printed_commands(out)) == 3
    assert os.listdir(work) == ["recipe-state.json"] and json.loads((work / "recipe-state.json").read_text()) == state


def test_a_teacher_network_set_on_the_recipe_is_the_one_trained_and_named(tmp_path, monkeypatch, capsys):
    """--set teacher.network=r18_tiny: the teacher command trains r18_tiny (the command line wins over its config
    file) into a folder named after it, and the later steps read it from there."""
    from vargface.train.config import config_from_args

    monkeypatch.chdir(ROOT)
    (tmp_path / "data").mkdir()
    code, out, _ = run(["recipe", "recursive", "--dry-run", "--out", str(tmp_path / "w"), "--dataset",
                        str(tmp_path / "data"), "--set", "teacher.network=r18_tiny"], capsys)
    assert code == 0
    teacher, cache, _ = printed_commands(out)
    prefix = str(tmp_path / "w" / "r18_tiny-arcface" / "model")
    config = config_from_args(check_vargface(teacher))
    assert (config.network, config.emb_size, config.prefix) == ("r18_tiny", 64, prefix)
    assert cache[cache.index("--teacher") + 1] == prefix + ",1" and "teacher: r18_tiny with ArcFace" in out


@pytest.mark.parametrize("bad", ["novalue", "=1", "coach.lr=0.1", "student.=3", "teacher.--lr=1"])
def test_bad_overrides_are_refused(bad, tmp_path, capsys):
    code, _, err = run(["recipe", "lfr-light", "--dry-run", "--out", str(tmp_path), "--set", bad], capsys)
    assert code == 1 and f"--set {bad!r}" in err and "SCOPE" in err


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_config_files_set_known_keys_to_literals(name):
    """Each line is `key = literal`, every key a config key, and the values make a valid config."""
    from vargface.train.config import read_config_file, resolve

    path = ROOT / "configs" / name
    config = resolve({}, file=path, command="distill" if "kd" in read_config_file(path) else "train")
    assert config.max_steps == 180000 and config.per_batch_size == 64 and config.lr == 0.1
    if name == "r100_retina.py":
        assert config.network == "r100" and config.lr_schedule == "step" and config.lr_steps == (100000, 160000)
    else:
        from vargface.recipe import STUDENT_NETWORK

        assert config.network == STUDENT_NETWORK and config.lr_schedule == "cosine"
        assert config.warmup_steps == 2000 and config.lr_total_steps == 180000


def test_a_student_over_the_light_budget_stops_the_recipe(tmp_path, capsys):
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    (configs / "vargfacenet_recursive.py").touch()
    work = tmp_path / "work"
    code, out, err = run(["recipe", "lfr-light", "--out", str(work), "--dataset", str(tmp_path), "--configs",
                          str(configs), "--set", "student.network=r50"], capsys)
    assert code == 1 and "exceeds the deepglint-light budget" in err and "r50" in err
    assert "$ vargface flops r50 --json" in out and "$ vargface train" not in out
    assert (work / "flops-r50.json").is_file()


def test_scripts_pass_their_environment_to_the_recipe(tmp_path):
    vargface = str(Path(sys.executable).with_name("vargface"))
    env = dict(os.environ, DRY_RUN="1", WORK=str(tmp_path / "w"), GPUS="gpu:0,1", EVAL_CTX="cpu",
               LFR_LIST="l.txt", DATA="/data/retina", VAL_TARGETS="lfw", VARGFACE=vargface)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_lfr_light.sh"), "--set", "lr=0.05"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    commands = printed_commands(out.stdout)
    assert len(commands) == 11 and commands[-1][:2] == ["lfr", "features"]
    assert commands[1][commands[1].index("--ctx") + 1] == "gpu:0,1" and commands[1][-2:] == ["--lr", "0.05"]
    assert commands[-2][commands[-2].index("--target") + 1] == "/data/retina/lfw.bin"
    assert not (tmp_path / "w").exists()

    env = dict(os.environ, DRY_RUN="1", WORK=str(tmp_path / "r"), CTX="cpu", TEACHER="t/model,1", VARGFACE=vargface,
               DATA="/data/d")
    for argv in ([], ["/data/d"]):  # DATA from the environment as in the other wrapper, or as the first argument
        out = subprocess.run(["bash", str(ROOT / "scripts" / "distill_recursive.sh"), *argv, "--set", "lr=0.05"],
                             env=dict(env, DATA="/data/d" if not argv else "/elsewhere"), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        commands = printed_commands(out.stdout)
        assert [c[:2] for c in commands] == [["distill", "cache"], ["distill", "--teacher"]]
        assert commands[0][commands[0].index("--dataset") + 1] == "/data/d" and commands[1][-2:] == ["--lr", "0.05"]
    script = (ROOT / "scripts" / "distill_recursive.sh").read_text()
    assert ".kdcache" not in script and "-state.json" not in script  # the naming rules stay in Python
