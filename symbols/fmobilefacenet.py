"""MobileFaceNet (InsightFace `fmobilefacenet`, output 'GDC'): the y1 / y2 baselines of the LFR2019 light track.

Names follow InsightFace so its checkpoints load. Its convolution BNs leave eps at MXNet's default (1e-3);
only the embedding BN `fc1` uses 2e-5, as in the original."""
import mxnet as mx

from vargface.errors import VargfaceError
from vargface.symbols.common import act, check_options, final_map_size, normalised_input, scaled, tap
from vargface.symbols.registry import Preset

DEFAULTS = {
    "blocks": (1, 4, 6, 2),
    "multiplier": 1.0,
    "emb_size": 128,
    "act_type": "prelu",
    "bn_mom": 0.9,
    "bn_eps": 1e-3,
    "input_size": 112,
}


class _Builder:
    def __init__(self, cfg):
        self.cfg = cfg

    def conv(self, data, num_filter, kernel=(1, 1), stride=(1, 1), pad=(0, 0), num_group=1, name="", linear=False):
        """conv (no bias) `<name>_conv2d` + BN `<name>_batchnorm` (+ act `<name>_relu` unless linear)."""
        c = self.cfg
        body = mx.sym.Convolution(data=data, num_filter=num_filter, kernel=kernel, num_group=num_group,
                                  stride=stride, pad=pad, no_bias=True, name=name + "_conv2d")
        body = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=c["bn_eps"], momentum=c["bn_mom"],
                                name=name + "_batchnorm")
        return body if linear else act(body, c["act_type"], name + "_relu")

    def depthwise_residual(self, data, num_out, stride, num_group, name):
        """Inverted bottleneck: 1x1 expand (act) - 3x3 depthwise (act) - 1x1 linear projection."""
        body = self.conv(data, num_group, name=name + "_conv_sep")
        body = self.conv(body, num_group, (3, 3), stride, (1, 1), num_group=num_group, name=name + "_conv_dw")
        return self.conv(body, num_out, name=name + "_conv_proj", linear=True)

    def residual(self, data, num_block, num_out, num_group, name):
        for i in range(num_block):
            data = self.depthwise_residual(data, num_out, (1, 1), num_group, f"{name}_block{i}") + data
        return data


def get_symbol(preset="y1", **options):
    """MobileFaceNet embedding symbol; output `fc1_output`."""
    cfg = check_options(preset, options, DEFAULTS)
    w = {c: scaled(c, cfg["multiplier"]) for c in (64, 128, 256, 512)}
    if min(w.values()) < 1:
        raise VargfaceError(f"get_symbol('{preset}'): multiplier={cfg['multiplier']} leaves no channels; "
                            f"accepted: multiplier >= {1 / 64:g}")
    b, blocks = _Builder(cfg), cfg["blocks"]
    body = normalised_input(cfg["input_size"], with_identity=False)
    body = b.conv(body, w[64], (3, 3), (2, 2), (1, 1), name="conv_1")
    if blocks[0] == 1:
        body = b.conv(body, w[64], (3, 3), (1, 1), (1, 1), num_group=w[64], name="conv_2_dw")
    else:
        body = b.residual(body, blocks[0], w[64], w[64], "res_2")
    body = tap(body, 2)
    body = b.depthwise_residual(body, w[64], (2, 2), w[128], "dconv_23")
    body = tap(b.residual(body, blocks[1], w[64], w[128], "res_3"), 4)
    body = b.depthwise_residual(body, w[128], (2, 2), w[256], "dconv_34")
    body = tap(b.residual(body, blocks[2], w[128], w[256], "res_4"), 8)
    body = b.depthwise_residual(body, w[128], (2, 2), w[512], "dconv_45")
    body = tap(b.residual(body, blocks[3], w[128], w[256], "res_5"), 16)
    body = b.conv(body, w[512], name="conv_6sep")
    # GDC: a depthwise conv over the whole last map replaces global pooling, then FC and BN.
    side = final_map_size(cfg["input_size"])
    body = b.conv(body, w[512], (side, side), num_group=w[512], name="conv_6dw7_7", linear=True)
    body = mx.sym.FullyConnected(data=body, num_hidden=cfg["emb_size"], name="pre_fc1")
    return mx.sym.BatchNorm(data=body, fix_gamma=True, eps=2e-5, momentum=cfg["bn_mom"], name="fc1")


PRESETS = [
    Preset("y1", get_symbol, DEFAULTS, description="MobileFaceNet, emb 128 (LFR2019 light baseline)"),
    Preset("y2", get_symbol, DEFAULTS, {"blocks": (2, 8, 16, 4), "emb_size": 256},
           description="deeper MobileFaceNet, emb 256 (LFR2019 light baseline)"),
]
