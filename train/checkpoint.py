"""Checkpoints: InsightFace's embedding-only ``prefix-symbol.json`` + ``prefix-%04d.params`` (arg:/aux: arrays of
the embedding only, loadable by any MXNet/InsightFace tool), and a training state for ``--resume``.

The state is ``prefix-state-%08d.params`` (every training array, classifier ``fc7`` included),
``prefix-state-%08d.states`` (optimizer state) and the pointer ``prefix-state.json`` (epoch, batch, update count,
seeds, schedule scale, best results, network). Each file is written atomically and the pointer last, so a kill at
any moment leaves the previous state complete and readable."""
import glob
import json
import os

from vargface.atomic import atomic_path
from vargface.errors import VargfaceError

STATE_VERSION = 1


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
        raise VargfaceError(f"{path} is not a readable MXNet params file: {error}") from None
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    return arg, aux


def save_embedding(prefix, number, emb_sym, arg_params, aux_params):
    """Write ``prefix-symbol.json`` and ``prefix-%04d.params`` holding only the embedding's arrays."""
    args, auxs = set(emb_sym.list_arguments()), set(emb_sym.list_auxiliary_states())
    with atomic_path(f"{prefix}-symbol.json") as tmp:
        emb_sym.save(tmp)
    _save_arrays(f"{prefix}-{number:04d}.params", {k: v for k, v in arg_params.items() if k in args},
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


def state_path(prefix):
    return f"{prefix}-state.json"


def save_state(prefix, info, arg_params, aux_params, module=None):
    """Write a training state; ``module`` (a bound mx.mod.Module with optimizer) supplies the optimizer state
    unless its updates run on a distributed server, which keeps that state itself."""
    step = int(info["num_update"])
    params_file, states_file = f"{prefix}-state-{step:08d}.params", f"{prefix}-state-{step:08d}.states"
    _save_arrays(params_file, arg_params, aux_params)
    info = dict(info, version=STATE_VERSION, params=os.path.basename(params_file), states=None)
    if module is not None and not (module._kvstore is not None and "dist" in module._kvstore.type):
        with atomic_path(states_file) as tmp:
            module.save_optimizer_states(tmp)
        info["states"] = os.path.basename(states_file)
    with atomic_path(state_path(prefix)) as tmp, open(tmp, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    keep = {info["params"], info["states"]}
    for old in glob.glob(glob.escape(prefix) + "-state-*.params") + glob.glob(glob.escape(prefix) + "-state-*.states"):
        if os.path.basename(old) not in keep:
            os.remove(old)


def load_state(prefix):
    """-> (info dict, arg_params, aux_params, optimizer-states path or None); clear errors for missing/bad files."""
    path = state_path(prefix)
    if not os.path.isfile(path):
        raise VargfaceError(f"--resume: no training state {path} (start without --resume, or point --prefix / "
                            f"--models-root at the run to continue)")
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as error:
        raise VargfaceError(f"--resume: {path} is not a readable training state: {error}") from None
    if info.get("version") != STATE_VERSION:
        raise VargfaceError(f"--resume: {path} has state version {info.get('version')}, expected {STATE_VERSION}")
    directory = os.path.dirname(os.path.abspath(path))
    params = os.path.join(directory, info["params"])
    if not os.path.isfile(params):
        raise VargfaceError(f"--resume: {path} names {params}, which does not exist")
    arg, aux = _load_arrays(params)
    states = os.path.join(directory, info["states"]) if info.get("states") else None
    if states and not os.path.isfile(states):
        raise VargfaceError(f"--resume: {path} names optimizer state {states}, which does not exist")
    return info, arg, aux, states


def check_compatible(info, arg_params, aux_params, train_sym, data_shapes, config, source):
    """Refuse a state/checkpoint of another network before training starts: name what differs."""
    if info.get("network") not in (None, config.network) or info.get("net_name") not in (None, config.net_name):
        raise VargfaceError(f"{source} was trained with network {info.get('network')!r}, but this run uses "
                            f"{config.network!r}; resume with the same --network or start a new run")
    try:
        arg_shapes, _, aux_shapes = train_sym.infer_shape(**dict(data_shapes))
    except Exception as error:
        raise VargfaceError(f"{source}: cannot infer the training graph's shapes: {error}") from None
    problems = []
    known = dict(data_shapes)
    for name, shape in zip(train_sym.list_arguments(), arg_shapes):
        if name in known:
            continue
        found = arg_params.get(name)
        if found is None:
            problems.append(f"missing '{name}'")
        elif tuple(found.shape) != tuple(shape):
            problems.append(f"'{name}' has shape {tuple(found.shape)}, this network needs {tuple(shape)}")
    for name, shape in zip(train_sym.list_auxiliary_states(), aux_shapes):
        found = aux_params.get(name)
        if found is None or tuple(found.shape) != tuple(shape):
            problems.append(f"aux '{name}' {'missing' if found is None else 'has shape ' + str(tuple(found.shape))}")
    if problems:
        raise VargfaceError(f"{source} does not belong to this network ({config.network}, {config.num_classes} "
                            f"classes): " + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))


def load_pretrained(spec, emb_sym, data_shape):
    """InsightFace's --pretrained 'prefix,epoch': the embedding's arrays only (no classifier, no optimizer)."""
    from vargface.symbols.checkpoint import check_params, load_checkpoint, parse_model_arg

    prefix, epoch = parse_model_arg(spec, "--pretrained")
    _, arg, aux = load_checkpoint(prefix, epoch)
    check_params(emb_sym, arg, aux, data_shape, source=f"--pretrained {spec}")
    return arg, aux
