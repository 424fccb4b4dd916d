"""Training configuration in InsightFace's style: ``default``, the network preset's training defaults (from the
registry in `vargface.symbols`), and the ``dataset`` and ``loss`` presets merged by
``generate_config(network, dataset, loss, **overrides)`` into one easydict whose key names follow InsightFace's
``config.py`` (per_batch_size, lr_steps, loss_s, loss_m1..m3, emb_size, ckpt, verbose, max_steps, ...), so users of
that code find their knobs where they expect them."""
import ast
import difflib
import json
import os

from easydict import EasyDict as edict

from vargface.errors import VargfaceError
from vargface.symbols.registry import get_preset, parse_net_opts

# Options every run has; the network/dataset/loss presets below override some of them.
default = edict(
    network="vargfacenet", dataset="emore", loss="arcface",
    # network: the preset's builder options, overridden by emb_size/image_size, the net_multiplier/net_num_layers
    # aliases and net_opts (any builder option, e.g. {"use_se": False})
    emb_size=512, net_opts={}, net_multiplier=None, net_num_layers=None,
    net_channels=None, net_layers=None,
    net_init="xavier_gaussian_out_2", fc7_init_sigma=0.01,
    fc7_lr_mult=1.0, fc7_wd_mult=1.0, fc7_no_bias=False,
    # data
    dataset_path="", num_classes=0, image_size=[112, 112], val_targets=["lfw", "cfp_fp", "agedb_30"],
    data_rand_mirror=True, data_cutoff=0, data_color=0, seed=0,
    # loss
    loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0,
    loss_alpha=1.2, loss_sigma=2.0,
    # optimisation
    lr=0.1, wd=0.0005, mom=0.9, per_batch_size=128, kvstore="device", ctx="cpu",
    lr_schedule="step", lr_steps=[100000, 160000, 220000], lr_factor=0.1,
    warmup_steps=0, warmup_lr=0.0, lr_total_steps=0, lr_min=0.0,
    end_epoch=10000, max_steps=0, clip_grad_norm=0.0,
    # bookkeeping (InsightFace meanings: frequent = log every N batches, verbose = verify + checkpoint every N)
    models_root="./models", prefix="", pretrained="", resume=False, trust_states=False, ckpt=3, frequent=20,
    verbose=2000,
    on_nan="stop", nan_lr_factor=0.1, nan_max_rollbacks=3,
    # speed: which graph the optimizer trains (auto: the fast rewrite on CPU; checkpoints hold the faithful graph)
    train_graph="auto",
)

# Distillation settings: `vargface distill` takes them beside `default`'s keys (`vargface train` does not).
# kd: the terms FORM:TAP[@WEIGHT] (vargface.train.distill_loss); kd_type/kd_weight, when set, change the embedding
# term; teacher_schedule/teacher_every: multi-step teachers (vargface.train.distill).
distillation = edict(
    teacher="", kd=["angular:embedding@7"], kd_type=None, kd_weight=None, kd_only=False, generations=1, init="",
    teacher_cache="", teacher_schedule="", teacher_every=0,
)

dataset = edict(
    emore=edict(dataset_path="../datasets/faces_emore", num_classes=85742, image_size=[112, 112],
                val_targets=["lfw", "cfp_fp", "agedb_30"]),
    retina=edict(dataset_path="../datasets/ms1m-retinaface-t1", num_classes=93431, image_size=[112, 112],
                 val_targets=["lfw", "cfp_fp", "agedb_30"]),
    # Any directory written by `vargface data`: num_classes from its `property`, val_targets = its *.bin files.
    folder=edict(dataset_path="", num_classes=0, val_targets=None),
)

loss = edict(
    softmax=edict(loss_name="softmax", fc7_no_bias=False),
    nsoftmax=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.0, loss_m3=0.0),
    arcface=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0),
    cosface=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.0, loss_m3=0.35),
    combined=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.3, loss_m3=0.2),
    arcneg=edict(loss_name="arcneg", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0,
                 loss_alpha=1.2, loss_sigma=2.0),
)


# Keys that hold lists even where a preset leaves them unset (None).
LIST_KEYS = ("image_size", "val_targets", "lr_steps")


def _choose(kind, table, name):
    if name not in table:
        near = difflib.get_close_matches(str(name), table.keys(), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise VargfaceError(f"unknown {kind} preset {name!r}{hint} (choose from {', '.join(table)})")
    return table[name]


def check_key(config, key):
    """Raise a clear error for a key the config does not have, naming close matches."""
    if key not in config:
        near = difflib.get_close_matches(key, config.keys(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise VargfaceError(f"unknown config key {key!r}{hint}")


def _check_typed(template, value, key):
    """A value from a config file already has a type: it must be the key's (an int may stand for a float)."""
    if key == "image_size" and isinstance(value, int) and not isinstance(value, bool):
        return [value, value]  # one side for a square input
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list, tuple), dict: (dict,)}
    expected = kinds.get(type(template)) if template is not None else None
    if expected and (not isinstance(value, expected) or isinstance(value, bool) and bool not in expected):
        raise VargfaceError(f"config key {key!r}: expected {type(template).__name__}, got {value!r}")
    return list(value) if isinstance(value, tuple) else value


def parse_value(template, text, key):
    """Convert a command-line string to the type of the key's current value (lists are comma-separated); a
    value that already has a type (from a config file) is checked against the key's type."""
    if not isinstance(text, str) or isinstance(template, str):
        return _check_typed(template, text, key)
    try:
        if isinstance(template, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(template, int):
            return int(text)
        if isinstance(template, float):
            return float(text)
        if isinstance(template, list) or key in LIST_KEYS or template is None and "," in text:
            items = [t for t in text.split(",") if t.strip()]
            kinds = {type(v) for v in (template or [])}
            cast = int if kinds == {int} or key in ("image_size", "lr_steps") else float if kinds == {float} else str
            return [cast(t.strip()) for t in items]
        if template is None:
            for cast in (int, float):
                try:
                    return cast(text)
                except ValueError:
                    pass
        return text
    except ValueError:
        raise VargfaceError(f"config key {key!r}: cannot read {text!r} as {type(template).__name__}") from None


def generate_config(network_name="vargfacenet", dataset_name="emore", loss_preset="arcface", /,
                    with_distillation=False, **overrides):
    """Merge default (+ the `distillation` keys when ``with_distillation``) <- network <- dataset <- loss presets
    <- overrides; unknown presets or keys raise.

    ``dataset_name`` may also be a directory made by `vargface data` (the ``folder`` preset)."""
    config = edict(json.loads(json.dumps({**default, **(distillation if with_distillation else {})})))
    if dataset_name not in dataset and os.path.isdir(str(dataset_name)):
        overrides.setdefault("dataset_path", dataset_name)
        dataset_name = "folder"
    elif dataset_name not in dataset and (os.sep in str(dataset_name) or os.path.exists(str(dataset_name))):
        what = "is not a folder" if os.path.exists(str(dataset_name)) else "does not exist"
        raise VargfaceError(f"--dataset {dataset_name}: the folder {what} (expected a directory made by "
                            f"`vargface data`, or a preset: {', '.join(dataset)})")
    preset = get_preset(network_name)
    config.update(json.loads(json.dumps(preset.train)))
    options = preset.resolved_options()
    config.update(network=network_name, emb_size=options["emb_size"], image_size=[options["input_size"]] * 2)
    for kind, table, name in (("dataset", dataset, dataset_name), ("loss", loss, loss_preset)):
        config.update(json.loads(json.dumps(_choose(kind, table, name))))
        config[kind] = name
    for key, value in overrides.items():
        check_key(config, key)
        if key == "net_opts":
            config.net_opts = {**config.net_opts, **parse_net_opts(value)}
        else:
            config[key] = parse_value(config[key], value, key)
    if isinstance(config.image_size, int) or len(config.image_size) == 1:
        side = int(config.image_size if isinstance(config.image_size, int) else config.image_size[0])
        config.image_size = [side, side]
    return config


def network_options(config):
    """The builder options of ``config``'s network: its preset's, then emb_size, image_size, the aliases
    net_multiplier / net_num_layers / net_channels / net_layers and net_opts."""
    options = {"emb_size": int(config.emb_size), "input_size": int(config.image_size[0])}
    for alias in ("multiplier", "num_layers", "channels", "layers"):
        if config.get("net_" + alias) is not None:
            options[alias] = config["net_" + alias]
    return {**options, **parse_net_opts(config.net_opts)}


# Accepted ranges of the numeric keys: (lowest, highest, lowest excluded). None values (unset) are not checked.
RANGES = dict(
    emb_size=(1, None, False), net_multiplier=(0, None, True), net_num_layers=(1, None, False),
    fc7_init_sigma=(0, None, False), fc7_lr_mult=(0, None, False), fc7_wd_mult=(0, None, False),
    num_classes=(0, None, False), image_size=(8, 4096, False), data_cutoff=(0, None, False), data_color=(0, 2, False),
    seed=(0, 2 ** 31 - 1, False), loss_s=(0, None, True), loss_m1=(0, None, True), loss_m2=(0, None, False),
    loss_m3=(0, None, False), loss_alpha=(0, None, False), loss_sigma=(0, None, True),
    lr=(0, None, False), wd=(0, None, False), mom=(0, 1, False), per_batch_size=(1, None, False),
    lr_steps=(1, None, False), lr_factor=(0, None, True), warmup_steps=(0, None, False), warmup_lr=(0, None, False),
    lr_total_steps=(0, None, False), lr_min=(0, None, False), end_epoch=(1, None, False), max_steps=(0, None, False),
    ckpt=(0, 3, False), frequent=(1, None, False), verbose=(1, None, False), nan_lr_factor=(0, 1, True),
    nan_max_rollbacks=(0, None, False),
)


def check_ranges(config):
    """Refuse a numeric option outside its range (or NaN), naming it: a bad value would otherwise surface deep
    inside MXNet or gluoncv, or train silently wrong."""
    import math

    for key, (low, high, open_low) in RANGES.items():
        values = config.get(key)
        for value in values if isinstance(values, list) else [values]:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise VargfaceError(f"--{key.replace('_', '-')} {value!r}: expected a number")
            below = value <= low if open_low else value < low
            if math.isnan(value) or below or (high is not None and value > high):
                bounds = (f"> {low}" if open_low else f">= {low}") + (f" and <= {high}" if high is not None else "")
                raise VargfaceError(f"--{key.replace('_', '-')} {value:g}: must be {bounds}")
    return config


def resolve_dataset(config):
    """Fill num_classes / val_targets from the data directory and check that its `property` agrees."""
    from vargface.data.recordio import read_property

    path = config.dataset_path
    if not path:
        raise VargfaceError(f"dataset {config.dataset!r} needs a directory: pass --dataset-path DIR")
    rec = os.path.join(path, "train.rec")
    if not os.path.isfile(rec):
        raise VargfaceError(f"dataset directory {path}: no train.rec (make one with `vargface data`)")
    num_classes = read_property(path)[0]  # the iterator resizes images to image_size
    identities = _identity_records(path)
    if identities is not None and identities != num_classes:
        raise VargfaceError(f"{os.path.join(path, 'property')} says {num_classes} classes but {rec} has "
                            f"{identities} identity records; classes without images would train silently wrong "
                            f"(fix the property file, or rebuild the set with `vargface data rec`)")
    if config.num_classes and config.num_classes != num_classes:
        raise VargfaceError(f"{os.path.join(path, 'property')} says {num_classes} classes but the config says "
                            f"num_classes={config.num_classes} (dataset preset {config.dataset!r}); "
                            f"fix the data directory or pass --num-classes {num_classes}")
    config.num_classes = num_classes
    if config.val_targets is None:
        config.val_targets = sorted(f[:-4] for f in os.listdir(path) if f.endswith(".bin"))
    for name in config.val_targets:
        if not os.path.isfile(os.path.join(path, name + ".bin")):
            raise VargfaceError(f"verification target {name!r}: {os.path.join(path, name + '.bin')} does not "
                                f"exist (set --val-targets to the .bin files you have, or '' for none)")
    return config


def _identity_records(path):
    """The number of identities a .rec set's header lists, or None for a plain image list (no header)."""
    from vargface.data.recordio import RecReader

    with RecReader(path, check_offsets=False) as reader:
        return len(reader.identity_keys) if reader.has_header else None


def read_config_file(path):
    """Config keys of an experiment file: lines ``key = literal`` (or arcface_torch's ``config.key = literal`` after
    ``config = edict()``). The file is parsed, never executed: a config from elsewhere cannot run code."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=str(path))
    except OSError as error:
        raise VargfaceError(f"--config {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise VargfaceError(f"--config {path}: not a UTF-8 text file") from None
    except SyntaxError as error:
        raise VargfaceError(f"--config {path}:{error.lineno}: not a config file ({error.msg})") from None
    values = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue  # `from easydict import EasyDict as edict`, docstrings
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id == "config" and isinstance(node.value, ast.Call):
            continue  # `config = edict()`
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "config":
            name = target.attr
        elif isinstance(target, ast.Name):
            name = target.id
        else:
            raise VargfaceError(f"--config {path}:{node.lineno}: expected `key = value` lines only")
        try:
            values[name] = ast.literal_eval(node.value)
        except ValueError:
            raise VargfaceError(f"--config {path}:{node.lineno}: the value of {name!r} must be a literal (a number, "
                                f"string, bool, None, list or dict), not an expression") from None
    return values


RUN_FACTS = "# run: "


def run_facts(path):
    """Facts of the run (devices, workers, rank, plugin) that a saved config records on its `# run:` line."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(RUN_FACTS):
                return json.loads(line[len(RUN_FACTS):])
    raise VargfaceError(f"{path}: no '{RUN_FACTS.strip()}' line (not a config saved by `vargface train`)")


def save_config(config, path, comments=(), facts=None):
    """Write the resolved config (atomically) as a config file: `--config` on it reruns the same experiment.

    ``resume`` is left out, so the file starts a run; ``comments`` head the file, then ``facts`` of the run (see
    `run_facts`)."""
    from vargface.atomic import atomic_path

    lines = [f"# {line}" for line in comments] + ([RUN_FACTS + json.dumps(facts, sort_keys=True)] if facts else [])
    lines += [f"{key} = {config[key]!r}" for key in sorted(config) if key != "resume"]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
