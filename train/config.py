"""The run configuration: the keys of `vargface.train.schema`, resolved once into a frozen `RunConfig`.

Layers, lowest first: the schema's defaults; the network preset (its sizes and training defaults); the dataset and
loss presets; a config file (``--config``); the command line. The command line wins for every key, the presets
too: a preset it names that differs from the file's replaces the file's keys of that group, which were chosen for
the other preset (``--config configs/r18_tiny_synthetic.py --network y1`` builds y1 at y1's own sizes, with the
file's training settings). Distillation terms are parsed into `Term` objects and checked against the student's
taps here; nothing downstream parses or merges a setting again.

Config files (arcface_torch's manner: ``key = literal`` lines, or ``config.key = literal``) are parsed, never
executed: a file from elsewhere cannot run code. A run saves what it ran as ``PREFIX-config.py`` in the same
format."""
import ast
import difflib
import json
import os
from collections.abc import Mapping

from vargface.errors import VargfaceError
from vargface.train import schema
from vargface.train.schema import BY_NAME, DATASETS, FOLDER, LOSSES, PRESET_KEYS, TRAIN, keys_of


class RunConfig(Mapping):
    """The frozen settings of one run: ``config.lr`` or ``config["lr"]``; `replace` makes a changed copy."""

    __slots__ = ("_values",)

    def __init__(self, values):
        object.__setattr__(self, "_values", {k: _frozen(v) for k, v in values.items()})

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no config key {name!r}") from None

    def __setattr__(self, name, value):
        raise TypeError(f"a RunConfig is frozen; make a changed copy with .replace({name}=...)")

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"RunConfig({self.to_dict()!r})"

    def __reduce__(self):
        return RunConfig, (self.to_dict(),)

    def __deepcopy__(self, memo):
        return self

    def replace(self, **changes):
        """A copy with ``changes``, checked as any value is; the terms follow the keys they come from."""
        unknown = [name for name in changes if name not in self._values or name == "terms"]
        if unknown:
            raise KeyError(f"no config key {unknown[0]!r}")
        values = {**self.to_dict(), **{name: BY_NAME[name].read(value) for name, value in changes.items()}}
        if "terms" in self:
            values["terms"] = _terms(values)
        _check_together(values)
        return RunConfig(values)

    def to_dict(self):
        """Plain JSON-able values (lists and dicts), e.g. for a manifest."""
        return {k: _plain(v) for k, v in self._values.items() if k != "terms"}


def _frozen(value):
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return _FrozenDict(value)
    return value


def _plain(value):
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _FrozenDict(dict):
    """A dict that refuses changes (net_opts)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a RunConfig is frozen")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse


# -- resolution --------------------------------------------------------------------------------------------------
def resolve(command_line, file=None, command=TRAIN):
    """The `RunConfig` of ``command`` ('train' or 'distill') from ``command_line`` ({key: text or value}, None
    for not given) over the config ``file`` over the presets over the defaults."""
    keys = {key.name: key for key in keys_of(command)}
    given = {}
    for name, value in command_line.items():
        if value is not None:
            given[name] = _key(keys, name, command, "").read(value)
    from_file = _read_file(file, keys, command) if file else {}
    for group in PRESET_KEYS:  # a preset named on the command line brings its own values for its group
        if group in given and group in from_file and given[group] != from_file[group]:
            from_file = {name: value for name, value in from_file.items() if BY_NAME[name].group != group}
    chosen = {group: given.get(group, from_file.get(group, keys[group].default)) for group in PRESET_KEYS}

    values = {name: _copy(key.default) for name, key in keys.items()}
    presets = [_network_preset(chosen["network"]), _dataset_preset(chosen["dataset"]), LOSSES[chosen["loss"]]]
    for layer in [{name: keys[name].read(value) for name, value in preset.items()} for preset in presets] + [
            from_file, given]:
        for name, value in layer.items():
            values[name] = {**values[name], **value} if keys[name].kind == "dict" else value
    values.update(chosen)
    if command == schema.DISTILL:
        values["terms"] = _terms(values)
    _check_together(values)
    return RunConfig(values)


def _key(keys, name, command, where):
    if name in keys:
        return keys[name]
    if name in BY_NAME:
        other = ", ".join(f"`vargface {c}`" for c in BY_NAME[name].commands)
        raise VargfaceError(f"{where}{name!r} is a setting of {other}, not of `vargface {command}`")
    near = difflib.get_close_matches(name, keys, n=4, cutoff=0.6)
    raise VargfaceError(f"{where}unknown config key {name!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))


def _read_file(path, keys, command):
    """The keys of a config file, each read and checked; a key that lowers a safety barrier is refused unless it
    is off (files saved before it was refused record ``trust_states = False``)."""
    values = {}
    for name, value in read_config_file(path).items():
        key = _key(keys, name, command, f"--config {path}: ")
        if key.cli_only:
            if value in (None, False, key.default):
                continue
            raise VargfaceError(f"--config {path}: {name} = {value!r} lowers a safety barrier, which only the command "
                                f"line may do: remove the line and pass {key.option} when you mean it")
        values[name] = key.read(value, source=f"--config {path}: {name} =")
    return values


def _copy(value):
    return json.loads(json.dumps(value))


def _network_preset(name):
    """The keys a network preset sets: its training defaults, embedding size and input side."""
    from vargface.symbols.registry import get_preset

    preset = get_preset(name)
    options = preset.resolved_options()
    return {**_copy(preset.train), "emb_size": options["emb_size"], "image_size": options["input_size"]}


def _dataset_preset(name):
    return DATASETS[name] if name in DATASETS else dict(FOLDER, dataset_path=name)


def _terms(values):
    """The distillation terms, each of a tap the student network has."""
    from vargface.symbols import get_symbol
    from vargface.symbols.taps import tap_outputs
    from vargface.train.distill_loss import resolve_terms

    terms = resolve_terms(values["kd"], values["kd_type"], values["kd_weight"])
    wanted = {t.student for t in terms} - {"embedding"}
    if wanted:
        taps = tap_outputs(get_symbol(values["network"], **network_options(values)), int(values["image_size"][0]))
        for term in terms:
            if term.student not in taps:
                raise VargfaceError(f"--kd {term}: the student {values['network']} has no tap {term.student!r} "
                                    f"(it has {', '.join(taps)})")
    return terms


def _check_together(values):
    """Settings that are valid alone but not together."""
    if values["kvstore"].startswith("dist"):
        if values["on_nan"] == "rollback":
            raise VargfaceError("--on-nan rollback needs every worker to roll back together; with a dist kvstore "
                                "use --on-nan stop and --resume")
        if values["dtype"] != "float32":
            raise VargfaceError(f"--dtype {values['dtype']} skips a step whose gradients overflow, and with --kvstore "
                                f"{values['kvstore']} every worker would have to skip it together; use --dtype float32 "
                                "with a dist kvstore")
        if values["clip_grad_norm"] > 0 and values["kvstore"] == "dist_async":
            raise VargfaceError("--clip-grad-norm needs the gradient summed over all workers, which dist_async forms "
                                "only on its servers, inside the update; use --kvstore dist_sync (the workers sum, "
                                "clip and update) or --clip-grad-norm 0")
    if values["fc_parallel"]:
        from vargface.train.losses import MARGIN_LOSSES

        if values["loss_name"] not in MARGIN_LOSSES:
            raise VargfaceError(f"--fc-parallel shards normalised class centres: it needs a margin loss (nsoftmax, "
                                f"arcface, cosface, combined, arcneg), not --loss {values['loss']}")
        if values["kvstore"] == "dist_async":
            raise VargfaceError("--fc-parallel computes one softmax over every worker's shard in step: use "
                                "--kvstore dist_sync or dist_device_sync, not dist_async")
        if values["dtype"] != "float32":
            raise VargfaceError(f"--fc-parallel trains its classifier in float32: --dtype {values['dtype']} is for "
                                f"the full head only")
    elif values["sample_ratio"] != 1:
        raise VargfaceError(f"--sample-ratio {values['sample_ratio']:g} samples the centres of a sharded "
                            f"classifier: add --fc-parallel")
    if values["resume"] and values["overwrite"]:
        raise VargfaceError("--resume continues the run at --prefix and --overwrite replaces it: give one")
    if "generations" in values and values["ckpt"] == 0:
        raise VargfaceError("--ckpt 0 saves no checkpoint, but each generation starts from the previous one's final "
                            "checkpoint; use --ckpt 1, 2 or 3")


def generate_config(network=None, dataset=None, loss=None, /, command=TRAIN, **settings):
    """`resolve` for Python callers: the presets and any key given as a value or as command-line text."""
    return resolve(dict(settings, network=network, dataset=dataset, loss=loss), command=command)


def config_from_args(args):
    """The `RunConfig` of parsed `vargface train`/`distill` arguments (see `vargface.train.schema.add_options`)."""
    command = args.command
    return resolve({key.name: getattr(args, key.name, None) for key in keys_of(command)}, file=args.config,
                   command=command)


def network_options(config):
    """The builder options of ``config``'s network: emb_size, the input side, the aliases (net_multiplier, ...)
    and net_opts."""
    from vargface.symbols.registry import NETWORK_ALIASES

    options = {"emb_size": int(config["emb_size"]), "input_size": int(config["image_size"][0])}
    for key, (option, _, _) in NETWORK_ALIASES.items():
        if config[key] is not None:
            options[option] = config[key]
    return {**options, **config["net_opts"]}


def resolve_prefix(config):
    """The run's prefix: ``config.prefix`` or InsightFace's MODELS_ROOT/NETWORK-LOSS-DATASET/model."""
    if config.prefix:
        return config.prefix
    name = f"{config.network}-{config.loss}-{os.path.basename(os.path.normpath(str(config.dataset)))}"
    return os.path.join(config.models_root, name, "model")


# -- the data folder ---------------------------------------------------------------------------------------------
def pack_path(folder, target):
    """The file of a verification target: NAME or NAME.bin in the data ``folder``, or a path to a .bin."""
    if target.endswith(".bin"):
        return target if os.sep in target else os.path.join(folder, target)
    return os.path.join(folder, target + ".bin")


def verification_packs(config):
    """[(name, path)] of ``config.val_targets`` (`pack_path`)."""
    paths = [pack_path(config.dataset_path, target) for target in config.val_targets or ()]
    return [(os.path.basename(path)[:-4], path) for path in paths]


def open_data(config):
    """The `vargface.data.source.TrainingSet` of ``config``'s data folder."""
    from vargface.data.source import open_training_set

    if not config.dataset_path:
        raise VargfaceError(f"dataset {config.dataset!r} needs a folder: pass --dataset-path DIR")
    return open_training_set(config.dataset_path, option="--dataset-path" if config.dataset in DATASETS else
                             "--dataset")


def resolve_dataset(config, data=None):
    """``config`` with num_classes and val_targets taken from its data folder (``data``, a `TrainingSet`, when
    open already), which must agree with them."""
    data = data or open_data(config)
    if config.num_classes and config.num_classes != data.num_classes:
        raise VargfaceError(f"{data.property_path} says {data.num_classes} classes but the config says num_classes="
                            f"{config.num_classes} (dataset preset {config.dataset!r}); fix the data folder or pass "
                            f"--num-classes {data.num_classes}")
    config = config.replace(num_classes=data.num_classes,
                            val_targets=data.packs() if config.val_targets is None else config.val_targets)
    for _, path in verification_packs(config):
        if not os.path.isfile(path):
            raise VargfaceError(f"verification pack {path} does not exist (set --target to the packs you have, or "
                                f"'' for none)")
    return config


# -- config files ------------------------------------------------------------------------------------------------
def read_config_file(path):
    """key -> literal of a config file: lines ``key = literal`` (or arcface_torch's ``config.key = literal`` after
    ``config = edict()``). The file is parsed, never executed."""
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
    """Write ``config`` (atomically) as a config file: every key of its command in the schema's order, except the
    command-line-only switches; ``comments`` head the file, then the ``facts`` of the run (see `run_facts`)."""
    from vargface.atomic import atomic_path

    values = config.to_dict()
    lines = [f"# {line}" for line in comments] + ([RUN_FACTS + json.dumps(facts, sort_keys=True)] if facts else [])
    lines += [f"{key.name} = {values[key.name]!r}" for key in schema.KEYS if key.name in values and not key.cli_only]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
