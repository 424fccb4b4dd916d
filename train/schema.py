"""Every setting of `vargface train` and `vargface distill`, declared once.

A `Key` states its default, kind, accepted values (range or choices, plus a rule where one is needed), help text,
the commands it belongs to, whether ``--resume`` must see the same value, which preset group brings it, and
whether it lowers a safety barrier (then only the command line may set it and no saved config records it). From
this table come the commands' options (`add_options`), the checks of every value from the command line and from
config files (`Key.read`), the settings a training state records for ``--resume`` (`RESUME_KEYS`) and the lines of
a saved ``PREFIX-config.py``. Adding a setting is one entry in `KEYS`.

Key names follow InsightFace's ``config.py`` (per_batch_size, lr_steps, loss_s, loss_m1..m3, emb_size, ckpt,
verbose, max_steps, ...), so users of that code find their knobs where they expect them."""
import difflib
import math
import os
import re
from dataclasses import dataclass

from vargface.data.parallel import default_workers
from vargface.errors import VargfaceError
from vargface.options import ALIASES
from vargface.symbols.registry import NETWORK_ALIASES
from vargface.train.distill_loss import DEFAULT_TERM, FORMS
from vargface.train.precision import DTYPES

TRAIN, DISTILL = "train", "distill"
BOTH = (TRAIN, DISTILL)
# Kinds: how a value is written on the command line and what type it has in a config file.
METAVARS = {"int": "N", "float": "X", "bool": "{true,false}", "str": "TEXT", "path": "PATH", "model": "PREFIX,EPOCH",
            "ints": "N,N,...", "names": "NAME,...", "side": "N", "dict": "NAME=VALUE", "terms": "FORM:TAP[@WEIGHT]"}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Key:
    """One setting. ``low``/``high`` bound a number (or each number of a list; ``open_low`` excludes ``low``);
    ``rule(value)`` returns what is wrong with a value or None; ``optional``: None (unset) is a value too."""

    name: str
    default: object
    kind: str
    help: str
    commands: tuple = BOTH
    group: str = None  # network | dataset | loss: the preset of that name brings this key's value
    low: float = None
    high: float = None
    open_low: bool = False
    choices: tuple = None
    rule: object = None
    optional: bool = False
    resume: bool = False  # --resume continues a run only with the same value
    cli_only: bool = False  # lowers a safety barrier: typed on the command line, never read from a file or saved
    flag: str = None  # the option, when it is not --NAME-WITH-DASHES
    aliases: tuple = ()
    placeholder: str = None  # the metavar, when the kind's is not the clearest


    @property
    def option(self):
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def metavar(self):
        if self.placeholder:
            return self.placeholder
        return "{" + ",".join(self.choices) + "}" if self.choices else METAVARS[self.kind]

    def checked(self):
        """True when the key's values are checked beyond their type (a range, choices or a rule; a switch's two
        values are its choices)."""
        return (self.kind == "bool" or self.low is not None or self.high is not None or bool(self.choices)
                or self.rule is not None)

    # -- values -----------------------------------------------------------------------------------------------
    def read(self, value, source=None):
        """The value of this key from command-line text or a config file's literal, checked; a bad value is an
        error naming ``source`` (default: the option) and what is accepted."""
        source, given = source or self.option, _shown(value)
        try:
            value = self._convert(value)
        except (TypeError, ValueError) as error:
            raise VargfaceError(f"{source} {given}: {error}") from None
        problem = self._problem(value)
        if problem:
            raise VargfaceError(f"{source} {given}: {problem}")
        return value

    def _convert(self, value):
        if value == "" and self.kind in ("names", "terms"):  # '' names none, also where unset means a default
            return []
        if value is None or (self.optional and value == ""):
            if self.optional or self.kind in ("names", "terms"):
                return None if self.optional else []
            raise ValueError("a value is required")
        text = value if isinstance(value, str) else None
        kind = self.kind
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in TRUE + FALSE:
                return text.lower() in TRUE
            raise ValueError("expected true or false")
        if kind == "int":
            return _number(value, int)
        if kind == "float":
            return _number(value, float)
        if kind in ("str", "path", "model"):
            if text is None:
                raise ValueError("expected a string")
            return text
        if kind == "side":
            sides = _numbers(value, int) if not isinstance(value, int) or isinstance(value, bool) else [value]
            if len(sides) not in (1, 2) or len(set(sides)) != 1:
                raise ValueError("expected one side N (the input is N x N; a network takes square images)")
            return [sides[0], sides[0]]
        if kind == "ints":
            return _numbers(value, int)
        if kind in ("names", "terms"):
            items = value.split(",") if kind == "names" and text is not None else [value] if text is not None \
                else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise ValueError("expected a list of strings")
            return [v.strip() for v in items if v.strip()]
        if kind == "dict":
            from vargface.symbols.registry import parse_net_opts

            if isinstance(value, dict):
                return dict(value)
            if isinstance(value, (list, tuple)):
                return parse_net_opts(value, option=self.option)
            raise ValueError("expected NAME=VALUE items or a dict")
        raise AssertionError(f"unknown kind {kind}")

    def _problem(self, value):
        if value is None:
            return None
        if self.choices and value not in self.choices:
            near = difflib.get_close_matches(str(value), self.choices, n=3, cutoff=0.6)
            return f"expected one of {', '.join(self.choices)}" + (f"; did you mean {', '.join(near)}?" if near else "")
        values = value if isinstance(value, list) else [value]
        if self.kind in ("int", "float", "ints", "side"):
            for number in values:
                if not math.isfinite(number):
                    return "expected a finite number"
                below = number <= self.low if self.open_low else number < self.low if self.low is not None else False
                if below or (self.high is not None and number > self.high):
                    return "must be " + _bounds(self)
        return self.rule(value) if self.rule else None

    def shown_default(self):
        if self.default is None:
            return "unset"
        if self.kind == "side":
            return str(self.default[0])
        if isinstance(self.default, list):
            return ",".join(map(str, self.default)) or "''"
        if isinstance(self.default, dict):
            return ",".join(f"{k}={v}" for k, v in self.default.items()) or "none"
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)


def _shown(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _number(value, cast):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {'a whole' if cast is int else 'a'} number")
    if isinstance(value, float) and cast is int:
        raise ValueError("expected a whole number")
    try:
        return cast(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise ValueError(f"expected {'a whole' if cast is int else 'a'} number") from None


def _numbers(value, cast):
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected comma-separated numbers")
    return [_number(v, cast) for v in items if not isinstance(v, str) or v.strip()]


def _bounds(key):
    low = None if key.low is None else (f"> {key.low:g}" if key.open_low else f">= {key.low:g}")
    high = None if key.high is None else f"<= {key.high:g}"
    return " and ".join(part for part in (low, high) if part)


# -- rules of single keys ----------------------------------------------------------------------------------------
def _increasing(steps):
    if any(b <= a for a, b in zip(steps, steps[1:])):
        return "expected strictly increasing update counts"
    return None


def _below_one(value):
    return "must be < 1 (1 would leave no target on the true class)" if value >= 1 else None


_INIT = re.compile(r"^xavier_(uniform|gaussian)_(in|out|avg)_([0-9.eE+-]+)$")


def _initializer(name):
    match = _INIT.match(name)
    try:
        magnitude = float(match.group(3)) if match else None
    except ValueError:
        magnitude = None
    if magnitude is None or not math.isfinite(magnitude) or magnitude <= 0:
        return "expected xavier_<uniform|gaussian>_<in|out|avg>_<magnitude>, e.g. xavier_gaussian_out_2"
    return None


def _refused_by(check):
    """A rule from a check that raises VargfaceError ('OPTION VALUE: problem'): the problem, or None."""
    def rule(value):
        try:
            check(value)
        except VargfaceError as error:
            return str(error).partition(": ")[2]
        return None

    return rule


def _devices(text):
    from vargface.context import device_specs

    device_specs(text)


def _model(text):
    if text and not re.match(r"^.+,\d+$", text):
        return "expected PREFIX,EPOCH, e.g. models/r100/model,1"
    return None


def _path(text):
    return "a path cannot hold a NUL character" if "\0" in text else None


def _terms(texts):
    from vargface.train.distill_loss import parse_term

    for text in texts:
        parse_term(text)


def _network(name):
    from vargface.symbols.registry import get_preset

    get_preset(name)


def _dataset(name):
    """A preset name, or an existing folder (made by `vargface data`)."""
    if name in DATASETS or os.path.isdir(name):
        return None
    what = "is not a folder" if os.path.exists(name) else "the folder does not exist"
    return f"{what} (expected a folder made by `vargface data`, or a preset: {', '.join(DATASETS)})"


def _net_opts(options):
    bad = [name for name in options if not re.match(r"^[A-Za-z_]\w*$", str(name))]
    return f"{bad[0]!r} is not an option name" if bad else None


def _alias(name, option, kind, text):
    """A network builder option that has a config key of its own (`symbols.registry.NETWORK_ALIASES`)."""
    return Key(name, None, {int: "int", float: "float"}[kind], f"{text} (the network's '{option}' option)",
               group="network", low=0 if kind is float else 1, open_low=kind is float, optional=True, resume=True)


# The dataset and loss presets: the values they give their group's keys (a network preset's come from its
# registry entry). A new loss is its logits function in train/losses.py (LOGITS) and, if it has settings, a
# preset here.
DATASETS = {
    "emore": dict(dataset_path="../datasets/faces_emore", num_classes=85742, val_targets=["lfw", "cfp_fp", "agedb_30"]),
    "retina": dict(dataset_path="../datasets/ms1m-retinaface-t1", num_classes=93431,
                   val_targets=["lfw", "cfp_fp", "agedb_30"]),
    # InsightFace's Glint360K (17.1M images); sized for a sharded classifier (--fc-parallel)
    "glint360k": dict(dataset_path="../datasets/glint360k", num_classes=360232,
                      val_targets=["lfw", "cfp_fp", "agedb_30"]),
}
# A folder made by `vargface data`: num_classes from its `property`, val_targets = its .bin files.
FOLDER = dict(num_classes=0, val_targets=None)
LOSSES = {
    "softmax": dict(loss_name="softmax", fc7_no_bias=False),
    "nsoftmax": dict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.0, loss_m3=0.0),
    "arcface": dict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0),
    "cosface": dict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.0, loss_m3=0.35),
    "combined": dict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.3, loss_m3=0.2),
    "arcneg": dict(loss_name="arcneg", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0, loss_alpha=1.2,
                   loss_sigma=2.0),
}
FORM_NAMES = tuple(FORMS)
KEYS = [
    # -- presets: each brings the values of its group's keys ------------------------------------------------------
    Key("network", "vargfacenet", "str", "network preset (`vargface flops --list` names them)", group="network",
        rule=_refused_by(_network), resume=True, placeholder="PRESET"),
    Key("dataset", "emore", "path", f"dataset preset ({', '.join(DATASETS)}) or a data folder made by `vargface data`",
        group="dataset", rule=lambda name: _path(name) or _dataset(name), placeholder="DIR|PRESET"),
    Key("loss", "arcface", "str", "loss preset", group="loss",
        choices=tuple(LOSSES), resume=True),
    # -- network --------------------------------------------------------------------------------------------------
    Key("emb_size", 512, "int", "embedding size", group="network", low=1, resume=True),
    Key("image_size", [112, 112], "side", "network input side N (N x N; records of another size are resized)",
        group="network", low=8, high=4096, resume=True, aliases=ALIASES["--image-size"]),
    Key("net_opts", {}, "dict", "a network builder option NAME=VALUE, repeatable (e.g. use_se=False)",
        group="network", rule=_net_opts, resume=True, flag="--net-opt", aliases=("--net-opts", "--net_opts")),
    *[_alias(name, *spec) for name, spec in NETWORK_ALIASES.items()],
    Key("net_init", "xavier_gaussian_out_2", "str", "weight initialiser xavier_<uniform|gaussian>_<in|out|avg>_"
        "<magnitude>", group="network", rule=_initializer, placeholder="NAME"),
    # -- classifier and loss --------------------------------------------------------------------------------------
    Key("loss_name", "margin_softmax", "str", "the logits of the loss (a loss preset sets it)", group="loss",
        choices=("softmax", "margin_softmax", "arcneg"), resume=True),
    Key("loss_s", 64.0, "float", "scale s of the margin losses", group="loss", low=0, open_low=True, resume=True),
    Key("loss_m1", 1.0, "float", "multiplicative angular margin", group="loss", low=0, open_low=True, resume=True),
    Key("loss_m2", 0.5, "float", "additive angular margin (ArcFace)", group="loss", low=0, resume=True),
    Key("loss_m3", 0.0, "float", "additive cosine margin (CosFace)", group="loss", low=0, resume=True),
    Key("loss_alpha", 1.2, "float", "ArcNegFace: weight of the hard negatives' re-weighting", group="loss", low=0,
        resume=True),
    Key("loss_sigma", 2.0, "float", "ArcNegFace: width of the hard negatives' re-weighting", group="loss", low=0,
        open_low=True, resume=True),
    Key("fc7_no_bias", False, "bool", "softmax classifier without bias", group="loss", resume=True),
    Key("fc7_init_sigma", 0.01, "float", "standard deviation of the classifier's initial weights", low=0),
    Key("fc7_lr_mult", 1.0, "float", "learning-rate multiplier of the classifier", low=0),
    Key("fc7_wd_mult", 1.0, "float", "weight-decay multiplier of the classifier", low=0),
    Key("fc_parallel", False, "bool", "shard the classifier's class centres over the training devices and workers "
        "and compute the softmax across them, exactly (Partial FC; margin losses; docs/partial_fc.md)", resume=True),
    Key("sample_ratio", 1.0, "float", "with --fc-parallel: each shard reads, per step, the centres of the batch's "
        "classes plus random others up to this fraction of its classes (1: all; 0.1 is Partial FC's choice)",
        low=0, open_low=True, high=1, resume=True, placeholder="R"),
    Key("label_smoothing", 0.0, "float", "label smoothing ε of the softmax cross-entropy: target 1-ε on the class, "
        "ε/(C-1) on each other; the margin stays on the true logit (0: off)", low=0, rule=_below_one, resume=True,
        placeholder="EPS"),
    Key("regularface", 0.0, "float", "weight λ of RegularFace's exclusive regularization (λ/C)·Σ_i max_{j≠i} "
        "cos(W_i, W_j) on the classifier's centres, added to the loss and logged as 'regularface' (0: off)", low=0,
        resume=True, placeholder="LAMBDA"),
    # -- data -----------------------------------------------------------------------------------------------------
    Key("dataset_path", "", "path", "folder with train.rec, train.idx, property and the verification packs",
        group="dataset", rule=_path),
    Key("num_classes", 0, "int", "identities in the data (0: read from its property file)", group="dataset", low=0,
        resume=True),
    Key("val_targets", ["lfw", "cfp_fp", "agedb_30"], "names", "verification packs verified while training: NAME "
        "or NAME.bin in the data folder, or a .bin path; comma-separated, '' for none (default of a data folder: "
        "all its .bin files)", group="dataset", rule=lambda names: _path(",".join(names)), optional=True,
        flag="--target", aliases=ALIASES["--target"], placeholder="PACKS"),
    Key("data_rand_mirror", True, "bool", "mirror half the training images at random", resume=True),
    Key("data_cutoff", 0, "int", "side of a grey square pasted at random on half the images (0: off)", low=0,
        resume=True),
    Key("data_color", 0, "int", "1: colour jitter, 2: also JPEG re-compression", low=0, high=2, resume=True),
    Key("data_workers", None, "int", f"threads decoding training images (unset: the usable cores, "
        f"{default_workers()} here)", low=1, optional=True, flag="--workers"),
    Key("seed", 0, "int", "random seed of initialisation, data order and augmentation", low=0, high=2 ** 31 - 1,
        resume=True),
    # -- optimisation ---------------------------------------------------------------------------------------------
    Key("lr", 0.1, "float", "base learning rate", low=0),
    Key("wd", 0.0005, "float", "weight decay", low=0),
    Key("mom", 0.9, "float", "SGD momentum", low=0, high=1),
    Key("per_batch_size", 128, "int", "images per device per batch", low=1, resume=True),
    Key("ctx", "cpu", "str", "devices: gpu:0,1,2,3 | cpu:0,cpu:1 | cpu", rule=_refused_by(_devices),
        placeholder="DEVICES"),
    Key("kvstore", "device", "str", "how the devices' gradients are summed: device (on the devices), nccl (GPUs "
        "of one machine, over NCCL), local (on the host), dist_* (across machines: start through "
        "scripts/dist_train.sh)", choices=("local", "device", "nccl", "dist_sync", "dist_device_sync",
                                            "dist_async")),
    Key("dtype", "float32", "str", "training precision: float16 (GPUs) or bfloat16 (CPUs with oneDNN) train in mixed "
        "precision with dynamic loss scaling (an overflowed step is skipped); weights and checkpoints stay float32",
        choices=DTYPES, resume=True),
    Key("lr_schedule", "step", "str", "step (decay by lr_factor at lr_steps) | cosine (to lr_min over "
        "lr_total_steps)", choices=("step", "cosine")),
    Key("lr_steps", [100000, 160000, 220000], "ints", "update counts at which the step schedule decays, "
        "comma-separated", low=1, rule=_increasing),
    Key("lr_factor", 0.1, "float", "decay factor of the step schedule", low=0, open_low=True),
    Key("warmup_steps", 0, "int", "updates of linear warm-up from warmup_lr to lr", low=0),
    Key("warmup_lr", 0.0, "float", "learning rate at the start of the warm-up", low=0),
    Key("lr_total_steps", 0, "int", "cosine length in updates (0: max_steps, else end_epoch epochs)", low=0),
    Key("lr_min", 0.0, "float", "learning rate at the end of the cosine", low=0),
    Key("end_epoch", 10000, "int", "stop after this many epochs", low=1),
    Key("max_steps", 0, "int", "stop after this many updates (0: run to end_epoch)", low=0),
    Key("clip_grad_norm", 0.0, "float", "scale the embedding network's gradient, summed over the devices, down to "
        "this global L2 norm (0: off; not with dist_async)", low=0),
    Key("train_graph", "auto", "str", "auto (fast, unless a check on the GPU finds MXNet's PReLU slope gradient "
        "right) | faithful (the network's own ops) | fast (the same function with right PReLU slope gradients, "
        "in ops with fast CPU kernels, docs/fast_graph.md); checkpoints always hold the faithful graph",
        choices=("auto", "faithful", "fast")),
    Key("on_nan", "stop", "str", "stop | rollback (to the last state, learning rate x nan_lr_factor)",
        choices=("stop", "rollback")),
    Key("nan_lr_factor", 0.1, "float", "learning-rate factor of each rollback", low=0, high=1, open_low=True),
    Key("nan_max_rollbacks", 3, "int", "rollbacks before the run stops", low=0),
    # -- outputs --------------------------------------------------------------------------------------------------
    Key("models_root", "./models", "path", "folder of the default prefix", rule=_path),
    Key("prefix", "", "path", "checkpoint prefix (default MODELS_ROOT/NETWORK-LOSS-DATASET/model)", rule=_path),
    Key("pretrained", "", "model", "start the embedding from this checkpoint (fresh classifier and optimizer)",
        rule=_model),
    Key("ckpt", 3, "int", "0 no embedding checkpoints, 1 when verification improves, 2 every round, 3 the latest "
        "as 0001", low=0, high=3),
    Key("frequent", 20, "int", "log a speedometer line every N updates", low=1),
    Key("verbose", 2000, "int", "verify and checkpoint every N updates", low=1),
    # -- switches that lower a safety barrier: the command line only ----------------------------------------------
    Key("resume", False, "bool", "continue the interrupted run at --prefix exactly where it stopped",
        cli_only=True),
    Key("overwrite", False, "bool", "start a new run on a --prefix that holds one: every file of the old run is "
        "removed first (without it, or --resume, such a prefix is refused)", cli_only=True),
    Key("trust_states", False, "bool", "with --resume: also load an optimizer state saved as a pickle by an older "
        "version (a pickle can run code: only for files you made yourself)", cli_only=True),
    # -- distillation ---------------------------------------------------------------------------------------------
    Key("teacher", "", "model", "the frozen teacher checkpoint (any MXNet embedding network with fc1_output)",
        commands=(DISTILL,), rule=_model),
    Key("kd", [DEFAULT_TERM], "terms", "a distillation term FORM:TAP[@WEIGHT] or FORM:STUDENT_TAP=TEACHER_TAP"
        f"[@WEIGHT], repeatable (replaces the default); forms {', '.join(FORM_NAMES)}; taps embedding, stride2, "
        "stride4, stride8, stride16", commands=(DISTILL,), rule=_refused_by(_terms)),
    Key("kd_type", None, "str", "form of the embedding term (changes the --kd embedding term, or adds one)",
        commands=(DISTILL,), choices=FORM_NAMES, optional=True),
    Key("kd_weight", None, "float", "weight of the embedding term (changes the --kd embedding term, or adds one)",
        commands=(DISTILL,), low=0, open_low=True, optional=True),
    Key("kd_only", False, "bool", "train the student's embedding by the distillation terms alone (the classifier "
        "still trains, on a gradient-blocked embedding, so its loss and accuracy are still reported)",
        commands=(DISTILL,)),
    Key("generations", 1, "int", "number of recursive generations", commands=(DISTILL,), low=1),
    Key("init", "", "model", "initial student weights of generation 1 (default: from scratch)",
        commands=(DISTILL,), rule=_model),
    Key("teacher_cache", "", "path", "teacher-embedding cache from `vargface distill cache` ('auto': its default "
        "path, beside the teacher's checkpoint); embedding terms under one fixed teacher, mirror-only augmentation",
        commands=(DISTILL,), rule=_path),
    Key("teacher_schedule", "", "path", "PREFIX of the teacher's per-epoch checkpoints: student epoch e trains "
        "under PREFIX-(e+1) (multi-step distillation; instead of --teacher)", commands=(DISTILL,), rule=_path),
    Key("teacher_every", 0, "int", "with --teacher-schedule: student update u trains under PREFIX-(u // N + 1) "
        "(0: per epoch)", commands=(DISTILL,), low=0),
]
BY_NAME = {key.name: key for key in KEYS}

PRESET_KEYS = ("network", "dataset", "loss")
# What `--resume` compares: the keys above marked `resume`, and facts of the run the state also records.
RESUME_KEYS = tuple(key.name for key in KEYS if key.resume)
RESUME_FACTS = ("contexts", "workers", "data")


def keys_of(command):
    """The keys of ``command`` ('train' or 'distill'), in declaration order."""
    return [key for key in KEYS if command in key.commands]


def option_strings(key):
    """Every spelling of a key's option: the option, its dashed/underscored twin, and its aliases."""
    spellings = [key.option] + (["--" + key.name] if key.flag is None and "_" in key.name else [])
    return spellings + list(key.aliases)


def add_options(parser, command):
    """``--config PATH`` and one option per key of ``command``; values stay text until
    `vargface.train.config.resolve` reads them, so a value from the command line and one from a config file pass
    the same checks."""
    from vargface.options import explain_unknown

    parser.add_argument("--config", metavar="PATH", help="experiment config file of `key = value` lines (e.g. "
                        "configs/vargfacenet_retina.py, or a run's saved PREFIX-config.py); every option given here "
                        "wins over it, the presets too")
    for key in keys_of(command):
        shown = key.shown_default() + (", or the preset's" if key.group and key.name not in PRESET_KEYS else "")
        kwargs = dict(dest=key.name, default=None, metavar=key.metavar, help=f"{key.help} (default: {shown})")
        if key.cli_only:  # a plain switch
            kwargs = dict(dest=key.name, action="store_true", default=None, help=key.help)
        elif key.kind == "bool":
            kwargs.update(nargs="?", const="true")
        elif key.kind in ("dict", "terms"):
            kwargs.update(action="append")
        parser.add_argument(*option_strings(key), **kwargs)
    explain_unknown(parser)
