"""Named taps: the points of an embedding graph that distillation and inspection address by name.

`embedding` is the embedding (`fc1_output`); `stride2` ... `stride16` are the last feature map at that stride of the
input, i.e. the output of the last block before the resolution halves again (before the embedding head for
`stride16`). The builders mark those nodes (`vargface.symbols.common.tap`), and the mark is saved with the graph;
for a graph without marks (a checkpoint of other code) a tap is the last 4-d output of that side."""
import json

from vargface.errors import VargfaceError
from vargface.symbols.common import TAP_ATTR

EMBEDDING = "embedding"
EMBEDDING_OUTPUT = "fc1_output"
STRIDES = (2, 4, 8, 16)
TAPS = (EMBEDDING,) + tuple(f"stride{s}" for s in STRIDES)


def _side(input_size, stride):
    """Map side after halving ``input_size`` down to ``stride`` (a stride-2 conv with pad 1 maps s to ceil(s/2))."""
    side = input_size
    while stride > 1:
        side, stride = -(-side // 2), stride // 2
    return side


def tap_outputs(sym, input_size):
    """tap name -> name of the internal output of ``sym`` (an embedding graph) that the tap reads."""
    found = {EMBEDDING: EMBEDDING_OUTPUT}
    for node in json.loads(sym.tojson())["nodes"]:
        name = node.get("attrs", {}).get(TAP_ATTR)
        if name in TAPS:
            found[name] = node["name"] + "_output"
    missing = [t for t in TAPS if t not in found]
    if missing:
        internals = sym.get_internals()
        _, shapes, _ = internals.infer_shape(data=(1, 3, input_size, input_size))
        for tap in missing:
            side = _side(input_size, int(tap[len("stride"):]))
            last = [n for n, s in zip(internals.list_outputs(), shapes) if len(s) == 4 and s[2:] == (side, side)]
            if last:
                found[tap] = last[-1]
    return {t: found[t] for t in TAPS if t in found}


def tap_symbol(sym, input_size, tap):
    """The part of ``sym`` that computes ``tap``; an unknown tap is an error naming the ones the graph has."""
    outputs = tap_outputs(sym, input_size)
    if tap not in outputs:
        raise VargfaceError(f"unknown tap {tap!r}; this network has {', '.join(outputs)}")
    if sym.list_outputs() == [outputs[tap]]:
        return sym
    return sym.get_internals()[outputs[tap]]


def tap_shapes(sym, input_size):
    """tap name -> (output name, shape of one image's output) at ``input_size``."""
    outputs = tap_outputs(sym, input_size)
    internals = sym.get_internals()
    _, shapes, _ = internals.infer_shape(data=(1, 3, input_size, input_size))
    by_name = dict(zip(internals.list_outputs(), shapes))
    return {t: (name, tuple(by_name[name][1:])) for t, name in outputs.items()}
