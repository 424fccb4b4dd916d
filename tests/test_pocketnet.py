"""PocketNet: each op, cell and the tail re-derived in NumPy under seeded weights, the macro layout, the stride
taps, options, a tiny training run with gradient-norm clipping, and the emore recipe file."""
import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from test_symbols import NumpyVarG, array_shapes, np_conv, seeded_arrays
from vargface.errors import VargfaceError
from vargface.symbols import get_preset, get_symbol, presets
from vargface.symbols.pocketnet import reduction_cells, tap_cells
from vargface.symbols.taps import tap_outputs

POCKETNETS = [name for name in presets() if name.startswith("pocketnet_")]
# Five cells put reductions at 1, 3 and 4: a normal cell after the stem, a reduction cell, a normal cell whose
# c_{k-2} input goes through FactorizedReduce, and two reduction cells, at a size NumPy handles quickly.
TINY = dict(channels=4, layers=5, input_size=32, emb_size=16)


class NumpyPocket(NumpyVarG):
    """Independent reading of the release's ops, cells and tail in NumPy (BN eps 1e-5)."""

    def __init__(self, p):
        super().__init__(p, eps=1e-5)

    def dw(self, x, name, kernel, stride=1):
        y = self.prelu(x, name + "_net_0")
        y = np_conv(y, self.p[name + "_net_1_weight"], stride, (kernel - 1) // 2, groups=x.shape[1])
        return self.bn(np_conv(y, self.p[name + "_net_2_weight"]), name + "_net_3")

    def max_pool(self, x, name, stride):
        n, c, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        windows = [padded[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] for i in range(3) for j in range(3)]
        return self.bn(np.max(windows, axis=0), name + "_bn")

    def factorized_reduce(self, x, name):
        p = self.p
        y = self.prelu(x, name + "_relu")
        first = np_conv(np_conv(y, p[name + "_conv11_weight"], 2, groups=y.shape[1]), p[name + "_conv12_weight"])
        shifted = y[:, :, 1:, 1:]
        second = np_conv(np_conv(shifted, p[name + "_conv21_weight"], 2, groups=y.shape[1]),
                         p[name + "_conv22_weight"])
        return self.bn(np.concatenate([first, second], axis=1), name + "_bn")

    def normal_cell(self, s0, s1, name, reduction_p):
        s0 = self.factorized_reduce(s0, name + "_preproc0") if reduction_p else self.dw(s0, name + "_preproc0", 1)
        s1 = self.dw(s1, name + "_preproc1", 1)
        d = name + "_dag"
        n2 = self.dw(s0, d + "_0_0", 3) + self.dw(s1, d + "_0_1", 1)
        n3 = self.dw(n2, d + "_1_0", 3) + self.dw(s0, d + "_1_1", 5)
        n4 = self.dw(n3, d + "_2_0", 3) + self.dw(s0, d + "_2_1", 3)
        n5 = self.dw(n4, d + "_3_0", 3) + s0
        return np.concatenate([n2, n3, n4, n5], axis=1)

    def reduction_cell(self, s0, s1, name, reduction_p):
        s0 = self.factorized_reduce(s0, name + "_preproc0") if reduction_p else self.dw(s0, name + "_preproc0", 1)
        s1 = self.dw(s1, name + "_preproc1", 1)
        d = name + "_dag"
        n2 = self.dw(s1, d + "_0_0", 3, 2) + self.dw(s0, d + "_0_1", 7, 2)
        n3 = n2 + self.dw(s1, d + "_1_1", 5, 2)
        n4 = self.max_pool(s0, d + "_2_0", 2) + n2
        n5 = self.max_pool(s0, d + "_3_0", 2) + self.max_pool(s1, d + "_3_1", 2)
        return np.concatenate([n2, n3, n4, n5], axis=1)

    def stem(self, data):
        return self.bn(np_conv((data - 127.5) / 127.5, self.p["stem_0_weight"], 2, 1), "stem_1")

    def tail(self, x):
        p = self.p
        y = self.bn(np_conv(self.prelu(x, "tail_0"), p["tail_1_weight"]), "tail_2")
        y = self.prelu(y, "tail_3")
        y = self.bn(np_conv(y, p["tail_4_weight"], groups=y.shape[1]), "tail_5")
        y = np_conv(y, p["tail_6_weight"])
        return self.bn(y, "fc1")[:, :, 0, 0]


def forward_internals(sym, names, params, data):
    internals = sym.get_internals()
    group = mx.sym.Group([internals[n] for n in names])
    aux_names = set(group.list_auxiliary_states())
    exe = group.bind(mx.cpu(), args={k: mx.nd.array(v) for k, v in params.items() if k in group.list_arguments()}
                     | {"data": mx.nd.array(data)},
                     aux_states={k: mx.nd.array(params[k]) for k in group.list_auxiliary_states()}, grad_req="null")
    assert aux_names <= set(params)
    return dict(zip(names, (o.asnumpy().astype(np.float64) for o in exe.forward(is_train=False))))


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_numpy_recomputation_of_ops_cells_and_tail_under_seeded_weights(monkeypatch):
    # oneDNN fuses an op's last conv, its BN and the sum it feeds into one kernel that writes the sum into the
    # op's own output, so single ops are readable only with graph fusion off (cell outputs are unaffected).
    monkeypatch.setenv("MXNET_SUBGRAPH_BACKEND", "NONE")
    sym = get_symbol("pocketnet_s128", **TINY)
    shape = (2, 3, 32, 32)
    params = seeded_arrays(sym, shape)
    data = np.random.RandomState(1).uniform(0, 255, shape).astype(np.float32)
    names = ["stem_1_output", "features_stride2_output", "cells_1_concat_output", "features_stride4_output",
             "features_stride8_output", "features_stride16_output", "fc1_output",
             "cells_0_preproc0_net_3_output", "cells_0_dag_0_0_net_3_output", "cells_1_preproc0_net_3_output",
             "cells_1_dag_2_0_bn_output", "cells_2_preproc0_bn_output"]
    outs = forward_internals(sym, names, params, data)
    ref = NumpyPocket({k: v.astype(np.float64) for k, v in params.items()})

    stem = ref.stem(data.astype(np.float64))
    close(outs["stem_1_output"], stem)
    # dw_conv_3x3 at stride 1 (PReLU - depthwise - pointwise - BN), fed with the MXNet input of the op.
    close(outs["cells_0_dag_0_0_net_3_output"], ref.dw(outs["cells_0_preproc0_net_3_output"], "cells_0_dag_0_0", 3))
    # max_pool_3x3 at stride 2 on a 16x16 map (padding never wins the max) - BN.
    close(outs["cells_1_dag_2_0_bn_output"], ref.max_pool(outs["cells_1_preproc0_net_3_output"], "cells_1_dag_2_0", 2))
    # FactorizedReduce of c_{k-2} after a reduction cell: plain and one-pixel-shifted stride-2 paths.
    close(outs["cells_2_preproc0_bn_output"], ref.factorized_reduce(outs["features_stride2_output"],
                                                                    "cells_2_preproc0"))
    # Whole cells from their two inputs: normal after the stem, reduction, normal after a reduction, and the
    # reduction cells at the end (their s0 is a normal cell's output, so StdConv pre-processing).
    close(outs["features_stride2_output"], ref.normal_cell(stem, stem, "cells_0", False))
    close(outs["cells_1_concat_output"], ref.reduction_cell(stem, outs["features_stride2_output"], "cells_1", False))
    close(outs["features_stride4_output"],
          ref.normal_cell(outs["features_stride2_output"], outs["cells_1_concat_output"], "cells_2", True))
    close(outs["features_stride8_output"],
          ref.reduction_cell(outs["cells_1_concat_output"], outs["features_stride4_output"], "cells_3", False))
    close(outs["features_stride16_output"],
          ref.reduction_cell(outs["features_stride4_output"], outs["features_stride8_output"], "cells_4", True))
    close(outs["fc1_output"], ref.tail(outs["features_stride16_output"]))


@pytest.mark.parametrize("preset", POCKETNETS)
def test_taps_at_each_stride_and_reduction_layout(preset):
    layers, channels = (get_preset(preset).options[k] for k in ("layers", "channels"))
    assert reduction_cells(layers) == (layers // 3, 2 * layers // 3, layers - 1)
    sym = get_symbol(preset)
    internals = sym.get_internals()
    taps = [f"features_stride{s}_output" for s in (2, 4, 8, 16)]
    assert [tap_outputs(sym, 112)[f"stride{s}"] for s in (2, 4, 8, 16)] == taps
    _, out_shapes, _ = mx.sym.Group([internals[n] for n in taps]).infer_shape(data=(1, 3, 112, 112))
    widths = [4 * channels * 2 ** k for k in range(4)]
    assert [tuple(s) for s in out_shapes] == [(1, w, 112 // s, 112 // s) for w, s in zip(widths, (2, 4, 8, 16))]
    # Each tap is the last cell at its stride: the next cell (if any) is a reduction cell.
    shapes, _ = array_shapes(sym, (1, 3, 112, 112))
    for stride, cell in tap_cells(layers).items():
        if stride < 16:
            assert f"cells_{cell + 1}_dag_2_0_bn_gamma" in shapes  # max_pool_3x3 exists only in reduction cells
            assert f"cells_{cell + 2}_preproc0_conv11_weight" in shapes or cell + 2 == layers


def test_graph_settings_follow_the_release():
    sym = get_symbol("pocketnet_m128")
    nodes = json.loads(sym.tojson())["nodes"]
    bns = [n for n in nodes if n["op"] == "BatchNorm"]
    assert bns and all(n["attrs"]["fix_gamma"] == "False" and float(n["attrs"]["eps"]) == 1e-5
                       and float(n["attrs"]["momentum"]) == 0.9 for n in bns)
    assert not any(n["op"] in ("Activation", "FullyConnected", "Dropout") for n in nodes)
    # The stem is conv + BN with no activation: the first PReLUs are the pre-processing of cell 0.
    consumers = {n["name"]: [nodes[i[0]]["name"] for i in n["inputs"]] for n in nodes}
    assert consumers["cells_0_preproc0_net_0"][0] == consumers["cells_0_preproc1_net_0"][0] == "stem_1"


def test_prelu_slopes_start_at_a_quarter_and_bn_gammas_at_one():
    sym = get_symbol("pocketnet_s128", **TINY)
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind([("data", (1, 3, 32, 32))], for_training=False)
    mod.init_params(mx.init.Xavier(rnd_type="uniform", factor_type="in", magnitude=6))
    arg, _ = mod.get_params()
    prelu = [n for n in arg if n.endswith(("_net_0_gamma", "_relu_gamma")) or n in ("tail_0_gamma", "tail_3_gamma")]
    assert len(prelu) > 20 and all(np.allclose(arg[n].asnumpy(), 0.25) for n in prelu)
    bn = [n for n in arg if n.endswith("_gamma") and n not in prelu]
    assert bn and all(np.allclose(arg[n].asnumpy(), 1.0) for n in bn)


@pytest.mark.parametrize("size,side", [(56, 4), (64, 4), (96, 6)])
def test_input_size_sets_the_tail_kernel(size, side):
    sym = get_symbol("pocketnet_m256", input_size=size)
    shapes, outs = array_shapes(sym, (3, 3, size, size))
    assert shapes["tail_4_weight"] == [512, 1, side, side] and list(outs[0]) == [3, 256]


def test_options_change_width_cells_and_embedding():
    shapes, outs = array_shapes(get_symbol("pocketnet_s128", channels=8, layers=6, emb_size=512),
                                (1, 3, 112, 112))
    assert shapes["stem_0_weight"] == [32, 3, 3, 3]
    assert "cells_5_preproc0_relu_gamma" in shapes and not any(n.startswith("cells_6_") for n in shapes)
    assert shapes["tail_1_weight"] == [1024, 4 * 64, 1, 1] and list(outs[0]) == [1, 512]


@pytest.mark.parametrize("options,words", [
    ({"layers": 3}, ["layers=3", "layers >= 4"]),
    ({"channels": 0}, ["channels=0", "positive"]),
    ({"multiplier": 0.5}, ["multiplier", "channels", "layers"]),
    ({"input_size": 100}, ["input_size=100", "multiples of 8"]),
    ({"emb_size": 0}, ["emb_size"]),
])
def test_bad_options_name_option_and_accepted_values(options, words):
    with pytest.raises(VargfaceError) as info:
        get_symbol("pocketnet_s128", **options)
    for word in words:
        assert word in str(info.value)


# ---- training: a tiny PocketNet that learns with global gradient-norm clipping (tests/test_step.py: the clip) --

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vargface.data.synth import make_synthetic_rec

    root = tmp_path_factory.mktemp("faces") / "data"
    make_synthetic_rec(str(root), 6, 8, size=56, seed=2, progress=False)
    return str(root)


def test_tiny_pocketnet_lowers_its_loss_with_clipping(data_dir, tmp_path):
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    config = generate_config("pocketnet_s128", data_dir, "arcface", net_channels=4, net_layers=4, emb_size=32,
                             image_size=56, val_targets="", per_batch_size=16, lr=0.1, loss_s=16.0, loss_m2=0.2,
                             lr_schedule="step", lr_steps="1000", clip_grad_norm=5.0, frequent=3, verbose=100,
                             max_steps=18, prefix=str(tmp_path / "m"))
    result = fit(config, log=lambda text: None)
    train = [e for e in result["history"] if e["type"] == "train"]
    assert result["num_update"] == 18 and len(train) == 6
    assert train[-1]["loss"] < train[0]["loss"] - 0.5, [e["loss"] for e in train]
    assert all(np.isfinite(e["grad_norm"]) and e["grad_norm"] > 0 for e in train)
    assert max(e["grad_norm"] for e in train) > config.clip_grad_norm  # the clip was active


def test_clip_grad_norm_refuses_negative_values_and_dist_async(data_dir):
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    base = dict(val_targets="", per_batch_size=4, max_steps=1, net_channels=4, net_layers=4, image_size=56)
    with pytest.raises(VargfaceError, match="--clip-grad-norm -1.0: must be >= 0"):
        fit(generate_config("pocketnet_s128", data_dir, "arcface", clip_grad_norm=-1.0, **base), log=print)
    with pytest.raises(VargfaceError, match="--clip-grad-norm needs the gradient summed over all workers"):
        fit(generate_config("pocketnet_s128", data_dir, "arcface", clip_grad_norm=5.0, kvstore="dist_async",
                            on_nan="stop", **base), log=print)


def test_clip_grad_norm_is_a_config_key_and_cli_option():
    from vargface.cli import build_parser
    from vargface.train.config import config_from_args
    from vargface.train.config import generate_config

    assert generate_config("vargfacenet").clip_grad_norm == 0.0
    args = build_parser().parse_args(["train", "--network", "pocketnet_m256", "--clip-grad-norm", "5"])
    config = config_from_args(args)
    assert (config.clip_grad_norm, config.network, config.emb_size) == (5.0, "pocketnet_m256", 256)


# ---- the release's emore recipe ------------------------------------------------------------------------------

def test_emore_recipe_file_holds_the_release_schedule():
    from vargface.train.config import generate_config, read_config_file

    path = Path(__file__).resolve().parents[1] / "configs" / "pocketnet_s128_emore.py"
    keys = read_config_file(path)
    config = generate_config(keys.pop("network"), keys.pop("dataset"), keys.pop("loss"), **keys)
    per_epoch = 5822653 // (128 * 4)  # MS1MV2 images / global batch, last partial batch dropped
    assert config.per_batch_size * len(config.ctx.split(",")) == 512
    assert config.lr_steps == tuple(per_epoch * e for e in (7, 13, 19, 24))
    assert config.max_steps == 26 * per_epoch and config.end_epoch == 26
    assert (config.lr, config.mom, config.wd, config.lr_factor, config.lr_schedule) == (0.1, 0.9, 5e-4, 0.1, "step")
    assert (config.loss_s, config.loss_m2, config.clip_grad_norm, config.emb_size) == (64.0, 0.5, 5.0, 128)
