"""``vargface experiment distill`` (and ``vargface demo``, its one-seed profile): what distillation does to a small
student, measured on synthetic identities under one update budget.

A ResNet-IR teacher, clearly stronger than the student (more parameters and FLOPs, trained longer), is trained once
and shared. For each seed, under a budget of N updates per round, the VarGFaceNet student is trained from scratch
(N), restarted once without a teacher as the control of generation 2 (2N), distilled from the teacher (generation
1, N) and distilled again from generation 1 (generation 2, N more), plus each variant asked for (N): a change of
the distillation (other terms, weights, ``--kd-only``) compared with generation 1, or of the margin loss
(RegularFace, label smoothing) compared with the student from scratch. The seed sets the initialisation and the
data order, so each comparison is paired: the same seed sees the same batches. With several budgets
(``--budgets``) every student run and comparison is repeated at each N under the one teacher, trained long enough
to stay ahead of the students of the largest N, and the report adds each gain against N.

Metrics on held-out identities never seen in training: the 10-fold Accuracy-Flip on a pair set, the LFR
protocol at this scale, the exact TAR at FAR 1e-3, 1e-4 and 1e-5 over ALL pairs of the held-out images
(`vargface.eval.tar_at_far`), and IJB-style template-to-template TAR at FAR 1e-4 (`vargface ijb`, exact rule) on
an IJB-layout fixture of held-out identities (loose crops aligned by landmarks, templates pooled). The report
gives, per model, the mean and standard deviation over seeds and, per comparison, the mean paired difference with
its 95% t-interval (Markdown, JSON and one PNG).

Every run is a step of `vargface.pipeline` printed as the `vargface` command it runs: an interrupted experiment
redoes only its unfinished runs."""
import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from vargface import options
from vargface.errors import VargfaceError
from vargface.pipeline import PIPELINE_OVERWRITE
from vargface.train.distill_loss import DEFAULT_TERM
from vargface.train.run_files import LATEST, RunFiles

FARS = (1e-3, 1e-4, 1e-5)
IJB_FAR = 1e-4  # template pairs: PocketNet's and ShrinkTeaNet's IJB-B/C operating point
HELDOUT_FIRST_IDENTITY = 1_000_000  # training identities are numbered from 0: no face is shared
BASELINE_KD = DEFAULT_TERM  # VarGFaceNet's objective: L_arc + 7 L_s


@dataclass(frozen=True)
class Variant:
    """An ablation: its title, the options of its run, and the run of the same seed it is compared with: ``gen1``
    (a change of the distillation: a `vargface distill` run, generation 1 changed) or ``scratch`` (a change of the
    margin loss, which asks whether the change helps a small student by itself: a `vargface train` run without a
    teacher, the student from scratch changed)."""

    title: str
    options: tuple
    baseline: str = "gen1"


# The ablations `--variants` names.
VARIANTS = {
    "alpha1": Variant("weight 1", ("--kd", "angular:embedding@1")),
    "alpha20": Variant("weight 20", ("--kd", "angular:embedding@20")),
    "kd_only": Variant("no margin loss (--kd-only)", ("--kd", BASELINE_KD, "--kd-only")),
    "shrink": Variant("ShrinkTeaNet form (1-cos)^2", ("--kd", "shrink:embedding@7")),
    "intermediate": Variant("+ stride-8 term", ("--kd", "angular:stride8@1", "--kd", BASELINE_KD)),
    "regularface": Variant("RegularFace λ=1", ("--regularface", "1"), "scratch"),
    "smoothing": Variant("label smoothing ε=0.1", ("--label-smoothing", "0.1"), "scratch"),
}
BASELINE_TITLES = {"gen1": "gen 1", "scratch": "scratch"}
# With --budgets the teacher trains this many times the largest N (unless --teacher-steps says otherwise): twice
# the two rounds of generation 2, so that it stays ahead of every student.
TEACHER_PER_BUDGET = 4
# Sizes, from the step times of one run on two idle cores (fast CPU graph): the teacher 2.3 min (600 updates), a
# student round of 150 updates about 22 s, an evaluation about 12 s. `experiment` (three seeds) about 10 minutes,
# each ablation adding about 2 (the five of the distillation: 19 minutes); `demo` (one seed) about 5; `quick` only
# checks the pipeline, with the others' teacher width so that its teacher still outweighs the student.
# The IJB fixture: 60 held-out subjects x 3 templates (about 720 crops, 16,110 template pairs) resolve FAR 1e-4 and
# add a few seconds per evaluation.
PROFILES = {
    "experiment": dict(identities=150, per_identity=16, heldout_identities=300, heldout_per_identity=8, pairs=2000,
                       input_size=48, difficulty=0.5, per_batch_size=32, teacher_steps=600, student_steps=150,
                       teacher_multiplier=0.5, student_multiplier=0.25, emb_size=64, lr=0.1, warmup=20,
                       seeds=3, variants=[], ijb_subjects=60),
    "demo": dict(identities=150, per_identity=16, heldout_identities=300, heldout_per_identity=8, pairs=2000,
                 input_size=48, difficulty=0.5, per_batch_size=32, teacher_steps=400, student_steps=150,
                 teacher_multiplier=0.5, student_multiplier=0.25, emb_size=64, lr=0.1, warmup=20, seeds=1,
                 variants=[], ijb_subjects=60),
    "quick": dict(identities=6, per_identity=4, heldout_identities=40, heldout_per_identity=4, pairs=20,
                  input_size=32, difficulty=0.5, per_batch_size=8, teacher_steps=3, student_steps=2,
                  teacher_multiplier=0.5, student_multiplier=0.25, emb_size=16, lr=0.05, warmup=0, seeds=2,
                  variants=["kd_only"], ijb_subjects=6),
}
SIZE_OPTIONS = ("identities", "per_identity", "heldout_identities", "heldout_per_identity", "pairs", "input_size",
                "teacher_steps", "student_steps", "per_batch_size", "seeds")


def add_options(p, profile):
    """The options `experiment distill` and `demo` share."""
    from vargface.train.schema import BY_NAME

    options.add_out(p, "output directory; a rerun continues it", required=False, default=f"{profile}_out")
    p.add_argument("--quick", action="store_true", help="a drastically shrunk run that only checks the pipeline")
    options.add_seed(p, help="the first seed: runs use SEED..SEED+SEEDS-1")
    options.add_ctx(p, help="devices for training and evaluation")
    train_graph = BY_NAME["train_graph"]
    p.add_argument("--train-graph", default=train_graph.default, choices=train_graph.choices,
                   help="the graph every training run trains (as in `vargface train`; default: %(default)s)")
    options.add_overwrite(p, help=PIPELINE_OVERWRITE)
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    for name in SIZE_OPTIONS:
        help = f"override the profile ({profile}: {PROFILES[profile][name]})"
        if name == "input_size":
            options.add_image_size(p, help=help + "; the side of every image and network input")
        else:
            p.add_argument("--" + name.replace("_", "-"), type=int, default=None, metavar="N", help=help)


def register(subparsers):
    group = subparsers.add_parser("experiment", help="seeded, equal-budget experiments on synthetic faces",
                                  description="Seeded, equal-budget experiments on synthetic identities.")
    sub = group.add_subparsers(dest="experiment_command", metavar="EXPERIMENT")
    sub.required = True
    p = sub.add_parser("distill", help="what distillation does: generations and ablations over seeds, paired "
                       "differences with 95%% intervals", description=__doc__.split("\n\n")[0] + "\n\n"
                       + "\n\n".join(__doc__.split("\n\n")[1:3]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=None, help="comma-separated ablations, each compared with generation 1 "
                   "or with the student from scratch: " + "; ".join(f"{name} ({v.title}, vs "
                                                                   f"{BASELINE_TITLES[v.baseline]})"
                                                                   for name, v in VARIANTS.items())
                   + " (default: none; 'all' for every one, 'distillation' for the changes of the distillation)")
    p.add_argument("--budgets", default=None, metavar="N,N,...", help="repeat every student run and comparison at "
                   "each of these numbers N of student updates per round (instead of --student-steps), under one "
                   f"teacher trained {TEACHER_PER_BUDGET} x the largest N unless --teacher-steps is given; the report "
                   "adds each gain against N, e.g. 150,600,2400")
    add_options(p, "experiment")
    p.set_defaults(func=experiment_command)


def settings_from_args(args, profile):
    """The profile (or its `quick` shrink: the demo stays one seed without ablations) with the size options given on
    the command line."""
    base = PROFILES[profile]
    if args.quick:
        base = dict(PROFILES["quick"], **({"seeds": 1, "variants": []} if profile == "demo" else {}))
    settings = dict(base, profile="quick" if args.quick else profile, ctx=args.ctx, first_seed=args.seed,
                    train_graph=args.train_graph)
    for name in SIZE_OPTIONS:
        value = getattr(args, "image_size" if name == "input_size" else name)
        if value is not None:
            if value < 1:
                raise VargfaceError(f"--{name.replace('_', '-')}: must be >= 1 (got {value})")
            settings[name] = value
    if getattr(args, "variants", None) is not None:
        groups = {"all": list(VARIANTS), "distillation": [n for n, v in VARIANTS.items() if v.baseline == "gen1"]}
        chosen = groups.get(args.variants) or [v for v in args.variants.split(",") if v]
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown:
            raise VargfaceError(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
        settings["variants"] = chosen
    if getattr(args, "budgets", None) is not None:
        if args.student_steps is not None:
            raise VargfaceError("--budgets sets the student updates per round at each budget: drop --student-steps")
        settings["budgets"] = budgets = parse_budgets(args.budgets)
        if args.teacher_steps is None:
            settings["teacher_steps"] = max(settings["teacher_steps"], TEACHER_PER_BUDGET * budgets[-1])
    # every run's cosine schedule needs two updates after the warm-up: checked before anything runs
    need = settings["warmup"] + 2
    for option, steps in (("--budgets: every N" if settings.get("budgets") else "--student-steps",
                           min(settings.get("budgets") or [settings["student_steps"]])),
                          ("--teacher-steps", settings["teacher_steps"])):
        if steps < need:
            raise VargfaceError(f"{option} must be at least {need} (the {settings['warmup']} warm-up updates and "
                                f"two more), got {steps}")
    return settings


def parse_budgets(text):
    """'150,600,2400' -> [150, 600, 2400] (sorted, each once)."""
    try:
        budgets = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        budgets = []
    if not budgets or budgets[0] < 1:
        raise VargfaceError(f"--budgets {text}: expected comma-separated numbers of updates >= 1, e.g. 150,600,2400")
    return budgets


def experiment_command(args):
    Experiment(args.out, settings_from_args(args, "experiment"), overwrite=args.overwrite,
               dry_run=args.dry_run).run()
    return 0


# ---- statistics ------------------------------------------------------------------------------------------------
def summary(values):
    """Mean and sample standard deviation (0 for one value) of a list of numbers; None where a value is missing
    (a FAR the held-out set is too small to resolve)."""
    if any(v is None for v in values):
        return None
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values))}


def paired_difference(values, baselines, confidence=0.95):
    """Mean of the per-seed differences ``values - baselines`` with its t-interval (None for fewer than two)."""
    import warnings

    from scipy import stats

    if any(v is None for v in list(values) + list(baselines)):
        return None
    a, b = np.asarray(values, np.float64), np.asarray(baselines, np.float64)
    result = {"differences": (a - b).tolist(), **summary(a - b), "low": None, "high": None}
    if len(a) > 1:
        with warnings.catch_warnings():  # equal differences: a zero-width interval, not a precision problem
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = stats.ttest_rel(a, b).confidence_interval(confidence)
        result.update(low=float(low), high=float(high))
    return result


REPORT_FILES = ("results.md", "results.json", "results.png")


# ---- the experiment --------------------------------------------------------------------------------------------
class Experiment:
    """The steps of one experiment (see the module docstring), run by `vargface.pipeline`, then the report."""

    name, state_file = "experiment", "experiment-state.json"

    def __init__(self, out, settings, overwrite=False, dry_run=False):
        from vargface.pipeline import Pipeline

        self.out, self.settings, self.dry_run = out, settings, dry_run
        self.seeds = list(range(settings["first_seed"], settings["first_seed"] + settings["seeds"]))
        self.pipeline = Pipeline(out, self.state_file, settings, self.name, overwrite=overwrite, dry_run=dry_run,
                                 hint="pass --overwrite to start again or choose another --out",
                                 outputs=[self.path(name) for name in REPORT_FILES])

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def prefix(self, run):
        return self.path("models", run, "model")

    @property
    def budgets(self):
        """The numbers N of student updates per round: the --budgets of a sweep, else the profile's one."""
        return self.settings.get("budgets") or [self.settings["student_steps"]]

    @property
    def sweep(self):
        return "budgets" in self.settings

    def run_path(self, model, seed, budget):
        """Where a student run of one seed and budget lives under models/ (a sweep keeps one folder per N)."""
        return f"n{budget}/seed{seed}/{model}" if self.sweep else f"seed{seed}/{model}"

    def checkpoint(self, model, seed=None, budget=None):
        """'PREFIX,1' of a model: 'teacher', or a student run of one seed and budget (every run keeps its latest
        weights)."""
        if model == "teacher":
            return RunFiles(self.prefix("teacher")).model(LATEST)
        if model in ("gen1", "gen2"):
            return RunFiles(self.prefix(self.run_path("distill", seed, budget))).generation(int(model[3:])).model(
                LATEST)
        files = RunFiles(self.prefix(self.run_path(model, seed, budget)))
        distilled = model in VARIANTS and VARIANTS[model].baseline == "gen1"
        return (files.generation(1) if distilled else files).model(LATEST)

    def students(self, budget):
        """(model, title, updates, baseline, comparison title) of every student run of one seed at ``budget``."""
        n = budget
        rows = [("scratch", "student from scratch", n, None, None),
                ("gen1", "distillation gen 1", n, "scratch", "gen 1 vs scratch (N updates each)"),
                ("control", "student from scratch, 2 rounds", 2 * n, None, None),
                ("gen2", "distillation gen 2", 2 * n, "control", "gen 2 vs scratch in 2 rounds (2N each)")]
        for name in self.settings["variants"]:
            v = VARIANTS[name]
            base = BASELINE_TITLES[v.baseline]
            rows.append((name, f"{base}, {v.title}", n, v.baseline, f"{v.title} vs {base} (N each)"))
        return rows

    def evaluation(self, model, seed, budget):
        """The name of the step evaluating a student run."""
        return f"evaluate-{model}-seed{seed}" + (f"-n{budget}" if self.sweep else "")

    # -- steps -------------------------------------------------------------------------------------------------
    def steps(self):
        steps = self.data_steps() + [self.teacher_step()]
        if self.cache_needed():
            steps.append(self.cache_step())
        for budget in self.budgets:
            for seed in self.seeds:
                steps += self.seed_steps(seed, budget)
        steps.append(self.evaluate_step("teacher", None, None))
        for budget in self.budgets:
            for seed in self.seeds:
                steps += [self.evaluate_step(model, seed, budget) for model, *_ in self.students(budget)]
        return steps

    def data_steps(self):
        from vargface.pipeline import Step

        s = self.settings
        size, common = str(s["input_size"]), ["--seed", "0", "--difficulty", str(s["difficulty"])]
        return [
            Step("synth", "render synthetic training identities (one folder per identity)",
                 [["data", "synth", "--out", self.path("faces"), "--identities", str(s["identities"]), "--per-identity",
                   str(s["per_identity"]), "--image-size", size] + common], outputs=[self.path("faces")]),
            Step("rec", "convert the image folders to RecordIO (train.rec, train.idx, property)",
                 [["data", "rec", self.path("faces"), "--out", self.path("data"), "--image-size", size]],
                 outputs=[self.path("data")]),
            Step("heldout", "render held-out identities (never seen in training)",
                 [["data", "synth", "--out", self.path("heldout_faces"), "--identities", str(s["heldout_identities"]),
                   "--per-identity", str(s["heldout_per_identity"]), "--image-size", size, "--first-identity",
                   str(HELDOUT_FIRST_IDENTITY)] + common], outputs=[self.path("heldout_faces")]),
            Step("pairs", "make the held-out pair set (half same, half different identity)",
                 [["data", "pairs", self.path("heldout_faces"), "--out", self.path("data", "heldout.bin"), "--pairs",
                   str(s["pairs"]), "--seed", "0", "--image-size", size]], outputs=[self.path("data", "heldout.bin")]),
            Step("ijb-fixture", "render an IJB-layout fixture of held-out identities (loose crops, templates, pairs)",
                 [["data", "synth-ijb", "--out", self.path("heldout_ijb"), "--subjects", str(s["ijb_subjects"]),
                   "--templates-per-subject", "3", "--first-identity", str(HELDOUT_FIRST_IDENTITY)] + common],
                 outputs=[self.path("heldout_ijb")]),
        ]

    def train_options(self, seed, steps, teacher=False):
        s = self.settings
        # ArcFace with a softer scale and margin than the 64/0.5 of full-scale runs: a few hundred updates on a
        # small set do not get past the large-margin plateau otherwise. Warm-up + cosine, as advised for
        # VarGFaceNet. Verification runs once per model, after training (--target '').
        network = ["--network", "r18_tiny", "--net-multiplier", str(s["teacher_multiplier"])] if teacher else [
            "--network", "vargfacenet_tiny", "--net-multiplier", str(s["student_multiplier"])]
        return network + [
            "--dataset", self.path("data"), "--loss", "arcface", "--loss-s", "32", "--loss-m2", "0.3",
            "--emb-size", str(s["emb_size"]), "--image-size", str(s["input_size"]), "--per-batch-size",
            str(s["per_batch_size"]), "--ctx", s["ctx"], "--lr", str(s["lr"]), "--lr-schedule", "cosine",
            "--warmup-steps", str(s["warmup"]), "--lr-total-steps", str(steps), "--max-steps", str(steps),
            "--seed", str(seed), "--target", "", "--frequent", str(max(1, min(20, steps // 6))), "--verbose",
            str(steps), "--ckpt", "3", "--train-graph", s.get("train_graph", "auto")]

    def teacher_step(self):
        return self.train_step("teacher", "train the teacher once (ResNet-18-IR)", 0, self.settings["teacher_steps"],
                               teacher=True)

    def train_step(self, run, title, seed, steps, pretrained=None, options=(), teacher=False):
        from vargface.pipeline import Step

        argv = ["train"] + self.train_options(seed, steps, teacher=teacher) + list(options)
        argv += ["--prefix", self.prefix(run)] + (["--pretrained", pretrained] if pretrained else [])
        return Step(run.replace("/", "-"), title, [argv], outputs=[os.path.dirname(self.prefix(run))],
                    resume=self.prefix(run))

    def cache(self):
        return self.path("data", "teacher.kdcache")

    def cache_needed(self):
        distilled = [v for v in self.settings["variants"] if VARIANTS[v].baseline == "gen1"]
        return any(self.embedding_only(variant) for variant in ["baseline"] + distilled)

    @staticmethod
    def terms(variant):
        """The distillation options of a distillation run ('baseline': VarGFaceNet's objective)."""
        return list(VARIANTS[variant].options) if variant in VARIANTS else ["--kd", BASELINE_KD]

    @classmethod
    def embedding_only(cls, variant):
        """A run whose terms all read the embedding can use the teacher-embedding cache."""
        terms = cls.terms(variant)
        return all(t.split(":")[1].startswith("embedding") for t in terms[1::2] if ":" in t)

    def cache_step(self):
        from vargface.pipeline import Step

        return Step("cache", "precompute the teacher's embeddings of every training image and its mirror",
                    [["distill", "cache", "--teacher", self.checkpoint("teacher"), "--dataset", self.path("data"),
                      "--image-size", str(self.settings["input_size"]), "--out", self.cache(), "--ctx",
                      self.settings["ctx"]]], outputs=[self.cache()])

    def distill_step(self, run, title, seed, variant, generations, steps):
        from vargface.pipeline import Step

        cache = ["--teacher-cache", self.cache()] if self.embedding_only(variant) else []
        argv = (["distill", "--teacher", self.checkpoint("teacher")] + cache + self.terms(variant)
                + ["--generations", str(generations)] + self.train_options(seed, steps)
                + ["--prefix", self.prefix(run)])
        return Step(run.replace("/", "-"), title, [argv], outputs=[os.path.dirname(self.prefix(run))],
                    resume=self.prefix(run))

    def seed_steps(self, seed, budget):
        where = f"seed {seed}" + (f", N = {budget}" if self.sweep else "")

        def run(model):
            return self.run_path(model, seed, budget)

        steps = [self.train_step(run("scratch"), f"{where}: the student from scratch", seed, budget),
                 self.train_step(run("control"), f"{where}: the scratch student restarted without a teacher "
                                 "(control of generation 2: the same two-round budget)", seed, budget,
                                 pretrained=self.checkpoint("scratch", seed, budget)),
                 self.distill_step(run("distill"), f"{where}: distillation ({BASELINE_KD}), generation 1 "
                                   "from scratch, generation 2 from generation 1", seed, "baseline", 2, budget)]
        for name in self.settings["variants"]:
            v = VARIANTS[name]
            title = f"{where}: variant {v.title} ({' '.join(v.options)})"
            if v.baseline == "gen1":
                steps.append(self.distill_step(run(name), title, seed, name, 1, budget))
            else:
                steps.append(self.train_step(run(name), title + ", without a teacher", seed, budget,
                                             options=v.options))
        return steps

    def evaluate_step(self, model, seed, budget):
        """Accuracy-Flip on the pair set (`vargface verify`), FLOPs, the all-pairs TAR of the held-out images and the
        IJB-style template TAR (`vargface ijb`) on the held-out fixture."""
        from vargface.pipeline import Step

        checkpoint = self.checkpoint(model, seed, budget)
        where = "teacher" if seed is None else f"seed {seed}" + (f", N = {budget}" if self.sweep else "") + \
            f": {model}"
        name = "evaluate-teacher" if seed is None else self.evaluation(model, seed, budget)
        ijb_folder = self.path("ijb", name)  # its result and the per-crop features beside it

        def measure(printed):
            verify, flops, ijb = (json.loads(text) for text in printed)
            result = {"accuracy": verify["heldout"]["accuracy"], "accuracy_std": verify["heldout"]["std"],
                      "params": flops["params"], "flops": flops["flops"],
                      **all_pairs_tar(checkpoint, self.path("heldout_faces"), self.settings["ctx"]),
                      IJB_KEY: ijb["tar_at_far_exact"].get(f"{IJB_FAR:g}")}
            print(f"{where}: accuracy {result['accuracy']:.4f}, " + ", ".join(
                f"{title} " + ("n/a" if result[key] is None else f"{result[key]:.4f}")
                for key, title in zip(metric_keys()[1:], metric_titles()[1:])), flush=True)
            return result

        return Step(name, f"evaluate {where}",
                    [["verify", "--model", checkpoint, "--target", self.path("data", "heldout.bin"), "--ctx",
                      self.settings["ctx"], "--json"], ["flops", "--model", checkpoint, "--json"],
                     ["ijb", "--model", checkpoint, "--root", self.path("heldout_ijb"), "--target", "IJBC", "--out",
                      os.path.join(ijb_folder, "result.json"), "--ctx", self.settings["ctx"], "--json"]],
                    outputs=[ijb_folder], capture=True,
                    result=measure)

    # -- run and report ----------------------------------------------------------------------------------------
    def run(self):
        s, tic = self.settings, time.time()
        rounds = (f"budgets N = {', '.join(map(str, self.budgets))}" if self.sweep else f"N = {s['student_steps']}")
        print(f"vargface {self.name} ({s['profile']}): seeds {', '.join(map(str, self.seeds))}; {s['identities']} "
              f"training identities x {s['per_identity']} images; held-out {s['heldout_identities']} identities x "
              f"{s['heldout_per_identity']} images; {rounds} student updates per round, teacher "
              f"{s['teacher_steps']}; output in {self.out}", flush=True)
        with self.pipeline:
            results = self.pipeline.run(self.steps())
            if self.dry_run:
                return None
            report = self.report(results)
            self.write(report, time.time() - tic)
        return report

    def report(self, results):
        """{'models': [...], 'comparisons': [...]} from the evaluation results of every seed; a sweep gives them
        per budget ({'budgets': [{'budget', 'models', 'comparisons'}, ...]}) and names any student whose mean
        reaches the teacher's (``teacher_not_ahead``)."""
        teacher = results["evaluate-teacher"]
        teacher_row = dict(model="teacher", title="teacher ResNet-18-IR", updates=self.settings["teacher_steps"],
                           params=teacher["params"], flops=teacher["flops"],
                           **{k: summary([teacher[k]]) for k in metric_keys()})
        parts = [dict(budget=budget, **self.budget_report(results, budget, teacher_row)) for budget in self.budgets]
        head = {"settings": self.settings, "seeds": self.seeds, "fars": list(FARS), "ijb_far": IJB_FAR}
        if not self.sweep:
            return {**head, "models": parts[0]["models"], "comparisons": parts[0]["comparisons"]}
        behind = [f"{m['title']} at N = {part['budget']} ({key})" for part in parts for m in part["models"][1:]
                  for key in metric_keys()
                  if m[key] and teacher_row[key] and m[key]["mean"] >= teacher_row[key]["mean"]]
        return {**head, "budgets": parts, "teacher_not_ahead": behind}

    def budget_report(self, results, budget, teacher_row):
        """{'models': [...], 'comparisons': [...]} at one budget, the teacher first among the models."""
        models, per_seed = [teacher_row], {}
        for model, title, updates, baseline, comparison in self.students(budget):
            runs = [results[self.evaluation(model, seed, budget)] for seed in self.seeds]
            per_seed[model] = runs
            models.append(dict(model=model, title=title, updates=updates, params=runs[0]["params"],
                               flops=runs[0]["flops"], **{k: summary([r[k] for r in runs]) for k in metric_keys()}))
        comparisons = [dict(model=model, baseline=baseline, title=comparison,
                            **{k: paired_difference([r[k] for r in per_seed[model]],
                                                    [r[k] for r in per_seed[baseline]]) for k in metric_keys()})
                       for model, _, _, baseline, comparison in self.students(budget) if baseline]
        return {"models": models, "comparisons": comparisons}

    def write(self, report, seconds):
        from vargface.atomic import atomic_path

        text = (sweep_markdown if self.sweep else markdown_report)(report, self.name)
        markdown, data, chart = (self.path(name) for name in REPORT_FILES)
        with atomic_path(markdown) as tmp, open(tmp, "w") as f:
            f.write(text)
        with atomic_path(data) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        (draw_sweep if self.sweep else draw_chart)(report, chart, f"vargface {self.name} ({self.settings['profile']})")
        print("\n" + text)
        print(f"wrote {markdown}, {data}, {chart} ({seconds / 60:.1f} min in this run)", flush=True)


def tar_key(far):
    return f"tar@{far:g}"


IJB_KEY = f"ijb_tar@{IJB_FAR:g}"


def metric_keys():
    """The report's metrics, in table order: accuracy, the all-pairs TARs, the IJB-style template TAR."""
    return ["accuracy"] + [tar_key(far) for far in FARS] + [IJB_KEY]


def metric_titles():
    return ["accuracy"] + [f"TAR@FAR={far:g}" for far in FARS] + [f"IJB TAR@FAR={IJB_FAR:g}"]


def all_pairs_tar(checkpoint, image_root, ctx):
    """Exact TAR at FARS over all pairs of the images under ``image_root`` (one folder per identity)."""
    from vargface.data.convert import items_from_root
    from vargface.eval.embedder import FaceEmbedder
    from vargface.eval.tar_at_far import tar_at_far
    from vargface.symbols.checkpoint import parse_model_arg

    items = items_from_root(image_root)
    embedder = FaceEmbedder(*parse_model_arg(checkpoint), ctx=ctx, batch_size=64)
    features = embedder.embed_files([item.path for item in items], progress=False)
    labels = np.array([item.label for item in items])
    found = {row["far"]: row["tar"] for row in tar_at_far(features, labels, list(FARS), progress=False)["results"]}
    return {tar_key(far): found.get(far) for far in FARS}


def _cell(stat, digits=4):
    if stat is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def _interval(diff):
    if diff is None:
        return "n/a"
    if diff["low"] is None:
        return f"{diff['mean']:+.4f}"
    mark = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
    return f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]{mark}"


def _preamble(report):
    return (f"Seeds {', '.join(map(str, report['seeds']))}. Accuracy: 10-fold Accuracy-Flip on the held-out pair set. "
            "TAR: exact, over all pairs of the held-out images. IJB TAR: exact, template to template on an IJB-layout "
            "set of held-out identities (`vargface ijb`). n/a: a FAR below 1/(impostor pairs), which the set cannot "
            "measure. Values are mean ± standard deviation over seeds.")


def _explained(seeds):
    return ("mean [95% interval]; * the interval excludes 0." if len(seeds) > 1 else
            "one seed gives one difference and no interval, so these numbers show the direction in this run, not the "
            "size of the effect: `vargface experiment distill` runs several seeds.")


def _tables(part, seeds):
    """The models table and the paired comparisons table of one budget, as Markdown lines."""
    lines = ["| model | parameters | FLOPs | updates | " + " | ".join(metric_titles()) + " |",
             "|" + " --- |" * (4 + len(metric_titles()))]
    for m in part["models"]:
        lines.append(f"| {m['title']} | {m['params']:,} | {m['flops'] / 1e6:.1f}M | {m['updates']} | "
                     + " | ".join(_cell(m[k]) for k in metric_keys()) + " |")
    lines += ["", f"Paired differences (same seed, same data order): {_explained(seeds)}",
              "", "| comparison | " + " | ".join(metric_titles()) + " |", "|" + " --- |" * (1 + len(metric_titles()))]
    lines += [f"| {c['title']} | " + " | ".join(_interval(c[k]) for k in metric_keys()) + " |"
              for c in part["comparisons"]]
    return lines


def markdown_report(report, name):
    lines = [f"# vargface {name}: distillation on synthetic faces ({report['settings']['profile']} profile)", "",
             _preamble(report), ""]
    return "\n".join(lines + _tables(report, report["seeds"]) + [""])


def sweep_markdown(report, name):
    """The gains against the budget first (one row per comparison and N), then each budget's tables."""
    parts = report["budgets"]
    lines = [f"# vargface {name}: distillation on synthetic faces against the training budget "
             f"({report['settings']['profile']} profile)", "", _preamble(report) + " N: student updates per round; "
             f"one teacher for every N ({report['settings']['teacher_steps']} updates).", "",
             "## Each gain against N", "", f"Paired differences: {_explained(report['seeds'])}", "",
             "| comparison | N | " + " | ".join(metric_titles()) + " |", "|" + " --- |" * (2 + len(metric_titles()))]
    for index, first in enumerate(parts[0]["comparisons"]):
        for part in parts:
            c = part["comparisons"][index]
            lines.append(f"| {first['title']} | {part['budget']} | "
                         + " | ".join(_interval(c[k]) for k in metric_keys()) + " |")
    behind = report["teacher_not_ahead"]
    lines += ["", "The teacher is ahead of every student at every N on every metric." if not behind else
              f"The teacher is NOT ahead of: {'; '.join(behind)} (train it longer with --teacher-steps)."]
    for part in parts:
        lines += ["", f"## N = {part['budget']}", ""] + _tables(part, report["seeds"])
    return "\n".join(lines + [""])


def not_measured(key):
    """Why a TAR has no value: a FAR below 1/(impostor pairs) of the held-out images or of the IJB-layout set."""
    far = float(key.rpartition("@")[2])
    where = "IJB-layout set has too few impostor template pairs" if key == IJB_KEY else \
        "held-out images have too few impostor pairs"
    return f"n/a: the {where} for FAR {far:g} (it needs {math.ceil(1 / far - 1e-6):,})"


def chart_figure(report, title):
    """Top row: per model, the mean of each metric with its standard deviation over seeds (the accuracy axis
    zoomed to the data, the TAR axes from 0). Bottom row: per comparison, the mean paired difference with its 95%
    interval (a bare bar for one seed), one panel per metric, centred on 0. A metric the held-out set cannot
    measure is written "n/a" with the reason instead of an empty panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, titles = metric_keys(), metric_titles()
    models, comparisons = report["models"], report["comparisons"]
    heights = [4.5, 1.5 + 0.35 * len(comparisons)]  # inches: the model bars, then one row per comparison
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    x = np.arange(len(models))
    for column, key in enumerate(keys):
        ax = axes[0, column]
        ax.set_title(titles[column])
        if all(m[key] is None for m in models):
            _write_not_measured(ax, not_measured(key))
            _write_not_measured(axes[1, column], "n/a")
            continue
        stats = [m[key] or {"mean": np.nan, "std": 0.0} for m in models]
        means, stds = np.array([s["mean"] for s in stats]), np.array([s["std"] for s in stats])
        bars = ax.bar(x, means, yerr=stds, capsize=3, color=["tab:gray"] + ["tab:blue"] * (len(models) - 1))
        ax.bar_label(bars, labels=["n/a" if np.isnan(m) else f"{m:.3f}" for m in means], fontsize=7, padding=2)
        low, high = np.nanmin(means - stds), np.nanmax(means + stds)
        top = min(1.0, high + 0.15 * max(high - low, 0.02))
        bottom = max(0.0, low - 0.15 * max(high - low, 0.02)) if key == "accuracy" else 0.0
        ax.set_ylim(bottom, top + 0.08 * (top - bottom))  # room for the value labels
        ax.set_xticks(x)
        ax.set_xticklabels([m["model"] for m in models], rotation=45, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax = axes[1, column]
        diffs = [c[key] or {"mean": np.nan, "low": None, "high": None} for c in comparisons]
        means = np.array([d["mean"] for d in diffs])
        errors = np.array([[d["mean"] - d["low"], d["high"] - d["mean"]] if d["low"] is not None else [0.0, 0.0]
                           for d in diffs]).T
        y = np.arange(len(comparisons))
        ax.barh(y, means, xerr=errors, capsize=3, color=["tab:green" if m >= 0 else "tab:red" for m in means])
        ax.axvline(0.0, color="black", linewidth=0.8)
        reach = np.nanmax(np.abs(np.concatenate([means - errors[0], means + errors[1]])))
        reach = 0.01 if not np.isfinite(reach) or reach == 0 else reach
        ax.set_xlim(-1.15 * reach, 1.15 * reach)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{c['model']} - {c['baseline']}" for c in comparisons] if column == 0 else [],
                           fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("paired difference" + (" [95% interval]" if len(report["seeds"]) > 1 else ""), fontsize=8)
    fig.suptitle(f"{title}: mean ± std over {len(report['seeds'])} seed(s); paired differences below")
    fig.tight_layout()
    return fig


def _write_not_measured(ax, text):
    import textwrap

    ax.text(0.5, 0.5, textwrap.fill(text, 30), transform=ax.transAxes, ha="center", va="center", color="dimgray")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_chart(report, path, title):
    """`chart_figure` written atomically to ``path`` as PNG."""
    from vargface.eval.plots import save_figure

    save_figure(chart_figure(report, title), path, "the chart", layout=False)


def draw_sweep(report, path, title):
    """One panel per metric: each comparison's mean paired difference against N (log scale), with its 95% interval
    (bare points for one seed); the comparisons side by side at each N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vargface.eval.plots import save_figure

    parts = report["budgets"]
    budgets = np.array([part["budget"] for part in parts], np.float64)
    titles = [c["title"] for c in parts[0]["comparisons"]]
    fig, axes = plt.subplots(1, len(metric_keys()), figsize=(4.5 * len(metric_keys()), 4.8), squeeze=False)
    spread = np.exp(0.04 * (np.arange(len(titles)) - (len(titles) - 1) / 2))  # side by side on the log axis
    for ax, key, head in zip(axes[0], metric_keys(), metric_titles()):
        for index, label in enumerate(titles):
            diffs = [part["comparisons"][index][key] or {"mean": np.nan, "low": None, "high": None} for part in parts]
            means = np.array([d["mean"] for d in diffs])
            errors = np.array([[d["mean"] - d["low"], d["high"] - d["mean"]] if d["low"] is not None else [0.0, 0.0]
                               for d in diffs]).T
            ax.errorbar(budgets * spread[index], means, yerr=errors, marker="o", capsize=3, label=label)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(budgets[0] / 1.4, budgets[-1] * 1.4)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(int(b)) for b in budgets])
        ax.minorticks_off()
        ax.set_title(head)
        ax.set_xlabel("N (student updates per round)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("paired difference" + (" [95% interval]" if len(report["seeds"]) > 1 else ""))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=min(3, len(titles)), fontsize=8)
    fig.suptitle(f"{title}: each gain against the budget N, over {len(report['seeds'])} seed(s)")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(titles) - 1) // 3), 1, 1))
    save_figure(fig, path, "the chart", layout=False)
