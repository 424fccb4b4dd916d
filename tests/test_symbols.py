"""Networks: names and shapes against the reference manifests, op placement against docs/architectures.md, a NumPy
re-computation of VarGFaceNet's building blocks under seeded weights, input_size and option checking."""
import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.symbols import get_symbol
from vargface.symbols.checkpoint import input_size_of

TINY = dict(input_size=56, multiplier=0.25, emb_size=64)


REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
# Every preset that mirrors an original graph has a manifest of that graph's arrays.
FAITHFUL_PRESETS = sorted(p.stem[len("params_"):] for p in REFERENCE_DIR.glob("params_*.json"))


def reference(preset):
    """Array names and shapes of the original graph of ``preset`` (tests/reference/params_<preset>.json)."""
    with open(REFERENCE_DIR / f"params_{preset}.json") as f:
        return json.load(f)


def array_shapes(sym, data_shape):
    args, outs, aux = sym.infer_shape(data=data_shape)
    shapes = {n: list(s) for n, s in zip(sym.list_arguments(), args) if n != "data"}
    shapes.update({n: list(s) for n, s in zip(sym.list_auxiliary_states(), aux)})
    return shapes, outs


@pytest.mark.parametrize("preset", FAITHFUL_PRESETS)
def test_names_and_shapes_equal_reference(preset):
    ref = reference(preset)
    sym = get_symbol(preset)
    shapes, outs = array_shapes(sym, tuple(ref["input_shape"]))
    expected = {a["name"]: a["shape"] for a in ref["arrays"]}
    assert sorted(shapes) == sorted(expected)
    wrong = {n: (shapes[n], expected[n]) for n in expected if shapes[n] != expected[n]}
    assert not wrong
    assert sym.list_outputs() == ["fc1_output"]
    assert [list(o) for o in outs] == [ref["output_shape"]]


def test_insightface_preset_is_the_option_set():
    a = get_symbol("vargfacenet_insightface")
    b = get_symbol("vargfacenet", use_se=False, fc1_fix_gamma=True)
    assert a.list_arguments() == b.list_arguments()
    # Same ops, attributes and wiring (unnamed scalar ops get fresh automatic names, so names are not compared).
    structure = [[(n["op"], n.get("attrs"), n["inputs"]) for n in json.loads(s.tojson())["nodes"]] for s in (a, b)]
    assert structure[0] == structure[1]
    fc1 = [n for n in json.loads(a.tojson())["nodes"] if n["name"] == "fc1"][0]
    assert fc1["attrs"]["fix_gamma"] == "True"


def _graph(sym):
    nodes = json.loads(sym.tojson())["nodes"]
    by_name = {n["name"]: n for n in nodes}
    inputs = {n["name"]: [nodes[i[0]]["name"] for i in n["inputs"]] for n in nodes}
    return nodes, by_name, inputs


def test_vargfacenet_op_placement_follows_the_release():
    sym = get_symbol("vargfacenet")
    nodes, by_name, inputs = _graph(sym)
    ops = [n["op"] for n in nodes]
    assert ops.count("Convolution") == 102
    assert ops.count("BatchNorm") == 79
    assert sum(n["op"] == "LeakyReLU" and n["attrs"]["act_type"] == "prelu" for n in nodes) == 82
    se_blocks = sorted(n["name"][: -len("_se_conv1")] for n in nodes if n["name"].endswith("_se_conv1"))
    assert len(se_blocks) == 12 and "vargface_head_head_pooling" in se_blocks
    assert not any("unit_1_se" in b for b in se_blocks)  # no SE in down-sampling blocks

    # Input: data -> identity `id` -> (x - 127.5) * 0.0078125 -> head conv.
    assert inputs["id"] == ["data"] and by_name["id"]["op"] == "_copy"
    minus = [n for n in nodes if inputs[n["name"]] == ["id"]][0]
    assert minus["op"] == "_minus_scalar" and float(minus["attrs"]["scalar"]) == 127.5
    mul = [n for n in nodes if inputs[n["name"]] == [minus["name"]]][0]
    assert mul["op"] == "_mul_scalar" and float(mul["attrs"]["scalar"]) == 0.0078125
    assert inputs["vargface_head_conv1"][0] == mul["name"]

    # Every separable unit: grouped conv (8 in-channels per group) -> BN -> PReLU -> 1x1 conv -> BN [-> PReLU].
    units = [n["name"][: -len("_conv2d_depthwise")] for n in nodes if n["name"].endswith("_conv2d_depthwise")]
    assert len(units) == 37  # head 3 + down-sampling 3 x 4 + normal (2 + 6 + 3) x 2
    arg_shapes = dict(zip(sym.list_arguments(), sym.infer_shape(data=(1, 3, 112, 112))[0]))
    for u in units:
        assert arg_shapes[u + "_conv2d_depthwise_weight"][1] == 8
        assert inputs[u + "_conv2d_depthwise_bn"][0] == u + "_conv2d_depthwise"
        assert inputs[u + "_conv2d_depthwise_act"][0] == u + "_conv2d_depthwise_bn"
        assert inputs[u + "_conv2d_pointwise"][0] == u + "_conv2d_depthwise_act"
        assert inputs[u + "_conv2d_pointwise_bn"][0] == u + "_conv2d_pointwise"
        has_act = (u + "_conv2d_pointwise_act") in by_name
        assert has_act == u.endswith("_sep1_data")  # only a normal block's first unit activates its output

    # Normal blocks: (sep2 -> SE gate) + identity -> PReLU; down-sampling blocks: branch sum -> PReLU -> sep2.
    for block in se_blocks:
        add = inputs[block + "_out_data_act"][0]
        assert by_name[add]["op"] == "elemwise_add"
        gated = [i for i in inputs[add] if by_name[i]["op"] == "broadcast_mul"]
        assert len(gated) == 1 and inputs[gated[0]][0] == block + "_sep2_data_conv2d_pointwise_bn"
        assert by_name[inputs[gated[0]][1]]["attrs"]["act_type"] == "sigmoid"
    for stage in (2, 3, 4):
        b = f"vargface_stage_{stage}_unit_1"
        branch_sum = inputs[b + "_sep1_data_act"][0]
        assert sorted(inputs[branch_sum]) == sorted(
            [b + "_sep1_data_branch_conv2d_pointwise_bn", b + "_sep2_data_branch_conv2d_pointwise_bn"])
        assert inputs[b + "_sep2_data_conv2d_depthwise"][0] == b + "_sep1_data_act"
        assert sorted(inputs[inputs[b + "_out_data_act"][0]]) == sorted(
            [b + "_sep2_data_conv2d_pointwise_bn", b + "_shortcut_conv2d_pointwise_bn"])
        assert by_name[b + "_shortcut_conv2d_depthwise"]["attrs"]["stride"] == "(2, 2)"

    # Embedding: 1x1 + BN + PReLU, 7x7 group conv + BN (no act), 1x1 + BN + PReLU, FC, BN.
    chain = ["embed_convx", "embed_convx_bn", "embed_convx_act", "embed_convx_depthwise",
             "embed_convx_depthwise_bn", "embed_convx_pointwise", "embed_convx_pointwise_bn",
             "embed_convx_pointwise_act", "pre_fc1", "fc1"]
    for prev, cur in zip(chain, chain[1:]):
        assert inputs[cur][0] == prev
    assert by_name["embed_convx_depthwise"]["attrs"]["kernel"] == "(7, 7)"
    assert by_name["embed_convx_depthwise"]["attrs"]["num_group"] == "128"
    assert by_name["fc1"]["attrs"]["fix_gamma"] == "False"


# ---- NumPy re-computation of the building blocks (docs/architectures.md) under seeded weights ----------------

def np_conv(x, w, stride=1, pad=0, groups=1, bias=None):
    n, cin, h, wd = x.shape
    cout, cpg, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, cout, ho, wo), np.float64)
    opg = cout // groups
    for g in range(groups):
        xg, wg = x[:, g * cpg:(g + 1) * cpg], w[g * opg:(g + 1) * opg]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
                out[:, g * opg:(g + 1) * opg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out if bias is None else out + bias[None, :, None, None]


class NumpyVarG:
    """Independent reading of docs/architectures.md#vargfacenet-as-released in NumPy, fed with the MXNet
    model's arrays."""

    def __init__(self, p, eps=2e-5):
        self.p, self.eps = p, eps

    def bn(self, x, name, fix_gamma=False, eps=None):
        p = self.p
        gamma = 1.0 if fix_gamma else p[name + "_gamma"]
        scale = gamma / np.sqrt(p[name + "_moving_var"] + (self.eps if eps is None else eps))
        return (x - p[name + "_moving_mean"][None, :, None, None]) * np.reshape(scale, (1, -1, 1, 1)) + \
            p[name + "_beta"][None, :, None, None]

    def prelu(self, x, name):
        a = self.p[name + "_gamma"].reshape((1, -1) + (1,) * (x.ndim - 2))
        return np.where(x > 0, x, a * x)

    def sep(self, x, name, stride, pw_act):
        w = self.p[name + "_conv2d_depthwise_weight"]
        y = np_conv(x, w, stride, 1, groups=x.shape[1] // 8)
        y = self.prelu(self.bn(y, name + "_conv2d_depthwise_bn"), name + "_conv2d_depthwise_act")
        y = self.bn(np_conv(y, self.p[name + "_conv2d_pointwise_weight"]), name + "_conv2d_pointwise_bn")
        return self.prelu(y, name + "_conv2d_pointwise_act") if pw_act else y

    def se(self, x, name):
        s = x.mean(axis=(2, 3), keepdims=True)
        s = self.prelu(np_conv(s, self.p[name + "_se_conv1_weight"], bias=self.p[name + "_se_conv1_bias"]),
                       name + "_se_act1")
        s = np_conv(s, self.p[name + "_se_conv2_weight"], bias=self.p[name + "_se_conv2_bias"])
        return x / (1 + np.exp(-s))

    def normal_block(self, x, name):
        y = self.sep(self.sep(x, name + "_sep1_data", 1, True), name + "_sep2_data", 1, False)
        return self.prelu(self.se(y, name) + x, name + "_out_data_act")

    def down_block(self, x, name):
        y = self.sep(x, name + "_sep1_data_branch", 2, False) + self.sep(x, name + "_sep2_data_branch", 2, False)
        y = self.sep(self.prelu(y, name + "_sep1_data_act"), name + "_sep2_data", 1, False)
        return self.prelu(y + self.sep(x, name + "_shortcut", 2, False), name + "_out_data_act")

    def stem(self, data):
        x = (data - 127.5) * 0.0078125
        x = self.bn(np_conv(x, self.p["vargface_head_conv1_weight"], 1, 1), "vargface_head_conv1_bn")
        return self.prelu(x, "vargface_head_conv1_act")

    def embedding(self, x):
        p = self.p
        y = self.prelu(self.bn(np_conv(x, p["embed_convx_weight"]), "embed_convx_bn"), "embed_convx_act")
        y = self.bn(np_conv(y, p["embed_convx_depthwise_weight"], groups=y.shape[1] // 8), "embed_convx_depthwise_bn")
        y = self.prelu(self.bn(np_conv(y, p["embed_convx_pointwise_weight"]), "embed_convx_pointwise_bn"),
                       "embed_convx_pointwise_act")
        y = y.reshape(len(y), -1) @ p["pre_fc1_weight"].T + p["pre_fc1_bias"]
        return self.bn(y[:, :, None, None], "fc1")[:, :, 0, 0]


def numpy_resnet(p, data, units):
    """docs/architectures.md#resnet-ir-teachers-r50-r100 fresnet (input L, IR units, output E) in NumPy."""
    f = NumpyVarG(p)
    x = f.prelu(f.bn(np_conv((data - 127.5) * 0.0078125, p["conv0_weight"], 1, 1), "bn0"), "relu0")
    for stage, n in enumerate(units, start=1):
        for unit in range(1, n + 1):
            u, stride = f"stage{stage}_unit{unit}", 2 if unit == 1 else 1
            y = f.prelu(f.bn(np_conv(f.bn(x, u + "_bn1"), p[u + "_conv1_weight"], 1, 1), u + "_bn2"), u + "_relu1")
            y = f.bn(np_conv(y, p[u + "_conv2_weight"], stride, 1), u + "_bn3")
            x = y + (f.bn(np_conv(x, p[u + "_conv1sc_weight"], stride), u + "_sc") if unit == 1 else x)
    x = f.bn(x, "bn1").reshape(len(x), -1) @ p["pre_fc1_weight"].T + p["pre_fc1_bias"]
    return f.bn(x[:, :, None, None], "fc1", fix_gamma=True)[:, :, 0, 0]


def numpy_mobilefacenet(p, data, blocks):
    """docs/architectures.md#mobilefacenet-y1-y2 fmobilefacenet with GDC output in NumPy (conv BNs use MXNet's
    default eps 1e-3)."""
    f = NumpyVarG(p, eps=1e-3)

    def conv(x, name, stride=1, pad=0, dw=False, linear=False):
        w = p[name + "_conv2d_weight"]
        y = f.bn(np_conv(x, w, stride, pad, groups=w.shape[0] if dw else 1), name + "_batchnorm")
        return y if linear else f.prelu(y, name + "_relu")

    def dres(x, name, stride):
        return conv(conv(conv(x, name + "_conv_sep"), name + "_conv_dw", stride, 1, dw=True), name + "_conv_proj",
                    linear=True)

    def res(x, name, n):
        for i in range(n):
            x = dres(x, f"{name}_block{i}", 1) + x
        return x

    x = conv((data - 127.5) * 0.0078125, "conv_1", 2, 1)
    x = conv(x, "conv_2_dw", 1, 1, dw=True) if blocks[0] == 1 else res(x, "res_2", blocks[0])
    x = res(dres(x, "dconv_23", 2), "res_3", blocks[1])
    x = res(dres(x, "dconv_34", 2), "res_4", blocks[2])
    x = res(dres(x, "dconv_45", 2), "res_5", blocks[3])
    x = conv(conv(x, "conv_6sep"), "conv_6dw7_7", dw=True, linear=True)
    x = x.reshape(len(x), -1) @ p["pre_fc1_weight"].T + p["pre_fc1_bias"]
    return f.bn(x[:, :, None, None], "fc1", fix_gamma=True, eps=2e-5)[:, :, 0, 0]


@pytest.mark.parametrize("preset,options,recompute", [
    ("r100", dict(num_layers=18, multiplier=0.125, input_size=32, emb_size=16),
     lambda p, x: numpy_resnet(p, x, (2, 2, 2, 2))),
    ("y1", dict(multiplier=0.25, input_size=32, emb_size=16), lambda p, x: numpy_mobilefacenet(p, x, (1, 4, 6, 2))),
    ("y2", dict(multiplier=0.125, input_size=32, emb_size=16, blocks=(2, 1, 1, 1)),
     lambda p, x: numpy_mobilefacenet(p, x, (2, 1, 1, 1))),
])
def test_numpy_recomputation_of_teachers_and_baselines(preset, options, recompute):
    sym = get_symbol(preset, **options)
    shape = (2, 3, 32, 32)
    params = seeded_arrays(sym, shape)
    data = np.random.RandomState(2).uniform(0, 255, shape).astype(np.float32)
    aux_names = set(sym.list_auxiliary_states())
    exe = sym.bind(mx.cpu(), args={k: mx.nd.array(v) for k, v in params.items() if k not in aux_names}
                   | {"data": mx.nd.array(data)},
                   aux_states={k: mx.nd.array(params[k]) for k in aux_names}, grad_req="null")
    got = exe.forward(is_train=False)[0].asnumpy()
    want = recompute({k: v.astype(np.float64) for k, v in params.items()}, data.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def seeded_arrays(sym, data_shape, seed=0):
    """Random weights with non-trivial BN statistics and PReLU slopes, so every array changes the output."""
    rng = np.random.RandomState(seed)
    args, _, aux = sym.infer_shape(data=data_shape)
    params = {}
    for name, shape in list(zip(sym.list_arguments(), args)) + list(zip(sym.list_auxiliary_states(), aux)):
        if name == "data":
            continue
        if name.endswith("_moving_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.1, 1.2, shape) if "act" in name else rng.uniform(0.5, 1.5, shape)
        elif name.endswith("_weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        params[name] = value.astype(np.float32)
    return params


def test_numpy_recomputation_of_blocks_under_seeded_weights():
    sym = get_symbol("vargfacenet", **TINY)
    shape = (2, 3, 56, 56)
    params = seeded_arrays(sym, shape)
    data = np.random.RandomState(1).uniform(0, 255, shape).astype(np.float32)
    internals = sym.get_internals()
    names = ["vargface_head_conv1_act_output", "vargface_head_head_pooling_out_data_act_output",
             "vargface_stage_3_unit_1_out_data_act_output", "vargface_stage_3_unit_2_out_data_act_output",
             "vargface_stage_3_unit_7_out_data_act_output", "vargface_stage_4_unit_1_out_data_act_output",
             "vargface_stage_4_unit_4_out_data_act_output", "fc1_output"]
    group = mx.sym.Group([internals[n] for n in names])
    aux_names = set(group.list_auxiliary_states())
    exe = group.bind(mx.cpu(), args={k: mx.nd.array(v) for k, v in params.items() if k not in aux_names}
                     | {"data": mx.nd.array(data)},
                     aux_states={k: mx.nd.array(params[k]) for k in group.list_auxiliary_states()}, grad_req="null")
    outs = dict(zip(names, (o.asnumpy().astype(np.float64) for o in exe.forward(is_train=False))))
    ref = NumpyVarG({k: v.astype(np.float64) for k, v in params.items()})

    def close(got, want):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    close(outs[names[0]], ref.stem(data.astype(np.float64)))
    # Head block: normal-style, stride 2, factor 1, separable shortcut, SE.
    x = outs[names[0]]
    y = ref.sep(ref.sep(x, "vargface_head_head_pooling_sep1_data", 2, True),
                "vargface_head_head_pooling_sep2_data", 1, False)
    y = ref.se(y, "vargface_head_head_pooling") + ref.sep(x, "vargface_head_head_pooling_shortcut", 2, False)
    close(outs[names[1]], ref.prelu(y, "vargface_head_head_pooling_out_data_act"))
    close(outs[names[3]], ref.normal_block(outs[names[2]], "vargface_stage_3_unit_2"))
    close(outs[names[5]], ref.down_block(outs[names[4]], "vargface_stage_4_unit_1"))
    close(outs[names[7]], ref.embedding(outs[names[6]]))


# ---- input_size ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,size,side", [("vargfacenet", 56, 4), ("vargfacenet", 112, 7),
                                              ("vargfacenet", 64, 4), ("y1", 56, 4), ("r50", 56, 4)])
def test_input_size_sets_last_kernel_and_is_recorded(preset, size, side):
    options = dict(input_size=size, multiplier=0.25) if preset != "r50" else dict(
        input_size=size, multiplier=0.25, num_layers=18)
    sym = get_symbol(preset, **options)
    assert input_size_of(sym) == size
    assert input_size_of(mx.sym.load_json(sym.tojson())) == size
    _, by_name, _ = _graph(sym)
    last = {"vargfacenet": "embed_convx_depthwise", "y1": "conv_6dw7_7_conv2d"}.get(preset)
    if last:
        assert by_name[last]["attrs"]["kernel"] == f"({side}, {side})"
    shapes, outs = array_shapes(sym, (1, 3, size, size))
    assert outs[0][0] == 1
    if preset == "r50":
        assert shapes["pre_fc1_weight"][1] == 128 * side * side


def test_input_size_absent_means_112():
    sym = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=4, name="fc1")
    assert input_size_of(sym) == 112


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_tiny_vargfacenet_forward_any_batch(batch):
    sym = get_symbol("vargfacenet", **TINY)
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind([("data", (batch, 3, 56, 56))], for_training=False)
    mod.init_params(mx.init.Xavier())
    mod.forward(mx.io.DataBatch([mx.nd.full((batch, 3, 56, 56), 128.0)]), is_train=False)
    out = mod.get_outputs()[0].asnumpy()
    assert out.shape == (batch, 64) and np.isfinite(out).all()


def test_tiny_resnet_and_mobilefacenet_train_step():
    """Gradients reach the weights: two SGD steps towards fixed targets lower the loss (dropout off, seeded)."""
    mx.random.seed(0)
    for preset, options in [("r100", dict(num_layers=18, multiplier=0.125, input_size=32, emb_size=16, dropout=0.0)),
                            ("y2", dict(multiplier=0.125, input_size=32, emb_size=16, blocks=[1, 1, 1, 1]))]:
        emb = get_symbol(preset, **options)
        sym = mx.sym.make_loss(mx.sym.sum(mx.sym.square(emb - mx.sym.Variable("target"))))
        mod = mx.mod.Module(sym, data_names=["data", "target"], label_names=None, context=mx.cpu())
        mod.bind([("data", (4, 3, 32, 32)), ("target", (4, 16))])
        mod.init_params(mx.init.Xavier())
        mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01})
        batch = mx.io.DataBatch([mx.nd.random.uniform(0, 255, (4, 3, 32, 32)), mx.nd.random.normal(0, 1, (4, 16))])
        losses = []
        for _ in range(3):
            mod.forward_backward(batch)
            losses.append(mod.get_outputs()[0].asscalar())
            mod.update()
        assert np.isfinite(losses).all() and losses[2] < losses[0], (preset, losses)


def test_full_size_vargfacenet_forward_batch_one():
    sym = get_symbol("vargfacenet")
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind([("data", (1, 3, 112, 112))], for_training=False)
    mod.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    mod.forward(mx.io.DataBatch([mx.nd.random.uniform(0, 255, (1, 3, 112, 112))]), is_train=False)
    assert mod.get_outputs()[0].shape == (1, 512)


# ---- option checking ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,options,words", [
    ("resnet", {}, ["resnet", "vargfacenet", "r100", "y2"]),
    ("vargfacenet", {"use_se": "yes"}, ["use_se", "bool"]),
    ("vargfacenet", {"multiplier": 0.3}, ["multiplier=0.3", "group_base=8", "0.25"]),
    ("vargfacenet", {"group_base": 16, "multiplier": 0.25}, ["multiplier", "group_base=16"]),
    ("vargfacenet", {"input_size": 50}, ["input_size=50", "multiples of 8"]),
    ("vargfacenet", {"input_size": 16}, ["input_size=16", "from 32"]),
    ("r50", {"input_size": 100}, ["input_size=100"]),
    ("vargfacenet", {"embsize": 128}, ["embsize", "emb_size"]),
    ("vargfacenet", {"act_type": "swish"}, ["act_type", "prelu"]),
    ("vargfacenet", {"emb_size": 0}, ["emb_size"]),
    ("vargfacenet", {"emb_size": 12.5}, ["emb_size", "integer"]),
    ("vargfacenet", {"bn_mom": 1.5}, ["bn_mom"]),
    ("r100", {"num_layers": 19}, ["num_layers=19", "18", "100"]),
    ("y1", {"blocks": [1, 2]}, ["blocks", "4 positive integers"]),
])
def test_bad_options_name_option_and_accepted_values(preset, options, words):
    with pytest.raises(VargfaceError) as info:
        get_symbol(preset, **options)
    for word in words:
        assert word in str(info.value)


def test_original_option_names_and_defaults():
    from vargface.symbols import vargfacenet

    for name, value in dict(multiplier=1.25, emb_size=512, use_se=True, se_ratio=4, group_base=8,
                            act_type="prelu", bn_mom=0.9, bn_eps=2e-5, workspace=512, factor=2,
                            head_pooling=False).items():
        assert vargfacenet.DEFAULTS[name] == value
    # Options take effect: no SE, max-pooling head, another se_ratio / emb_size / act.
    shapes, _ = array_shapes(get_symbol("vargfacenet", head_pooling=True, se_ratio=8, emb_size=128,
                                        act_type="relu"), (1, 3, 112, 112))
    assert not any(n.startswith("vargface_head_head_pooling") for n in shapes)
    assert shapes["vargface_stage_2_unit_2_se_conv1_weight"] == [10, 80, 1, 1]
    assert shapes["pre_fc1_weight"] == [128, 512]
    assert not any(n.endswith("act_gamma") for n in shapes)
    bn = [n for n in json.loads(get_symbol("vargfacenet", bn_mom=0.99, bn_eps=1e-3).tojson())["nodes"]
          if n["op"] == "BatchNorm"][0]
    assert float(bn["attrs"]["momentum"]) == 0.99 and float(bn["attrs"]["eps"]) == 1e-3
