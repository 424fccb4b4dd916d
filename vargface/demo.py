"""``vargface demo``: the whole VarGFaceNet method on synthetic faces, sized for two CPU cores.

Synthetic training identities and held-out identities (a verification .bin) -> RecordIO -> a small ResNet-IR
teacher -> a VarGFaceNet student from scratch -> recursive angular distillation (generations 1 and 2) ->
verification of every model on the held-out pairs -> a table (Markdown + JSON) and a PNG chart.

Every step runs the real ``vargface`` subcommand in this process and prints it first, so any step can be rerun
alone from a shell. A finished step is recorded in OUT/demo-state.json; rerunning the same demo continues after
the last finished step (an interrupted training continues with --resume, any other step is redone)."""
import argparse
import json
import os
import time

from vargface.errors import VargfaceError

# Two sizes: `full` is measured to fit about ten minutes on two idle CPU cores and to leave every model short of
# saturating the held-out pairs; `quick` only checks that the pipeline runs (seconds, meaningless accuracies).
PROFILES = {
    "full": dict(identities=150, per_identity=16, heldout_identities=200, pairs=2000, input_size=48,
                 difficulty=0.5, batch_size=32, teacher_steps=120, student_steps=180, teacher_multiplier=0.25,
                 student_multiplier=0.25, emb_size=64, lr=0.1, warmup=20, kd_weight=5.0),
    "quick": dict(identities=6, per_identity=4, heldout_identities=6, pairs=20, input_size=32,
                  difficulty=0.5, batch_size=8, teacher_steps=3, student_steps=2, teacher_multiplier=0.125,
                  student_multiplier=0.25, emb_size=16, lr=0.05, warmup=0, kd_weight=5.0),
}
SIZE_OPTIONS = ("identities", "per_identity", "heldout_identities", "pairs", "input_size", "teacher_steps",
                "student_steps", "batch_size")
HELDOUT_FIRST_IDENTITY = 1_000_000  # training identities are numbered from 0: no face is shared
FAR = 1e-3


def register(subparsers):
    p = subparsers.add_parser(
        "demo", help="the whole method (data, teacher, student, recursive distillation, verification) on "
                     "synthetic faces in about ten minutes on CPU",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a drastically shrunk run that only checks the pipeline")
    p.add_argument("--seed", type=int, default=0, help="one seed for data and training (default: %(default)s)")
    p.add_argument("--ctx", default="cpu", help="devices for training and evaluation (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="delete OUT first instead of continuing it")
    for name in SIZE_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"override the profile (full: {PROFILES['full'][name]})")
    p.set_defaults(func=demo_command)


def demo_command(args):
    settings = dict(PROFILES["quick" if args.quick else "full"], seed=args.seed, ctx=args.ctx,
                    profile="quick" if args.quick else "full")
    for name in SIZE_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise VargfaceError(f"--{name.replace('_', '-')}: must be >= 1 (got {value})")
            settings[name] = value
    Demo(args.out, settings, overwrite=args.overwrite).run()
    return 0


class Demo:
    """The ordered steps of the demo (each `vargface` command lines plus the outputs they own) on the resumable
    runner of `vargface.pipeline`, then the report."""

    def __init__(self, out, settings, overwrite=False):
        from vargface.pipeline import Pipeline

        self.out, self.settings = out, settings
        self.pipeline = Pipeline(out, "demo-state.json", settings, "demo", overwrite=overwrite,
                                 hint="pass --overwrite to start again or choose another --out")

    # -- paths -----------------------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def model(self, name):
        return self.path("models", name, "model")

    def seconds(self, name):
        return self.pipeline.seconds(name)

    # -- the pipeline ----------------------------------------------------------------------------------------
    def run(self):
        s = self.settings
        tic = time.time()
        print(f"vargface demo ({s['profile']}): {s['identities']} training identities x {s['per_identity']} images, "
              f"{s['heldout_identities']} held-out identities ({s['pairs']} pairs), {s['input_size']}x"
              f"{s['input_size']} inputs; networks scaled down with input_size={s['input_size']} and multiplier "
              f"(teacher ResNet-18-IR x{s['teacher_multiplier']}, student VarGFaceNet x{s['student_multiplier']}, "
              f"embedding {s['emb_size']}) so that it runs on CPU; output in {self.out}", flush=True)
        quick = s["profile"] == "quick"
        print("a quick run: it only checks that every step works; its accuracies mean nothing" if quick
              else "expected: about 10 minutes on 2 idle CPU cores (longer on a busy machine)", flush=True)
        results = self.pipeline.run(self.steps())
        rows = [dict(results["verify_" + name], name=name, model=label, checkpoint=self.checkpoint(name),
                     steps=steps, seconds=self.train_seconds(name)) for name, label, steps in self.models()]
        self.report(rows, time.time() - tic)

    def steps(self):
        s = self.settings
        return (self.data_steps()
                + [self.train("teacher", "train the teacher (ResNet-18-IR, ArcFace)", "r18_tiny",
                              s["teacher_multiplier"], s["teacher_steps"]),
                   self.train("scratch", "train the student from scratch (VarGFaceNet, ArcFace)", "vargfacenet_tiny",
                              s["student_multiplier"], s["student_steps"]),
                   self.train("scratch2", "control for generation 2: restart the scratch student without a teacher "
                              "(same two-round budget)", "vargfacenet_tiny", s["student_multiplier"],
                              s["student_steps"], pretrained=self.model("scratch") + ",1")]
                + self.distill_steps()
                + [self.evaluate(name, label) for name, label, _ in self.models()])

    def models(self):
        s = self.settings
        n = s["student_steps"]
        return [("teacher", "teacher ResNet-18-IR", s["teacher_steps"]),
                ("scratch", "student from scratch", n),
                ("gen1", "student, distillation gen 1", n),
                ("scratch2", "student from scratch, 2 rounds", 2 * n),
                ("gen2", "student, distillation gen 2", 2 * n)]

    def checkpoint(self, name):
        if name in ("gen1", "gen2"):
            return f"{self.model('student')}-{name},1"
        return f"{self.model(name)},1"

    def data_steps(self):
        from vargface.pipeline import Step

        s = self.settings
        size, seed = str(s["input_size"]), str(s["seed"])
        return [
            Step("synth", "render synthetic training identities (one folder per identity)",
                 [["data", "synth", self.path("faces"), "--identities", str(s["identities"]), "--per-identity",
                   str(s["per_identity"]), "--size", size, "--seed", seed, "--difficulty", str(s["difficulty"])]],
                 outputs=[self.path("faces")]),
            Step("rec", "convert the image folders to RecordIO (train.rec, train.idx, property)",
                 [["data", "rec", self.path("faces"), self.path("data"), "--size", size]],
                 outputs=[self.path("data")]),
            Step("heldout", "render held-out identities (never seen in training)",
                 [["data", "synth", self.path("heldout_faces"), "--identities", str(s["heldout_identities"]),
                   "--per-identity", "4", "--size", size, "--seed", seed, "--difficulty", str(s["difficulty"]),
                   "--first-identity", str(HELDOUT_FIRST_IDENTITY)]],
                 outputs=[self.path("heldout_faces")]),
            Step("pairs", "make the held-out verification pack (half same, half different identity)",
                 [["data", "pairs", self.path("heldout_faces"), self.path("data", "heldout.bin"), "--pairs",
                   str(s["pairs"]), "--seed", seed, "--size", size]],
                 outputs=[self.path("data", "heldout.bin")]),
        ]

    def train_options(self, network, multiplier, steps):
        s = self.settings
        # ArcFace with a softer scale and margin than the 64/0.5 of full-scale runs: a few hundred updates on
        # a small set do not get past the large-margin plateau otherwise. Warm-up + cosine, as advised for
        # VarGFaceNet. Verification runs after training (--val-targets ''), once per model.
        return ["--network", network, "--dataset", self.path("data"), "--loss", "arcface", "--loss-s", "32",
                "--loss-m2", "0.3", "--net-multiplier", str(multiplier), "--emb-size", str(s["emb_size"]),
                "--image-size", str(s["input_size"]), "--per-batch-size", str(s["batch_size"]), "--ctx", s["ctx"],
                "--lr", str(s["lr"]), "--lr-schedule", "cosine", "--warmup-steps", str(s["warmup"]),
                "--lr-total-steps", str(steps), "--max-steps", str(steps), "--seed", str(s["seed"]),
                "--val-targets", "", "--frequent", str(max(1, min(20, steps // 6))), "--verbose", str(steps),
                "--ckpt", "3"]

    def train(self, name, title, network, multiplier, steps, pretrained=None):
        from vargface.pipeline import Step

        argv = ["train"] + self.train_options(network, multiplier, steps) + ["--prefix", self.model(name)]
        if pretrained:
            argv += ["--pretrained", pretrained]
        return Step(name, title, [argv], outputs=[self.path("models", name)], resume=self.model(name))

    def distill_steps(self):
        from vargface.pipeline import Step

        s = self.settings
        teacher, cache = self.checkpoint("teacher"), self.path("data", "teacher.kdcache")

        def generation_seconds(_):
            with open(self.model("student") + "-lineage.json") as f:
                generations = json.load(f)["generations"]
            return {f"gen{g['generation']}": _elapsed(g["started"], g["finished"]) for g in generations}

        return [
            Step("cache", "precompute the teacher's embeddings of every training image and its mirror",
                 [["distill", "cache", "--teacher", teacher, "--data-dir", self.path("data"), "--image-size",
                   str(s["input_size"]), "--out", cache, "--ctx", s["ctx"]]], outputs=[cache]),
            Step("distill", "recursive distillation: generation 1 from scratch, generation 2 from generation 1",
                 [["distill", "--teacher", teacher, "--teacher-cache", cache, "--kd-type", "angular", "--kd-weight",
                   str(s["kd_weight"]), "--generations", "2"]
                  + self.train_options("vargfacenet_tiny", s["student_multiplier"], s["student_steps"])
                  + ["--prefix", self.model("student")]],
                 outputs=[self.path("models", "student")], resume=self.model("student"),
                 result=generation_seconds),
        ]

    def train_seconds(self, name):
        if name in ("gen1", "gen2"):
            return self.pipeline.result("distill")[name]
        return self.seconds(name)

    def evaluate(self, name, label):
        from vargface.pipeline import Step

        s = self.settings
        model = self.checkpoint(name)

        def measure(printed):
            verify, flops = json.loads(printed[0])["heldout"], json.loads(printed[1])
            tar = [t["tar"] for t in verify["tar_at_far"] if abs(t["far"] - FAR) < FAR * 1e-6]
            result = {"accuracy": verify["accuracy"], "std": verify["std"], "tar": tar[0] if tar else None,
                      "params": flops["params"], "flops": flops["flops"], "input": flops["input_shape"][-1]}
            print(f"{label}: accuracy {result['accuracy']:.4f}+-{result['std']:.4f}, TAR@FAR={FAR:g} "
                  f"{_fmt(result['tar'])}, {result['params']} parameters, {result['flops']} FLOPs", flush=True)
            return result

        return Step("verify_" + name, f"verify {label} on the held-out pairs",
                    [["verify", "--model", model, "--target", self.path("data", "heldout.bin"), "--ctx", s["ctx"],
                      "--json"], ["flops", "--model", model, "--json"]], capture=True, result=measure)

    # -- the report ------------------------------------------------------------------------------------------
    def report(self, rows, seconds):
        from vargface.atomic import atomic_path

        by = {r["name"]: r for r in rows}
        verdict = [_compare(by["gen1"], by["scratch"], "distillation generation 1 vs scratch "
                            "(same budget: one round)"),
                   _compare(by["gen2"], by["scratch2"], "distillation generation 2 vs scratch restarted once "
                            "(same budget: two rounds)")]
        table = markdown_table(rows)
        s = self.settings
        lines = [f"# vargface demo ({s['profile']} profile, synthetic faces)", "",
                 f"{s['identities']} training identities x {s['per_identity']} images, held-out pairs: "
                 f"{s['pairs']} from {s['heldout_identities']} other identities; input {s['input_size']}x"
                 f"{s['input_size']}, networks scaled with input_size and multiplier for CPU (teacher ResNet-18-IR "
                 f"x{s['teacher_multiplier']}, student VarGFaceNet x{s['student_multiplier']}, embedding "
                 f"{s['emb_size']}); seed {s['seed']}; distillation: angular loss x {s['kd_weight']:g}, teacher "
                 f"embeddings cached. FLOPs by the LFR2019 rule at the trained input size. "
                 f"Accuracy: 10-fold Accuracy-Flip on the held-out pairs. Time: training wall time on this machine "
                 f"(the teacher-embedding cache took {self.seconds('cache'):.0f} s more). The student needs "
                 f"{by['scratch']['flops'] / by['teacher']['flops']:.0%} of the teacher's FLOPs.", "", table, "",
                 "Did distillation help?", ""] + [f"- {v}" for v in verdict] + [""]
        with atomic_path(self.path("results.md")) as tmp, open(tmp, "w") as f:
            f.write("\n".join(lines))
        with atomic_path(self.path("results.json")) as tmp, open(tmp, "w") as f:
            json.dump({"settings": s, "models": rows, "verdict": verdict}, f, indent=1)
        draw_chart(rows, self.path("results.png"), f"vargface demo ({s['profile']}): held-out verification")
        print("\n" + table + "\n\nDid distillation help?\n" + "\n".join(f"- {v}" for v in verdict))
        if s["profile"] == "full":
            _window_check(by)
        print(f"\nwrote {self.path('results.md')}, {self.path('results.json')}, {self.path('results.png')} "
              f"({seconds / 60:.1f} min in this run)", flush=True)


def _elapsed(started, finished):
    parse = lambda text: time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))  # noqa: E731
    return parse(finished) - parse(started)


def _fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows):
    head = ["model", "parameters", "FLOPs (LFR2019)", "input", "accuracy", f"TAR@FAR={FAR:g}", "updates",
            "train time"]
    body = [[r["model"], f"{r['params']:,}", f"{r['flops'] / 1e6:.1f}M", f"{r['input']}x{r['input']}",
             f"{r['accuracy']:.4f} ± {r['std']:.4f}", _fmt(r["tar"]), str(r["steps"]), f"{r['seconds']:.0f} s"]
            for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _compare(student, baseline, what):
    """An honest one-line verdict: accuracy and TAR@FAR are judged separately, and an accuracy gain smaller than
    the 10-fold spread is called out as such."""
    delta = student["accuracy"] - baseline["accuracy"]
    spread = max(student["std"], baseline["std"])
    gains = [delta > 0]
    text = f"accuracy {student['accuracy']:.4f} vs {baseline['accuracy']:.4f} ({delta:+.4f}"
    text += ", within the 10-fold spread)" if abs(delta) < spread else ")"
    if student["tar"] is not None and baseline["tar"] is not None:
        tar_delta = student["tar"] - baseline["tar"]
        gains.append(tar_delta > 0)
        text += f", TAR@FAR={FAR:g} {student['tar']:.4f} vs {baseline['tar']:.4f} ({tar_delta:+.4f})"
    word = "helped" if all(gains) else "did not help" if not any(gains) else "mixed result"
    return f"{what}: {word}: {text}"


def _window_check(by):
    """The demo is sized so that nothing saturates the pairs and the teacher and final student are good."""
    saturated = [r["model"] for r in by.values() if r["accuracy"] >= 0.995]
    weak = [by[n]["model"] for n in ("teacher", "gen2") if by[n]["accuracy"] <= 0.9]
    if saturated:
        print(f"note: {', '.join(saturated)} reached >= 0.995: the pairs are too easy to separate the models",
              flush=True)
    if weak:
        print(f"note: {', '.join(weak)} stayed at or below 0.9 accuracy (expected above 0.9)", flush=True)


def draw_chart(rows, path, title):
    """Accuracy (with the 10-fold std) and TAR@FAR per model, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vargface.atomic import atomic_path

    names = [r["model"].replace(", ", ",\n").replace(" from", "\nfrom") for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    x = range(len(rows))
    axes[0].bar(x, [r["accuracy"] for r in rows], yerr=[r["std"] for r in rows], color="tab:blue", capsize=4)
    low = min(r["accuracy"] - r["std"] for r in rows)
    axes[0].set_ylim(max(0.0, low - 0.05), 1.0)
    axes[0].set_title("verification accuracy (10-fold)")
    axes[1].bar(x, [r["tar"] or 0.0 for r in rows], color="tab:orange")
    axes[1].set_ylim(0.0, 1.0)
    axes[1].set_title(f"TAR@FAR={FAR:g}")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

