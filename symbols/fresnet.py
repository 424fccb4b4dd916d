"""LResNet-IR (InsightFace `fresnet`, input 'L', IR unit, output 'E'): the usual ArcFace teachers r50/r100.

Names follow InsightFace so its r50/r100 checkpoints load. `multiplier` scales the widths and `num_layers` picks
a row of the depth table, so a small teacher (e.g. num_layers=18, multiplier=0.25) exists for quick runs."""
import mxnet as mx

from vargface.errors import VargfaceError
from vargface.symbols.common import act, check_options, normalised_input, scaled, tap
from vargface.symbols.registry import Preset

FILTERS = (64, 64, 128, 256, 512)
# InsightFace's depth table for the non-bottleneck (IR) units.
UNITS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    49: (3, 4, 14, 3),
    50: (3, 4, 14, 3),
    74: (3, 6, 24, 3),
    90: (3, 8, 30, 3),
    98: (3, 4, 38, 3),
    99: (3, 8, 35, 3),
    100: (3, 13, 30, 3),
    101: (3, 4, 23, 3),
    124: (3, 13, 40, 5),
    134: (3, 10, 50, 3),
    136: (3, 13, 48, 3),
    140: (3, 15, 48, 3),
    152: (3, 8, 36, 3),
    160: (3, 24, 49, 3),
    200: (3, 24, 36, 3),
    269: (3, 30, 48, 8),
}

DEFAULTS = {
    "num_layers": 50,
    "multiplier": 1.0,
    "emb_size": 512,
    "act_type": "prelu",
    "bn_mom": 0.9,
    "bn_eps": 2e-5,
    "workspace": 256,
    "dropout": 0.4,
    "input_size": 112,
}


def _bn(data, cfg, name, fix_gamma=False):
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=cfg["bn_eps"], momentum=cfg["bn_mom"], name=name)


def _conv(data, cfg, num_filter, kernel, stride, pad, name):
    return mx.sym.Convolution(data=data, num_filter=num_filter, kernel=kernel, stride=stride, pad=pad,
                              no_bias=True, workspace=cfg["workspace"], name=name)


def _ir_unit(data, cfg, num_filter, stride, dim_match, name):
    """BN - conv3x3 - BN - act - conv3x3(stride) - BN, plus identity or a 1x1-conv+BN shortcut."""
    body = _bn(data, cfg, name + "_bn1")
    body = _conv(body, cfg, num_filter, (3, 3), (1, 1), (1, 1), name + "_conv1")
    body = _bn(body, cfg, name + "_bn2")
    body = act(body, cfg["act_type"], name + "_relu1")
    body = _conv(body, cfg, num_filter, (3, 3), stride, (1, 1), name + "_conv2")
    body = _bn(body, cfg, name + "_bn3")
    if dim_match:
        shortcut = data
    else:
        shortcut = _conv(data, cfg, num_filter, (1, 1), stride, (0, 0), name + "_conv1sc")
        shortcut = _bn(shortcut, cfg, name + "_sc")
    return body + shortcut


def get_symbol(preset="r50", **options):
    """LResNet-IR embedding symbol; output `fc1_output`."""
    cfg = check_options(preset, options, DEFAULTS)
    if cfg["num_layers"] not in UNITS:
        raise VargfaceError(
            f"get_symbol('{preset}'): num_layers={cfg['num_layers']} is not in the depth table; accepted: "
            f"{', '.join(map(str, UNITS))}"
        )
    if not 0 <= cfg["dropout"] < 1:
        raise VargfaceError(f"get_symbol('{preset}'): dropout={cfg['dropout']} must lie in [0, 1)")
    widths = [scaled(f, cfg["multiplier"]) for f in FILTERS]
    if min(widths) < 1:
        raise VargfaceError(
            f"get_symbol('{preset}'): multiplier={cfg['multiplier']} leaves no channels; accepted: multiplier >= "
            f"{1 / min(FILTERS):g}"
        )

    body = normalised_input(cfg["input_size"])
    body = _conv(body, cfg, widths[0], (3, 3), (1, 1), (1, 1), "conv0")
    body = _bn(body, cfg, "bn0")
    body = act(body, cfg["act_type"], "relu0")
    for stage, units in enumerate(UNITS[cfg["num_layers"]], start=1):
        body = _ir_unit(body, cfg, widths[stage], (2, 2), False, f"stage{stage}_unit1")
        for unit in range(2, units + 1):
            body = _ir_unit(body, cfg, widths[stage], (1, 1), True, f"stage{stage}_unit{unit}")
        body = tap(body, 1 << stage)
    # Output 'E': BN - Dropout - FC - BN(fix_gamma).
    body = _bn(body, cfg, "bn1")
    body = mx.sym.Dropout(data=body, p=cfg["dropout"])
    body = mx.sym.FullyConnected(data=body, num_hidden=cfg["emb_size"], name="pre_fc1")
    return _bn(body, cfg, "fc1", fix_gamma=True)


PRESETS = [
    Preset("r50", get_symbol, DEFAULTS, description="LResNet50E-IR, the usual ArcFace teacher"),
    Preset("r100", get_symbol, DEFAULTS, {"num_layers": 100}, description="LResNet100E-IR, the LFR2019 teacher"),
    Preset("r18_tiny", get_symbol, DEFAULTS,
           {"num_layers": 18, "multiplier": 0.125, "emb_size": 64, "input_size": 32},
           {"per_batch_size": 16, "frequent": 5, "verbose": 50}, "a small ResNet-IR for tests and quick runs"),
]
