"""Checkpoints: InsightFace's embedding-only ``prefix-symbol.json`` + ``prefix-%04d.params`` (arg:/aux: arrays of
the embedding only, loadable by any MXNet/InsightFace tool), and a training state for ``--resume``.

The state is ``prefix-state-%08d.params`` (every training array, classifier ``fc7`` included),
``prefix-state-%08d-optimizer.params`` (the optimizer's momentum arrays, an MXNet NDArray file), for a sharded
classifier (--fc-parallel) ``prefix-state-%08d-fc7.params`` (this worker's shards and their momentum), and the
pointer ``prefix-state.json`` (epoch, batch, update counts, schedule scale, best results, and the settings ``--resume``
must find unchanged). Each file is written atomically and the pointer last, so a kill at any moment leaves the
previous state complete and readable. File names come from `vargface.train.run_files.RunFiles`.

No state file is a pickle, so loading one cannot run code. Version-1 states kept the optimizer in MXNet's pickle
(``prefix-state-%08d.states``); those are loaded only when the user vouches for them (``--trust-states``)."""
import json
import os
from dataclasses import asdict, dataclass, fields

from vargface.atomic import atomic_path
from vargface.errors import VargfaceError, last_line, summarize
from vargface.locks import OutputLock
from vargface.train.run_files import RunFiles

STATE_VERSION = 2
PICKLED_STATE_VERSION = 1  # optimizer state as MXNet's pickle: read only behind --trust-states


def _save_arrays(path, arg_params, aux_params):
    import mxnet as mx

    arrays = {"arg:" + k: v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    arrays.update({"aux:" + k: v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    with atomic_path(path) as tmp:
        mx.nd.save(tmp, arrays)


def _load_arrays(path):
    import mxnet as mx

    try:
        saved = mx.nd.load(path)
    except Exception as error:
        raise VargfaceError(f"{path} is not a readable MXNet params file: {last_line(error)}") from None
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    from vargface.symbols.checkpoint import check_finite

    check_finite({**arg, **aux}, path)
    return arg, aux


def save_embedding(prefix, number, emb_sym, arg_params, aux_params):
    """Write ``prefix-symbol.json`` and ``prefix-%04d.params`` holding only the embedding's arrays."""
    files = _files(prefix)
    args, auxs = set(emb_sym.list_arguments()), set(emb_sym.list_auxiliary_states())
    with atomic_path(files.symbol) as tmp:
        emb_sym.save(tmp)
    _save_arrays(files.params(number), {k: v for k, v in arg_params.items() if k in args},
                 {k: v for k, v in aux_params.items() if k in auxs})


def random_params(emb_sym, input_size, initializer=None, seed=0):
    """(arg_params, aux_params) of ``emb_sym`` at random (Xavier gaussian/out/2 by default; BatchNorm statistics
    0 and 1): weights for a speed benchmark or a test checkpoint of a preset, where their values do not matter."""
    import mxnet as mx

    mx.random.seed(seed)
    initializer = initializer or mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    arg_shapes, _, aux_shapes = emb_sym.infer_shape(data=(1, 3, input_size, input_size))
    attrs, arrays = emb_sym.attr_dict(), ({}, {})
    for params, names, shapes in ((arrays[0], emb_sym.list_arguments(), arg_shapes),
                                  (arrays[1], emb_sym.list_auxiliary_states(), aux_shapes)):
        for name, shape in zip(names, shapes):
            if name == "data":
                continue
            params[name] = mx.nd.zeros(shape)
            initializer(mx.init.InitDesc(name, attrs.get(name)), params[name])
    return arrays


def _files(prefix):
    return prefix if isinstance(prefix, RunFiles) else RunFiles(prefix)


@dataclass
class TrainState:
    """Where a run stands: what a saved training state records and --resume restores."""

    epoch: int = 0
    batch: int = 0
    num_update: int = 0
    msave: int = 0  # checkpoint rounds so far
    lr_scale: float = 1.0  # learning-rate factor left by NaN rollbacks
    best: dict = None  # {'score', 'step', 'results'} of the best verification round
    best_number: int = None  # its checkpoint under PREFIX_best (a number: the run folder may move)
    last_checkpoint: int = None
    finished: bool = False  # the run's final checkpoint is written
    loss_scale: float = None  # mixed precision: the dynamic loss scale reached
    loss_scale_clean: int = 0  # ... and the clean updates since it last changed

    @classmethod
    def from_info(cls, info, source):
        """The state of a state file's ``info``; a field of the wrong type is an error naming file and field."""
        if "finished" not in info:  # states written before it was recorded: finished once a checkpoint is out
            info = dict(info, finished=info.get("last_checkpoint") is not None)
        if info.get("best_number") is None and isinstance(info.get("best_checkpoint"), str):  # older states
            info = dict(info, best_number=info["best_checkpoint"].rpartition(",")[2])
        values = {}
        for field in fields(cls):
            value = info.get(field.name, field.default)
            kind = {"lr_scale": float, "loss_scale": float, "best": dict, "finished": bool}.get(field.name, int)
            optional = field.default is None
            if kind is int and isinstance(value, str) and value.isdigit() and field.name == "best_number":
                value = int(value)
            wrong = not (optional and value is None) and (
                not isinstance(value, (int, float) if kind is float else kind) or isinstance(value, bool) != (
                    kind is bool) or (kind in (int, float) and not value >= 0))
            if wrong:
                expected = {int: "a whole number >= 0", float: "a number >= 0", dict: "an object",
                            bool: "true or false"}[kind]
                raise VargfaceError(f"--resume: {source}: field {field.name!r} is {json.dumps(value)}, expected "
                                    f"{expected}{' or null' if optional else ''}")
            values[field.name] = value
        return cls(**values)

    def info(self):
        return asdict(self)


def _updater(module):
    """The mx.optimizer.Updater holding a bound Module's optimizer state (in the KVStore or the Module)."""
    return module._kvstore._updater if module._update_on_kvstore else module._updater


def _devices(module):
    """How many copies of each state the updater keeps: one per device when every device updates its own weights
    (its keys are parameter index x devices + device), one when a KVStore updates them (keys = indices)."""
    return 1 if module._update_on_kvstore else len(module._context)


def _key_text(key):
    return ("i:" if isinstance(key, int) else "s:") + str(key)


def _key_value(text):
    kind, _, key = text.partition(":")
    return int(key) if kind == "i" else key


def save_optimizer(path, module):
    """Write the optimizer's state arrays to the NDArray file ``path``; returns the JSON-able bookkeeping that
    restores it (the layout of each state, per-parameter update counts, num_update)."""
    import mxnet as mx

    updater, devices = _updater(module), _devices(module)
    arrays, layout = {}, []
    # Saved per parameter (the first device's copy; every device holds the same), so a state loads into any
    # layout, and states saved when the KVStore kept them load too.
    for key, state in _per_parameter(updater.states, devices).items():
        parts = state if isinstance(state, (tuple, list)) else [state]
        if not all(p is None or isinstance(p, mx.nd.NDArray) for p in parts):
            raise VargfaceError(f"optimizer state of {key!r} is a {type(state).__name__}; only NDArrays are saved")
        for j, part in enumerate(parts):
            if part is not None:
                arrays[f"{_key_text(key)}#{j}"] = part.as_in_context(mx.cpu())
        layout.append([_key_text(key), len(parts) if isinstance(state, (tuple, list)) else -1,
                       [j for j, p in enumerate(parts) if p is None]])
    with atomic_path(path) as tmp:
        mx.nd.save(tmp, arrays)
    optimizer = updater.optimizer
    return {"layout": layout, "num_update": int(optimizer.num_update),
            "index_update_count": [[_key_text(k), int(v)] for k, v in
                                   _per_parameter(optimizer._index_update_count, devices).items()]}


def _per_parameter(values, devices):
    """{parameter key: value} of an updater's {key: value}, from the first device's copies."""
    if devices == 1:
        return dict(values)
    return {key // devices: value for key, value in values.items() if key % devices == 0}


def load_optimizer(path, bookkeeping, module):
    """Restore what ``save_optimizer`` wrote into a Module whose optimizer is initialised."""
    import mxnet as mx

    try:
        arrays = mx.nd.load(path)
        states = {}
        for key_text, length, empty in bookkeeping["layout"]:
            parts = [None if j in empty else arrays[f"{key_text}#{j}"] for j in range(max(length, 1))]
            states[_key_value(key_text)] = tuple(parts) if length >= 0 else parts[0]
        counts = {_key_value(k): int(v) for k, v in bookkeeping["index_update_count"]}
        num_update = int(bookkeeping["num_update"])
    except Exception as error:
        raise VargfaceError(f"--resume: optimizer state {path} is damaged or does not match its pointer: "
                            f"{last_line(error)}") from None
    updater, devices = _updater(module), _devices(module)
    # one copy per device (copied to the weight's device on its next update)
    updater.states = _per_device(states, devices, _copy)
    updater.states_synced = dict.fromkeys(updater.states, False)
    updater.optimizer._index_update_count.update(_per_device(counts, devices))
    updater.optimizer.num_update = num_update


def _per_device(values, devices, copy=lambda value: value):
    """The updater's {key: value} of {parameter key: value}: a copy for each device (the inverse of
    `_per_parameter`)."""
    if devices == 1:
        return dict(values)
    return {key * devices + device: copy(value) for key, value in values.items() for device in range(devices)}


def _copy(state):
    if isinstance(state, (tuple, list)):
        return type(state)(_copy(part) for part in state)
    return None if state is None else state.copy()


def save_state(prefix, info, arg_params, aux_params, module=None, classifier=None):
    """Write a training state; ``module`` (a bound mx.mod.Module with optimizer) supplies the optimizer state
    unless its updates run on a distributed server, which keeps that state itself; ``classifier`` (a
    `vargface.train.partial_fc.PartialFC`) its shards and their momentum."""
    files = _files(prefix)
    step = int(info["num_update"])
    written = [files.state_params(step)]
    _save_arrays(written[0], arg_params, aux_params)
    info = dict(info, version=STATE_VERSION, params=os.path.basename(written[0]), optimizer=None, fc7_shards=None)
    info.pop("states", None)
    if module is not None and not (module._update_on_kvstore and "dist" in module._kvstore.type):
        written.append(files.state_optimizer(step))
        info["optimizer"] = dict(save_optimizer(written[-1], module), file=os.path.basename(written[-1]))
    if classifier is not None:
        written.append(files.state_fc7(step))
        classifier.save(written[-1])
        info["fc7_shards"] = {"file": os.path.basename(written[-1]), "layout": str(classifier.layout)}
    with atomic_path(files.state) as tmp, open(tmp, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    for old in files.state_arrays():
        if old not in written:
            os.remove(old)


def load_state(prefix, trust_states=False):
    """-> (info dict, arg_params, aux_params, optimizer) where optimizer is None, ``("arrays", path,
    bookkeeping)`` or, for a version-1 state and ``trust_states``, ``("pickle", path)``; clear errors for
    missing or bad files."""
    files = _files(prefix)
    path = files.state
    if not os.path.isfile(path):
        raise VargfaceError(f"--resume: no training state {path} (start without --resume, or point --prefix / "
                            f"--models-root at the run to continue)")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as error:
        raise VargfaceError(f"--resume: {path} is not a readable training state: {error}") from None
    if not isinstance(info, dict) or info.get("version") not in (STATE_VERSION, PICKLED_STATE_VERSION):
        version = info.get("version") if isinstance(info, dict) else None
        raise VargfaceError(f"--resume: {path} has state version {version}, expected {STATE_VERSION}")
    missing = [k for k in ("params", "num_update", "epoch", "batch") if k not in info]
    if missing:
        raise VargfaceError(f"--resume: {path} is not a complete training state: no {', '.join(missing)}")
    TrainState.from_info(info, path)
    params = files.beside(info["params"])
    if not os.path.isfile(params):
        raise VargfaceError(f"--resume: {path} names {params}, which does not exist")
    arg, aux = _load_arrays(params)
    optimizer = None
    if info["version"] == PICKLED_STATE_VERSION and info.get("states"):
        states = files.beside(info["states"])
        if not trust_states:
            raise VargfaceError(f"--resume: {path} keeps its optimizer state in the pickle {states}, and loading a "
                                f"pickle can run code. Pass --trust-states only if you made this file yourself")
        if not os.path.isfile(states):
            raise VargfaceError(f"--resume: {path} names optimizer state {states}, which does not exist")
        optimizer = ("pickle", states)
    elif info.get("optimizer"):
        bookkeeping = info["optimizer"]
        file = files.beside(bookkeeping.get("file") if isinstance(bookkeeping, dict) else "")
        if not isinstance(bookkeeping, dict) or not os.path.isfile(file):
            raise VargfaceError(f"--resume: {path} names optimizer state {file}, which does not exist")
        optimizer = ("arrays", file, bookkeeping)
    return info, arg, aux, optimizer


def shards_file(prefix, info):
    """The sharded classifier's file a state names (None for a state of the full head), checked to exist."""
    files = _files(prefix)
    record = info.get("fc7_shards")
    if record is None:
        return None
    path = files.beside(record.get("file") if isinstance(record, dict) else "")
    if not isinstance(record, dict) or not os.path.isfile(path):
        raise VargfaceError(f"{files.state} names classifier shards {path}, which do not exist")
    return path


def restore_optimizer(module, optimizer):
    """Load what ``load_state`` returned as ``optimizer`` into the Module (its optimizer initialised)."""
    if optimizer is None:
        return
    if optimizer[0] == "pickle":
        try:
            module.load_optimizer_states(optimizer[1])
        except Exception as error:
            raise VargfaceError(f"--resume: optimizer state {optimizer[1]} is unreadable: {last_line(error)}") \
                from None
    else:
        load_optimizer(optimizer[1], optimizer[2], module)


def check_compatible(info, arg_params, aux_params, train_sym, data_shapes, config, source):
    """Refuse a state/checkpoint of another network before training starts: name what differs."""
    if info.get("network") not in (None, config.network):
        raise VargfaceError(f"{source} was trained with network {info.get('network')!r}, but this run uses "
                            f"{config.network!r}; resume with the same --network or start a new run")
    from vargface.symbols.checkpoint import check_params

    check_params(train_sym, arg_params, aux_params, data_shapes, source, unexpected=True,
                 verdict=f"does not belong to this network ({config.network}, {config.num_classes} classes)")


def load_pretrained(spec, emb_sym, data_shape):
    """InsightFace's --pretrained 'prefix,epoch': the embedding's arrays only (no classifier, no optimizer)."""
    from vargface.symbols.checkpoint import check_params, load_checkpoint, parse_model_arg

    prefix, epoch = parse_model_arg(spec, "--pretrained")
    _, arg, aux = load_checkpoint(prefix, epoch)
    check_params(emb_sym, arg, aux, data_shape, source=f"--pretrained {spec}")
    return arg, aux


class PrefixLock(OutputLock):
    """``PREFIX.lock``: one training writes under a prefix at a time (a `vargface.locks.OutputLock`)."""

    def __init__(self, prefix):
        super().__init__(prefix, what="another training writes to this prefix",
                         hint="wait for it, or choose another --prefix")


def check_resume(recorded, now, source):
    """Refuse to resume when a setting a state recorded (`vargface.train.schema.RESUME_KEYS` and the run's facts:
    devices, workers, data) differs from this run's, naming each one."""
    changed = [f"{key} {recorded[key]!r} -> {now.get(key)!r}" for key in recorded
               if key in now and recorded[key] != now[key]]
    if changed:
        raise VargfaceError(f"--resume: these settings differ from the interrupted run ({source}), so it cannot "
                            f"continue exactly: {summarize(changed, 8)}; resume with the saved values or start a new "
                            f"--prefix")


def saved_config_record(config_path, now):
    """What a saved PREFIX-config.py records of the settings in ``now`` (the check of states written before
    states recorded them); {} when there is no such file."""
    from vargface.train.config import read_config_file, run_facts

    if not os.path.isfile(config_path):
        return {}
    try:
        saved = {**read_config_file(config_path), **run_facts(config_path)}
    except (VargfaceError, ValueError) as error:
        raise VargfaceError(f"--resume: {config_path} is not a readable saved config: {error}") from None
    if "contexts" in saved:
        saved["contexts"] = len(saved["contexts"] or [])
    return {key: saved[key] for key in now if key in saved}
