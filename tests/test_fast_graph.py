"""The fast training graph (vargface.symbols.fast) has the faithful graph's arrays and computes the same outputs
and gradients, for every preset; a model trained on it loads and verifies as a faithful checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from vargface.symbols import get_symbol
from vargface.symbols.fast import fast_graph
from vargface.symbols.taps import tap_outputs

SIZE = 32
SHAPES = {"data": (8, 3, SIZE, SIZE)}
# Every preset at reduced width (and depth where the preset allows) to stay fast; dropout off so that both graphs
# see the same function in training mode.
PRESETS = {
    "vargfacenet": dict(multiplier=0.25, last_channels=64),
    "vargfacenet_insightface": dict(multiplier=0.25, last_channels=64),
    "r50": dict(multiplier=0.125, dropout=0.0),
    "r100": dict(multiplier=0.125, dropout=0.0),
    "y1": dict(multiplier=0.25),
    "y2": dict(multiplier=0.25),
    "pocketnet_s128": dict(channels=8, layers=5),
    "pocketnet_s256": dict(channels=8, layers=5),
    "pocketnet_m128": dict(channels=8, layers=4),
    "pocketnet_m256": dict(channels=8, layers=4),
    "vargfacenet_tiny": dict(last_channels=64),
    "r18_tiny": dict(dropout=0.0),
}


def test_every_registered_preset_is_checked():
    from vargface.symbols import presets

    assert set(PRESETS) == set(presets())


def _relative(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _seeded_arrays(sym, shapes):
    rng = np.random.RandomState(0)
    arg_shapes, _, aux_shapes = sym.infer_shape(**shapes)
    args = {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == "data":
            args[name] = rng.uniform(0, 255, shape)
        elif name.endswith("_gamma"):  # BatchNorm scales and PReLU slopes
            args[name] = rng.uniform(0.1, 1.0, shape)
        elif len(shape) > 1:  # He-scaled weights keep activations of order 1 through the depth
            args[name] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            args[name] = rng.normal(0, 0.1, shape)
    aux = {name: (np.ones(shape) if name.endswith("var") else np.zeros(shape))
           for name, shape in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, aux


def _train_step(sym, args, aux, out_grad):
    executor = sym.simple_bind(mx.cpu(), grad_req="write", data=args["data"].shape)
    for name, value in args.items():
        executor.arg_dict[name][:] = value
    for name, value in aux.items():
        executor.aux_dict[name][:] = value
    output = executor.forward(is_train=True)[0].asnumpy()
    executor.backward(mx.nd.array(out_grad))
    grads = {name: g.asnumpy() for name, g in executor.grad_dict.items()}
    return output, grads, {name: a.asnumpy() for name, a in executor.aux_dict.items()}


def test_prelu_rewrite_matches_formula():
    """PReLU forward and both gradients of the rewrite against NumPy, on 4-d and 2-d inputs, across zero."""
    rng = np.random.RandomState(0)
    for shape in [(4, 6, 3, 3), (5, 6)]:
        x = mx.sym.Variable("data")
        net = mx.sym.LeakyReLU(x, act_type="prelu", name="act")
        fast = fast_graph(net, data_shape=shape)
        assert fast.list_arguments() == ["data", "act_gamma"]
        data = rng.normal(0, 1, shape).astype(np.float32)
        data.flat[:3] = 0.0
        gamma = rng.uniform(-0.5, 1.0, shape[1]).astype(np.float32)
        out_grad = rng.normal(0, 1, shape).astype(np.float32)
        executor = fast.simple_bind(mx.cpu(), data=shape)
        executor.arg_dict["data"][:] = data
        executor.arg_dict["act_gamma"][:] = gamma
        output = executor.forward(is_train=True)[0].asnumpy()
        executor.backward(mx.nd.array(out_grad))
        slope = gamma.reshape((1, -1) + (1,) * (len(shape) - 2))
        np.testing.assert_allclose(output, np.where(data > 0, data, slope * data), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(executor.grad_dict["data"].asnumpy(),
                                   out_grad * np.where(data > 0, 1.0, slope), rtol=1e-6, atol=1e-7)
        axes = (0,) + tuple(range(2, len(shape)))
        np.testing.assert_allclose(executor.grad_dict["act_gamma"].asnumpy(),
                                   (out_grad * np.minimum(data, 0)).sum(axis=axes), rtol=1e-5, atol=1e-6)


def _differences(preset):
    """Relative differences of the fast graph from the faithful one after a seeded training-mode step: output,
    moving statistics (the largest), gradients of all arrays but the PReLU slopes, and the slopes' gradients
    against sum(dy * min(x, 0)) from the faithful graph's own x and dy (not MXNet's PReLU slope gradient, which in
    some graphs comes out multiplied by the slope: see test_mxnet_prelu_slope_gradient_defect)."""
    faithful = get_symbol(preset, input_size=SIZE, **PRESETS[preset])
    args, aux = _seeded_arrays(faithful, SHAPES)
    out_grad = np.random.RandomState(1).normal(0, 1, faithful.infer_shape(**SHAPES)[1][0])
    expected = _train_step(faithful, args, aux, out_grad)
    got = _train_step(fast_graph(faithful), args, aux, out_grad)
    slopes = _slope_gradients_by_formula(faithful, args, aux, out_grad)
    others = [name for name in faithful.list_arguments() if name not in slopes]
    # Gradients as one vector: some single arrays' gradients cancel to rounding (a beta feeding the next
    # BatchNorm), so they are no measure alone.
    return {"output": _relative(got[0], expected[0]),
            "moving_stats": max(_relative(got[2][n], expected[2][n]) for n in faithful.list_auxiliary_states()),
            "gradients": _relative(_concat(got[1], others), _concat(expected[1], others)),
            "slope_gradients": _relative(_concat(got[1], list(slopes)), _concat(slopes, list(slopes)))}


@pytest.fixture(scope="module")
def differences():
    """_differences of every preset, computed in one OpenMP thread. With two, oneDNN splits its reductions
    otherwise, and in these small training-mode graphs (batch 8, 1x1 maps into BatchNorm) that rounding grows to
    ~1e-3 between two runs of the same graph, faithful or fast alike; one thread sums in one fixed order."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import test_fast_graph as t; "
            "print(json.dumps({p: t._differences(p) for p in t.PRESETS}))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_fast_graph_same_arrays(preset):
    faithful = get_symbol(preset, input_size=SIZE, **PRESETS[preset])
    fast = fast_graph(faithful)
    assert fast.list_arguments() == faithful.list_arguments()
    assert fast.list_auxiliary_states() == faithful.list_auxiliary_states()
    assert fast.list_outputs() == faithful.list_outputs()
    assert fast.infer_shape(**SHAPES) == faithful.infer_shape(**SHAPES)
    ops = {node["op"] for node in json.loads(fast.tojson())["nodes"]}
    assert "LeakyReLU" not in ops  # every preset uses PReLU, and every PReLU was rewritten
    assert tap_outputs(fast, SIZE) == tap_outputs(faithful, SIZE)  # distillation terms read the same maps


@pytest.mark.parametrize("preset", list(PRESETS))
def test_fast_graph_same_outputs_moving_stats_and_gradients(preset, differences):
    assert differences[preset] == pytest.approx(dict.fromkeys(differences[preset], 0.0), abs=1e-5)


def _prelus(sym):
    """(name, input's output name, slope array name) of every PReLU in ``sym``."""
    nodes = json.loads(sym.tojson())["nodes"]

    def output_name(i, index):
        node = nodes[i]
        return node["name"] if node["op"] == "null" else node["name"] + ("_output" if index == 0 else
                                                                         f"_output{index}")

    return [(node["name"], output_name(*node["inputs"][0][:2]), nodes[node["inputs"][1][0]]["name"])
            for node in nodes if node["op"] == "LeakyReLU" and node["attrs"].get("act_type") == "prelu"]


def _with_probes(sym, names):
    """``sym`` with a zero variable ``<name>_probe`` added to the output of each node in ``names``: the same
    function, and the probe's gradient is the gradient at that output."""
    graph = json.loads(sym.tojson())
    nodes, new_id = [], {}
    for old_id, node in enumerate(graph["nodes"]):
        nodes.append(dict(node, inputs=[[new_id[i], index, version] for i, index, version in node["inputs"]]))
        new_id[old_id] = len(nodes) - 1
        if node["name"] in names:
            nodes.append({"op": "null", "name": node["name"] + "_probe", "inputs": []})
            nodes.append({"op": "elemwise_add", "name": node["name"] + "_probed",
                          "inputs": [[new_id[old_id], 0, 0], [len(nodes) - 1, 0, 0]]})
            new_id[old_id] = len(nodes) - 1
    heads = [[new_id[i], index, version] for i, index, version in graph["heads"]]
    arg_nodes = [i for i, node in enumerate(nodes) if node["op"] == "null"]
    return mx.sym.load_json(json.dumps({"nodes": nodes, "arg_nodes": arg_nodes, "heads": heads,
                                        "attrs": graph["attrs"]}))


def _bound(sym, args, aux, grad_req="write", **shapes):
    executor = sym.simple_bind(mx.cpu(), grad_req=grad_req, data=args["data"].shape, **shapes)
    for name, value in args.items():
        if name in executor.arg_dict:
            executor.arg_dict[name][:] = value
    for name, value in aux.items():
        if name in executor.aux_dict:
            executor.aux_dict[name][:] = value
    return executor


def _slope_gradients_by_formula(sym, args, aux, out_grad):
    """Each PReLU slope's gradient as sum(dy * min(x, 0)) over every axis but the channel's, with the PReLU's input
    x and the gradient dy at its output both read from the faithful graph (dy through a probe)."""
    prelus = _prelus(sym)
    internals = sym.get_internals()
    shapes = dict(zip(internals.list_outputs(), internals.infer_shape(data=args["data"].shape)[1]))
    probed = _bound(_with_probes(sym, {name for name, _, _ in prelus}), args, aux,
                    **{name + "_probe": shapes[name + "_output"] for name, _, _ in prelus})
    probed.forward(is_train=True)
    probed.backward(mx.nd.array(out_grad))
    gradients = {}
    for name, x_name, slope in prelus:
        # One graph per input, ending there: MXNet's PReLU writes its output over its input in place. Bound for
        # training: an inference binding would fold BatchNorm into the convolution with the moving statistics.
        x = _bound(internals[x_name], args, aux).forward(is_train=True)[0].asnumpy()
        dy = probed.grad_dict[name + "_probe"].asnumpy()
        gradients[slope] = (dy * np.minimum(x, 0)).sum(axis=(0,) + tuple(range(2, x.ndim)))
    return gradients


def _concat(grads, names):
    return np.concatenate([grads[name].ravel() for name in names])


def test_mxnet_prelu_slope_gradient_defect():
    """Why the faithful graph is no reference for slope gradients: MXNet 1.9's PReLU writes its output over its
    input when the input is another op's output (here a convolution's), and then computes the slope gradient from
    that output: gamma * sum(dy * min(x, 0)). Whether a PReLU in a network is hit depends on the buffers the engine
    plans. The loss is linear in the slopes, so a finite difference is exact and shows the rewrite right (the check
    `--train-graph auto` runs on a GPU, and bench/gpu_check.py)."""
    from vargface.symbols.fast import prelu_slope_gradients

    backprop, finite_difference, gamma = prelu_slope_gradients(mx.cpu())
    np.testing.assert_allclose(backprop, gamma * finite_difference, rtol=1e-4, atol=1e-4)
    assert not np.allclose(backprop, finite_difference, rtol=1e-2)
    rewritten, rewritten_difference, _ = prelu_slope_gradients(mx.cpu(), rewritten=True)
    # the rewrite back-propagates the slope gradient of the faithful graph's own function (and computes it)
    np.testing.assert_allclose(rewritten, finite_difference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rewritten_difference, finite_difference, rtol=1e-4, atol=1e-4)
