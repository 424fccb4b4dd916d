"""``vargface experiment distill`` (and ``vargface demo``, its one-seed profile): what distillation does to a small
student, measured on synthetic identities under one update budget.

A ResNet-IR teacher, clearly stronger than the student (more parameters and FLOPs, trained longer), is trained once
and shared. For each seed, under a budget of N updates per round, the VarGFaceNet student is trained from scratch
(N), restarted once without a teacher as the control of generation 2 (2N), distilled from the teacher (generation
1, N) and distilled again from generation 1 (generation 2, N more), plus each variant asked for (other terms,
weights, ``--kd-only``: N, compared with generation 1). The seed sets the initialisation and the data order, so
each comparison is paired: the same seed sees the same batches.

Metrics on held-out identities never seen in training: the 10-fold Accuracy-Flip on a pair set, and the LFR
protocol at this scale, the exact TAR at FAR 1e-3, 1e-4 and 1e-5 over ALL pairs of the held-out images
(`vargface.eval.tar_at_far`). The report gives, per model, the mean and standard deviation over seeds and, per
comparison, the mean paired difference with its 95% t-interval (Markdown, JSON and one PNG).

Every run is a step of `vargface.pipeline` printed as the `vargface` command it runs: an interrupted experiment
redoes only its unfinished runs."""
import argparse
import json
import os
import time

import numpy as np

from vargface import options
from vargface.errors import VargfaceError
from vargface.pipeline import PIPELINE_OVERWRITE
from vargface.train.distill_loss import DEFAULT_TERM
from vargface.train.run_files import LATEST, RunFiles

FARS = (1e-3, 1e-4, 1e-5)
HELDOUT_FIRST_IDENTITY = 1_000_000  # training identities are numbered from 0: no face is shared
BASELINE_KD = DEFAULT_TERM  # VarGFaceNet's objective: L_arc + 7 L_s
# Ablations of VarGFaceNet's distillation, each a generation-1 run compared with generation 1.
VARIANTS = {
    "alpha1": ["--kd", "angular:embedding@1"],
    "alpha20": ["--kd", "angular:embedding@20"],
    "kd_only": ["--kd", BASELINE_KD, "--kd-only"],
    "shrink": ["--kd", "shrink:embedding@7"],
    "intermediate": ["--kd", "angular:stride8@1", "--kd", BASELINE_KD],
}
VARIANT_TITLES = {"alpha1": "weight 1", "alpha20": "weight 20", "kd_only": "no margin loss (--kd-only)",
                  "shrink": "ShrinkTeaNet form (1-cos)^2", "intermediate": "+ stride-8 term"}
# Sizes, from the step times of one run on two idle cores (fast CPU graph): the teacher 2.3 min (600 updates), a
# student round of 150 updates about 22 s, an evaluation about 12 s. `experiment` (three seeds) about 10 minutes,
# each ablation adding about 2 (all five: 19 minutes); `demo` (one seed) about 5; `quick` only checks the pipeline.
PROFILES = {
    "experiment": dict(identities=150, per_identity=16, heldout_identities=300, heldout_per_identity=8, pairs=2000,
                       input_size=48, difficulty=0.5, per_batch_size=32, teacher_steps=600, student_steps=150,
                       teacher_multiplier=0.5, student_multiplier=0.25, emb_size=64, lr=0.1, warmup=20,
                       seeds=3, variants=[]),
    "demo": dict(identities=150, per_identity=16, heldout_identities=300, heldout_per_identity=8, pairs=2000,
                 input_size=48, difficulty=0.5, per_batch_size=32, teacher_steps=400, student_steps=150,
                 teacher_multiplier=0.5, student_multiplier=0.25, emb_size=64, lr=0.1, warmup=20, seeds=1,
                 variants=[]),
    "quick": dict(identities=6, per_identity=4, heldout_identities=40, heldout_per_identity=4, pairs=20,
                  input_size=32, difficulty=0.5, per_batch_size=8, teacher_steps=3, student_steps=2,
                  teacher_multiplier=0.125, student_multiplier=0.25, emb_size=16, lr=0.05, warmup=0, seeds=2,
                  variants=["kd_only"]),
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
    p.add_argument("--variants", default=None, help=f"comma-separated ablations, each compared with generation 1 "
                   f"(default: none; 'all' for {', '.join(VARIANTS)})")
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
        chosen = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown:
            raise VargfaceError(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
        settings["variants"] = chosen
    return settings


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

    def checkpoint(self, model, seed=None):
        """'PREFIX,1' of a model: 'teacher', or a student run of one seed (every run keeps its latest weights)."""
        if model == "teacher":
            return RunFiles(self.prefix("teacher")).model(LATEST)
        if model in ("gen1", "gen2"):
            return RunFiles(self.prefix(f"seed{seed}/distill")).generation(int(model[3:])).model(LATEST)
        return RunFiles(self.prefix(f"seed{seed}/{model}")).model(LATEST)

    def students(self):
        """(model, title, updates, baseline, comparison title) of every student run of one seed."""
        n = self.settings["student_steps"]
        rows = [("scratch", "student from scratch", n, None, None),
                ("gen1", "distillation gen 1", n, "scratch", "gen 1 vs scratch (N updates each)"),
                ("control", "student from scratch, 2 rounds", 2 * n, None, None),
                ("gen2", "distillation gen 2", 2 * n, "control", "gen 2 vs scratch in 2 rounds (2N each)")]
        rows += [(v, f"gen 1, {VARIANT_TITLES[v]}", n, "gen1", f"{VARIANT_TITLES[v]} vs gen 1 (N each)")
                 for v in self.settings["variants"]]
        return rows

    # -- steps -------------------------------------------------------------------------------------------------
    def steps(self):
        steps = self.data_steps() + [self.train_step("teacher", "train the teacher once (ResNet-18-IR)", None)]
        if self.cache_needed():
            steps.append(self.cache_step())
        for seed in self.seeds:
            steps += self.seed_steps(seed)
        steps.append(self.evaluate_step("teacher", None))
        for seed in self.seeds:
            steps += [self.evaluate_step(model, seed) for model, *_ in self.students()]
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

    def train_step(self, run, title, seed, pretrained=None):
        from vargface.pipeline import Step

        s = self.settings
        steps = s["teacher_steps"] if run == "teacher" else s["student_steps"]
        argv = ["train"] + self.train_options(0 if seed is None else seed, steps, teacher=run == "teacher")
        argv += ["--prefix", self.prefix(run)] + (["--pretrained", pretrained] if pretrained else [])
        return Step(run.replace("/", "-"), title, [argv], outputs=[os.path.dirname(self.prefix(run))],
                    resume=self.prefix(run))

    def cache(self):
        return self.path("data", "teacher.kdcache")

    def cache_needed(self):
        return any(self.embedding_only(variant) for variant in ["baseline"] + self.settings["variants"])

    @staticmethod
    def embedding_only(variant):
        """A run whose terms all read the embedding can use the teacher-embedding cache."""
        terms = VARIANTS.get(variant, ["--kd", BASELINE_KD])
        return all(t.split(":")[1].startswith("embedding") for t in terms[1::2] if ":" in t)

    def cache_step(self):
        from vargface.pipeline import Step

        return Step("cache", "precompute the teacher's embeddings of every training image and its mirror",
                    [["distill", "cache", "--teacher", self.checkpoint("teacher"), "--dataset", self.path("data"),
                      "--image-size", str(self.settings["input_size"]), "--out", self.cache(), "--ctx",
                      self.settings["ctx"]]], outputs=[self.cache()])

    def distill_step(self, run, title, seed, variant, generations):
        from vargface.pipeline import Step

        terms = VARIANTS.get(variant, ["--kd", BASELINE_KD])
        cache = ["--teacher-cache", self.cache()] if self.embedding_only(variant) else []
        argv = (["distill", "--teacher", self.checkpoint("teacher")] + cache + terms
                + ["--generations", str(generations)] + self.train_options(seed, self.settings["student_steps"])
                + ["--prefix", self.prefix(run)])
        return Step(run.replace("/", "-"), title, [argv], outputs=[os.path.dirname(self.prefix(run))],
                    resume=self.prefix(run))

    def seed_steps(self, seed):
        where = f"seed {seed}"
        steps = [self.train_step(f"seed{seed}/scratch", f"{where}: the student from scratch", seed),
                 self.train_step(f"seed{seed}/control", f"{where}: the scratch student restarted without a teacher "
                                 "(control of generation 2: the same two-round budget)", seed,
                                 pretrained=self.checkpoint("scratch", seed)),
                 self.distill_step(f"seed{seed}/distill", f"{where}: distillation ({BASELINE_KD}), generation 1 "
                                   "from scratch, generation 2 from generation 1", seed, "baseline", 2)]
        for variant in self.settings["variants"]:
            steps.append(self.distill_step(f"seed{seed}/{variant}", f"{where}: variant {VARIANT_TITLES[variant]} "
                                           f"({' '.join(VARIANTS[variant])})", seed, variant, 1))
        return steps

    def variant_checkpoint(self, model, seed):
        if model in self.settings["variants"]:
            return RunFiles(self.prefix(f"seed{seed}/{model}")).generation(1).model(LATEST)
        return self.checkpoint(model, seed)

    def evaluate_step(self, model, seed):
        """Accuracy-Flip on the pair set (`vargface verify`), FLOPs, and the all-pairs TAR of the held-out images."""
        from vargface.pipeline import Step

        checkpoint = self.variant_checkpoint(model, seed)
        where = "teacher" if seed is None else f"seed {seed}: {model}"

        def measure(printed):
            verify, flops = json.loads(printed[0])["heldout"], json.loads(printed[1])
            result = {"accuracy": verify["accuracy"], "accuracy_std": verify["std"], "params": flops["params"],
                      "flops": flops["flops"], **all_pairs_tar(checkpoint, self.path("heldout_faces"),
                                                                self.settings["ctx"])}
            print(f"{where}: accuracy {result['accuracy']:.4f}, " + ", ".join(
                f"TAR@{far:g} " + ("-" if result[tar_key(far)] is None else f"{result[tar_key(far)]:.4f}")
                for far in FARS), flush=True)
            return result

        return Step(f"evaluate-{model}" + ("" if seed is None else f"-seed{seed}"), f"evaluate {where}",
                    [["verify", "--model", checkpoint, "--target", self.path("data", "heldout.bin"), "--ctx",
                      self.settings["ctx"], "--json"], ["flops", "--model", checkpoint, "--json"]], capture=True,
                    result=measure)

    # -- run and report ----------------------------------------------------------------------------------------
    def run(self):
        s, tic = self.settings, time.time()
        print(f"vargface {self.name} ({s['profile']}): seeds {', '.join(map(str, self.seeds))}; {s['identities']} "
              f"training identities x {s['per_identity']} images; held-out {s['heldout_identities']} identities x "
              f"{s['heldout_per_identity']} images; N = {s['student_steps']} student updates per round, teacher "
              f"{s['teacher_steps']}; output in {self.out}", flush=True)
        with self.pipeline:
            results = self.pipeline.run(self.steps())
            if self.dry_run:
                return None
            report = self.report(results)
            self.write(report, time.time() - tic)
        return report

    def report(self, results):
        """{'models': [...], 'comparisons': [...]} from the evaluation results of every seed."""
        keys = ["accuracy"] + [tar_key(far) for far in FARS]
        teacher = results["evaluate-teacher"]
        models = [dict(model="teacher", title="teacher ResNet-18-IR", updates=self.settings["teacher_steps"],
                       params=teacher["params"], flops=teacher["flops"],
                       **{k: summary([teacher[k]]) for k in keys})]
        per_seed = {}
        for model, title, updates, baseline, comparison in self.students():
            runs = [results[f"evaluate-{model}-seed{seed}"] for seed in self.seeds]
            per_seed[model] = runs
            models.append(dict(model=model, title=title, updates=updates, params=runs[0]["params"],
                               flops=runs[0]["flops"], **{k: summary([r[k] for r in runs]) for k in keys}))
        comparisons = [dict(model=model, baseline=baseline, title=comparison,
                            **{k: paired_difference([r[k] for r in per_seed[model]],
                                                    [r[k] for r in per_seed[baseline]]) for k in keys})
                       for model, _, _, baseline, comparison in self.students() if baseline]
        return {"settings": self.settings, "seeds": self.seeds, "fars": list(FARS), "models": models,
                "comparisons": comparisons}

    def write(self, report, seconds):
        from vargface.atomic import atomic_path

        text = markdown_report(report, self.name)
        markdown, data, chart = (self.path(name) for name in REPORT_FILES)
        with atomic_path(markdown) as tmp, open(tmp, "w") as f:
            f.write(text)
        with atomic_path(data) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        draw_chart(report, chart, f"vargface {self.name} ({self.settings['profile']})")
        print("\n" + text)
        print(f"wrote {markdown}, {data}, {chart} ({seconds / 60:.1f} min in this run)", flush=True)


def tar_key(far):
    return f"tar@{far:g}"


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
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def _interval(diff):
    if diff is None:
        return "-"
    if diff["low"] is None:
        return f"{diff['mean']:+.4f}"
    mark = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
    return f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]{mark}"


def markdown_report(report, name):
    keys = ["accuracy"] + [tar_key(far) for far in report["fars"]]
    heads = ["accuracy"] + [f"TAR@FAR={far:g}" for far in report["fars"]]
    seeds = report["seeds"]
    lines = [f"# vargface {name}: distillation on synthetic faces ({report['settings']['profile']} profile)", "",
             f"Seeds {', '.join(map(str, seeds))}. Accuracy: 10-fold Accuracy-Flip on the held-out pair set. TAR: "
             f"exact, over all pairs of the held-out images. Values are mean ± standard deviation over seeds.", "",
             "| model | parameters | FLOPs | updates | " + " | ".join(heads) + " |",
             "|" + " --- |" * (4 + len(heads))]
    for m in report["models"]:
        lines.append(f"| {m['title']} | {m['params']:,} | {m['flops'] / 1e6:.1f}M | {m['updates']} | "
                     + " | ".join(_cell(m[k]) for k in keys) + " |")
    explained = ("mean [95% interval]; * the interval excludes 0." if len(seeds) > 1 else
                 "one seed gives one difference and no interval, so these numbers show the direction in this run, "
                 "not the size of the effect: `vargface experiment distill` runs several seeds.")
    lines += ["", f"Paired differences (same seed, same data order): {explained}",
              "", "| comparison | " + " | ".join(heads) + " |", "|" + " --- |" * (1 + len(heads))]
    for c in report["comparisons"]:
        lines.append(f"| {c['title']} | " + " | ".join(_interval(c[k]) for k in keys) + " |")
    return "\n".join(lines + [""])


def draw_chart(report, path, title):
    """Top row: per model, the mean of each metric with its standard deviation over seeds. Bottom row: per
    comparison, the mean paired difference with its 95% interval (a bare bar for one seed), one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vargface.atomic import atomic_path

    keys = ["accuracy"] + [tar_key(far) for far in report["fars"]]
    models, comparisons = report["models"], report["comparisons"]
    heights = [4.5, 1.5 + 0.35 * len(comparisons)]  # inches: the model bars, then one row per comparison
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    x = np.arange(len(models))
    for column, key in enumerate(keys):
        ax = axes[0, column]
        stats = [m[key] or {"mean": np.nan, "std": 0.0} for m in models]
        ax.bar(x, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=3,
               color=["tab:gray"] + ["tab:blue"] * (len(models) - 1))
        ax.set_title(key.replace("tar@", "TAR@FAR="))
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
        ax.set_yticks(y)
        ax.set_yticklabels([f"{c['model']} - {c['baseline']}" for c in comparisons] if column == 0 else [],
                           fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("paired difference" + (" [95% interval]" if len(report["seeds"]) > 1 else ""), fontsize=8)
    fig.suptitle(f"{title}: mean ± std over {len(report['seeds'])} seed(s); paired differences below")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
