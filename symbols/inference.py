"""The inference graph: any network's Symbol rewritten for inference into fewer and faster oneDNN ops that compute
the same outputs, with arrays derived from the checkpoint's (docs/inference.md says why each rewrite was chosen).

- A BatchNorm after a Convolution or FullyConnected is folded into its weight and bias.
- A 1x1 depthwise convolution (a per-channel scale, as in PocketNet) is folded into the convolution it feeds.
- PReLU ``prelu(x, g)`` becomes ``x + relu(-(1 - g) * x)``: a BatchNorm with fused ReLU, which oneDNN runs in the
  input's own blocked layout, and an ``elemwise_add``. The identity needs every slope g <= 1; a layer with a larger
  slope keeps MXNet's PReLU. Which layers qualify depends on the weights, so `InferenceGraph.fits` says whether
  new weights still run on a built graph.
- Dropout and identity copies are dropped.

The rewrite reads the Symbol's JSON graph, so every network gets it without per-network code; the names of the
outputs (taps included) are kept. Checkpoints and exports keep the faithful graph."""
import json

import numpy as np

from vargface.errors import VargfaceError

IDENTITY_OPS = ("Dropout", "_copy", "identity")
FOLDED = ("_folded_weight", "_folded_bias")
NEGATIVE = ("_negative_gamma", "_negative_beta", "_negative_mean", "_negative_var")


def _true(value):
    return str(value).lower() in ("true", "1")


def _ints(text, default):
    return tuple(int(v) for v in str(text).strip("()[] ").split(",") if v.strip()) if text else default


class _Graph:
    """The faithful graph's nodes, who reads each output, and every output's shape."""

    def __init__(self, symbol, input_size):
        self.json = json.loads(symbol.tojson())
        self.nodes = self.json["nodes"]
        self.readers = {}
        for node_id, node in enumerate(self.nodes):
            for source, index, _ in node["inputs"]:
                self.readers.setdefault((source, index), []).append(node_id)
        for source, index, _ in self.json["heads"]:
            self.readers.setdefault((source, index), []).append(None)  # an output of the graph
        internals = symbol.get_internals()
        shapes = internals.infer_shape_partial(data=(1, 3, input_size, input_size))[1]
        self.shapes = dict(zip(internals.list_outputs(), shapes))

    def attrs(self, node_id):
        return self.nodes[node_id].get("attrs", {})

    def source(self, node_id, position=0):
        """(node id, output index) of an input."""
        return tuple(self.nodes[node_id]["inputs"][position][:2])

    def input_name(self, node_id, position):
        return self.nodes[self.source(node_id, position)[0]]["name"]

    def sole_reader(self, node_id):
        """The node reading output 0 of ``node_id``, when it is the only reader (a graph output counts)."""
        readers = self.readers.get((node_id, 0), [])
        return readers[0] if len(readers) == 1 else None

    def channels(self, node_id):
        """Channels (axis 1) of output 0 of ``node_id``, None if unknown."""
        node = self.nodes[node_id]
        shape = self.shapes.get(node["name"] if node["op"] == "null" else node["name"] + "_output") or ()
        return shape[1] if len(shape) > 1 else None


class _Fold:
    """A Convolution or FullyConnected with what is folded into it: a per-channel affine before it (``before``,
    another _Fold that only scales channels) and a BatchNorm after it. ``end`` is the node whose output the
    folded layer replaces."""

    def __init__(self, graph, layer):
        attrs = graph.attrs(layer)
        self.layer = self.end = layer
        self.op = graph.nodes[layer]["op"]
        self.attrs = attrs
        self.weight = graph.input_name(layer, 1)
        self.bias = None if _true(attrs.get("no_bias", False)) else graph.input_name(layer, 2)
        self.before = None
        self.batchnorm = None  # (gamma, beta, mean, var) names, fix_gamma, eps

    @property
    def has_bias(self):
        return self.bias is not None or self.batchnorm is not None or (self.before is not None
                                                                        and self.before.has_bias)

    def filters_on_axis1(self, graph):
        """Whether axis 1 of the layer's output is its filters (what a BatchNorm after it normalises)."""
        node = graph.nodes[self.layer]
        shape = graph.shapes.get(node["name"] + "_output") or ()
        filters = int(self.attrs.get("num_filter" if self.op == "Convolution" else "num_hidden", -1))
        return (len(shape) > 1 and shape[1] == filters and self.attrs.get("layout", "NCHW") == "NCHW"
                and (self.op == "Convolution" or len(shape) == 2))

    def is_channel_scale(self, graph):
        """1x1, stride 1, no padding, one channel a group: the layer scales (and shifts) each channel."""
        attrs, channels = self.attrs, graph.channels(graph.source(self.layer)[0])
        return (self.op == "Convolution" and _ints(attrs.get("kernel"), ()) == (1, 1)
                and set(_ints(attrs.get("stride"), (1,))) == {1} and set(_ints(attrs.get("pad"), (0,))) == {0}
                and attrs.get("layout", "NCHW") == "NCHW" and channels is not None
                and int(attrs.get("num_group", 1)) == int(attrs["num_filter"]) == channels)

    def takes(self, graph, scale):
        """Whether the channel scale ``scale`` (a _Fold) can move into this layer: it must be a Convolution that
        reads only it, and pad nothing if the scale shifts too (the padded border would miss the shift)."""
        return (self.op == "Convolution" and scale.is_channel_scale(graph) and graph.source(self.layer) == (scale.end, 0)
                and graph.sole_reader(scale.end) == self.layer
                and (not scale.has_bias or set(_ints(self.attrs.get("pad"), (0,))) == {0}))

    def data(self, graph):
        """(node id, index) of the faithful input of the whole fold."""
        return self.before.data(graph) if self.before else graph.source(self.layer)

    def nodes(self):
        """Every faithful node the fold replaces."""
        own = {self.layer, self.end}
        return own | self.before.nodes() if self.before else own

    def arrays(self, params):
        """(weight, bias or None) in float64 from ``params`` (name -> numpy)."""
        weight = params[self.weight].astype(np.float64)
        bias = params[self.bias].astype(np.float64) if self.bias else None
        if self.before is not None:
            scale, shift = self.before.arrays(params)
            outputs, per_group = weight.shape[0], weight.shape[1]
            groups = int(self.attrs.get("num_group", 1))
            # index[o, j]: the input channel that weight[o, j] reads
            index = (np.arange(outputs)[:, None] // (outputs // groups)) * per_group + np.arange(per_group)
            spatial = (1,) * (weight.ndim - 2)
            if shift is not None:
                moved = (weight * shift[index].reshape(index.shape + spatial)).sum(axis=tuple(range(1, weight.ndim)))
                bias = moved if bias is None else bias + moved
            weight = weight * scale.reshape(-1)[index].reshape(index.shape + spatial)
        if self.batchnorm is not None:
            (gamma, beta, mean, var), fix_gamma, eps = self.batchnorm
            gamma = 1.0 if fix_gamma else params[gamma].astype(np.float64)
            scale = gamma / np.sqrt(params[var].astype(np.float64) + eps)
            weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            bias = ((0.0 if bias is None else bias) - params[mean]) * scale + params[beta]
        return weight, bias


class InferenceGraph:
    """The inference form of ``symbol`` (input ``data`` at ``input_size``, any outputs) for weights like
    ``arg_params``: ``symbol``, and the arrays it runs with from `params`."""

    def __init__(self, symbol, arg_params, input_size):
        graph = _Graph(symbol, input_size)
        self._names = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
        self._node_names = [node["name"] for node in graph.nodes]
        self.folds = self._plan_folds(graph)
        self._slopes = self._prelu_slopes(graph)
        self.prelus = self._rewritable(arg_params)
        self.symbol = self._emit(graph)
        self._args = set(self.symbol.list_arguments()) - {"data"}
        self._aux = set(self.symbol.list_auxiliary_states())

    @staticmethod
    def _plan_folds(graph):
        """{end node id: _Fold} of every Convolution/FullyConnected, with what folds into it."""
        folds = {}
        for node_id, node in enumerate(graph.nodes):
            source = graph.source(node_id) if node["inputs"] else None
            if node["op"] in ("Convolution", "FullyConnected") and all(
                    graph.nodes[i[0]]["op"] == "null" for i in node["inputs"][1:]):  # weights are arrays
                fold = _Fold(graph, node_id)
                if source and source[0] in folds and fold.takes(graph, folds[source[0]]):
                    fold.before = folds.pop(source[0])
                folds[node_id] = fold
            elif node["op"] == "BatchNorm" and source and source[0] in folds and source[1] == 0:
                fold, attrs = folds[source[0]], node.get("attrs", {})
                if fold.batchnorm is None and graph.sole_reader(source[0]) == node_id and fold.filters_on_axis1(graph) \
                        and int(attrs.get("axis", 1)) == 1 and not _true(attrs.get("output_mean_var", False)):
                    names = tuple(graph.input_name(node_id, i) for i in range(1, 5))
                    fold.batchnorm = (names, _true(attrs.get("fix_gamma", True)), float(attrs.get("eps", 1e-3)))
                    fold.end = node_id
                    folds[node_id] = folds.pop(source[0])
        return folds

    @staticmethod
    def _prelu_slopes(graph):
        """{LeakyReLU(prelu) node id: slope array name} of the layers with one slope a channel."""
        slopes = {}
        for node_id, node in enumerate(graph.nodes):
            if node["op"] == "LeakyReLU" and node.get("attrs", {}).get("act_type") == "prelu":
                channels = graph.channels(graph.source(node_id)[0])
                slope = graph.input_name(node_id, 1)
                if channels and graph.shapes.get(slope) and tuple(graph.shapes[slope]) == (channels,):
                    slopes[node_id] = slope
        return slopes

    def _rewritable(self, arg_params):
        """{node id: slope name} of the PReLU layers whose slopes are all <= 1 in ``arg_params``."""
        return {node_id: slope for node_id, slope in self._slopes.items()
                if float(arg_params[slope].asnumpy().max()) <= 1.0}

    def fits(self, arg_params):
        """Whether ``arg_params`` run on this graph exactly as on one built for them."""
        return self._rewritable(arg_params) == self.prelus

    def _emit(self, graph):
        import mxnet as mx

        nodes, remap = [], {}
        replaced = set().union(*(fold.nodes() for fold in self.folds.values())) if self.folds else set()

        def add(op, name, inputs=(), attrs=None):
            node = {"op": op, "name": name, "inputs": [list(i) for i in inputs]}
            if attrs:
                node["attrs"] = {key: str(value) for key, value in attrs.items()}
            nodes.append(node)
            return [len(nodes) - 1, 0, 0]

        def variable(name):
            if name in self._names:
                raise VargfaceError(f"inference graph: the network already has an array named {name!r}")
            return add("null", name)

        def entry(source, index):
            new = remap[source]
            return [new[0], new[1] + index, 0]

        for node_id, node in enumerate(graph.nodes):
            name, op = node["name"], node["op"]
            if node_id in self.folds:
                fold = self.folds[node_id]
                inputs = [entry(*fold.data(graph)), variable(name + FOLDED[0])]
                if fold.has_bias:
                    inputs.append(variable(name + FOLDED[1]))
                remap[node_id] = add(fold.op, name, inputs, dict(fold.attrs, no_bias=not fold.has_bias))
            elif node_id in replaced:
                continue
            elif op in IDENTITY_OPS:
                remap[node_id] = entry(*graph.source(node_id))
            elif node_id in self.prelus:
                x = entry(*graph.source(node_id))
                negative = add("_contrib_BatchNormWithReLU", name + "_negative",
                               [x] + [variable(name + suffix) for suffix in NEGATIVE],
                               {"eps": 0.0, "fix_gamma": False})
                # the new term first: with x first, MXNet copied every sum once more before the next convolution
                remap[node_id] = add("elemwise_add", name, [negative, x])
            else:
                nodes.append(dict(node, inputs=[entry(s, i) for s, i, _ in node["inputs"]]))
                remap[node_id] = [len(nodes) - 1, 0, 0]
        heads = [entry(s, i) for s, i, _ in graph.json["heads"]]
        arg_nodes = [i for i, node in enumerate(nodes) if node["op"] == "null"]
        return mx.sym.load_json(json.dumps({"nodes": nodes, "arg_nodes": arg_nodes, "heads": heads,
                                            "attrs": graph.json.get("attrs", {})}))

    def params(self, arg_params, aux_params):
        """(arg_params, aux_params) of `symbol`, as float32 numpy, from the faithful graph's arrays."""
        faithful = {name: value.asnumpy() for name, value in {**arg_params, **aux_params}.items()}
        derived = {}
        for node_id, fold in self.folds.items():
            weight, bias = fold.arrays(faithful)
            derived[self._node_names[node_id] + FOLDED[0]] = weight
            if bias is not None:
                derived[self._node_names[node_id] + FOLDED[1]] = bias
        for node_id, slope in self.prelus.items():
            gamma = -(1.0 - faithful[slope].astype(np.float64))
            zeros, ones = np.zeros_like(gamma), np.ones_like(gamma)
            for suffix, value in zip(NEGATIVE, (gamma, zeros, zeros, ones)):
                derived[self._node_names[node_id] + suffix] = value
        arrays = {**faithful, **derived}
        pick = lambda names: {name: arrays[name].astype(np.float32) for name in names}  # noqa: E731
        return pick(self._args), pick(self._aux)
