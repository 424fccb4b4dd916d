"""VarGFaceNet (arXiv 1910.04985) as released: variable group convolutions with a fixed 8 channels per group.

Layer names, op order and BN/PReLU placement follow the release, so its checkpoints load unchanged; the only
addition is `input_size`, which sets the embedding's depthwise kernel to the last feature map's side."""
import mxnet as mx

from vargface.errors import VargfaceError
from vargface.symbols.common import act, check_options, final_map_size, normalised_input, scaled, tap
from vargface.symbols.registry import Preset

FILTERS = (32, 64, 128, 256)
UNITS = (3, 7, 4)

DEFAULTS = {
    "multiplier": 1.25,
    "emb_size": 512,
    "use_se": True,
    "se_ratio": 4,
    "group_base": 8,
    "act_type": "prelu",
    "bn_mom": 0.9,
    "bn_eps": 2e-5,
    "workspace": 512,
    "factor": 2,
    "head_pooling": False,
    "last_channels": 1024,
    "fc1_fix_gamma": False,
    "input_size": 112,
}


class _Builder:
    """Holds the settings the original passes around as `setting_params`."""

    def __init__(self, cfg):
        self.cfg = cfg

    def bn(self, data, name, fix_gamma=False):
        c = self.cfg
        return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=c["bn_eps"], momentum=c["bn_mom"], name=name)

    def act(self, data, name):
        return act(data, self.cfg["act_type"], name)

    def conv(self, data, num_filter, kernel, stride, pad, name, num_group=1, no_bias=True):
        return mx.sym.Convolution(
            data=data, num_filter=num_filter, kernel=kernel, stride=stride, pad=pad, num_group=num_group,
            no_bias=no_bias, workspace=self.cfg["workspace"], name=name,
        )

    def separable(self, data, in_channels, out_channels, stride, factor, name, pointwise_act=True):
        """k x k group conv (group_base input channels per group, x factor) + BN + act, then 1x1 conv + BN
        (+ act)."""
        c = self.cfg
        body = self.conv(
            data, int(in_channels * factor), (3, 3), stride, (1, 1), name + "_conv2d_depthwise",
            num_group=int(in_channels / c["group_base"]),
        )
        body = self.bn(body, name + "_conv2d_depthwise_bn")
        body = self.act(body, name + "_conv2d_depthwise_act")
        body = self.conv(body, out_channels, (1, 1), (1, 1), (0, 0), name + "_conv2d_pointwise")
        body = self.bn(body, name + "_conv2d_pointwise_bn")
        if pointwise_act:
            body = self.act(body, name + "_conv2d_pointwise_act")
        return body

    def se(self, data, channels, name):
        """Squeeze-excitation: global average, C -> C/ratio -> C with bias, act then sigmoid gate."""
        body = mx.sym.Pooling(data=data, global_pool=True, kernel=(7, 7), pool_type="avg", name=name + "_se_pool1")
        body = self.conv(body, channels // self.cfg["se_ratio"], (1, 1), (1, 1), (0, 0), name + "_se_conv1",
                         no_bias=False)
        body = self.act(body, name + "_se_act1")
        body = self.conv(body, channels, (1, 1), (1, 1), (0, 0), name + "_se_conv2", no_bias=False)
        body = mx.sym.Activation(data=body, act_type="sigmoid", name=name + "_se_sigmoid")
        return mx.sym.broadcast_mul(data, body)

    def block(self, data, in_channels, out_channels, stride, factor, dim_match, name):
        """Normal block: sep1 (act) -> sep2 (no act) [-> SE] + shortcut -> act."""
        shortcut = data
        if not dim_match:
            shortcut = self.separable(data, in_channels, out_channels, stride, factor, name + "_shortcut",
                                      pointwise_act=False)
        body = self.separable(data, in_channels, out_channels, stride, factor, name + "_sep1_data")
        body = self.separable(body, out_channels, out_channels, (1, 1), factor, name + "_sep2_data",
                              pointwise_act=False)
        if self.cfg["use_se"]:
            body = self.se(body, out_channels, name)
        return self.act(body + shortcut, name + "_out_data_act")

    def merge_block(self, data, in_channels, out_channels, name):
        """Down-sampling block: two parallel stride-2 separable units summed -> act -> sep2, plus a separable
        stride-2 shortcut -> act. No SE here, as in the release."""
        factor, stride = self.cfg["factor"], (2, 2)
        shortcut = self.separable(data, in_channels, out_channels, stride, factor, name + "_shortcut",
                                  pointwise_act=False)
        branch1 = self.separable(data, in_channels, out_channels, stride, factor, name + "_sep1_data_branch",
                                 pointwise_act=False)
        branch2 = self.separable(data, in_channels, out_channels, stride, factor, name + "_sep2_data_branch",
                                 pointwise_act=False)
        body = self.act(branch1 + branch2, name + "_sep1_data_act")
        body = self.separable(body, out_channels, out_channels, (1, 1), factor, name + "_sep2_data",
                              pointwise_act=False)
        return self.act(body + shortcut, name + "_out_data_act")

    def head(self, data, channels, name="vargface_head"):
        """3x3 stride-1 conv + BN + act, then a stride-2 normal block with factor 1 (or max pooling)."""
        body = self.conv(data, channels, (3, 3), (1, 1), (1, 1), name + "_conv1")
        body = self.bn(body, name + "_conv1_bn")
        body = self.act(body, name + "_conv1_act")
        if self.cfg["head_pooling"]:
            return mx.sym.Pooling(data=body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                                  name=name + "_max_pooling")
        return self.block(body, channels, channels, (2, 2), 1, False, name + "_head_pooling")

    def embedding(self, data, in_channels, name="embed"):
        """1x1 to last_channels (+BN+act), depthwise over the whole last map (+BN), 1x1 to half (+BN+act),
        FC `pre_fc1` and BN `fc1`."""
        c = self.cfg
        last = c["last_channels"]
        body = data
        if in_channels != last:
            body = self.conv(body, last, (1, 1), (1, 1), (0, 0), name + "_convx")
            body = self.bn(body, name + "_convx_bn")
            body = self.act(body, name + "_convx_act")
        side = final_map_size(c["input_size"])
        body = self.conv(body, last, (side, side), (1, 1), (0, 0), name + "_convx_depthwise",
                         num_group=int(last / c["group_base"]))
        body = self.bn(body, name + "_convx_depthwise_bn")
        body = self.conv(body, last // 2, (1, 1), (1, 1), (0, 0), name + "_convx_pointwise")
        body = self.bn(body, name + "_convx_pointwise_bn")
        body = self.act(body, name + "_convx_pointwise_act")
        body = mx.sym.FullyConnected(data=body, num_hidden=c["emb_size"], name="pre_fc1")
        return self.bn(body, "fc1", fix_gamma=c["fc1_fix_gamma"])


def _check_groups(preset, cfg):
    """Each separable conv has `group_base` input channels per group, so every width must be a multiple."""
    base, mult = cfg["group_base"], cfg["multiplier"]
    for channels in FILTERS:
        width = scaled(channels, mult)
        if width < base or width % base:
            step = base / min(FILTERS)
            raise VargfaceError(
                f"get_symbol('{preset}'): multiplier={mult} gives {width} channels ({channels} x {mult}), which "
                f"group_base={base} does not divide; with group_base={base} the multiplier must be a multiple of "
                f"{step:g} (e.g. {step:g}, {2 * step:g}, {4 * step:g}, {5 * step:g})"
            )
    last = cfg["last_channels"]
    if last % base or last % 2:
        raise VargfaceError(
            f"get_symbol('{preset}'): last_channels={last} must be an even multiple of group_base={base}"
        )
    if cfg["use_se"] and scaled(min(FILTERS), mult) < cfg["se_ratio"]:
        raise VargfaceError(
            f"get_symbol('{preset}'): se_ratio={cfg['se_ratio']} leaves no SE channels at "
            f"{scaled(min(FILTERS), mult)} channels; accepted: se_ratio <= {scaled(min(FILTERS), mult)}"
        )


def get_symbol(preset="vargfacenet", **options):
    """VarGFaceNet embedding symbol; output `fc1_output`. Options: see DEFAULTS (the release's own names)."""
    cfg = check_options(preset, options, DEFAULTS)
    _check_groups(preset, cfg)
    b = _Builder(cfg)
    widths = [scaled(f, cfg["multiplier"]) for f in FILTERS]
    body = normalised_input(cfg["input_size"])
    body = tap(b.head(body, widths[0]), 2)
    for stage, units in enumerate(UNITS):
        name = f"vargface_stage_{stage + 2}"
        body = b.merge_block(body, widths[stage], widths[stage + 1], name + "_unit_1")
        for unit in range(2, units + 1):
            body = b.block(body, widths[stage + 1], widths[stage + 1], (1, 1), cfg["factor"], True,
                           f"{name}_unit_{unit}")
        body = tap(body, 4 << stage)
    return b.embedding(body, widths[-1])


PRESETS = [
    Preset("vargfacenet", get_symbol, DEFAULTS, description="VarGFaceNet as released (SE on, emb 512)",
           train={"net_init": "xavier_gaussian_out_2", "lr_schedule": "cosine", "warmup_steps": 2000}),
    # The InsightFace port trains the same graph without SE and with the embedding BN's gamma fixed at 1.
    Preset("vargfacenet_insightface", get_symbol, DEFAULTS, {"use_se": False, "fc1_fix_gamma": True},
           {"net_init": "xavier_uniform_in_2"}, "InsightFace's VarGFaceNet port (SE off, fc1 gamma fixed)"),
    Preset("vargfacenet_tiny", get_symbol, DEFAULTS, {"emb_size": 64, "multiplier": 0.25, "input_size": 56},
           {"per_batch_size": 16, "frequent": 5, "verbose": 50}, "a small VarGFaceNet for tests, demos and CPU runs"),
]
