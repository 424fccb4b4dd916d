"""`vargface experiment distill`: the paired statistics against a NumPy/SciPy re-computation, and a quick
experiment end to end that is interrupted in the middle and resumed."""
import json
import sys

import numpy as np
import pytest
from scipy import stats

from vargface.errors import VargfaceError
from vargface.experiment import VARIANTS, metric_keys, paired_difference, summary


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
    table = (out / "results.md").read_text()
    assert "95% interval" in table and "no margin loss" in table and (out / "results.png").stat().st_size > 1000
    assert "--kd-only" in logs[0][1] and " ".join(VARIANTS["kd_only"]) in logs[0][1]


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
