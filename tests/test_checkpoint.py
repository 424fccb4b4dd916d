"""Checkpoints: save/load round trips, cutting a training graph at fc1_output, errors that name the array."""
import mxnet as mx
import numpy as np
import pytest

from vargface.errors import VargfaceError
from vargface.symbols import get_symbol
from vargface.symbols.checkpoint import check_params, input_size_of, load_checkpoint, parse_model_arg


def init_params(sym, data_shape, seed=0):
    mx.random.seed(seed)
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind([("data", data_shape)], for_training=False)
    mod.init_params(mx.init.Xavier())
    return mod.get_params()


def embed(sym, arg_params, aux_params, images):
    mod = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    mod.bind([("data", images.shape)], for_training=False)
    mod.set_params(arg_params, aux_params)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def test_full_size_vargfacenet_round_trip(tmp_path):
    sym = get_symbol("vargfacenet")
    args, aux = init_params(sym, (1, 3, 112, 112))
    prefix = str(tmp_path / "vargfacenet")
    mx.model.save_checkpoint(prefix, 7, sym, args, aux)
    sym2, args2, aux2 = load_checkpoint(prefix, 7)
    assert sym2.list_outputs() == ["fc1_output"]
    assert sym2.list_arguments() == sym.list_arguments()
    assert set(args2) == set(args) and set(aux2) == set(aux)
    assert input_size_of(sym2) == 112
    images = np.random.RandomState(0).uniform(0, 255, (1, 3, 112, 112)).astype(np.float32)
    np.testing.assert_array_equal(embed(sym2, args2, aux2, images), embed(sym, args, aux, images))


def test_training_graph_is_cut_at_fc1_and_input_size_survives(tmp_path):
    sym = get_symbol("vargfacenet", input_size=56, multiplier=0.25, emb_size=64)
    # A training graph: embedding -> class FC -> softmax, as InsightFace saves it.
    train = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(sym, num_hidden=10, name="fc7"), name="softmax")
    mod = mx.mod.Module(train, context=mx.cpu())
    mod.bind([("data", (2, 3, 56, 56))], [("softmax_label", (2,))])
    mod.init_params(mx.init.Xavier())
    args, aux = mod.get_params()
    prefix = str(tmp_path / "train")
    mx.model.save_checkpoint(prefix, 1, train, args, aux)
    sym2, args2, aux2 = load_checkpoint(prefix, 1)
    assert sym2.list_outputs() == ["fc1_output"]
    assert "fc7_weight" not in args2 and "fc7_weight" in args
    assert input_size_of(sym2) == 56
    images = np.random.RandomState(1).uniform(0, 255, (3, 3, 56, 56)).astype(np.float32)
    assert embed(sym2, args2, aux2, images).shape == (3, 64)  # any batch size binds


@pytest.fixture
def tiny_checkpoint(tmp_path):
    sym = get_symbol("vargfacenet", input_size=56, multiplier=0.25, emb_size=64)
    args, aux = init_params(sym, (1, 3, 56, 56))
    return sym, args, aux, str(tmp_path / "tiny")


def test_wrong_shaped_and_missing_arrays_are_named(tiny_checkpoint):
    sym, args, aux, prefix = tiny_checkpoint
    args["pre_fc1_weight"] = mx.nd.zeros((32, 512))
    del args["vargface_stage_3_unit_2_se_conv1_bias"]
    del aux["fc1_moving_var"]
    mx.model.save_checkpoint(prefix, 2, sym, args, aux)
    with pytest.raises(VargfaceError) as info:
        load_checkpoint(prefix, 2)
    message = str(info.value)
    assert "tiny-0002.params" in message
    assert "'pre_fc1_weight' has shape (32, 512), expected (64, 512)" in message
    assert "missing array 'vargface_stage_3_unit_2_se_conv1_bias' (expected shape (8,))" in message
    assert "missing array 'fc1_moving_var' (expected shape (64,))" in message


def test_check_params_accepts_complete_set(tiny_checkpoint):
    sym, args, aux, _ = tiny_checkpoint
    check_params(sym, args, aux, (1, 3, 56, 56))
    # At 112 the fixed 4x4 embedding kernel leaves a 4x4 map, so pre_fc1 would need 512*16 inputs.
    with pytest.raises(VargfaceError, match=r"'pre_fc1_weight' has shape \(64, 512\), expected \(64, 8192\)"):
        check_params(sym, args, aux, (1, 3, 112, 112))
    # A loaded checkpoint may carry more (an InsightFace training checkpoint keeps fc7); a training state may not.
    extra = dict(args, fc7_weight=mx.nd.zeros((3, 64)))
    check_params(sym, extra, aux, {"data": (1, 3, 56, 56)})
    with pytest.raises(VargfaceError, match=r"state does not belong: unexpected array 'fc7_weight'$"):
        check_params(sym, extra, aux, {"data": (1, 3, 56, 56)}, "state", unexpected=True, verdict="does not belong")


def test_missing_files_and_foreign_graphs(tiny_checkpoint, tmp_path):
    sym, args, aux, prefix = tiny_checkpoint
    with pytest.raises(VargfaceError, match="tiny-symbol.json does not exist"):
        load_checkpoint(prefix, 1)
    mx.model.save_checkpoint(prefix, 1, sym, args, aux)
    with pytest.raises(VargfaceError, match="tiny-0003.params does not exist"):
        load_checkpoint(prefix, 3)
    other = str(tmp_path / "other")
    net = mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=3, name="fc")
    mx.model.save_checkpoint(other, 1, net, {"fc_weight": mx.nd.zeros((3, 12)), "fc_bias": mx.nd.zeros(3)}, {})
    with pytest.raises(VargfaceError, match="no 'fc1_output'"):
        load_checkpoint(other, 1)
    (tmp_path / "bad-symbol.json").write_text("{not json")
    (tmp_path / "bad-0001.params").write_bytes(b"junk")
    with pytest.raises(VargfaceError, match="bad-symbol.json"):
        load_checkpoint(str(tmp_path / "bad"), 1)


def test_parse_model_arg():
    assert parse_model_arg("models/r100,3") == ("models/r100", 3)
    assert parse_model_arg("a,b/model,12") == ("a,b/model", 12)
    for bad in ("models/r100", "models/r100,", ",3", "m,x"):
        with pytest.raises(VargfaceError, match="prefix,epoch"):
            parse_model_arg(bad)
