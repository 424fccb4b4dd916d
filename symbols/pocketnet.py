"""PocketNet (arXiv 2108.10710): a DARTS-searched cell of depthwise-separable ops, stacked, with a MobileFaceNet tail.

One searched genotype serves all four released models; they differ in the starting width C (`channels`), the
number of cells (`layers`) and the embedding size. Array names are the release's PyTorch module paths with dots
as underscores (`cells.3.dag.1.0.net.1.weight` -> `cells_3_dag_1_0_net_1_weight`, BatchNorm weight/bias/running
statistics -> `_gamma/_beta/_moving_mean/_moving_var`, PReLU weight -> `_gamma`), except the last BatchNorm,
which is `fc1` as in every preset; so the release's state_dict maps one to one onto these arrays.

Taps: the last feature map at each stride of the input is the output of a cell's concatenation, named
`features_stride2`, `features_stride4`, `features_stride8` and `features_stride16` (MXNet output names
`features_strideN_output`); every other cell's output is `cells_<i>_concat`.

On CPU, MXNet's oneDNN backward fails for widths that are not a multiple of 4 ("could not construct a
sub-memory" or a floating point exception); the released widths 16 and 32 are fine."""
import mxnet as mx

from vargface.errors import VargfaceError
from vargface.symbols.common import act, check_options, final_map_size, normalised_input, tap
from vargface.symbols.registry import Preset

# The searched genotype (`softmax_casia`). Each intermediate node sums two (op, input node) edges; nodes 0 and 1
# are the cell's pre-processed inputs c_{k-2} and c_{k-1}, node j >= 2 is the j-th sum. The cell outputs the
# concatenation of nodes 2..5 (4 x C channels). In a reduction cell only edges from nodes 0 and 1 have stride 2.
NORMAL = (
    (("dw_conv_3x3", 0), ("dw_conv_1x1", 1)),
    (("dw_conv_3x3", 2), ("dw_conv_5x5", 0)),
    (("dw_conv_3x3", 3), ("dw_conv_3x3", 0)),
    (("dw_conv_3x3", 4), ("skip_connect", 0)),
)
REDUCE = (
    (("dw_conv_3x3", 1), ("dw_conv_7x7", 0)),
    (("skip_connect", 2), ("dw_conv_5x5", 1)),
    (("max_pool_3x3", 0), ("skip_connect", 2)),
    (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
)
CONCAT = (2, 3, 4, 5)
DW_KERNELS = {"dw_conv_1x1": 1, "dw_conv_3x3": 3, "dw_conv_5x5": 5, "dw_conv_7x7": 7}
STEM_MULTIPLIER = 4
MIN_LAYERS = 4  # three distinct reduction cells need n//3, 2n//3 and n-1 to differ

DEFAULTS = {
    "channels": 16,
    "layers": 18,
    "emb_size": 128,
    "bn_mom": 0.9,  # PyTorch's momentum 0.1
    "bn_eps": 1e-5,
    "input_size": 112,
}


class _Builder:
    def __init__(self, cfg):
        self.cfg = cfg

    def bn(self, data, name):
        c = self.cfg
        return mx.sym.BatchNorm(data=data, fix_gamma=False, eps=c["bn_eps"], momentum=c["bn_mom"], name=name)

    @staticmethod
    def conv(data, num_filter, kernel, stride, name, num_group=1):
        pad = (kernel - 1) // 2
        return mx.sym.Convolution(data=data, num_filter=num_filter, kernel=(kernel, kernel), stride=(stride, stride),
                                  pad=(pad, pad), num_group=num_group, no_bias=True, name=name)

    def dw_conv(self, data, c_in, c_out, kernel, stride, name):
        """`dw_conv_k` and the cells' StdConv: PReLU -> k x k depthwise (stride) -> 1x1 conv -> BN."""
        body = act(data, "prelu", name + "_net_0")
        body = self.conv(body, c_in, kernel, stride, name + "_net_1", num_group=c_in)
        body = self.conv(body, c_out, 1, 1, name + "_net_2")
        return self.bn(body, name + "_net_3")

    def max_pool(self, data, stride, name):
        """`max_pool_3x3`: 3x3 max pooling (pad 1) -> BN."""
        body = mx.sym.Pooling(data=data, kernel=(3, 3), stride=(stride, stride), pad=(1, 1), pool_type="max",
                              name=name + "_pool")
        return self.bn(body, name + "_bn")

    def factorized_reduce(self, data, c_in, c_out, name):
        """Halve the map with two 1x1 stride-2 paths, the second shifted by one pixel (x[:, :, 1:, 1:]), each a
        depthwise 1x1 then a 1x1 conv to c_out/2, concatenated -> BN; one PReLU before both."""
        body = act(data, "prelu", name + "_relu")
        shifted = mx.sym.slice(body, begin=(None, None, 1, 1), end=(None, None, None, None), name=name + "_shift")
        paths = []
        for index, path_input in ((1, body), (2, shifted)):
            path = self.conv(path_input, c_in, 1, 2, f"{name}_conv{index}1", num_group=c_in)
            paths.append(self.conv(path, c_out // 2, 1, 1, f"{name}_conv{index}2"))
        return self.bn(mx.sym.concat(*paths, dim=1, name=name + "_concat"), name + "_bn")

    def op(self, data, kind, channels, stride, name):
        if kind in DW_KERNELS:
            return self.dw_conv(data, channels, channels, DW_KERNELS[kind], stride, name)
        if kind == "max_pool_3x3":
            return self.max_pool(data, stride, name)
        if stride == 1:  # skip_connect
            return data
        return self.factorized_reduce(data, channels, channels, name)

    def cell(self, s0, s1, c_pp, c_p, channels, reduction_p, reduction, name, out_name):
        """Pre-process both inputs to `channels` (c_{k-2} by FactorizedReduce after a reduction cell), run the
        genotype's DAG and concatenate its intermediate nodes."""
        if reduction_p:
            s0 = self.factorized_reduce(s0, c_pp, channels, name + "_preproc0")
        else:
            s0 = self.dw_conv(s0, c_pp, channels, 1, 1, name + "_preproc0")
        s1 = self.dw_conv(s1, c_p, channels, 1, 1, name + "_preproc1")
        states = [s0, s1]
        for node, edges in enumerate(REDUCE if reduction else NORMAL):
            total = None
            for edge, (kind, source) in enumerate(edges):
                stride = 2 if reduction and source < 2 else 1
                out = self.op(states[source], kind, channels, stride, f"{name}_dag_{node}_{edge}")
                total = out if total is None else total + out
            states.append(total)
        return mx.sym.concat(*[states[i] for i in CONCAT], dim=1, name=out_name)

    def tail(self, data, channels):
        """PReLU -> 1x1 conv (512, or 1024 for a 512-d embedding) -> BN -> PReLU -> depthwise conv over the whole
        last map -> BN -> 1x1 conv to emb_size -> flatten -> BN `fc1`."""
        emb = self.cfg["emb_size"]
        width = 1024 if emb == 512 else 512
        side = final_map_size(self.cfg["input_size"])
        body = act(data, "prelu", "tail_0")
        body = self.conv(body, width, 1, 1, "tail_1")
        body = self.bn(body, "tail_2")
        body = act(body, "prelu", "tail_3")
        body = mx.sym.Convolution(data=body, num_filter=width, kernel=(side, side), num_group=width, no_bias=True,
                                  name="tail_4")
        body = self.bn(body, "tail_5")
        body = self.conv(body, emb, 1, 1, "tail_6")
        return self.bn(mx.sym.flatten(body), "fc1")


def reduction_cells(layers):
    """Cells that halve the map and double C: at 1/3, 2/3 and the end of the stack."""
    return (layers // 3, 2 * layers // 3, layers - 1)


def tap_cells(layers):
    """{stride of the input: index of the last cell at that stride}."""
    first, second, last = reduction_cells(layers)
    return {2: first - 1, 4: second - 1, 8: last - 1, 16: last}


def get_symbol(preset="pocketnet_s128", **options):
    """PocketNet embedding symbol; output `fc1_output`. Options: channels (C), layers (cells), emb_size,
    input_size, bn_mom, bn_eps; the presets set the first three."""
    cfg = check_options(preset, options, DEFAULTS)
    if cfg["layers"] < MIN_LAYERS:
        raise VargfaceError(f"get_symbol('{preset}'): layers={cfg['layers']} leaves fewer than three reduction "
                            f"cells; accepted: layers >= {MIN_LAYERS}")
    if cfg["channels"] < 1:
        raise VargfaceError(f"get_symbol('{preset}'): channels={cfg['channels']} must be positive")
    b = _Builder(cfg)
    reductions = reduction_cells(cfg["layers"])
    taps = {cell: stride for stride, cell in tap_cells(cfg["layers"]).items()}

    c_stem = STEM_MULTIPLIER * cfg["channels"]
    body = normalised_input(cfg["input_size"], with_identity=False, scale=1 / 127.5)
    body = b.conv(body, c_stem, 3, 2, "stem_0")
    s0 = s1 = b.bn(body, "stem_1")
    c_pp, c_p, channels = c_stem, c_stem, cfg["channels"]
    reduction_p = False
    for i in range(cfg["layers"]):
        reduction = i in reductions
        if reduction:
            channels *= 2
        out = b.cell(s0, s1, c_pp, c_p, channels, reduction_p, reduction, f"cells_{i}",
                     f"features_stride{taps[i]}" if i in taps else f"cells_{i}_concat")
        if i in taps:
            tap(out, taps[i])
        s0, s1 = s1, out
        c_pp, c_p = c_p, channels * len(CONCAT)
        reduction_p = reduction
    return b.tail(s1, c_p)


# Xavier(uniform, in, 6) draws from U(+-sqrt(6 / fan_in)): the release's kaiming_uniform_ initialisation.
_TRAIN = {"net_init": "xavier_uniform_in_6"}
PRESETS = [
    Preset("pocketnet_s128", get_symbol, DEFAULTS, {"channels": 16, "layers": 18, "emb_size": 128}, _TRAIN,
           "PocketNet S-128 (width 16, 18 cells, emb 128)"),
    Preset("pocketnet_s256", get_symbol, DEFAULTS, {"channels": 16, "layers": 18, "emb_size": 256}, _TRAIN,
           "PocketNet S-256 (width 16, 18 cells, emb 256)"),
    Preset("pocketnet_m128", get_symbol, DEFAULTS, {"channels": 32, "layers": 9, "emb_size": 128}, _TRAIN,
           "PocketNet M-128 (width 32, 9 cells, emb 128)"),
    Preset("pocketnet_m256", get_symbol, DEFAULTS, {"channels": 32, "layers": 9, "emb_size": 256}, _TRAIN,
           "PocketNet M-256 (width 32, 9 cells, emb 256)"),
]
