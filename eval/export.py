"""ONNX export with the three faults of mx.onnx.export_model fixed, and a parity check against MXNet.

Faults (MXNet 1.9.1): BatchNorm ``fix_gamma=True`` is ignored, so the stored gammas (whatever they are) would be
used; they are set to 1 before export, as MXNet computes. PReLU slopes are exported as (C,), which onnxruntime
broadcasts against the last (width) axis of NCHW; they are reshaped to (C, 1, 1) in the ONNX graph.
And the exporter reads a FullyConnected without a ``flatten`` attribute as flatten=False (MXNet's default is
True) and then mis-shapes 4-D inputs such as ``pre_fc1``'s; the attribute is written out before export.
"""
import json

import numpy as np

from vargface.errors import VargfaceError

TOLERANCE = 1e-4


def _is_true(value):
    return str(value).lower() in ("true", "1")


def fixed_gamma_names(sym):
    """Names of the gamma inputs of BatchNorm nodes whose gamma MXNet holds at 1 (fix_gamma defaults to True)."""
    graph = json.loads(sym.tojson())
    nodes, names = graph["nodes"], []
    for node in nodes:
        if node["op"] == "BatchNorm" and _is_true(node.get("attrs", {}).get("fix_gamma", "True")):
            names.append(nodes[node["inputs"][1][0]]["name"])
    return names


def explicit_flatten(sym):
    """The same graph with ``flatten`` written on every FullyConnected that relies on MXNet's default (True)."""
    import mxnet as mx

    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == "FullyConnected":
            node.setdefault("attrs", {}).setdefault("flatten", "True")
    return mx.sym.load_json(json.dumps(graph))


def prepare_params(sym, arg_params, aux_params):
    """One params dict for the exporter, with fixed gammas set to 1 (copies; the caller's arrays are untouched)."""
    import mxnet as mx

    params = {**arg_params, **aux_params}
    for name in fixed_gamma_names(sym):
        if name in params:
            params[name] = mx.nd.ones_like(params[name])
    return params


def fix_prelu_slopes(model):
    """Reshape every PRelu slope initializer of rank 1 to (C, 1, 1) so it broadcasts over channels of NCHW."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    declared = {info.name: info for info in list(model.graph.input) + list(model.graph.value_info)}
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "PRelu" and node.input[1] in initializers:
            init = initializers[node.input[1]]
            slope = numpy_helper.to_array(init)
            if slope.ndim == 1:
                init.CopyFrom(numpy_helper.from_array(slope.reshape(-1, 1, 1), init.name))
                if init.name in declared:  # the exporter also lists initializers as graph inputs, with shapes
                    dims = declared[init.name].type.tensor_type.shape.dim
                    for _ in range(2):
                        dims.add().dim_value = 1
                fixed += 1
    return fixed


def drop_initializer_inputs(model):
    """The exporter lists every weight as a graph input too; runtimes then treat weights as overridable inputs and
    skip constant folding. Keep only the real inputs (``data``)."""
    names = {init.name for init in model.graph.initializer}
    kept = [info for info in model.graph.input if info.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for info in kept:  # name the dynamic batch axis
        batch = info.type.tensor_type.shape.dim[0]
        if not batch.dim_value and not batch.dim_param:
            batch.dim_param = "N"


def mxnet_forward(sym, arg_params, aux_params, data):
    """fc1_output of ``sym`` on ``data`` with MXNet (inference mode, CPU), by the project's one inference runner."""
    from vargface.eval.runner import InferenceRunner

    runner = InferenceRunner(sym, arg_params, aux_params, ctx="cpu", batch_size=len(data), input_size=data.shape[2],
                             source="the exported model")
    return runner.forward(data)


def onnx_forward(path, data):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: data})[0]


def relative_error(reference, other):
    """max |reference - other| / max |reference|: the error relative to the embedding's scale."""
    scale = float(np.max(np.abs(reference)))
    return float(np.max(np.abs(reference - other))) / (scale if scale > 0 else 1.0)


def export_onnx(sym, arg_params, aux_params, out_path, input_size=112, batch_size=1, seed=0, tolerance=TOLERANCE):
    """Export ``sym`` (output fc1_output) to ONNX at ``out_path`` (atomic), with a dynamic batch axis, then run it
    in onnxruntime against MXNet on seeded random input in 0..255. Returns {'relative_error', 'tolerance', ...};
    raises VargfaceError (and writes nothing) when the error exceeds ``tolerance``."""
    import onnx
    from mxnet import onnx as mx_onnx

    from vargface.atomic import atomic_path

    shape = (batch_size, 3, input_size, input_size)
    params = prepare_params(sym, arg_params, aux_params)
    data = np.random.RandomState(seed).uniform(0, 255, shape).astype(np.float32)
    with atomic_path(out_path) as tmp:
        try:
            mx_onnx.export_model(explicit_flatten(sym), params, in_shapes=[shape], in_types=[np.float32],
                                 onnx_file_path=tmp, dynamic=True,
                                 dynamic_input_shapes=[(None, 3, input_size, input_size)])
        except Exception as error:  # the exporter raises bare errors for unsupported graphs
            raise VargfaceError(f"ONNX export of {out_path} failed: {type(error).__name__}: {error}") from None
        model = onnx.load(tmp)
        slopes = fix_prelu_slopes(model)
        drop_initializer_inputs(model)
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
        expected = mxnet_forward(sym, arg_params, aux_params, data)
        got = onnx_forward(tmp, data)
        if got.shape != expected.shape:
            raise VargfaceError(f"ONNX parity failed for {out_path}: output shape {got.shape}, MXNet {expected.shape}")
        error = relative_error(expected, got)
        if not error <= tolerance:
            raise VargfaceError(f"ONNX parity failed for {out_path}: max relative error {error:.3g} > {tolerance:g} "
                                "against MXNet on random input; nothing was written")
    return {"path": str(out_path), "relative_error": error, "tolerance": tolerance, "input_shape": list(shape),
            "prelu_slopes_fixed": slopes, "fixed_gammas": len(fixed_gamma_names(sym))}
