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
    plans. The loss is linear in the slopes, so a finite difference is exact and shows the rewrite right."""
    shape = (4, 8, 3, 3)
    net = mx.sym.LeakyReLU(mx.sym.Convolution(mx.sym.Variable("data"), num_filter=8, kernel=(1, 1), no_bias=True,
                                                  name="c1"), act_type="prelu", name="act")
    rng = np.random.RandomState(0)
    args = {"data": rng.normal(0, 1, shape), "c1_weight": rng.normal(0, 0.5, (8, 8, 1, 1)),
            "act_gamma": rng.uniform(0.2, 1.0, 8)}
    out_grad = rng.normal(0, 1, shape)

    def slope_gradient(sym):
        executor = _bound(sym, args, {})
        executor.forward(is_train=True)
        executor.backward(mx.nd.array(out_grad))
        return executor.grad_dict["act_gamma"].asnumpy()

    def loss(gamma):
        executor = _bound(net, dict(args, act_gamma=gamma), {})  # a training binding: no graph fusion
        return float((executor.forward(is_train=True)[0].asnumpy().astype(np.float64) * out_grad).sum())

    finite_difference = np.array([(loss(args["act_gamma"] + 0.5 * e) - loss(args["act_gamma"] - 0.5 * e))
                                  for e in np.eye(8)])
    np.testing.assert_allclose(slope_gradient(fast_graph(net, data_shape=shape)), finite_difference, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(slope_gradient(net), args["act_gamma"] * finite_difference, rtol=1e-4, atol=1e-4)


def test_model_trained_on_fast_graph_loads_and_verifies_as_faithful(tmp_path, capsys):
    """`vargface train` on CPU trains the fast graph by default; its checkpoint is the faithful graph, which
    `vargface verify` loads and evaluates."""
    from vargface.cli import main
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin
    from vargface.symbols.checkpoint import load_checkpoint
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    data = str(tmp_path / "data")
    make_synthetic_rec(data, 6, 4, size=56, seed=1, progress=False)
    pack = tmp_path / "val.bin"
    make_synthetic_bin(pack, identities=6, pairs=20, size=56, seed=3, per_identity=3, workers=1)
    config = generate_config("vargfacenet_tiny", data, "arcface", prefix=str(tmp_path / "m"), max_steps=2,
                             per_batch_size=4, val_targets="", ctx="cpu")
    assert config.train_graph == "auto"  # the default: the fast graph on CPU
    result = fit(config, log=lambda line: None)
    sym, arg, aux = load_checkpoint(result["prefix"], result["epoch"])
    faithful = get_symbol("vargfacenet", input_size=56, multiplier=0.25, emb_size=64)
    def ops(graph):
        return [(node["op"], node.get("attrs")) for node in json.loads(graph.tojson())["nodes"]]

    assert ops(sym) == ops(faithful) and sym.list_arguments() == faithful.list_arguments()
    assert set(arg) | set(aux) == set(faithful.list_arguments()[1:]) | set(faithful.list_auxiliary_states())
    with pytest.raises(SystemExit) as code:
        main(["verify", "--model", f"{result['prefix']},{result['epoch']}", "--target", str(pack)])
    assert code.value.code == 0
    assert "val" in capsys.readouterr().out


def test_train_graph_option_is_checked(tmp_path):
    from vargface.errors import VargfaceError
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    with pytest.raises(VargfaceError, match="--train-graph quick: expected one of auto, faithful, fast"):
        fit(generate_config("vargfacenet_tiny", str(tmp_path), "arcface", train_graph="quick", ctx="cpu"),
            log=lambda line: None)


def test_auto_trains_the_fast_graph_on_cpu_only():
    from vargface.train.trainer import training_embedding

    emb = get_symbol("vargfacenet_tiny")

    def prelus(sym):
        return sum(node["op"] == "LeakyReLU" for node in json.loads(sym.tojson())["nodes"])

    assert prelus(emb) > 0
    assert prelus(training_embedding(emb, "auto", [mx.cpu(0), mx.cpu(1)])) == 0
    assert training_embedding(emb, "auto", [mx.gpu(0)]) is emb  # GPUs train the network's own ops
    assert training_embedding(emb, "faithful", [mx.cpu()]) is emb
    assert prelus(training_embedding(emb, "fast", [mx.gpu(0)])) == 0
