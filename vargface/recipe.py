"""`vargface recipe`: full-scale recipes as resumable steps of `vargface` commands.

`lfr-light` is VarGFaceNet's LFR2019 deepglint-light entry on ms1m-retinaface-t1: the FLOPs gate of the student
preset (the track allows 1 GFLOPs), the r100 ArcFace teacher, VarGFaceNet from scratch, the teacher-embedding
cache, recursive angular distillation (generations 1 and 2), the FLOPs gate again on the trained student's graph,
verification of every model on lfw / cfp_fp / agedb_30 and, given a test list, the LFR2019 feature file.
`recursive` is its distillation part alone: the teacher (or an existing one), the cache, the generations.

Training settings live in experiment config files (`configs/*.py`, one `key = value` line per config key);
the command lines here only add the data, devices and output prefix, which override the file. Every step is
printed as a shell command before it runs; finished steps are recorded in OUT/recipe-state.json and skipped on a
rerun, and an interrupted training continues with --resume."""
import argparse
import os

from vargface import options
from vargface.errors import VargfaceError
from vargface.pipeline import PIPELINE_OVERWRITE, Pipeline, Step, write_json
from vargface.train.run_files import LATEST, RunFiles

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TEACHER_CONFIG = "r100_retina.py"
STUDENT_CONFIG = "vargfacenet_retina.py"
DISTILL_CONFIG = "vargfacenet_recursive.py"
STUDENT_NETWORK = "vargfacenet"  # the network of STUDENT_CONFIG and DISTILL_CONFIG, checked by the FLOPs gate
TEACHER_NETWORK = "r100"  # the network of TEACHER_CONFIG
TARGETS = "lfw,cfp_fp,agedb_30"
SCOPES = ("teacher", "student", "distill")  # --set SCOPE.KEY=VALUE: teacher run, both student runs, distill only


def register(subparsers):
    p = subparsers.add_parser(
        "recipe", help="full-scale recipes (LFR2019 deepglint-light) as resumable steps",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="recipe", metavar="RECIPE")
    sub.required = True
    light = sub.add_parser("lfr-light", help="the LFR2019 deepglint-light entry: teacher, scratch baseline, "
                                             "distillation generations 1-2, FLOPs gates, verification, features",
                           description=__doc__.split("\n\n")[1].split("\n`recursive`")[0])
    _common(light, ctx_default="gpu:0,1,2,3,4,5,6,7", work_default="./lfr_light")
    light.add_argument("--eval-ctx", default="gpu:0", help="devices for verification and the feature file "
                       "(default: %(default)s)")
    options.add_target(light, default=TARGETS, help="verification packs, comma-separated: NAME or NAME.bin in "
                       "DATASET, or a path to a .bin")
    light.add_argument("--lfr-list", help="LFR2019 image-track test list; without it no feature file is written")
    options.add_root(light, help="folder the paths of --lfr-list are relative to")
    light.set_defaults(func=lfr_light_command)

    recursive = sub.add_parser("recursive", help="recursive distillation alone: teacher, cache, generations",
                               description="Train the r100 teacher (unless --teacher names one), cache its "
                                           "embeddings once, then distil the student for the generations of "
                                           f"configs/{DISTILL_CONFIG}.")
    _common(recursive, ctx_default="gpu:0,1,2,3,4,5,6,7", work_default="./recursive")
    recursive.add_argument("--teacher", metavar="PREFIX,EPOCH", help="an existing teacher checkpoint (default: "
                           "train one into OUT)")
    recursive.set_defaults(func=recursive_command)


def _common(parser, ctx_default, work_default):
    options.add_dataset(parser, required=False, help="folder with train.rec, train.idx, property and the .bin packs "
                        "(default: ../datasets/ms1m-retinaface-t1)")
    parser.set_defaults(dataset="../datasets/ms1m-retinaface-t1")
    options.add_out(parser, f"folder of the checkpoints, results and the recipe state; a rerun continues it "
                            f"(default: {work_default})", required=False, default=work_default)
    options.add_overwrite(parser, help=PIPELINE_OVERWRITE)
    options.add_ctx(parser, default=ctx_default, help="training devices (the config files are tuned for 8 devices x "
                    "64 images; with fewer, --set per_batch_size=N keeps the global batch of 512)")
    parser.add_argument("--configs", default=CONFIGS, help="folder of the experiment config files "
                        "(default: the repository's configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[SCOPE.]KEY=VALUE",
                        help="add --KEY VALUE to the training commands; SCOPE teacher, student (scratch and "
                             "distillation) or distill limits it to those (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")


def parse_overrides(items):
    """``[SCOPE.]KEY=VALUE`` strings -> {scope: [--key, value, ...]}; no scope means teacher and student."""
    flags = {scope: [] for scope in SCOPES}
    for item in items:
        key, sep, value = item.partition("=")
        scope, dot, name = key.rpartition(".")
        if not sep or not name or name.startswith("-") or (dot and scope not in SCOPES):
            raise VargfaceError(f"--set {item!r}: expected [SCOPE.]KEY=VALUE with SCOPE one of {', '.join(SCOPES)} "
                                "(e.g. student.net_multiplier=0.25)")
        flag = ["--" + name.replace("_", "-"), value]
        for target in ([scope] if dot else ["teacher", "student"]):
            flags[target] += flag
    return flags


def shown_path(path):
    """A path as the printed commands show it: relative to the current folder when below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class Recipe:
    """Step builders shared by the recipes; every training command is `--config FILE` + data, devices, prefix."""

    def __init__(self, args):
        self.args = args
        self.work = args.out
        self.resumable = []  # resume files of steps (removed by --overwrite only, kept for a redo to continue)
        self.trained = {}  # config file -> the --set flags its training commands add
        self.flags = parse_overrides(args.overrides)
        for name in (TEACHER_CONFIG, STUDENT_CONFIG, DISTILL_CONFIG):
            if not os.path.isfile(os.path.join(args.configs, name)) and not args.dry_run:
                raise VargfaceError(f"--configs {args.configs}: no {name}")
        self.student_network = _value(self.flags["student"], "--network") or STUDENT_NETWORK
        self.teacher_network = _value(self.flags["teacher"], "--network") or TEACHER_NETWORK

    def teacher_prefix(self):
        """Named after the teacher's network (r100, or what --set teacher.network says) and loss."""
        return self.path(f"{_value(self.flags['teacher'], '--network') or TEACHER_NETWORK}-"
                         f"{_value(self.flags['teacher'], '--loss') or 'arcface'}", "model")

    def config(self, name):
        return shown_path(os.path.join(self.args.configs, name))

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def training(self, command, config, scope, prefix):
        flags = self.flags[scope] + (self.flags["distill"] if command == "distill" else [])
        self.trained[config] = flags
        return [command, "--config", self.config(config), "--dataset", self.args.dataset, "--ctx", self.args.ctx,
                "--prefix", prefix] + flags

    def train_step(self, name, title, config, scope, prefix):
        return Step(name, title, [self.training("train", config, scope, prefix)],
                    outputs=[os.path.dirname(prefix)], resume=prefix)

    def flops_gate(self, name, title, argv):
        """`vargface flops ... --json` into OUT/flops-NAME.json; a network over the track's budget stops the run."""
        path = self.path(f"flops-{name}.json")

        def check(printed):
            figures = write_json(path, printed[0])
            if figures.get("fits_budget") is None:  # trained at another side: the budget says nothing about it
                side = figures["input_shape"][-1]
                print(f"{name}: counted at {side}x{side}; the deepglint-light budget is for 112x112 inputs, so this "
                      f"gate does not judge it", flush=True)
            elif not figures["fits_budget"]:
                raise VargfaceError(f"{name}: {figures.get('flops', 0) / 1e9:.3f} GFLOPs exceeds the deepglint-light "
                                    f"budget of 1.0 GFLOPs ({path})")
            return {"flops": figures["flops"], "params": figures["params"]}

        return Step("flops_" + name, title, [["flops"] + argv + ["--json"]], outputs=[path], capture=True,
                    result=check)

    def cache_step(self, teacher):
        return Step("cache", "cache the teacher's embeddings of every training image and its mirror",
                    [["distill", "cache", "--teacher", teacher, "--dataset", self.args.dataset, "--ctx", self.args.ctx,
                      "--reuse"]])

    def distill_step(self, teacher, prefix):
        argv = self.training("distill", DISTILL_CONFIG, "student", prefix)
        argv[1:1] = ["--teacher", teacher, "--teacher-cache", "auto"]
        return Step("distill", "recursive angular distillation: generation 1 from scratch, generation 2 from "
                    "generation 1", [argv], outputs=[os.path.dirname(prefix)], resume=prefix)

    def verify_step(self, name, title, model, targets):
        path = self.path(f"verify-{name}.json")

        def keep(printed):
            results = write_json(path, printed[0])
            line = ", ".join(f"{target} {r['accuracy']:.5f}" for target, r in results.items())
            print(f"{title}: {line} ({path})", flush=True)
            return {target: r["accuracy"] for target, r in results.items()}

        from vargface.train.config import pack_path

        packs = ",".join(pack_path(self.args.dataset, t) for t in targets)
        return Step("verify_" + name, f"verify {title}", [["verify", "--model", model, "--target", packs, "--ctx",
                                                           self.args.eval_ctx, "--json"]], outputs=[path],
                    capture=True, result=keep)

    def batch_notes(self):
        """A line for each config file whose global batch (per_batch_size x its devices) --ctx changes: the
        learning rates were tuned for that batch."""
        from vargface.context import device_specs
        from vargface.train.config import read_config_file
        from vargface.train.schema import BY_NAME

        devices, notes = len(device_specs(self.args.ctx)), []
        for name, flags in self.trained.items():
            path = os.path.join(self.args.configs, name)
            if not os.path.isfile(path) or "--per-batch-size" in flags:
                continue
            settings = read_config_file(path)
            tuned, per = len(device_specs(settings.get("ctx", "cpu"))), int(settings.get("per_batch_size", BY_NAME["per_batch_size"].default))
            if tuned != devices:
                notes.append(f"note: {self.config(name)} is tuned for a global batch of {per * tuned} ({per} x "
                             f"{tuned} devices); --ctx gives {devices}, a global batch of {per * devices} at the same "
                             f"learning rate (--set per_batch_size={max(1, per * tuned // devices)} keeps "
                             f"{per * tuned})")
        return notes

    def run(self, steps, settings):
        print(f"vargface recipe {self.args.recipe}: {len(steps)} steps, work folder {self.work}"
              + (" (dry run: the commands only)" if self.args.dry_run else ""), flush=True)
        for note in self.batch_notes():
            print(note, flush=True)
        with Pipeline(self.work, "recipe-state.json", settings, "recipe", overwrite=self.args.overwrite,
                      dry_run=self.args.dry_run, hint="pass --overwrite to start again or choose another --out",
                      outputs=self.resumable) as pipeline:
            pipeline.run(steps)
        return pipeline


def _value(flags, name):
    """The value of option ``name`` in a flat [--key, value, ...] list (the last one wins), or None."""
    return dict(zip(flags[::2], flags[1::2])).get(name)


def _settings(args, **more):
    """What a rerun in the same OUT must share (devices may change between runs)."""
    return dict(recipe=args.recipe, data=os.path.abspath(args.dataset), overrides=args.overrides,
                configs=os.path.abspath(args.configs), **more)


def lfr_light_steps(args):
    recipe = Recipe(args)
    net = recipe.student_network
    teacher, scratch, student = (RunFiles(recipe.teacher_prefix()), RunFiles(recipe.path(f"{net}-scratch", "model")),
                                 RunFiles(recipe.path(f"{net}-distill", "model")))
    gen1, gen2 = student.generation(1), student.generation(2)
    targets = [t for t in args.target.split(",") if t]
    if not targets:
        raise VargfaceError("--target: name at least one verification pack")
    steps = [
        recipe.flops_gate(net, f"FLOPs gate: the {net} preset within the deepglint-light budget",
                          [net] + _net_opts(recipe.flags["student"])),
        recipe.train_step("teacher", f"teacher: {recipe.teacher_network} with ArcFace", TEACHER_CONFIG, "teacher",
                          teacher.prefix),
        recipe.train_step("scratch", f"student baseline: {net} from scratch", STUDENT_CONFIG, "student",
                          scratch.prefix),
        recipe.cache_step(teacher.model(LATEST)),
        recipe.distill_step(teacher.model(LATEST), student.prefix),
        recipe.flops_gate(f"{net}-gen2", "FLOPs gate: the trained student's stored graph",
                          ["--model", gen2.model(LATEST)]),
    ]
    for name, title, files in (("teacher", f"the {recipe.teacher_network} teacher", teacher),
                               ("scratch", f"{net} from scratch", scratch), ("gen1", "distillation generation 1", gen1),
                               ("gen2", "distillation generation 2", gen2)):
        steps.append(recipe.verify_step(name, title, files.model(LATEST), targets))
    if args.lfr_list:
        from vargface.eval.lfr import resume_files

        features = recipe.path(f"lfr2019-{net}-gen2.bin")
        recipe.resumable += resume_files(features)
        steps.append(Step("lfr", "the LFR2019 image-track feature file of generation 2",
                          [["lfr", "features", args.lfr_list, "--model", gen2.model(LATEST), "--root", args.root,
                            "--out", features, "--ctx", args.eval_ctx]], outputs=[features]))
    return recipe, steps


def _net_opts(flags):
    """The student's network options (any that change its FLOPs), as `vargface flops` takes them."""
    from vargface.symbols.registry import NETWORK_ALIASES

    names = ["--net-opt", "--image-size", "--emb-size"] + ["--" + key.replace("_", "-") for key in NETWORK_ALIASES]
    return [item for flag, value in zip(flags[::2], flags[1::2]) if flag in names for item in (flag, value)]


def lfr_light_command(args):
    recipe, steps = lfr_light_steps(args)
    recipe.run(steps, _settings(args, targets=args.target))
    if args.dry_run:
        print("\n(dry run: nothing was run)")
    else:
        print(f"\n== done: results in {args.out} (verify-*.json, flops-*.json, the lineage of the distillation)")
    return 0


def recursive_steps(args):
    recipe = Recipe(args)
    steps = []
    teacher = args.teacher
    if not teacher:
        prefix = recipe.teacher_prefix()
        steps.append(recipe.train_step("teacher", f"teacher: {recipe.teacher_network} with ArcFace", TEACHER_CONFIG,
                                       "teacher", prefix))
        teacher = RunFiles(prefix).model(LATEST)
    steps += [recipe.cache_step(teacher),
              recipe.distill_step(teacher, recipe.path(f"{recipe.student_network}-distill", "model"))]
    return recipe, steps


def recursive_command(args):
    recipe, steps = recursive_steps(args)
    recipe.run(steps, _settings(args, teacher=args.teacher))
    print("\n(dry run: nothing was run)" if args.dry_run else f"\n== done: the students are in {args.out}")
    return 0

