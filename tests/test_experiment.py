"""`vargface experiment distill`: the paired statistics against a NumPy/SciPy re-computation, and a quick
experiment end to end that is interrupted in the middle and resumed."""
import json
import sys

import numpy as np
import pytest
from scipy import stats

from vargface.errors import VargfaceError
from vargface.experiment import FARS, IJB_KEY, PROFILES, VARIANTS, metric_keys, paired_difference, summary


def test_paired_difference_equals_the_t_interval_by_hand():
    values, baselines = [0.91, 0.88, 0.90, 0.86], [0.87, 0.86, 0.89, 0.80]
    d = np.subtract(values, baselines)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    result = paired_difference(values, baselines)
    np.testing.assert_allclose([result["mean"], result["std"], result["low"], result["high"]],
                               [d.mean(), d.std(ddof=1), d.mean() - half, d.mean() + half], rtol=1e-12)
    assert result["differences"] == pytest.approx(d.tolist()) and result["n"] == 4
    # one seed: the difference, no interval; a missing value (an unresolvable FAR): nothing
    single = paired_difference([0.9], [0.8])
    assert single["mean"] == pytest.approx(0.1) and single["low"] is None and single["std"] == 0.0
    assert paired_difference([0.9, None], [0.8, 0.7]) is None and summary([None]) is None
    assert summary([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "std": pytest.approx(np.std([1, 2, 4], ddof=1)),
                                        "n": 3}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def quick_experiment(tmp_path_factory):
    """A quick experiment stopped by a failure in the second seed's variant run, then run again: (out, logs)."""
    from vargface.cli import main
    from vargface.pipeline import Pipeline

    out = tmp_path_factory.mktemp("experiment") / "out"
    logs = []
    real = Pipeline.vargface

    def failing(self, argv, capture=False):
        if argv[0] == "distill" and "seed1/kd_only" in argv[-1]:
            raise VargfaceError("simulated crash")
        return real(self, argv, capture)

    for patch in (failing, real):
        log = tmp_path_factory.mktemp("log") / "stdout.txt"
        with open(log, "w") as f, pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "stdout", f)
            mp.setattr(Pipeline, "vargface", patch)
            with pytest.raises(SystemExit) as exit:
                main(["experiment", "distill", "--quick", "--out", str(out)])
        logs.append((exit.value.code, log.read_text()))
    return out, logs


def test_quick_experiment_reports_paired_differences(quick_experiment):
    out, logs = quick_experiment
    assert logs[1][0] == 0
    result = json.loads((out / "results.json").read_text())
    assert result["seeds"] == [0, 1] and result["settings"]["variants"] == ["kd_only"]
    assert [m["model"] for m in result["models"]] == ["teacher", "scratch", "gen1", "control", "gen2", "kd_only"]
    state = json.loads((out / "experiment-state.json").read_text())["steps"]
    for comparison in result["comparisons"]:
        for key in metric_keys():
            runs = [[state[f"evaluate-{m}-seed{seed}"]["result"][key] for seed in (0, 1)]
                    for m in (comparison["model"], comparison["baseline"])]
            if None in runs[0] + runs[1]:
                assert comparison[key] is None
                continue
            expected = paired_difference(*runs)
            assert comparison[key]["differences"] == pytest.approx(np.subtract(*runs).tolist())
            assert comparison[key]["low"] == pytest.approx(expected["low"])
    assert {c["model"]: c["baseline"] for c in result["comparisons"]} == {"gen1": "scratch", "gen2": "control",
                                                                        "kd_only": "gen1"}
    teacher, student = result["models"][0], result["models"][1]  # a smoke run keeps the teacher the larger net
    assert teacher["params"] > student["params"] and teacher["flops"] > student["flops"]
    table = (out / "results.md").read_text()
    assert "95% interval" in table and "no margin loss" in table and (out / "results.png").stat().st_size > 1000
    assert "--kd-only" in logs[0][1] and " ".join(VARIANTS["kd_only"].options) in logs[0][1]


def test_an_interrupted_experiment_redoes_only_unfinished_runs(quick_experiment):
    _, logs = quick_experiment
    (code, first), (_, second) = logs
    assert code == 1
    finished = first.count("\n== [")  # every step started in the first run but the failed one finished
    skipped = second.count("done in an earlier run")
    assert skipped == finished - 1 and skipped > 10
    rerun = [line for line in second.splitlines() if line.startswith("$ vargface ")]
    assert "seed1/kd_only" in rerun[0] and not any("seed0/" in line and "train" in line for line in rerun)
    assert "simulated crash" not in second


def test_a_budget_sweep_in_miniature(tmp_path, capsys):
    """`--budgets`: every student run and comparison at each N under one teacher (trained 4 x the largest N), the
    gains against N in the table and the plot, each paired difference recomputed from the evaluations."""
    from vargface.cli import main

    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit:
        main(["experiment", "distill", "--quick", "--budgets", "3,2", "--variants", "smoothing", "--seeds", "1",
              "--heldout-identities", "12", "--pairs", "12", "--out", str(out)])
    assert exit.value.code == 0
    result = json.loads((out / "results.json").read_text())
    state = json.loads((out / "experiment-state.json").read_text())["steps"]
    assert [part["budget"] for part in result["budgets"]] == [2, 3] and result["settings"]["teacher_steps"] == 12
    for part in result["budgets"]:
        n = part["budget"]
        assert [(m["model"], m["updates"]) for m in part["models"]] == [
            ("teacher", 12), ("scratch", n), ("gen1", n), ("control", 2 * n), ("gen2", 2 * n), ("smoothing", n)]
        assert {c["model"]: c["baseline"] for c in part["comparisons"]} == {"gen1": "scratch", "gen2": "control",
                                                                            "smoothing": "scratch"}
        for c in part["comparisons"]:
            runs = [state[f"evaluate-{m}-seed0-n{n}"]["result"]["accuracy"] for m in (c["model"], c["baseline"])]
            assert c["accuracy"]["differences"] == pytest.approx([runs[0] - runs[1]])
        # each budget trained its own students, the smoothing run with the smoothed loss and no teacher
        saved = (out / "models" / f"n{n}" / "seed0" / "smoothing" / "model-config.py").read_text()
        assert "label_smoothing = 0.1" in saved and f"max_steps = {n}" in saved
    table = (out / "results.md").read_text()
    gains = table[table.index("## Each gain against N"):table.index("## N = 2")]
    assert gains.count("| label smoothing ε=0.1 vs scratch (N each) | ") == 2 and "no interval" in gains
    assert (out / "results.png").stat().st_size > 1000


def test_a_sweep_report_names_students_that_reach_the_teacher(tmp_path):
    from vargface.experiment import Experiment, draw_sweep, sweep_markdown

    settings = dict(first_seed=0, seeds=2, variants=["regularface"], student_steps=150, budgets=[10, 20],
                    teacher_steps=80, profile="quick")
    experiment = Experiment("unused", settings, dry_run=True)
    keys = metric_keys()
    results = {"evaluate-teacher": {"params": 1, "flops": 1, **dict.fromkeys(keys, 0.9)}}
    for budget in (10, 20):
        for seed in (0, 1):
            for model, *_ in experiment.students(budget):
                value = 0.95 if (model, budget) == ("gen2", 20) else 0.8 + 0.01 * seed
                results[experiment.evaluation(model, seed, budget)] = {"params": 1, "flops": 1,
                                                                       **dict.fromkeys(keys, value)}
    report = experiment.report(results)
    assert [c["model"] for c in report["budgets"][0]["comparisons"]] == ["gen1", "gen2", "regularface"]
    assert report["teacher_not_ahead"] == [f"distillation gen 2 at N = 20 ({key})" for key in keys]
    assert report["budgets"][1]["comparisons"][1]["accuracy"]["mean"] == pytest.approx(0.95 - 0.805)
    table = sweep_markdown(report, "experiment")
    assert "| RegularFace λ=1 vs scratch (N each) | 20 | +0.0000 [+0.0000, +0.0000] |" in table
    assert "NOT ahead of: distillation gen 2 at N = 20 (accuracy);" in table
    draw_sweep(report, str(tmp_path / "sweep.png"), "test")
    assert (tmp_path / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [(["--budgets", "0,10"], "--budgets 0,10: expected"),
                                           (["--budgets", "1,10"], "at least 2"),
                                           (["--budgets", "a"], "--budgets a: expected"),
                                           (["--budgets", "5", "--student-steps", "5"], "drop --student-steps"),
                                           (["--student-steps", "1"], "--student-steps must be at least 2"),
                                           (["--teacher-steps", "1"], "--teacher-steps must be at least 2"),
                                           (["--variants", "regularface,nope"], "unknown 'nope'")])
def test_bad_sweep_options_are_refused(argv, message, run_cli, tmp_path):
    code, _, err = run_cli("experiment", "distill", "--quick", "--dry-run", "--out", tmp_path / "x", *argv)
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_teaches_with_the_larger_network(profile):
    """The teacher outweighs its student in parameters and FLOPs in every profile, the smoke run included."""
    from vargface.symbols.flops import count
    from vargface.symbols.registry import get_symbol

    s = PROFILES[profile]
    sizes = {}
    for role, network in (("teacher", "r18_tiny"), ("student", "vargfacenet_tiny")):
        symbol = get_symbol(network, multiplier=s[f"{role}_multiplier"], emb_size=s["emb_size"],
                            input_size=s["input_size"])
        sizes[role] = count(symbol, (1, 3, s["input_size"], s["input_size"]))
    assert sizes["teacher"]["params"] > sizes["student"]["params"]
    assert sizes["teacher"]["flops"] > sizes["student"]["flops"]


def report_with_an_unmeasurable_far():
    """Two seeds; TAR at FAR 1e-5 unmeasurable on the held-out set (None for every model)."""
    def stat(mean):
        return {"mean": mean, "std": 0.01, "n": 2}

    models = [dict(model=m, title=m, params=1000, flops=2e6, updates=10, accuracy=stat(a),
                   **{"tar@0.001": stat(t), "tar@0.0001": stat(t / 2), "tar@1e-05": None, IJB_KEY: stat(t / 3)})
              for m, a, t in (("teacher", 0.97, 0.8), ("scratch", 0.89, 0.06), ("gen1", 0.93, 0.2))]
    diff = {"mean": 0.04, "low": 0.01, "high": 0.07, "std": 0.01, "n": 2, "differences": [0.03, 0.05]}
    comparisons = [dict(model="gen1", baseline="scratch", title="gen 1 vs scratch", accuracy=diff,
                        **{"tar@0.001": diff, "tar@0.0001": diff, "tar@1e-05": None, IJB_KEY: diff})]
    return {"models": models, "comparisons": comparisons, "fars": list(FARS), "seeds": [0, 1],
            "settings": {"profile": "quick"}}


def test_the_chart_writes_na_for_a_far_the_set_cannot_measure_and_zooms_the_accuracy_axis():
    import matplotlib.pyplot as plt

    from vargface.experiment import chart_figure, markdown_report

    report = report_with_an_unmeasurable_far()
    fig = chart_figure(report, "test")
    try:
        columns = len(metric_keys())
        top, bottom = fig.axes[:columns], fig.axes[columns:]
        assert [ax.get_title() for ax in top] == ["accuracy", "TAR@FAR=0.001", "TAR@FAR=0.0001", "TAR@FAR=1e-05",
                                                  "IJB TAR@FAR=0.0001"]
        texts = [t.get_text().replace("\n", " ") for t in top[3].texts]
        assert texts == ["n/a: the held-out images have too few impostor pairs for FAR 1e-05 (it needs 100,000)"]
        assert not top[3].patches and not top[3].get_yticks().size  # no made-up axis
        assert [t.get_text() for t in bottom[3].texts] == ["n/a"] and not bottom[3].patches
        low, high = top[0].get_ylim()  # accuracy: from where the data is, not from 0
        assert 0.8 < low < 0.88 and 0.98 <= high <= 1.1
        for ax in top[1], top[4]:  # TARs from 0, one bar per model
            assert ax.get_ylim()[0] == 0.0 and len(ax.patches) == 3
        assert bottom[0].get_xlim()[0] == pytest.approx(-bottom[0].get_xlim()[1])  # differences centred on 0
    finally:
        plt.close(fig)
    rows = [line.split(" | ") for line in markdown_report(report, "test").splitlines() if line.startswith("| ")]
    column = metric_keys().index("tar@1e-05") + 1  # after the title (and, for models, params, FLOPs, updates)
    assert [row[column + 3] for row in rows[2:5]] == ["n/a"] * 3 and rows[-1][column] == "n/a"
    assert "n/a" not in " ".join(rows[2][:column + 3] + rows[2][column + 4:])


def test_variant_groups_name_every_variant_of_their_kind(run_cli, tmp_path):
    """'distillation': every variant compared with generation 1 (a change of the distillation), none other."""
    from vargface.experiment import VARIANTS

    code, out, err = run_cli("experiment", "distill", "--quick", "--dry-run", "--variants", "distillation", "--out",
                             tmp_path / "x")
    assert code == 0, err
    for name, variant in VARIANTS.items():
        assert (f"variant {variant.title} (" in out) == (variant.baseline == "gen1"), name
