"""`vargface demo --quick` end to end, its resume and refusals, and `vargface recipe lfr-light` run for real with
tiny settings on the demo's synthetic data."""
import json
import os
import shlex
import shutil
import sys

import pytest

MODELS = ["teacher", "scratch", "gen1", "control", "gen2"]


def run_cli(argv, capsys):
    from vargface.cli import main

    with pytest.raises(SystemExit) as exit:
        main(argv)
    captured = capsys.readouterr()
    return exit.value.code, captured.out, captured.err


def run_demo(argv, capsys):
    return run_cli(["demo"] + argv, capsys)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo run shared by the tests below: (output dir, printed log)."""
    from vargface.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo_out"
    log = tmp_path_factory.mktemp("log") / "stdout.txt"
    with open(log, "w") as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", f)
        with pytest.raises(SystemExit) as exit:
            main(["demo", "--quick", "--out", str(out)])
    assert exit.value.code == 0
    return out, log.read_text()


def test_quick_demo_writes_table_json_and_chart(quick_demo):
    import cv2

    out, log = quick_demo
    result = json.loads((out / "results.json").read_text())
    assert [m["model"] for m in result["models"]] == MODELS and result["seeds"] == [0]
    student_params = {m["params"] for m in result["models"] if m["model"] != "teacher"}
    assert len(student_params) == 1  # one student architecture throughout
    teacher = result["models"][0]  # even in a smoke run the teacher is the larger network
    assert teacher["params"] > student_params.pop() and teacher["flops"] > result["models"][1]["flops"]
    for m in result["models"]:
        assert 0.0 <= m["accuracy"]["mean"] <= 1.0 and m["accuracy"]["n"] == 1
        assert m["params"] > 0 and m["flops"] > 0
        assert m["tar@0.001"] is None or 0.0 <= m["tar@0.001"]["mean"] <= 1.0
        assert "ijb_tar@0.0001" in m  # the quick fixture's 153 template pairs cannot resolve 1e-4: None
    by = {m["model"]: m for m in result["models"]}
    assert by["gen2"]["updates"] == by["control"]["updates"] == 2 * by["scratch"]["updates"]
    # one seed: each comparison is one paired difference, without an interval
    assert [(c["model"], c["baseline"]) for c in result["comparisons"]] == [("gen1", "scratch"), ("gen2", "control")]
    for c in result["comparisons"]:
        diff = c["accuracy"]
        assert diff["low"] is None and diff["differences"] == [by[c["model"]]["accuracy"]["mean"]
                                                               - by[c["baseline"]]["accuracy"]["mean"]]

    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(MODELS) + 1 + 2  # two tables: models, comparisons
    assert "TAR@FAR=0.001" in rows[0] and "IJB TAR@FAR=0.0001" in rows[0] and "FLOPs" in rows[0]
    assert f"{by['teacher']['accuracy']['mean']:.4f}" in table

    image = cv2.imread(str(out / "results.png"))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]

    # the log prints every step as a runnable command, with the trainer's speedometer
    assert "Speed:" in log and table.splitlines()[-1] in log


def test_every_printed_command_parses(quick_demo):
    from vargface.cli import build_parser

    _, log = quick_demo
    commands = [shlex.split(line[len("$ vargface "):]) for line in log.splitlines() if line.startswith("$ vargface ")]
    kinds = {tuple(c[:2]) if c[0] in ("data", "distill") else (c[0],) for c in commands}
    assert {("data", "synth"), ("data", "rec"), ("data", "pairs"), ("train",), ("distill", "cache"),
            ("distill", "--teacher"), ("verify",), ("flops",), ("data", "synth-ijb"), ("ijb",)} <= kinds
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)


def test_rerun_continues_and_other_settings_are_refused(quick_demo, tmp_path, capsys):
    out, _ = quick_demo
    before = (out / "results.json").read_text()
    code, log, _ = run_demo(["--quick", "--out", str(out)], capsys)
    assert code == 0
    assert log.count("done in an earlier run") >= 10 and "$ vargface train" not in log
    assert json.loads((out / "results.json").read_text())["models"] == json.loads(before)["models"]

    code, _, err = run_demo(["--quick", "--out", str(out), "--seed", "1"], capsys)
    assert code == 1 and "other settings" in err and "--overwrite" in err

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "keep.txt").write_text("mine")
    code, _, err = run_demo(["--quick", "--out", str(stray)], capsys)
    assert code == 1 and "not a demo output" in err
    assert (stray / "keep.txt").read_text() == "mine"

    code, _, err = run_demo(["--quick", "--out", str(tmp_path / "x"), "--pairs", "0"], capsys)
    assert code == 1 and "--pairs" in err


def test_interrupted_step_is_redone(quick_demo, tmp_path, capsys):
    """A step not recorded as finished is cleaned and run again; finished ones are kept."""
    out, _ = quick_demo
    copy = tmp_path / "demo_out"
    shutil.copytree(out, copy)
    state = json.loads((copy / "demo-state.json").read_text())
    for name in ("evaluate-gen2-seed0",):
        del state["steps"][name]
    (copy / "demo-state.json").write_text(json.dumps(state))
    code, log, _ = run_demo(["--quick", "--out", str(copy)], capsys)
    assert code == 0
    assert "$ vargface verify --model " in log and log.count("$ vargface verify") == 1
    assert "gen2" in log.split("$ vargface verify")[1].splitlines()[0]


# The recipe's own config files, shrunk to seconds on the demo's 32x32 synthetic set by --set (flags override them).
TINY = {
    "teacher": ["network=r50", "net_num_layers=18", "net_multiplier=0.125", "lr_steps=1"],
    "student": ["net_multiplier=0.25", "warmup_steps=0", "lr_total_steps=2", "emb_size=16", "image_size=32",
                "per_batch_size=8", "max_steps=2", "val_targets=heldout", "verbose=2", "frequent=1"],
}


def test_recipe_runs_end_to_end_on_tiny_data(quick_demo, tmp_path, capsys):
    """`vargface recipe lfr-light` for real on the demo's synthetic set with the shipped config files: every step,
    verification JSON, the FLOPs gate on the trained graph, the feature file, then a rerun that skips everything."""
    out, _ = quick_demo
    data = tmp_path / "data"
    shutil.copytree(out / "data", data, ignore=shutil.ignore_patterns("*.kdcache"))
    (tmp_path / "list.txt").write_text("a.jpg\nb.jpg\n")
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(next((out / "heldout_faces").rglob("*.jpg")), tmp_path / name)
    overrides = [f"--set={key}" for key in TINY["student"]]  # no scope: teacher and students
    overrides += [f"--set=teacher.{key}" for key in TINY["teacher"]]
    work = tmp_path / "work"
    argv = ["recipe", "lfr-light", "--dataset", str(data), "--out", str(work), "--ctx", "cpu", "--eval-ctx", "cpu",
            "--target", "heldout", "--lfr-list", str(tmp_path / "list.txt"), "--root", str(tmp_path)] + overrides
    code, log, err = run_cli(argv, capsys)
    assert code == 0, err[-3000:]
    assert "[12/12]" not in log and "[11/11] the LFR2019 image-track feature file" in log
    for name in ("teacher", "scratch", "gen1", "gen2"):
        result = json.loads((work / f"verify-{name}.json").read_text())
        assert 0.0 <= result["heldout"]["accuracy"] <= 1.0
    # trained at 32x32: counted at that side, and not judged against the budget (which counts 112x112 inputs)
    figures = json.loads((work / "flops-vargfacenet-gen2.json").read_text())
    assert figures["input_shape"] == [1, 3, 32, 32] and figures["fits_budget"] is None
    assert "vargfacenet-gen2: counted at 32x32; the deepglint-light budget is for 112x112 inputs" in log
    # at the default path beside the teacher (not in the data folder), which --teacher-cache auto found
    assert not list(data.glob("*.kdcache")) and [p.parent.parent for p in work.glob("*/model-0001.data.kdcache")] == [
        work]
    features = (work / "lfr2019-vargfacenet-gen2.bin").read_bytes()
    rows, cols = int.from_bytes(features[:4], "little"), int.from_bytes(features[4:8], "little")
    assert (rows, cols) == (2, 16) and len(features) == 16 + rows * cols * 4

    code, again, _ = run_cli(argv, capsys)
    assert code == 0 and "$ vargface" not in again and again.count("done in an earlier run") == 11
