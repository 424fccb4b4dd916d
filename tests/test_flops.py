"""FLOPs/params counter: the docs/architectures.md#presets figures for every preset, the LFR2019 rule on
hand-checked layers, the CLI."""
import json
import subprocess
import sys

import mxnet as mx
import pytest

from test_symbols import FAITHFUL_PRESETS, reference
from vargface.symbols import get_symbol
from vargface.symbols.flops import count, fits_budget, short_form

# docs/architectures.md#presets table: (learnable params, LFR2019 FLOPs).
PRESET_FIGURES = {
    "vargfacenet": (5198292, 1022864152),
    "vargfacenet_insightface": (4957512, 1022388952),
    "r50": (43590848, 12612791296),
    "r100": (65156160, 24169929728),
    "y1": (1003264, 439821056),
    "y2": (1996288, 933336950),
    "pocketnet_s128": (925632, 561859348),
    "pocketnet_s256": (991424, 561990292),
    "pocketnet_m128": (1686656, 1071087536),
    "pocketnet_m256": (1752448, 1071218480),
}


@pytest.mark.parametrize("preset", FAITHFUL_PRESETS)
def test_preset_figures_equal_docs_and_reference(preset):
    figures = count(get_symbol(preset))
    ref = reference(preset)
    assert (figures["params"], figures["flops"]) == PRESET_FIGURES[preset]
    assert figures["params"] == ref["learnable_parameters"]
    assert figures["aux"] == ref["auxiliary_states"]
    assert figures["flops"] == ref["lfr2019_flops"]
    assert figures["macs"] == figures["flops"] // 2


def test_lfr2019_rule_on_single_layers():
    data = mx.sym.Variable("data")
    # 3x3 group conv without bias: (2*8*3*3 - 1) * 5*5 * 16 / 2, truncated.
    conv = mx.sym.Convolution(data, num_filter=16, kernel=(3, 3), num_group=2, no_bias=True, name="c")
    assert count(conv, (1, 8, 7, 7))["flops"] == (2 * 8 * 9 - 1) * 25 * 16 // 2
    # With bias the -1 disappears; parameters include the bias.
    conv_b = mx.sym.Convolution(data, num_filter=5, kernel=(1, 1), stride=(2, 2), no_bias=False, name="c")
    figures = count(conv_b, (1, 3, 8, 8))
    assert figures["flops"] == 2 * 3 * 1 * 4 * 4 * 5 and figures["params"] == 5 * 3 + 5
    # FC: 2*in*out, minus out without bias; BN, PReLU and pooling cost nothing; BN stats are aux.
    fc = mx.sym.FullyConnected(mx.sym.Pooling(data, kernel=(2, 2), stride=(2, 2), pool_type="avg"),
                               num_hidden=7, no_bias=True, name="f")
    fc = mx.sym.LeakyReLU(mx.sym.BatchNorm(fc, name="bn"), act_type="prelu", name="p")
    figures = count(fc, (1, 2, 6, 6))
    assert figures["flops"] == 2 * 18 * 7 - 7
    assert figures["params"] == 18 * 7 + 7 + 7 + 7 and figures["aux"] == 14
    assert figures["ops"]["PReLU"] == 1 and figures["ops"]["FullyConnected"] == 1


def test_figures_follow_input_size_and_options():
    small = count(get_symbol("vargfacenet", input_size=56), (1, 3, 56, 56))
    full = count(get_symbol("vargfacenet"))
    assert small["flops"] < full["flops"] / 3
    assert small["params"] < full["params"]  # the embedding's depthwise kernel is 4x4 instead of 7x7
    no_se = count(get_symbol("vargfacenet", use_se=False))
    assert no_se["ops"].get("broadcast_mul", 0) == 0 and full["ops"]["broadcast_mul"] == 12


def test_short_form_and_budget_rule():
    assert short_form(1022864152) == "1.0G" and fits_budget(1022864152)
    assert short_form(933336950) == "0.9G" and fits_budget(933336950)
    assert short_form(1160000000) == "1.2G" and not fits_budget(1160000000)
    assert not fits_budget(24169929728)


def run_cli(*args, capsys=None):
    """The real console command in a subprocess, or (with capsys) the same entry point in-process, faster."""
    if capsys is None:
        return subprocess.run([sys.executable, "-m", "vargface", "flops", *args], capture_output=True, text=True)
    from vargface.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["flops", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, out, err)


@pytest.mark.parametrize("preset,params,flops,words", [
    ("vargfacenet", "5198292", "1022864152", ["1.0G", "511432076", "fits"]),
    ("r100", "65156160", "24169929728", ["24.2G", "exceeds"]),
    ("pocketnet_s128", "925632", "561859348", ["0.6G", "280929674", "fits"]),
    ("pocketnet_m128", "1686656", "1071087536", ["1.1G", "exceeds"]),
])
def test_cli_prints_preset_figures(preset, params, flops, words, capsys):
    result = run_cli(preset) if preset == "vargfacenet" else run_cli(preset, capsys=capsys)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert params in out and flops in out
    assert all(word in out for word in words)


def test_cli_json_options_and_checkpoint(tmp_path, capsys):
    result = run_cli("vargfacenet", "--opt", "use_se=False", "--opt", "fc1_fix_gamma=True", "--json", capsys=capsys)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["params"], figures["flops"]) == PRESET_FIGURES["vargfacenet_insightface"]
    assert figures["fits_budget"] is True and figures["short"] == "1.0G"

    sym = get_symbol("vargfacenet", input_size=56, multiplier=0.25, emb_size=64)
    prefix = str(tmp_path / "tiny")
    mx.model.save_checkpoint(prefix, 1, sym, {}, {})
    result = run_cli("--model", f"{prefix},1", "--json", capsys=capsys)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["input_shape"] == [1, 3, 56, 56] and figures["fits_budget"] is None  # the budget counts 112x112
    assert figures["flops"] == count(sym, (1, 3, 56, 56))["flops"]
    text = run_cli("--model", f"{prefix},1", capsys=capsys).stdout
    assert "(input 1x3x56x56)" in text and "deepglint-light   not judged: the 1.0G budget counts 112x112 inputs, " \
                                           "this count is at 56x56" in text
    via_options = json.loads(run_cli("vargfacenet", "--image-size", "56", "--opt", "multiplier=0.25",
                                     "--opt", "emb_size=64", "--json", capsys=capsys).stdout)
    assert via_options["flops"] == figures["flops"] and via_options["params"] == figures["params"]


@pytest.mark.parametrize("args,words", [
    (["vargfacenet", "--opt", "use_se=yes"], ["use_se", "bool"]),
    (["mobilenet"], ["mobilenet", "vargfacenet"]),
    (["vargfacenet", "--opt", "multiplier"], ["NAME=VALUE"]),
    (["--model", "nowhere/x,1"], ["nowhere/x-symbol.json"]),
    (["--model", "x"], ["prefix,epoch"]),
    ([], ["PRESET", "--model"]),
])
def test_cli_errors(args, words, capsys):
    result = run_cli(*args, capsys=capsys)
    assert result.returncode == 1
    assert "vargface flops: error:" in result.stderr and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_cli_unreadable_checkpoint_graph(tmp_path, capsys):
    (tmp_path / "bad-symbol.json").write_text("{not json")
    result = run_cli("--model", f"{tmp_path / 'bad'},1", capsys=capsys)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "bad-symbol.json is not a readable MXNet symbol file" in result.stderr
