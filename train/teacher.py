"""The frozen teacher: any MXNet checkpoint's `fc1_output`, run as an inference-only Module.

The teacher lives outside the student's training graph, so it cannot receive gradients or optimizer updates;
binding with ``for_training=False`` makes BatchNorm use its moving statistics."""
from vargface.errors import VargfaceError


class Teacher:
    """A frozen embedding network loaded from ``prefix,epoch``, run by an `InferenceRunner`.

    ``features(data)`` takes the student's batch (N,3,H,W RGB 0..255, already mirrored as the student sees it) and
    returns {tap: NDArray} for the named ``taps`` (`vargface.symbols.taps`; ``embedding`` is the raw
    ``fc1_output`` (N,D)), computed by one forward of the part of the graph they need; ``embed(data)`` is the
    embedding alone. Inputs of another size are resized by the runner's one rule, so the teacher sees the pixels
    the evaluator sees for the same image."""

    def __init__(self, model, ctx=None, option="--teacher", taps=("embedding",)):
        from vargface.eval.runner import InferenceRunner
        from vargface.symbols.checkpoint import checkpoint_checksum, input_size_of, load_checkpoint, parse_model_arg
        from vargface.symbols.taps import tap_shapes

        self.prefix, self.epoch = parse_model_arg(model, option=option)
        self.model = f"{self.prefix},{self.epoch}"
        try:  # checks the files, cuts the graph at fc1_output and checks every array's shape
            symbol, arg_params, aux_params = load_checkpoint(self.prefix, self.epoch)
        except VargfaceError as error:
            raise VargfaceError(f"{option} {self.model}: cannot use it as the teacher: {error}") from None
        input_size = input_size_of(symbol)
        shapes = tap_shapes(symbol, input_size)
        self.tap_shapes = {tap: shape for tap, (_, shape) in shapes.items()}
        missing = [tap for tap in taps if tap not in self.tap_shapes]
        if missing:
            raise VargfaceError(f"{option} {self.model}: the teacher has no tap {missing[0]!r} (it has "
                                f"{', '.join(self.tap_shapes)})")
        self.taps = tuple(taps)
        # Bound at the first batch's size: the student's batch, fixed through training.
        self.runner = InferenceRunner(symbol, arg_params, aux_params, ctx=ctx, batch_size=None,
                                      output=[shapes[tap][0] for tap in self.taps], source=f"{option} {self.model}")
        self.symbol, self.input_size = symbol, self.runner.input_size
        self.ctx = self.runner.contexts  # a schedule's next teacher binds to the same devices
        self.emb_size = int(self.tap_shapes["embedding"][0])
        self.checksum = checkpoint_checksum(self.prefix, self.epoch)

    def embed(self, data):
        """Teacher embeddings (NDArray (N,D), float32, on cpu) of a batch of images (NDArray N,3,H,W)."""
        return self.features(data)["embedding"]

    def features(self, data):
        """{tap: NDArray (N, ...) float32 on cpu} of a batch of images (NDArray N,3,H,W)."""
        import mxnet as mx

        images = data.asnumpy()
        if images.shape[2:] != (self.input_size, self.input_size):
            images = self.runner.prepare(images.transpose(0, 2, 3, 1))
        return {tap: mx.nd.array(out, ctx=mx.cpu()) for tap, out in zip(self.taps, self.runner.forward_outputs(images))}

    def features_on_devices(self, slices):
        """{tap: [NDArray per device]} of the student's images already on its devices (one slice per device, the
        teacher bound on the same devices): the teacher's outputs stay there for the student's step, with no copy
        to the host. A teacher of another input size resizes on the host by the runner's rule (the pixels the
        evaluator sees), then returns its outputs to the devices."""
        import mxnet as mx

        if slices[0].shape[2:] == (self.input_size, self.input_size):
            return dict(zip(self.taps, self.runner.forward_devices(slices)))
        images = self.runner.prepare(mx.nd.concat(*[s.as_in_context(mx.cpu()) for s in slices], dim=0)
                                     .asnumpy().transpose(0, 2, 3, 1))
        outputs, start, split = self.runner.forward_outputs(images), 0, []
        for s in slices:
            split.append((start, start + len(s), s.context))
            start += len(s)
        return {tap: [mx.nd.array(out[a:b], ctx=ctx) for a, b, ctx in split] for tap, out in zip(self.taps, outputs)}

    def get_params(self):
        """The teacher's weights: the runner's own copy, from which its executors' arrays are derived (what they
        compute is checked against the checkpoint by forward passes)."""
        return self.runner.get_params()

    def describe(self):
        return {"checkpoint": self.model, "checksum": self.checksum, "emb_size": self.emb_size,
                "input_size": self.input_size}
