"""A faster training graph for CPU: the same function, arrays and names as any faithful graph, in other ops.

On CPU with oneDNN (seen with ``DNNL_VERBOSE=1``), MXNet's PReLU backward is slow, and BatchNorm and pooling
backward fall to reference kernels when data and gradient arrive in different blocked layouts, as after
VarGFaceNet's 8-channel grouped convolutions. Here PReLU becomes ``relu(x) + dwconv1x1(x - relu(x), gamma)`` with
the same ``<name>_gamma`` array and global average pooling becomes ``mean``; docs/fast_graph.md says why each op
was chosen. The rewrite also avoids MXNet's PReLU slope-gradient defect (same page).

The rewrite works on the Symbol's JSON graph, so it serves every network without per-network code. Checkpoints
keep the faithful graph; the rewrite only changes how the optimizer's forward and backward passes are computed."""
import json

import mxnet as mx

from vargface.symbols.common import DEFAULT_INPUT_SIZE, INPUT_SIZE_ATTR


def fast_graph(sym, data_shape=None):
    """The fast training form of ``sym`` (a Symbol with input ``data``): same arguments, auxiliary states and
    outputs, same function. ``data_shape`` (default: one RGB image at the side the network was built for) only
    serves shape inference, to broadcast each PReLU slope over its input's axes."""
    graph = json.loads(sym.tojson())
    out_shapes, arg_shapes = _shapes(sym, data_shape)
    nodes, remap = [], {}

    def add(op, name, inputs, attrs=None):
        node = {"op": op, "name": name, "inputs": [list(i) for i in inputs]}
        if attrs:
            node["attrs"] = {key: str(value) for key, value in attrs.items()}
        nodes.append(node)
        return [len(nodes) - 1, 0, 0]

    for old_id, node in enumerate(graph["nodes"]):
        inputs = [[remap[i][0], remap[i][1] + index, version] for i, index, version in node["inputs"]]
        name, op, attrs = node["name"], node["op"], node.get("attrs", {})
        ndim = len(out_shapes.get(name + "_output") or ())
        # hidden attributes (a tap's name, __shape__, ...) travel to the node that replaces this one
        hidden = {key: value for key, value in attrs.items() if key.startswith("__")}
        if op == "LeakyReLU" and attrs.get("act_type") == "prelu" and ndim >= 2:
            x, gamma = inputs
            gamma_node = nodes[gamma[0]]
            if gamma_node["op"] == "null" and arg_shapes.get(gamma_node["name"]):
                # Reshape hides gamma's shape from shape inference; state it on the variable.
                gamma_node.setdefault("attrs", {})["__shape__"] = str(tuple(arg_shapes[gamma_node["name"]]))
            # relu(x) + gamma * (x - relu(x)); relu's gradient at 0 is 0, so the gradient there is gamma, as in
            # MXNet's PReLU
            positive = add("Activation", name + "_positive", [x], {"act_type": "relu"})
            negative = add("elemwise_sub", name + "_negative", [x, positive])
            if ndim == 4:
                # a 1x1 depthwise convolution: oneDNN computes the slope gradient (a sum over batch and space)
                # several times faster than broadcast_mul's backward reduction
                channels = arg_shapes[gamma_node["name"]][0]
                weight = add("Reshape", name + "_slope", [gamma], {"shape": (-1, 1, 1, 1)})
                scaled = add("Convolution", name + "_scaled", [negative, weight],
                             {"kernel": (1, 1), "num_filter": channels, "num_group": channels, "no_bias": True})
            else:
                slope = add("Reshape", name + "_slope", [gamma], {"shape": (1, -1) + (1,) * (ndim - 2)})
                scaled = add("broadcast_mul", name + "_scaled", [negative, slope])
            # elemwise_add: oneDNN sums in its own layouts (broadcast_add would reorder both to plain)
            remap[old_id] = add("elemwise_add", name, [positive, scaled], hidden)
        elif op == "Pooling" and attrs.get("global_pool") == "True" and attrs.get("pool_type") == "avg" and ndim == 4:
            remap[old_id] = add("mean", name, inputs, {"axis": (2, 3), "keepdims": True, **hidden})
        else:
            nodes.append(dict(node, inputs=inputs))
            remap[old_id] = [len(nodes) - 1, 0, 0]
    heads = [[remap[i][0], remap[i][1] + index, version] for i, index, version in graph["heads"]]
    arg_nodes = [i for i, node in enumerate(nodes) if node["op"] == "null"]
    return mx.sym.load_json(json.dumps({"nodes": nodes, "arg_nodes": arg_nodes, "heads": heads,
                                        "attrs": graph["attrs"]}))


def _shapes(sym, data_shape):
    """Output shapes of every node and argument shapes (unknown ones empty)."""
    if data_shape is None:
        size = int(sym.attr_dict().get("data", {}).get(INPUT_SIZE_ATTR, DEFAULT_INPUT_SIZE))
        data_shape = (1, 3, size, size)
    internals = sym.get_internals()
    _, outputs, _ = internals.infer_shape_partial(data=tuple(data_shape))
    arguments, _, _ = sym.infer_shape_partial(data=tuple(data_shape))
    return dict(zip(internals.list_outputs(), outputs)), dict(zip(sym.list_arguments(), arguments))


def prelu_slope_gradients(ctx, rewritten=False, channels=8):
    """(slope gradient by back-propagation, the same by finite differences, the slopes) of a convolution -> PReLU
    graph on ``ctx`` (``rewritten``: its fast form). The loss, sum(y * dy) for a fixed dy, is linear in the slopes, so a
    central difference is exact up to rounding: the two agree where MXNet's PReLU computes the slope gradient
    right, and the first is ``gamma`` times the second where it has the defect of docs/fast_graph.md."""
    import numpy as np

    shape = (4, channels, 3, 3)
    net = mx.sym.LeakyReLU(mx.sym.Convolution(mx.sym.Variable("data"), num_filter=channels, kernel=(1, 1),
                                              no_bias=True, name="check_conv"), act_type="prelu", name="check_act")
    if rewritten:
        net = fast_graph(net, data_shape=shape)
    rng = np.random.RandomState(0)
    values = {"data": rng.normal(0, 1, shape), "check_conv_weight": rng.normal(0, 0.5, (channels, channels, 1, 1)),
              "check_act_gamma": rng.uniform(0.2, 1.0, channels)}
    out_grad = mx.nd.array(rng.normal(0, 1, shape), ctx=ctx)

    def bound(gamma):  # a training binding: no graph fusion
        executor = net.simple_bind(ctx, grad_req="write", data=shape)
        for name, value in dict(values, check_act_gamma=gamma).items():
            executor.arg_dict[name][:] = value
        return executor

    def loss(gamma):
        output = bound(gamma).forward(is_train=True)[0]
        return float(mx.nd.sum(output.astype("float64") * out_grad.astype("float64")).asscalar())

    executor = bound(values["check_act_gamma"])
    executor.forward(is_train=True)
    executor.backward(out_grad)
    backprop = executor.grad_dict["check_act_gamma"].asnumpy()
    gamma = values["check_act_gamma"]
    finite = np.array([loss(gamma + 0.5 * e) - loss(gamma - 0.5 * e) for e in np.eye(channels)])
    return backprop, finite, gamma


def prelu_kernel_right(ctx):
    """Whether MXNet's own PReLU computes the slope gradient right on ``ctx`` (see `prelu_slope_gradients`); False
    when the check cannot run there (e.g. a GPU of a CPU-only build)."""
    import numpy as np

    try:
        backprop, finite, _ = prelu_slope_gradients(ctx)
    except mx.base.MXNetError:
        return False
    return bool(np.allclose(backprop, finite, rtol=1e-3, atol=1e-3))
