"""The resumable step runner under `vargface demo` and `vargface recipe`: skip finished steps, redo or --resume
interrupted ones, dry runs, failures that stop the run and a rerun that continues."""
import json
import os

import pytest

from vargface.errors import VargfaceError
from vargface.pipeline import Pipeline, Step


class FakeCommands:
    """Stands in for the in-process `vargface` call: records every argv, writes a file per command, and fails
    the commands named in ``fail``."""

    def __init__(self, work):
        self.work, self.calls, self.fail = work, [], set()

    def __call__(self, pipeline, argv, capture=False):
        print("$ vargface " + " ".join(argv))
        self.calls.append(argv)
        if argv[0] in self.fail:
            raise VargfaceError(f"{argv[0]}: bad input")
        os.makedirs(os.path.join(self.work, argv[0]), exist_ok=True)
        with open(os.path.join(self.work, argv[0], "out.txt"), "a") as f:
            f.write(" ".join(argv) + "\n")
        return json.dumps({"ran": argv[0]})


@pytest.fixture
def fake(tmp_path, monkeypatch):
    commands = FakeCommands(str(tmp_path / "work"))
    monkeypatch.setattr(Pipeline, "vargface", lambda self, argv, capture=False: commands(self, argv, capture))
    return commands


def steps(work):
    return [Step("one", "the first step", [["one", "--x", "1"]], outputs=[os.path.join(work, "one")]),
            Step("two", "a training step", [["train", "--prefix", os.path.join(work, "train", "model")]],
                 outputs=[os.path.join(work, "train")], resume=os.path.join(work, "train", "model")),
            Step("three", "the last step", [["three"]], capture=True, result=lambda printed: json.loads(printed[0]))]


def test_finished_steps_are_skipped_on_a_rerun(tmp_path, fake, capsys):
    work = str(tmp_path / "work")
    results = Pipeline(work, "state.json", {"a": 1}, "test").run(steps(work))
    assert [c[0] for c in fake.calls] == ["one", "train", "three"]
    assert results["three"] == {"ran": "three"}
    out = capsys.readouterr().out
    assert "[1/3] the first step" in out and "[3/3] the last step" in out

    fake.calls.clear()
    again = Pipeline(work, "state.json", {"a": 1}, "test").run(steps(work))
    assert fake.calls == [] and again["three"] == {"ran": "three"}
    assert capsys.readouterr().out.count("done in an earlier run") == 3

    with pytest.raises(VargfaceError, match="other settings"):
        with Pipeline(work, "state.json", {"a": 2}, "test"):
            pass
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "mine.txt").write_text("keep")
    with pytest.raises(VargfaceError, match="not a test output"):
        with Pipeline(str(tmp_path / "stray"), "state.json", {}, "test"):
            pass
    (tmp_path / "work" / "state.json").write_text("{broken")
    with pytest.raises(VargfaceError, match="unreadable test state"):
        with Pipeline(work, "state.json", {"a": 1}, "test"):
            pass


def test_interrupted_steps_are_redone_and_training_resumes(tmp_path, fake, capsys):
    work = str(tmp_path / "work")
    # leftovers of an interrupted first attempt: a plain step's output, a training run with its saved state
    os.makedirs(os.path.join(work, "one"))
    with open(os.path.join(work, "one", "out.txt"), "w") as f:
        f.write("half-written\n")
    os.makedirs(os.path.join(work, "train"))
    (tmp_path / "work" / "train" / "model-state.json").write_text("{}")
    (tmp_path / "work" / "train" / "model-0001.params").write_text("weights so far")
    (tmp_path / "work" / "state.json").write_text(json.dumps({"settings": {}, "steps": {}}))
    Pipeline(work, "state.json", {}, "test").run(steps(work))
    assert (tmp_path / "work" / "one" / "out.txt").read_text() == "one --x 1\n"  # cleaned, then redone
    assert fake.calls[1][-1] == "--resume"
    assert (tmp_path / "work" / "train" / "model-0001.params").read_text() == "weights so far"  # kept
    assert "(continuing the interrupted run)" in capsys.readouterr().out


def test_a_distillation_chain_resumes_from_its_lineage(tmp_path, fake):
    work = tmp_path / "work"
    (work / "s").mkdir(parents=True)
    (work / "s" / "model-lineage.json").write_text("{}")
    (work / "state.json").write_text(json.dumps({"settings": {}, "steps": {}}))
    Pipeline(str(work), "state.json", {}, "test").run(
        [Step("d", "distil", [["distill", "--prefix", str(work / "s" / "model")]], resume=str(work / "s" / "model"))])
    assert fake.calls == [["distill", "--prefix", str(work / "s" / "model"), "--resume"]]


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, fake, capsys):
    work = str(tmp_path / "work")
    assert Pipeline(work, "state.json", {}, "test", dry_run=True).run(steps(work)) == {
        "one": None, "two": None, "three": None}
    assert fake.calls == [] and not os.path.exists(work)
    out = capsys.readouterr().out
    assert "$ vargface one --x 1" in out and f"$ vargface train --prefix {work}/train/model" in out
    assert "$ vargface three" in out and "[2/3] a training step" in out


def test_a_failing_step_stops_the_run_and_a_rerun_continues_there(tmp_path, fake, capsys):
    work = str(tmp_path / "work")
    fake.fail.add("train")
    with pytest.raises(VargfaceError, match=r"\[2/3\] a training step: train: bad input .*rerun the same test"):
        Pipeline(work, "state.json", {}, "test").run(steps(work))
    assert [c[0] for c in fake.calls] == ["one", "train"]  # the step after the failure did not run
    assert list(json.loads((tmp_path / "work" / "state.json").read_text())["steps"]) == ["one"]

    fake.fail.clear()
    fake.calls.clear()
    Pipeline(work, "state.json", {}, "test").run(steps(work))
    assert [c[0] for c in fake.calls] == ["train", "three"]
    assert list(json.loads((tmp_path / "work" / "state.json").read_text())["steps"]) == ["one", "two", "three"]


def test_steps_run_the_real_cli_and_its_errors_surface(tmp_path, capsys):
    work = str(tmp_path / "work")
    pipeline = Pipeline(work, "state.json", {}, "test")
    flops = Step("flops", "count", [["flops", "y1", "--json"]], capture=True,
                 result=lambda printed: json.loads(printed[0])["params"])
    assert pipeline.run([flops])["flops"] > 0
    assert "$ vargface flops y1 --json" in capsys.readouterr().out
    broken = Step("verify", "verify a missing model", [["verify", "--model", str(tmp_path / "nope") + ",1",
                                                         "--target", str(tmp_path / "x.bin"), "--ctx", "cpu"]])
    with pytest.raises(VargfaceError, match="x.bin"):  # packs are checked before the model loads
        pipeline.run([flops, broken])
    assert "verify" not in json.loads((tmp_path / "work" / "state.json").read_text())["steps"]


def test_overwrite_removes_the_pipelines_own_outputs_and_nothing_else(tmp_path, fake, monkeypatch):
    work = tmp_path / "work"
    old = [Step("old", "a step the new settings no longer have", [["old"]], outputs=[str(work / "old")])]
    Pipeline(str(work), "state.json", {"a": 1}, "test").run(old + steps(str(work)))
    (work / "report.md").write_text("old report")
    (work / "notes.txt").write_text("mine")
    (work / "mine").mkdir()
    pipeline = Pipeline(str(work), "state.json", {"a": 2}, "test", overwrite=True, outputs=[str(work / "report.md")])
    with pipeline:
        assert not (work / "old").exists() and not (work / "report.md").exists()  # recorded, declared: removed
        assert (work / "notes.txt").read_text() == "mine" and (work / "mine").is_dir()  # never the pipeline's
        pipeline.run(steps(str(work)))
    state = json.loads((work / "state.json").read_text())
    assert state["settings"] == {"a": 2} and list(state["steps"]) == ["one", "two", "three"]
    assert (work / "one" / "out.txt").read_text() == "one --x 1\n"  # from this run only
    assert sorted(os.listdir(tmp_path)) == ["work"]  # the lock went with the run

    # a folder that holds no state of this pipeline is never emptied, --out . included
    monkeypatch.chdir(tmp_path / "work" / "mine")
    (tmp_path / "work" / "mine" / "keep.txt").write_text("mine")
    for folder in (str(work), "."):
        if folder == str(work):
            os.remove(work / "state.json")
        with pytest.raises(VargfaceError, match=r"is not a test output \(it holds .*(keep\.txt|notes\.txt)"):
            Pipeline(folder, "state.json", {}, "test", overwrite=True).run(steps(folder))
    assert (work / "notes.txt").exists() and (work / "mine" / "keep.txt").exists() and (work / "one").is_dir()


def test_one_run_per_work_folder(tmp_path, fake, monkeypatch):
    work = str(tmp_path / "work")
    refusals = []

    def second_run(pipeline, argv, capture=False):
        if not refusals:
            with pytest.raises(VargfaceError) as error:
                Pipeline(work, "state.json", {}, "test", overwrite=True).run(steps(work))
            refusals.append(str(error.value))
        return fake(pipeline, argv, capture)

    monkeypatch.setattr(Pipeline, "vargface", second_run)
    Pipeline(work, "state.json", {}, "test").run(steps(work))
    assert f"{work}.lock: another test runs in {work} (pid {os.getpid()} on " in refusals[0]
    assert list(json.loads((tmp_path / "work" / "state.json").read_text())["steps"]) == ["one", "two", "three"]
