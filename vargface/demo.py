"""``vargface demo``: the whole VarGFaceNet method on synthetic faces, sized for two CPU cores.

Synthetic training identities and held-out identities (a verification .bin) -> RecordIO -> a small ResNet-IR
teacher -> a VarGFaceNet student from scratch -> recursive angular distillation (generations 1 and 2) ->
verification of every model on the held-out pairs -> a table (Markdown + JSON) and a PNG chart.

Every step runs the real ``vargface`` subcommand in this process and prints it first, so any step can be rerun
alone from a shell. A finished step is recorded in OUT/demo-state.json; rerunning the same demo continues after
the last finished step (an interrupted step is redone from scratch)."""
import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
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
    """The ordered steps of the demo, each a `vargface` command line plus the outputs it owns."""

    def __init__(self, out, settings, overwrite=False):
        self.out, self.settings = out, settings
        self.state_path = os.path.join(out, "demo-state.json")
        if overwrite and os.path.isdir(out):
            shutil.rmtree(out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise VargfaceError(f"--out {out}: exists and is not a directory")
        self.state = {"settings": settings, "steps": {}}
        if os.path.isfile(self.state_path):
            try:
                with open(self.state_path) as f:
                    state = json.load(f)
            except (OSError, ValueError) as error:
                raise VargfaceError(f"{self.state_path}: unreadable demo state ({error}); pass --overwrite") from None
            if state.get("settings") != settings:
                raise VargfaceError(f"{out} holds a demo run with other settings ({self.state_path}); "
                             f"pass --overwrite to start again or choose another --out")
            self.state = state
        elif os.path.isdir(out) and os.listdir(out):
            raise VargfaceError(f"--out {out}: exists and is not a demo output; pass --overwrite or choose "
                                "another --out")
        self.parser = None

    # -- paths -----------------------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def model(self, name):
        return self.path("models", name, "model")

    # -- running ---------------------------------------------------------------------------------------------
    def vargface(self, argv, capture=False):
        """Print `vargface ARGV` and run it through the real CLI parser; returns captured stdout if asked."""
        from vargface.cli import build_parser

        print("$ vargface " + shlex.join(argv), flush=True)
        self.parser = self.parser or build_parser()
        args = self.parser.parse_args(argv)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer) if capture else contextlib.nullcontext():
            code = args.func(args)
        if code:
            raise VargfaceError(f"step `vargface {argv[0]}` exited with {code}; rerun the demo to continue")
        return buffer.getvalue()

    def step(self, name, title, outputs, work):
        """Run ``work()`` unless the state says the step finished; its result and wall time are recorded."""
        done = self.state["steps"].get(name)
        if done is not None:
            print(f"\n== {title}: done in an earlier run ({done['seconds']:.0f} s), skipped", flush=True)
            return done["result"]
        print(f"\n== {title}", flush=True)
        for output in outputs:  # leftovers of an interrupted attempt
            if os.path.isdir(output):
                shutil.rmtree(output)
            elif os.path.exists(output):
                os.remove(output)
        tic = time.time()
        result = work()
        self.state["steps"][name] = {"seconds": time.time() - tic, "result": result}
        self._save_state()
        return result

    def _save_state(self):
        from vargface.atomic import atomic_path

        os.makedirs(self.out, exist_ok=True)
        with atomic_path(self.state_path) as tmp, open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)

    def seconds(self, name):
        return self.state["steps"][name]["seconds"]

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
        self.make_data()
        self.train("teacher", "train the teacher (ResNet-18-IR, ArcFace)", "r18_tiny", s["teacher_multiplier"],
                   s["teacher_steps"])
        self.train("scratch", "train the student from scratch (VarGFaceNet, ArcFace)", "vargfacenet_tiny",
                   s["student_multiplier"], s["student_steps"])
        self.train("scratch2", "control for generation 2: restart the scratch student without a teacher "
                   "(same two-round budget)", "vargfacenet_tiny", s["student_multiplier"], s["student_steps"],
                   pretrained=self.model("scratch") + ",1")
        self.distill()
        rows = [self.evaluate(name, label, steps) for name, label, steps in self.models()]
        self.report(rows, time.time() - tic)

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

    def make_data(self):
        s = self.settings
        size, seed = str(s["input_size"]), str(s["seed"])
        self.step("synth", "render synthetic training identities (one folder per identity)", [self.path("faces")],
                  lambda: self.vargface(["data", "synth", self.path("faces"), "--identities", str(s["identities"]),
                                         "--per-identity", str(s["per_identity"]), "--size", size, "--seed", seed,
                                         "--difficulty", str(s["difficulty"])]))
        self.step("rec", "convert the image folders to RecordIO (train.rec, train.idx, property)",
                  [self.path("data")], lambda: self.vargface(["data", "rec", self.path("faces"), self.path("data"),
                                                              "--size", size]))
        self.step("heldout", "render held-out identities (never seen in training)", [self.path("heldout_faces")],
                  lambda: self.vargface(["data", "synth", self.path("heldout_faces"), "--identities",
                                         str(s["heldout_identities"]), "--per-identity", "4", "--size", size,
                                         "--seed", seed, "--difficulty", str(s["difficulty"]), "--first-identity",
                                         str(HELDOUT_FIRST_IDENTITY)]))
        self.step("pairs", "make the held-out verification pack (half same, half different identity)",
                  [self.path("data", "heldout.bin")],
                  lambda: self.vargface(["data", "pairs", self.path("heldout_faces"), self.path("data", "heldout.bin"),
                                         "--pairs", str(s["pairs"]), "--seed", seed, "--size", size]))

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
        argv = ["train"] + self.train_options(network, multiplier, steps) + ["--prefix", self.model(name)]
        if pretrained:
            argv += ["--pretrained", pretrained]
        self.step(name, title, [self.path("models", name)], lambda: self.vargface(argv))

    def distill(self):
        s = self.settings
        teacher, cache = self.checkpoint("teacher"), self.path("data", "teacher.kdcache")
        self.step("cache", "precompute the teacher's embeddings of every training image and its mirror", [cache],
                  lambda: self.vargface(["distill", "cache", "--teacher", teacher, "--data-dir", self.path("data"),
                                         "--image-size", str(s["input_size"]), "--out", cache, "--ctx", s["ctx"]]))

        def work():
            self.vargface(["distill", "--teacher", teacher, "--teacher-cache", cache, "--kd-type", "angular",
                           "--kd-weight", str(s["kd_weight"]), "--generations", "2"]
                          + self.train_options("vargfacenet_tiny", s["student_multiplier"], s["student_steps"])
                          + ["--prefix", self.model("student")])
            with open(self.model("student") + "-lineage.json") as f:
                generations = json.load(f)["generations"]
            return {f"gen{g['generation']}": _elapsed(g["started"], g["finished"]) for g in generations}

        self.step("distill", "recursive distillation: generation 1 from scratch, generation 2 from generation 1",
                  [self.path("models", "student")], work)

    def train_seconds(self, name):
        if name in ("gen1", "gen2"):
            return self.state["steps"]["distill"]["result"][name]
        return self.seconds(name)

    def evaluate(self, name, label, steps):
        s = self.settings
        model = self.checkpoint(name)
        target = self.path("data", "heldout.bin")

        def work():
            verify = json.loads(self.vargface(["verify", "--model", model, "--target", target, "--ctx", s["ctx"],
                                               "--json"], capture=True))["heldout"]
            flops = json.loads(self.vargface(["flops", "--model", model, "--json"], capture=True))
            tar = [t["tar"] for t in verify["tar_at_far"] if abs(t["far"] - FAR) < FAR * 1e-6]
            result = {"accuracy": verify["accuracy"], "std": verify["std"], "tar": tar[0] if tar else None,
                      "params": flops["params"], "flops": flops["flops"], "input": flops["input_shape"][-1]}
            print(f"{label}: accuracy {result['accuracy']:.4f}+-{result['std']:.4f}, TAR@FAR={FAR:g} "
                  f"{_fmt(result['tar'])}, {result['params']} parameters, {result['flops']} FLOPs", flush=True)
            return result

        result = self.step("verify_" + name, f"verify {label} on the held-out pairs", [], work)
        return dict(result, name=name, model=label, checkpoint=model, steps=steps,
                    seconds=self.train_seconds(name))

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

