"""Parameter and FLOPs counts read off a Symbol's graph, by the LFR2019 challenge rule (docs/flops.md).

Counting walks the stored graph (symbol JSON + shape inference) rather than per-network formulas, so it works
for any preset, option set or checkpoint."""
import json
from collections import Counter

# Challenge light-track budget: <= 1 GFLOPs as the organisers round it (one decimal of GFLOPs, "1.0G"), counted
# on one 112x112 image; a count at another input side is not judged against it.
BUDGET_GFLOPS = 1.0
BUDGET_INPUT_SIZE = 112


def _is_input(name):
    return name == "data" or name.endswith("label")


def _true(attrs, key, default):
    value = attrs.get(key)
    return default if value is None else value.strip().lower() in ("true", "1")


def count(sym, data_shape=(1, 3, 112, 112)):
    """Return {'params', 'aux', 'flops', 'macs', 'short', 'fits_budget', 'ops'} for ``sym`` at ``data_shape``
    (``fits_budget`` None at an input side other than the budget's 112).

    params: argument arrays, as the reference figures count them (a BatchNorm gamma with fix_gamma=True is
    stored in the checkpoint and counted too);
    aux: BatchNorm moving statistics; flops: Convolution and FullyConnected only, integer-truncated per layer;
    ops: how many Convolution / BatchNorm / PReLU / FullyConnected nodes the graph has."""
    from vargface.errors import VargfaceError, last_line

    internals = sym.get_internals()
    try:
        arg_shapes, out_shapes, aux_shapes = internals.infer_shape(data=tuple(data_shape))
    except Exception as error:  # MXNetError: the graph cannot run at this size
        raise VargfaceError(f"cannot infer the network's shapes for input {tuple(data_shape)}: "
                            f"{last_line(error)}") from None
    if arg_shapes is None:
        raise VargfaceError(f"cannot infer the network's shapes for input {tuple(data_shape)}")
    shapes = dict(zip(internals.list_arguments(), arg_shapes))
    shapes.update(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())["nodes"]

    flops = 0
    ops = Counter()
    for node in nodes:
        op, attrs = node["op"], node.get("attrs", {})
        if op == "null":
            continue
        ops["PReLU" if op == "LeakyReLU" and attrs.get("act_type") == "prelu" else op] += 1
        inputs = [nodes[i[0]]["name"] for i in node["inputs"]]
        if op == "Convolution":
            groups = int(attrs.get("num_group", "1"))
            cout, cin_per_group, kh, kw = shapes[inputs[1]]
            _, _, hout, wout = shapes[node["name"] + "_output"]
            per_output = 2 * cin_per_group * groups * kh * kw - (1 if _true(attrs, "no_bias", False) else 0)
            flops += per_output * hout * wout * cout // groups
        elif op == "FullyConnected":
            out_dim, in_dim = shapes[inputs[1]]
            flops += 2 * in_dim * out_dim - (out_dim if _true(attrs, "no_bias", False) else 0)

    params = sum(_size(shapes[n]) for n in sym.list_arguments() if not _is_input(n))
    aux = sum(_size(s) for s in aux_shapes)
    return {
        "params": params,
        "aux": aux,
        "flops": flops,
        "macs": flops // 2,
        "short": short_form(flops),
        "fits_budget": fits_budget(flops) if tuple(data_shape[2:]) == (BUDGET_INPUT_SIZE,) * 2 else None,
        "ops": dict(sorted(ops.items())),
    }


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def short_form(flops):
    """The challenge's figure: GFLOPs rounded to one decimal ("1.0G")."""
    return f"{flops / 1e9:.1f}G"


def fits_budget(flops):
    """Fits the deepglint-light track if the rounded figure is within 1.0G (the release's 1.0229G does)."""
    return round(flops / 1e9, 1) <= BUDGET_GFLOPS
