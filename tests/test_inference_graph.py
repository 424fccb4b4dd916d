"""The inference graph (vargface.symbols.inference) that every inference path runs computes what the faithful graph
computes: every preset at full size, seeded weights with real BatchNorm statistics, the embedding and every tap
in one cut; the runner never computes with stale weights; MobileFaceNet's outputs read on every pass; a trained
checkpoint verifies with the same accuracy as on the faithful graph."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from vargface.eval.runner import InferenceRunner, _without_subgraph_fusion
from vargface.symbols import get_symbol, presets
from vargface.symbols.checkpoint import input_size_of
from vargface.symbols.taps import tap_shapes
from vargface.train.checkpoint import random_params

TOLERANCE = 1e-5


def _ops(sym):
    """[(op, op of the node its first input comes from)] of every operator node."""
    nodes = json.loads(sym.tojson())["nodes"]
    return [(node["op"], nodes[node["inputs"][0][0]]["op"]) for node in nodes if node["op"] != "null"]


def realistic_params(sym, size, seed=0):
    """Seeded weights as a trained network has them: BatchNorm scales and shifts away from 1 and 0 (stored gammas
    of fix_gamma BatchNorms too, which MXNet ignores), PReLU slopes in [-0.1, 1] but one layer's above 1, and
    every BatchNorm's moving statistics measured on images (the batch statistics of a training-mode pass)."""
    arg, aux = random_params(sym, size, seed=seed)
    rng = np.random.RandomState(seed)
    nodes = json.loads(sym.tojson())["nodes"]
    prelus = []
    for node in nodes:
        inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
        if node["op"] == "BatchNorm":
            arg[inputs[1]] = mx.nd.array(rng.uniform(0.5, 1.5, arg[inputs[1]].shape))
            arg[inputs[2]] = mx.nd.array(rng.uniform(-0.3, 0.3, arg[inputs[2]].shape))
        elif node["op"] == "LeakyReLU" and node.get("attrs", {}).get("act_type") == "prelu":
            arg[inputs[1]] = mx.nd.array(rng.uniform(-0.1, 1.0, arg[inputs[1]].shape))
            prelus.append(inputs[1])
    if prelus:
        steep = arg[prelus[len(prelus) // 2]].asnumpy()
        steep[0] = 1.5
        arg[prelus[len(prelus) // 2]] = mx.nd.array(steep)
    batchnorms = [node for node in nodes if node["op"] == "BatchNorm"]
    internals = sym.get_internals()
    inputs = mx.sym.Group([internals[nodes[bn["inputs"][0][0]]["name"] + "_output"] for bn in batchnorms])
    images = rng.uniform(0, 255, (4, 3, size, size))
    with _without_subgraph_fusion():
        executor = inputs.bind(mx.cpu(), {"data": mx.nd.array(images), **arg}, aux_states=aux, grad_req="null")
    for bn, value in zip(batchnorms, executor.forward(is_train=True)):
        value = value.asnumpy()
        axes = (0,) + tuple(range(2, value.ndim))
        aux[nodes[bn["inputs"][3][0]]["name"]] = mx.nd.array(value.mean(axis=axes))
        aux[nodes[bn["inputs"][4][0]]["name"]] = mx.nd.array(value.var(axis=axes))
    return arg, aux


def faithful_outputs(sym, arg, aux, images):
    """Every output of the faithful graph in inference mode."""
    with _without_subgraph_fusion():
        executor = sym.bind(mx.cpu(), {"data": mx.nd.array(images), **arg},
                            aux_states={k: v.copy() for k, v in aux.items()}, grad_req="null")
    return [out.asnumpy() for out in executor.forward(is_train=False)]


def relative_error(got, expected):
    """|got - expected| / |expected| (Euclidean norms over the whole array). Two float32 evaluations of the same
    deep network in different op orders differ by a few 1e-6 (docs/inference.md#exactness)."""
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("preset", list(presets()))
def test_every_preset_computes_the_faithful_embedding_and_taps(preset):
    sym = get_symbol(preset)
    size = input_size_of(sym)
    arg, aux = realistic_params(sym, size)
    outputs = [name for name, _ in tap_shapes(sym, size).values()]
    images = np.random.RandomState(1).uniform(0, 255, (2, 3, size, size)).astype(np.float32)
    runner = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=2, output=outputs)
    expected = faithful_outputs(runner.symbol, arg, aux, images)
    got_all = runner.forward_outputs(images)
    assert len(got_all) == len(expected) == len(outputs)  # no tap lost on either side
    for name, got, want in zip(outputs, got_all, expected):
        assert got.shape == want.shape and relative_error(got, want) <= TOLERANCE, name

    # every BatchNorm after a layer is folded into it, and only the PReLU with a slope above 1 stays MXNet's
    ops = _ops(runner.graph.symbol)
    assert ("BatchNorm", "Convolution") in _ops(runner.symbol)
    assert not {("BatchNorm", "Convolution"), ("BatchNorm", "FullyConnected")} & set(ops)
    assert [op for op, _ in ops].count("LeakyReLU") == 1


def _tiny(seed):
    sym = get_symbol("vargfacenet_tiny")
    return sym, *realistic_params(sym, input_size_of(sym), seed=seed)


def test_new_weights_are_always_the_ones_computed_with():
    sym, arg, aux = _tiny(0)
    size = input_size_of(sym)
    images = np.random.RandomState(2).uniform(0, 255, (3, 3, size, size)).astype(np.float32)
    runner = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=4)
    first = runner.forward(images)
    _, arg2, aux2 = _tiny(1)
    # the same graph (the same layers keep MXNet's PReLU) with other arrays
    runner.set_params(arg2, aux2)
    assert runner.graph.fits(arg2)
    fresh = InferenceRunner(sym, arg2, aux2, ctx="cpu", batch_size=4).forward(images)
    np.testing.assert_array_equal(runner.forward(images), fresh)
    assert relative_error(fresh, faithful_outputs(sym, arg2, aux2, images)[0]) <= TOLERANCE
    assert not np.allclose(fresh, first)
    # slopes that need another graph: every slope above 1 (MXNet's PReLU everywhere), then back
    steep = {k: (v + 1.5 if k in runner.graph.prelus.values() else v) for k, v in arg2.items()}
    runner.set_params(steep, aux2)
    assert not runner.graph.prelus
    np.testing.assert_array_equal(runner.forward(images),
                                  InferenceRunner(sym, steep, aux2, ctx="cpu", batch_size=4).forward(images))
    runner.set_params(arg, aux)
    np.testing.assert_array_equal(runner.forward(images), first)
    # get_params returns the faithful arrays last given
    assert np.array_equal(runner.get_params()[1]["fc1_moving_var"].asnumpy(), aux["fc1_moving_var"].asnumpy())


@pytest.mark.parametrize("preset", ["y1", "y2"])
def test_mobilefacenet_outputs_read_on_every_pass(preset):
    # With MXNet's own fusion, reading y1/y2's output after a second pass failed ("We can't generate TBlob for
    # MKLDNN data").
    sym = get_symbol(preset)
    arg, aux = random_params(sym, 112)
    images = np.random.RandomState(3).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32)
    runner = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=2)
    passes = [runner.forward(images) for _ in range(3)]
    assert np.isfinite(passes[0]).all() and np.abs(passes[0]).max() > 0
    for later in passes[1:]:
        np.testing.assert_array_equal(later, passes[0])


def test_trained_checkpoint_verifies_as_on_the_faithful_graph(tmp_path, run_cli):
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin
    from vargface.eval.runner import flip_sum_embeddings
    from vargface.eval.verification import evaluate, load_pairs
    from vargface.symbols.checkpoint import load_checkpoint
    from vargface.train.config import generate_config
    from vargface.train.trainer import embedding_symbol, fit

    data = tmp_path / "data"
    make_synthetic_rec(str(data), 8, 6, size=32, seed=4, workers=1, progress=False)
    make_synthetic_bin(str(data / "val.bin"), 8, 40, size=32, seed=4, per_identity=3, workers=1)
    config = generate_config("r18_tiny", str(data), "arcface", ctx="cpu", per_batch_size=8, max_steps=60,
                             lr=0.05, verbose=1000, prefix=str(tmp_path / "m" / "model"), seed=0)
    result = fit(config, log=lambda line: None)
    prefix, epoch = result["prefix"], result["epoch"]

    done = run_cli("verify", "--model", f"{prefix},{epoch}", "--target", data / "val.bin", "--json")
    assert done.returncode == 0, done.stderr
    accuracy = json.loads(done.stdout)["val"]["accuracy"]

    sym, arg, aux = load_checkpoint(prefix, epoch)
    # trained on the fast graph (the CPU default), saved as the faithful one: its ops, PReLUs included, and arrays
    assert config.train_graph == "auto" and ("LeakyReLU", "BatchNorm") in _ops(sym)
    assert _ops(sym) == _ops(embedding_symbol(config)) and sym.list_arguments() == embedding_symbol(
        config).list_arguments()
    images, issame = load_pairs(str(data / "val.bin"), input_size_of(sym))
    faithful = flip_sum_embeddings(images, lambda batch: faithful_outputs(sym, arg, aux, batch)[0], 64,
                                   dtype=np.float64)
    runner = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=64)
    assert relative_error(runner.embed_prepared(images, dtype=np.float64), faithful) <= TOLERANCE
    reference = evaluate(faithful, issame)["accuracy"]
    assert accuracy == reference and 0.5 < reference  # trained: better than chance, and unchanged
    assert os.path.exists(f"{prefix}-symbol.json")


@pytest.mark.parametrize("preset", list(presets()))
def test_one_image_at_a_time(preset):
    # the faithful VarGFaceNet crashed MXNet at a batch of one; a service embeds one face at a time
    sym = get_symbol(preset)
    size = input_size_of(sym)
    arg, aux = random_params(sym, size)
    images = np.random.RandomState(4).uniform(0, 255, (2, 3, size, size)).astype(np.float32)
    batched = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=2).forward(images)
    single = InferenceRunner(sym, arg, aux, ctx="cpu", batch_size=1)
    assert single.batch_size == 1
    for _ in range(2):
        for image, expected in zip(images, batched):
            assert relative_error(single.forward(image[None])[0], expected) <= TOLERANCE
