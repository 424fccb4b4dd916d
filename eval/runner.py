"""InferenceRunner: the one way this project runs a network for inference (evaluation, embedding, the frozen
distillation teacher, the trainer's verification rounds).

It runs the network's inference graph (`vargface.symbols.inference`: BatchNorm folded into the layers before it,
PReLU as a fused BatchNorm+ReLU and a sum) on arrays it derives from the weights it was last given, binds its own
executors, pads the last batch to the bound size and resizes every image with one rule
(`vargface.data.images.resize`, in float32). docs/inference.md has the measurements.

Why the executors are bound without MXNet's own subgraph pass: MXNet 1.9.1's fused convolution keeps the weights
it derived at its first forward pass, so weights copied in later are not fully seen (stale embeddings in the
trainer's verification rounds), and for MobileFaceNet (y1, y2) a fused op's output keeps the oneDNN layout, so
reading it after the second forward pass fails with "We can't generate TBlob for MKLDNN data". The inference
graph already holds the fusions that pay here, as plain ops whose arrays are copied in for every new set of
weights; MXNet's pass added little on top (docs/inference.md). Binding these executors under MXNet's ``default``
subgraph backend instead of MKLDNN turns that pass off for them only: that backend fuses only the operators named
to it, and none are; training modules keep the default. (``MXNET_SUBGRAPH_BACKEND=NONE`` does the same but MXNet
logs a line for every executor bound with it; MXNET_SUBGRAPH_VERBOSE=0 keeps the backend's own line out of the
output.)"""
import contextlib
import os

import numpy as np

from vargface.errors import VargfaceError
from vargface.symbols.checkpoint import OUTPUT


@contextlib.contextmanager
def _without_subgraph_fusion():
    """Executors bound inside this block skip MXNet's graph fusion (MXNet reads the variable at bind time)."""
    settings = {"MXNET_SUBGRAPH_BACKEND": "default", "MXNET_SUBGRAPH_VERBOSE": "0"}
    old = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def cut_at(symbol, output, source="model"):
    """The part of ``symbol`` that ends at the internal output ``output`` (e.g. 'stage3_unit2_relu_output'), or
    at each of a list of outputs (a Group, computed by one forward pass)."""
    import mxnet as mx

    outputs = [output] if isinstance(output, str) else list(output)
    if symbol.list_outputs() == outputs:
        return symbol
    internals = symbol.get_internals()
    names = internals.list_outputs()
    for name in outputs:
        if name not in names:
            close = [n for n in names if n.endswith("_output")][-5:]
            raise VargfaceError(f"{source} has no output named {name!r}; expected '{OUTPUT}' or an internal output "
                                f"such as {', '.join(close)}")
    return internals[outputs[0]] if len(outputs) == 1 else mx.sym.Group([internals[name] for name in outputs])


def flip_sum_embeddings(images, forward, batch_size, flip=True, dtype=np.float32, progress=False, desc="embed"):
    """Embeddings of float32 NCHW ``images``: (embedding(x) + embedding(flip(x))) L2-normalised when ``flip``,
    else embedding(x) L2-normalised. ``forward`` maps a batch of at most ``batch_size`` to (n, D) numpy."""
    from vargface.options import progress_bar

    images = np.asarray(images, dtype=np.float32)
    out = None
    for start in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch", enabled=progress):
        batch = images[start:start + batch_size]
        emb = np.asarray(forward(batch), dtype=np.float64)
        if flip:
            emb = emb + np.asarray(forward(np.ascontiguousarray(batch[:, :, :, ::-1])), dtype=np.float64)
        if out is None:
            out = np.zeros((len(images), emb.shape[1]), np.float64)
        out[start:start + len(batch)] = emb
    if out is None:
        return np.zeros((0, 0), dtype)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(dtype)


class InferenceRunner:
    """A network cut at ``output`` (a name, or a list of names computed together), bound for inference on ``ctx``
    (a '--ctx' string or mx.Context list).

    ``batch_size`` is the bound batch (rounded up to a multiple of the devices); None binds at the size of the first
    batch, which suits a teacher fed the student's fixed batch. ``forward`` takes any number of images."""

    def __init__(self, symbol, arg_params, aux_params, ctx=None, batch_size=32, output=OUTPUT, input_size=None,
                 source="model"):
        from vargface.context import parse_ctx
        from vargface.symbols.checkpoint import input_size_of

        self.contexts = parse_ctx(ctx)
        if batch_size is not None and int(batch_size) < 1:
            raise VargfaceError(f"batch size: expected a positive number, got {batch_size}")
        self.symbol = cut_at(symbol, output, source)
        self.output = output
        self.input_size = int(input_size or input_size_of(symbol))
        used_args, used_aux = set(self.symbol.list_arguments()), set(self.symbol.list_auxiliary_states())
        self._used = (used_args, used_aux)
        shapes = self.symbol.infer_shape(data=(1, 3, self.input_size, self.input_size))[1]
        self.output_shapes = [tuple(shape[1:]) for shape in shapes]
        self.output_shape = self.output_shapes[0]
        self.source = source
        self.module, self.batch_size, self.graph = None, None, None
        self._params = self._select(arg_params, aux_params)
        if batch_size is not None:
            self._bind(int(batch_size))

    @classmethod
    def from_checkpoint(cls, prefix, epoch, ctx=None, batch_size=32, output=OUTPUT):
        """Load ``prefix-symbol.json`` + ``prefix-EPOCH.params`` (every array checked) and bind it."""
        from vargface.symbols.checkpoint import load_checkpoint

        symbol, arg_params, aux_params = load_checkpoint(prefix, epoch)
        return cls(symbol, arg_params, aux_params, ctx=ctx, batch_size=batch_size, output=output,
                   source=f"model {prefix},{epoch}")

    @property
    def embedding_size(self):
        return int(np.prod(self.output_shape))

    def _select(self, arg_params, aux_params):
        """This runner's own copy (on the CPU) of the arrays the cut uses; a missing one is an error naming it."""
        import mxnet as mx

        selected = []
        for given, used in zip((arg_params, aux_params), self._used):
            missing = sorted(used - set(given) - {"data"})
            if missing:
                raise VargfaceError(f"{self.source}: missing array {missing[0]!r} of the network")
            selected.append({name: given[name].copyto(mx.cpu()) for name in used if name != "data"})
        return tuple(selected)

    def _arrays(self):
        """The inference graph's arrays for the current weights, as NDArrays."""
        import mxnet as mx

        return tuple({name: mx.nd.array(value) for name, value in arrays.items()}
                     for arrays in self.graph.params(*self._params))

    def _bound_size(self, batch_size):
        """Module splits a batch evenly across its devices. A batch of one is fine on the inference graph (the
        faithful VarGFaceNet crashed MXNet 1.9.1 at batch one: docs/inference.md#batch-one)."""
        devices = len(self.contexts)
        return -(-max(batch_size, devices) // devices) * devices

    def _bind(self, batch_size):
        import mxnet as mx

        from vargface.symbols.inference import InferenceGraph

        self.batch_size = self._bound_size(batch_size)
        self.graph = InferenceGraph(self.symbol, self._params[0], self.input_size)
        self.module = mx.mod.Module(self.graph.symbol, data_names=["data"], label_names=None, context=self.contexts)
        with _without_subgraph_fusion():
            self.module.bind(data_shapes=[("data", (self.batch_size, 3, self.input_size, self.input_size))],
                             for_training=False)
        self.module.set_params(*self._arrays(), allow_missing=False, allow_extra=False)

    def set_params(self, arg_params, aux_params):
        """Compute with new weights (e.g. the training module's current ones): the inference graph's arrays are
        derived from them again and copied into the executors, or, when the weights need another graph (a PReLU
        slope crossed 1), the graph is rebuilt and bound. Extra arrays are ignored, so a training module's full
        parameter set can be passed."""
        self._params = self._select(arg_params, aux_params)
        if self.module is None:
            return
        if self.graph.fits(self._params[0]):
            self.module.set_params(*self._arrays(), allow_missing=False, allow_extra=False, force_init=True)
        else:
            self._bind(self.batch_size)

    def get_params(self):
        """The weights this runner computes with (its own copy of the network's arrays, from which the inference
        graph's are derived)."""
        return tuple(dict(arrays) for arrays in self._params)

    def forward(self, batch):
        """Raw outputs (n, *output_shape) float32 numpy of float32 NCHW images at the input side, any n."""
        return self.forward_outputs(batch)[0]

    def forward_outputs(self, batch):
        """Every output of the cut (a list of (n, *shape) float32 numpy) for float32 NCHW images, any n."""
        import mxnet as mx

        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, self.input_size, self.input_size):
            raise VargfaceError(f"{self.output}: expected images (N, 3, {self.input_size}, {self.input_size}), "
                                f"got shape {batch.shape}")
        if self.module is None:
            self._bind(max(len(batch), 1))
        outs = [np.zeros((len(batch),) + shape, np.float32) for shape in self.output_shapes]
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:  # inference mode: the zero rows cannot change the real ones
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - count,) + chunk.shape[1:], np.float32)])
            self.module.forward(mx.io.DataBatch(data=[mx.nd.array(chunk)]), is_train=False)
            for out, value in zip(outs, self.module.get_outputs()):
                out[start:start + count] = value.asnumpy()[:count]
        return outs

    def forward_devices(self, slices):
        """Every output of the cut for images already on the devices: ``slices`` holds one float32 NCHW NDArray per
        device (in the order of the runner's contexts, equal sizes); returns, per output, one NDArray per device.
        Nothing is copied to the host (the live distillation teacher feeds the student's devices this way); the
        arrays are the executors' own, overwritten by the next forward pass."""
        import mxnet as mx

        if len(slices) != len(self.contexts):
            raise VargfaceError(f"{self.output}: {len(slices)} image slices for {len(self.contexts)} devices")
        if len({len(s) for s in slices}) != 1:
            raise VargfaceError(f"{self.output}: slices of {[len(s) for s in slices]} images; expected equal ones")
        if self.module is None or self.batch_size != self._bound_size(len(slices) * len(slices[0])):
            self._bind(len(slices) * len(slices[0]))  # once: a training batch keeps its size
        self.module.forward([mx.io.DataBatch(data=[s]) for s in slices], is_train=False)
        return self.module.get_outputs(merge_multi_context=False)

    def prepare(self, images):
        """uint8/float RGB images (an (N, H, W, 3) array or a list of (H, W, 3), any side) -> float32 NCHW at the
        input side, by the one resize rule (`vargface.eval.images.to_input`)."""
        from vargface.eval.images import to_input

        return to_input(images, self.input_size)

    def embed(self, images, flip=True, dtype=np.float32, progress=False, desc="embed"):
        """L2-normalised embeddings of RGB images (see `prepare`)."""
        return self.embed_prepared(self.prepare(images), flip=flip, dtype=dtype, progress=progress, desc=desc)

    def embed_prepared(self, images, flip=True, dtype=np.float32, progress=False, desc="embed"):
        """L2-normalised embeddings of float32 NCHW images at the input side; with ``flip`` each row is the
        image's plus its mirror's, as the verification protocol sums them."""
        return flip_sum_embeddings(images, self.forward, self.batch_size or max(len(images), 1), flip=flip,
                                   dtype=dtype, progress=progress, desc=desc)
