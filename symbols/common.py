"""Pieces every network shares: option checking, the normalising input, activations and the input-size rule.

The builders keep the original code's option names and defaults; this module makes a wrong option fail early
with a message that names it and the accepted values, instead of an MXNet shape error deep in the graph."""
import math
import numbers

import mxnet as mx

from vargface.errors import VargfaceError

# Symbol attribute on the `data` Variable holding the side the network was built for. An attribute, not a
# parameter, so checkpoint parameter names stay those of the original graphs and any batch size still binds.
INPUT_SIZE_ATTR = "vargface_input_size"
DEFAULT_INPUT_SIZE = 112
MIN_INPUT_SIZE = 32
INPUT_SIZE_STEP = 8
ACT_TYPES = ("prelu", "relu", "sigmoid", "tanh", "softrelu")
NUM_REDUCTIONS = 4  # every preset halves the map four times (112 -> 7)


def check_options(preset, options, defaults):
    """Merge ``options`` over ``defaults`` after checking every name and type; return the merged dict."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise VargfaceError(
            f"get_symbol('{preset}'): unknown option {', '.join(unknown)}; "
            f"accepted options: {', '.join(sorted(defaults))}"
        )
    merged = dict(defaults)
    for name, value in options.items():
        merged[name] = _check_type(preset, name, value, defaults[name])
    if merged.get("act_type") is not None and merged["act_type"] not in ACT_TYPES:
        raise VargfaceError(
            f"get_symbol('{preset}'): act_type={merged['act_type']!r} is not one of {', '.join(ACT_TYPES)}"
        )
    for name in ("multiplier", "bn_eps", "workspace", "emb_size", "se_ratio", "group_base", "factor"):
        if name in merged and not merged[name] > 0:
            raise VargfaceError(f"get_symbol('{preset}'): {name}={merged[name]!r} must be positive")
    if "bn_mom" in merged and not 0 < merged["bn_mom"] < 1:
        raise VargfaceError(f"get_symbol('{preset}'): bn_mom={merged['bn_mom']!r} must lie between 0 and 1")
    check_input_size(preset, merged["input_size"])
    return merged


def _check_type(preset, name, value, default):
    where = f"get_symbol('{preset}'): {name}={value!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise VargfaceError(f"{where} must be a bool (True or False)")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise VargfaceError(f"{where} must be an integer")
        value = int(value)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise VargfaceError(f"{where} must be a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise VargfaceError(f"{where} must be a string")
    elif isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value
        ) or len(value) != len(default):
            raise VargfaceError(f"{where} must be a list of {len(default)} positive integers")
        value = tuple(int(v) for v in value)
    return value


def check_input_size(preset, size):
    """Every preset halves the map four times, so the side must be a multiple of 8 and leave at least 2x2."""
    if (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < MIN_INPUT_SIZE
            or size % INPUT_SIZE_STEP):
        raise VargfaceError(
            f"get_symbol('{preset}'): input_size={size!r} cannot be reduced by the network; accepted values are "
            f"multiples of {INPUT_SIZE_STEP} from {MIN_INPUT_SIZE} up (e.g. 56, 64, 96, 112, 128)"
        )


def final_map_size(input_size):
    """Side of the last feature map: each stride-2 3x3 conv with pad 1 maps s to ceil(s/2) (112 -> 7, 56 -> 4)."""
    side = input_size
    for _ in range(NUM_REDUCTIONS):
        side = math.ceil(side / 2)
    return side


def normalised_input(input_size, with_identity=True, scale=0.0078125):
    """The `data` Variable (RGB 0..255) and the graph's own normalisation (x - 127.5) * scale.

    InsightFace's fresnet and the VarGFaceNet release put an identity node `id` first; fmobilefacenet does not.
    InsightFace scales by 1/128; PyTorch releases normalising with mean 0.5, std 0.5 scale by 1/127.5."""
    data = mx.sym.Variable("data", attr={INPUT_SIZE_ATTR: str(input_size)})
    body = mx.sym.identity(data=data, name="id") if with_identity else data
    body = body - 127.5
    return body * scale


def act(data, act_type, name):
    """PReLU is a LeakyReLU with a learnt slope `<name>_gamma`; everything else is a plain Activation."""
    if act_type == "prelu":
        return mx.sym.LeakyReLU(data=data, act_type="prelu", name=name)
    return mx.sym.Activation(data=data, act_type=act_type, name=name)


def scaled(channels, multiplier):
    """Width after the multiplier, truncated as the original code does (int(c * m))."""
    return int(channels * multiplier)


# Node attribute that names a tap (`stride2` ... `stride16`). Double underscores: MXNet keeps such attributes in the
# saved graph and operators ignore them, so a checkpoint's -symbol.json still names its taps.
TAP_ATTR = "__vargface_tap__"


def tap(symbol, stride):
    """Mark ``symbol`` as the last feature map at ``stride`` of the input (tap ``stride<N>``)."""
    symbol._set_attr(**{TAP_ATTR: f"stride{stride}"})
    return symbol
