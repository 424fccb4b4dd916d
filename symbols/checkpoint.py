"""Loading embedding checkpoints (`prefix-symbol.json` + `prefix-%04d.params`) with errors that name the array.

Training checkpoints hold the whole training graph (embedding + margin loss); InsightFace users cut it at
`fc1_output`. `load_checkpoint` does that cut, keeps only the arrays the embedding uses, and checks every
array's presence and shape against the stored graph at its own input size, and that every value is finite."""
import json
import os

from vargface.errors import VargfaceError, last_line, summarize
from vargface.symbols.common import DEFAULT_INPUT_SIZE, INPUT_SIZE_ATTR

OUTPUT = "fc1_output"


def parse_model_arg(text, option="--model"):
    """'prefix,epoch' -> (prefix, int epoch); the prefix may itself contain commas."""
    prefix, sep, epoch = str(text).rpartition(",")
    if not sep or not prefix or not epoch.strip().isdigit():
        raise VargfaceError(f"{option} {text!r}: expected 'prefix,epoch', e.g. 'models/vargfacenet,1'")
    return prefix, int(epoch)


def checkpoint_files(prefix, epoch):
    return f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"


def checkpoint_checksum(prefix, epoch):
    """Fingerprint of a checkpoint: its graph and its weights (`vargface.fingerprint.file_checksum`)."""
    from vargface.fingerprint import file_checksum

    return "+".join(file_checksum(p) for p in checkpoint_files(prefix, epoch))


def _require(path, prefix, epoch):
    if not os.path.isfile(path):
        raise VargfaceError(f"checkpoint file {path} does not exist (model {prefix},{epoch})")


def _read(loader, path, kind, prefix, epoch):
    """Load one checkpoint file, turning MXNet's C++ stack dump into a one-line error that names the file."""
    _require(path, prefix, epoch)
    try:
        return loader(path)
    except Exception as error:
        raise VargfaceError(f"checkpoint {path} is not a readable MXNet {kind} file: {last_line(error)}") \
            from None


def load_symbol(prefix, epoch):
    """The embedding graph (`fc1_output`) stored at prefix/epoch, without its params: enough to count FLOPs."""
    import mxnet as mx

    symbol_file = checkpoint_files(prefix, epoch)[0]
    full = _read(mx.sym.load, symbol_file, "symbol", prefix, epoch)
    return embedding_output(full, symbol_file)


def load_checkpoint(prefix, epoch):
    """Return (sym, arg_params, aux_params) of the embedding stored at prefix/epoch.

    sym has the single output `fc1_output`; the params hold exactly the embedding's arrays; a missing or
    wrong-shaped array raises VargfaceError naming it."""
    import mxnet as mx

    sym = load_symbol(prefix, epoch)
    params_file = checkpoint_files(prefix, epoch)[1]
    saved = _read(mx.nd.load, params_file, "params", prefix, epoch)
    if not isinstance(saved, dict):
        raise VargfaceError(f"checkpoint {params_file} holds unnamed arrays; expected 'arg:NAME'/'aux:NAME' keys")
    arg_params, aux_params = {}, {}
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if kind == "arg":
            arg_params[name] = value
        elif kind == "aux":
            aux_params[name] = value
    used_args, used_aux = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    arg_params = {k: v for k, v in arg_params.items() if k in used_args}
    aux_params = {k: v for k, v in aux_params.items() if k in used_aux}
    size = input_size_of(sym)
    check_params(sym, arg_params, aux_params, (1, 3, size, size), source=params_file)
    check_finite({**arg_params, **aux_params}, params_file)
    return sym, arg_params, aux_params


def check_finite(arrays, source):
    """Refuse arrays holding NaN or inf (weights of a diverged run), naming the first such array: every output
    computed from them would be NaN, with nothing to say why."""
    import numpy as np

    for name, value in arrays.items():
        values = value.asnumpy()
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise VargfaceError(f"{source}: array '{name}' holds {bad} NaN or infinite value(s) of {values.size}; "
                                f"these weights cannot be used (the run had diverged when they were saved)")


def embedding_output(sym, source="symbol"):
    """The `fc1_output` part of a graph (the graph itself when that is its only output)."""
    if sym.list_outputs() == [OUTPUT]:
        return sym
    internals = sym.get_internals()
    if OUTPUT not in internals.list_outputs():
        raise VargfaceError(
            f"{source} has no '{OUTPUT}' node (outputs: {', '.join(sym.list_outputs())}); expected an "
            f"embedding graph whose last layer is the BatchNorm 'fc1'"
        )
    return internals[OUTPUT]


def input_size_of(sym):
    """Input side the stored graph was built for (the attribute on its `data` Variable), 112 when absent."""
    for node in json.loads(sym.tojson())["nodes"]:
        if node["op"] == "null" and node["name"] == "data":
            value = node.get("attrs", {}).get(INPUT_SIZE_ATTR)
            if value is not None and value.isdigit():
                return int(value)
    return DEFAULT_INPUT_SIZE


def check_params(sym, arg_params, aux_params, inputs, source="checkpoint", unexpected=False,
                 verdict="does not fit the network"):
    """The one check of a set of arrays against a graph (loading a checkpoint, --pretrained, --resume): every
    array ``sym`` needs at ``inputs`` (the data shape, or {input name: shape}) is present with the right shape and,
    with ``unexpected``, no other array is there. All problems are listed at once, each by name."""
    inputs = dict(inputs) if isinstance(inputs, (dict, list)) else {"data": tuple(inputs)}
    try:
        arg_shapes, _, aux_shapes = sym.infer_shape(**inputs)
    except Exception as error:
        raise VargfaceError(f"{source}: the graph cannot take inputs {inputs}: {last_line(error)}") from None
    problems = []
    for kind, names, shapes, given in (("arg", sym.list_arguments(), arg_shapes, arg_params),
                                       ("aux", sym.list_auxiliary_states(), aux_shapes, aux_params)):
        wanted = {n: tuple(s) for n, s in zip(names, shapes) if n not in inputs and not n.endswith("label")}
        for name, shape in wanted.items():
            found = given.get(name)
            if found is None:
                problems.append(f"missing array '{name}' (expected shape {shape})")
            elif tuple(found.shape) != shape:
                problems.append(f"array '{name}' has shape {tuple(found.shape)}, expected {shape}")
        if unexpected:
            problems += [f"unexpected array '{name}'" for name in sorted(set(given) - set(wanted))]
    if problems:
        raise VargfaceError(f"{source} {verdict}: {summarize(problems)}")
