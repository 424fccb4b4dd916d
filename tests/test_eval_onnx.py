"""ONNX export: parity with MXNet for every preset at full size, and proof that each exporter fix is needed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

PRESETS = ["vargfacenet", "vargfacenet_insightface", "r50", "r100", "y1", "y2",
           "pocketnet_s128", "pocketnet_s256", "pocketnet_m128", "pocketnet_m256"]


def calibrated_params(sym, tmp_path, size=112):
    """_calibrate in a child process with one engine worker thread: MXNet 1.9.1's MKL-DNN engine with two
    worker threads can fail a later, unrelated forward ("could not create a primitive descriptor for a reorder
    primitive") after a train-mode forward, which calibration needs."""
    import mxnet as mx

    sym.save(str(tmp_path / "calib-symbol.json"))
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import mxnet as mx; "
            f"from test_eval_onnx import _calibrate; s = mx.sym.load({str(tmp_path / 'calib-symbol.json')!r}); "
            f"a, x = _calibrate(s, size={size}); "
            f"mx.nd.save({str(tmp_path / 'calib.params')!r}, {{**{{'arg:' + k: v for k, v in a.items()}}, "
            f"**{{'aux:' + k: v for k, v in x.items()}}}})")
    env = dict(os.environ, MXNET_CPU_WORKER_NTHREADS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = mx.nd.load(str(tmp_path / "calib.params"))
    os.remove(tmp_path / "calib.params")
    os.remove(tmp_path / "calib-symbol.json")
    return ({k[4:]: v for k, v in saved.items() if k.startswith("arg:")},
            {k[4:]: v for k, v in saved.items() if k.startswith("aux:")})


def _calibrate(sym, seed=0, batch=2, size=112):
    """Seeded random weights with BatchNorm statistics that fit them (as in a trained net), then perturbed.

    Plain random weights make activations grow layer by layer, so any two float32 implementations drift apart;
    setting each BN's moving stats from one batch (momentum 0, train mode) keeps the net well conditioned.
    Gammas are random (not 1), so a fix_gamma BN exported with its stored gamma would be caught."""
    import mxnet as mx

    rng = np.random.RandomState(seed)
    shape = (batch, 3, size, size)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=shape)
    args = {}
    for name, s in zip(sym.list_arguments(), arg_shapes):
        if name == "data":
            continue
        if name.endswith("_weight") and len(s) > 1:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(s[1:])), s)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, s)
        else:
            value = rng.uniform(-0.1, 0.1, s)
        args[name] = mx.nd.array(value)
    aux = {n: (mx.nd.zeros if "mean" in n else mx.nd.ones)(s) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == "BatchNorm":
            node.setdefault("attrs", {})["momentum"] = "0"
    module = mx.mod.Module(mx.sym.load_json(json.dumps(graph)), label_names=None, context=mx.cpu())
    module.bind([("data", shape)], for_training=False)
    module.set_params(args, aux)
    module.forward(mx.io.DataBatch([mx.nd.array(rng.uniform(0, 255, shape))]), is_train=True)
    _, aux = module.get_params()
    aux = {n: v * mx.nd.array(rng.uniform(0.8, 1.25, v.shape)) if n.endswith("var")
           else v + mx.nd.array(rng.normal(0, 0.05, v.shape)) for n, v in aux.items()}
    return args, aux


@pytest.mark.parametrize("preset", PRESETS)
def test_onnx_parity_full_size(preset, tmp_path):
    from vargface.eval.export import export_onnx, fixed_gamma_names
    from vargface.symbols import get_symbol

    sym = get_symbol(preset)
    args, aux = calibrated_params(sym, tmp_path)
    out = tmp_path / f"{preset}.onnx"
    result = export_onnx(sym, args, aux, out)
    assert result["relative_error"] <= 1e-4
    prelus = [n for n in json.loads(sym.tojson())["nodes"]
              if n["op"] == "LeakyReLU" and n.get("attrs", {}).get("act_type") == "prelu"]
    assert result["prelu_slopes_fixed"] == len(prelus) > 0
    assert result["fixed_gammas"] == len(fixed_gamma_names(sym))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def tiny_graph(tmp_path):
    """PReLU on NCHW, a fix_gamma BatchNorm, and a FullyConnected on a 4-D input: the three exporter faults."""
    import mxnet as mx

    data = mx.sym.Variable("data")
    x = mx.sym.Convolution((data - 127.5) * 0.0078125, num_filter=8, kernel=(3, 3), pad=(1, 1), no_bias=True,
                           name="conv")
    x = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="bn")
    x = mx.sym.LeakyReLU(x, act_type="prelu", name="relu")
    x = mx.sym.FullyConnected(x, num_hidden=8, name="pre_fc1")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name="fc1")
    args, aux = calibrated_params(x, tmp_path, size=16)
    return x, args, aux


def test_each_exporter_fix_is_needed(tmp_path):
    from vargface.eval.export import (explicit_flatten, export_onnx, fix_prelu_slopes, mxnet_forward,
                                      onnx_forward, prepare_params, relative_error)

    sym, args, aux = tiny_graph(tmp_path)
    data = np.random.RandomState(1).uniform(0, 255, (1, 3, 16, 16)).astype(np.float32)
    expected = mxnet_forward(sym, args, aux, data)
    assert export_onnx(sym, args, aux, tmp_path / "fixed.onnx", input_size=16)["relative_error"] <= 1e-4

    import onnx
    from mxnet import onnx as mx_onnx

    def run(graph, params, fix_slopes):
        path = str(tmp_path / "variant.onnx")
        mx_onnx.export_model(graph, params, in_shapes=[data.shape], in_types=[np.float32], onnx_file_path=path)
        if fix_slopes:
            model = onnx.load(path)
            fix_prelu_slopes(model)
            onnx.save(model, path)
        try:
            return relative_error(expected, onnx_forward(path, data))
        except Exception:  # onnxruntime rejects the graph
            return np.inf

    full = prepare_params(sym, args, aux)
    raw = {**args, **aux}
    assert run(explicit_flatten(sym), full, True) <= 1e-4
    assert run(sym, full, True) > 1e-2  # FullyConnected read as flatten=False
    assert run(explicit_flatten(sym), raw, True) > 1e-2  # stored gamma used despite fix_gamma=True
    assert run(explicit_flatten(sym), full, False) > 1e-2  # (C,) slopes broadcast over width
    assert not np.allclose(raw["bn_gamma"].asnumpy(), 1) and np.allclose(full["bn_gamma"].asnumpy(), 1)
    assert np.allclose(args["bn_gamma"].asnumpy(), raw["bn_gamma"].asnumpy())  # caller's arrays untouched
