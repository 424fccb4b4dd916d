"""The frozen teacher: any MXNet checkpoint's `fc1_output`, run as an inference-only Module.

The teacher lives outside the student's training graph, so it cannot receive gradients or optimizer updates;
binding with ``for_training=False`` makes BatchNorm use its moving statistics."""
import hashlib
import os

from vargface.errors import VargfaceError

CHUNK = 1 << 20


def file_checksum(path, whole=False):
    """Cheap fingerprint that is still safe for multi-GB files: size + sha1 over the first, middle and last MiB.

    Any re-written, truncated, appended or re-packed file changes its size or one of those chunks; reading three
    MiB keeps this instant for a 20 GB .rec. ``whole`` hashes everything (for an .idx, where every record's
    offset matters); files under 3 MiB (-symbol.json, small .idx) are always hashed whole."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        if whole or size <= 3 * CHUNK:
            for block in iter(lambda: f.read(16 * CHUNK), b""):
                digest.update(block)
        else:
            for offset in (0, size // 2 - CHUNK // 2, size - CHUNK):
                f.seek(offset)
                digest.update(f.read(CHUNK))
    return f"{size}:{digest.hexdigest()}"


def checkpoint_checksum(prefix, epoch):
    """Fingerprint of a checkpoint: its graph and its weights (see `file_checksum`)."""
    from vargface.symbols.checkpoint import checkpoint_files

    return "+".join(file_checksum(p) for p in checkpoint_files(prefix, epoch))


class Teacher:
    """A frozen embedding network loaded from ``prefix,epoch``.

    ``features(data)`` takes the student's batch (N,3,H,W RGB 0..255, already mirrored as the student sees it) and
    returns {tap: NDArray} for the named ``taps`` (`vargface.symbols.taps`; ``embedding`` is the raw
    ``fc1_output`` (N,D)), computed by one forward of the part of the graph they need; ``embed(data)`` is the
    embedding alone. Inputs of another size are resized to the teacher's input."""

    def __init__(self, model, ctx=None, option="--teacher", taps=("embedding",)):
        import mxnet as mx

        from vargface.symbols.checkpoint import input_size_of, load_checkpoint, parse_model_arg
        from vargface.symbols.taps import tap_shapes

        self.prefix, self.epoch = parse_model_arg(model, option=option)
        self.model = f"{self.prefix},{self.epoch}"
        try:  # checks the files, cuts the graph at fc1_output and checks every array's shape
            self.symbol, arg_params, aux_params = load_checkpoint(self.prefix, self.epoch)
        except VargfaceError as error:
            raise VargfaceError(f"{option} {self.model}: cannot use it as the teacher: {error}") from None
        self.input_size = input_size_of(self.symbol)
        self.emb_size = int(self.symbol.infer_shape(data=(1, 3, self.input_size, self.input_size))[1][0][1])
        self.tap_shapes = {tap: shape for tap, (_, shape) in tap_shapes(self.symbol, self.input_size).items()}
        missing = [tap for tap in taps if tap not in self.tap_shapes]
        if missing:
            raise VargfaceError(f"{option} {self.model}: the teacher has no tap {missing[0]!r} (it has "
                                f"{', '.join(self.tap_shapes)})")
        self.taps = tuple(taps)
        self.arg_params, self.aux_params = arg_params, aux_params
        self.checksum = checkpoint_checksum(self.prefix, self.epoch)
        self.ctx = list(ctx) if ctx else [mx.cpu()]
        self._module, self._batch = None, None

    def _bind(self, batch_size):
        import mxnet as mx

        shape = [("data", (batch_size, 3, self.input_size, self.input_size))]
        if self._module is None:
            # Module splits a batch across its devices: never more devices than images.
            from vargface.symbols.taps import tap_symbol

            outputs = mx.sym.Group([tap_symbol(self.symbol, self.input_size, tap) for tap in self.taps])
            self._module = mx.mod.Module(outputs, data_names=["data"], label_names=None,
                                         context=self.ctx[:batch_size])
            self._module.bind(data_shapes=shape, for_training=False, inputs_need_grad=False)
            self._module.set_params(self.arg_params, self.aux_params, allow_missing=False, allow_extra=True)
        else:
            self._module.reshape(shape)
        self._batch = batch_size

    def embed(self, data):
        """Teacher embeddings (NDArray (N,D), float32, on cpu) of a batch of images (NDArray N,3,H,W)."""
        return self.features(data)["embedding"]

    def features(self, data):
        """{tap: NDArray (N, ...) float32 on cpu} of a batch of images (NDArray N,3,H,W)."""
        import mxnet as mx

        if data.shape[2:] != (self.input_size, self.input_size):
            data = mx.nd.contrib.BilinearResize2D(data, height=self.input_size, width=self.input_size)
        if self._batch != data.shape[0]:
            self._bind(data.shape[0])
        self._module.forward(mx.io.DataBatch(data=[data]), is_train=False)
        return {tap: out.as_in_context(mx.cpu()) for tap, out in zip(self.taps, self._module.get_outputs())}

    def get_params(self):
        """The teacher's weights as its executors hold them, read back from the devices, so a test can show that
        training left them unchanged (Module.get_params alone returns the copies made when they were loaded)."""
        if self._module is None:
            return self.arg_params, self.aux_params
        self._module._sync_params_from_devices()
        return self._module.get_params()

    def describe(self):
        return {"checkpoint": self.model, "checksum": self.checksum, "emb_size": self.emb_size,
                "input_size": self.input_size}
