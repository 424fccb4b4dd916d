"""The network registry and named taps: every preset is known to every command, options reach the builder the same
way everywhere, and each preset names its embedding and its last feature map at each stride."""
import json

import mxnet as mx
import pytest

from vargface.errors import VargfaceError
from vargface.symbols import get_preset, get_symbol, presets
from vargface.symbols.flops import count
from vargface.symbols.taps import TAPS, tap_outputs, tap_shapes
from vargface.train.config import config_from_args
from vargface.train.config import generate_config, network_options
from vargface.train.trainer import embedding_symbol


def small(name):
    """Options that keep a preset cheap to build and infer at test time."""
    return {"input_size": 56} if get_preset(name).resolved_options()["input_size"] > 56 else {}


@pytest.mark.parametrize("name", list(presets()))
def test_every_preset_trains_and_counts(name, run_cli):
    """A name `train` accepts, `flops` accepts, and both build the same graph from the same options."""
    config = generate_config(name, "emore", "arcface")
    side = config.image_size[0]  # the dataset's image size: emore's 112
    shape = (1, 3, side, side)
    expected = count(get_symbol(name, input_size=side), shape)["params"]
    assert count(embedding_symbol(config), shape)["params"] == expected
    assert config.emb_size == get_preset(name).resolved_options()["emb_size"]
    code, out, _ = run_cli("flops", name, "--image-size", str(side), "--json")
    assert code == 0
    assert json.loads(out)["params"] == expected


def test_flops_takes_network_options_like_train(run_cli):
    code, out, _ = run_cli("flops", "vargfacenet", "--net-opt", "use_se=False", "--json")
    assert code == 0
    without_se = count(get_symbol("vargfacenet", use_se=False))
    assert json.loads(out)["params"] == without_se["params"] < count(get_symbol("vargfacenet"))["params"]
    from vargface.cli import build_parser

    args = build_parser().parse_args(["train", "--network", "vargfacenet", "--net-opt", "use_se=False",
                                      "--net-opt", "multiplier=0.5", "--net-multiplier", "0.25"])
    config = config_from_args(args)
    assert config.net_opts == {"use_se": False, "multiplier": 0.5}
    # net_opts is the most specific setting: it wins over the net_multiplier alias.
    assert network_options(config)["multiplier"] == 0.5 and network_options(config)["use_se"] is False
    assert count(embedding_symbol(config))["params"] == count(get_symbol("vargfacenet", use_se=False,
                                                                         multiplier=0.5))["params"]


def test_unknown_preset_and_option_are_named(run_cli):
    with pytest.raises(VargfaceError, match="unknown network preset 'r5'.*did you mean r50"):
        get_symbol("r5")
    code, _, err = run_cli("flops", "r50", "--net-opt", "use_se=False")
    assert code == 1 and "unknown option use_se" in err
    code, _, err = run_cli("flops", "r50", "--net-opt", "use_se")
    assert code == 1 and "expected NAME=VALUE" in err


def test_flops_lists_presets_and_taps(run_cli):
    code, out, _ = run_cli("flops", "--list")
    assert code == 0 and all(name in out for name in presets())
    code, out, _ = run_cli("flops", "r50", "--taps")
    assert code == 0
    shapes = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("tap ")}
    assert shapes == {"embedding": "512", "stride2": "64x56x56", "stride4": "128x28x28", "stride8": "256x14x14",
                      "stride16": "512x7x7"}


@pytest.mark.parametrize("name", list(presets()))
def test_taps_are_the_last_map_at_each_stride(name):
    """Each stride tap has the side of its stride, the taps come in the order the graph computes them, and the
    embedding tap is fc1_output."""
    options = small(name)
    sym = get_symbol(name, **options)
    size = get_preset(name).resolved_options(**options)["input_size"]
    shapes = tap_shapes(sym, size)
    assert list(shapes) == list(TAPS)
    assert shapes["embedding"] == ("fc1_output", (get_preset(name).resolved_options()["emb_size"],))
    internals = sym.get_internals()
    outputs = internals.list_outputs()
    side = size
    positions = []
    for stride in (2, 4, 8, 16):
        side = -(-side // 2)
        output, shape = shapes[f"stride{stride}"]
        assert shape[1:] == (side, side), (stride, shape)
        positions.append(outputs.index(output))
    assert positions == sorted(positions)


def test_taps_survive_a_saved_graph(tmp_path):
    """A checkpoint's -symbol.json names its taps: a teacher loaded from disk has the same taps."""
    sym = get_symbol("r18_tiny")
    path = tmp_path / "net-symbol.json"
    sym.save(str(path))
    assert tap_outputs(mx.sym.load(str(path)), 32) == tap_outputs(sym, 32)


def test_taps_of_an_unmarked_graph_by_shape():
    """A graph from other code has no marks: its taps are its last maps of each side."""
    data = mx.sym.Variable("data")
    body = data
    for i in range(4):
        body = mx.sym.Convolution(body, num_filter=4, kernel=(3, 3), stride=(2, 2), pad=(1, 1), name=f"down{i}")
        body = mx.sym.Activation(body, act_type="relu", name=f"relu{i}")
    fc1 = mx.sym.BatchNorm(mx.sym.FullyConnected(body, num_hidden=8, name="pre_fc1"), name="fc1")
    assert tap_outputs(fc1, 32) == {"embedding": "fc1_output", "stride2": "relu0_output", "stride4": "relu1_output",
                                    "stride8": "relu2_output", "stride16": "relu3_output"}


def test_config_file_then_flags_and_the_saved_config_reruns_the_run(tmp_path, run_cli):
    """`--config FILE` sets keys over the presets, flags override the file, and the run's saved PREFIX-config.py
    given back to --config resolves to the same config."""
    from pathlib import Path

    from vargface.data.synth import make_synthetic_rec
    from vargface.train.config import read_config_file, run_facts

    data = tmp_path / "data"
    make_synthetic_rec(str(data), 4, 4, size=32, seed=0, progress=False)
    config = Path(__file__).resolve().parents[1] / "configs" / "r18_tiny_synthetic.py"
    prefix = tmp_path / "run" / "model"
    argv = ["train", "--config", str(config), "--dataset", str(data), "--max-steps", "2", "--prefix", str(prefix),
            "--net-opt", "dropout=0.1"]
    code, out, err = run_cli(*argv)
    assert code == 0, err
    saved = read_config_file(f"{prefix}-config.py")
    assert (saved["network"], saved["max_steps"], saved["per_batch_size"], saved["lr"]) == ("r18_tiny", 2, 8, 0.1)
    assert saved["net_opts"] == {"dropout": 0.1} and saved["dataset_path"] == str(data)
    assert run_facts(f"{prefix}-config.py")["contexts"] == ["cpu(0)"]
    again = tmp_path / "again" / "model"
    code, _, err = run_cli("train", "--config", f"{prefix}-config.py", "--prefix", str(again))
    assert code == 0, err
    rerun = read_config_file(f"{again}-config.py")
    assert {k: v for k, v in rerun.items() if k != "prefix"} == {k: v for k, v in saved.items() if k != "prefix"}


def test_config_files_are_parsed_not_run(tmp_path, run_cli):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.py"
    hostile.write_text(f"import os\nlr = 0.1\nos.system('touch {marker}')\n")
    code, _, err = run_cli("train", "--config", str(hostile))
    assert code == 1 and "hostile.py:3: expected `key = value` lines only" in err and not marker.exists()
    computed = tmp_path / "computed.py"
    computed.write_text("lr = __import__('os').getpid()\n")
    code, _, err = run_cli("train", "--config", str(computed))
    assert code == 1 and "must be a literal" in err
    typo = tmp_path / "typo.py"
    typo.write_text("from easydict import EasyDict as edict\nconfig = edict()\nconfig.per_batch_sise = 8\n")
    code, _, err = run_cli("train", "--config", str(typo))
    assert code == 1 and "unknown config key 'per_batch_sise'; did you mean per_batch_size" in err
    wrong = tmp_path / "wrong.py"
    wrong.write_text("per_batch_size = 'eight'\n")
    code, _, err = run_cli("train", "--config", str(wrong), "--dataset", str(tmp_path))
    assert code == 1 and "per_batch_size" in err
