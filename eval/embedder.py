"""FaceEmbedder: a checkpoint bound for inference, turning aligned face images into L2-normalised embeddings."""
import numpy as np

from vargface.errors import VargfaceError


def as_contexts(ctx):
    """None -> [cpu(0)]; 'cpu:0,cpu:1' -> parsed; a Context or list of them passes through."""
    import mxnet as mx

    from vargface.context import parse_ctx

    if ctx is None:
        return [mx.cpu(0)]
    if isinstance(ctx, str):
        return parse_ctx(ctx)
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def load_embedding_model(prefix, epoch):
    """(fc1_output symbol, arg_params, aux_params, input side) of a checkpoint: load_checkpoint has already cut
    the graph and checked every array, so this only adds the side to bind and feed at."""
    from vargface.symbols.checkpoint import input_size_of, load_checkpoint

    sym, arg_params, aux_params = load_checkpoint(prefix, epoch)
    return sym, arg_params, aux_params, input_size_of(sym)


class FaceEmbedder:
    """Embeds aligned RGB faces with a ``prefix``-``epoch``.params checkpoint.

    >>> embedder = FaceEmbedder("model/vargfacenet", 1, ctx="cpu", batch_size=32)
    >>> embedder.embed(images_uint8_nhwc_rgb)          # (N, D) float32, rows of unit length
    """

    def __init__(self, prefix, epoch, ctx=None, batch_size=32):
        import mxnet as mx

        from vargface.eval.verification import module_forward

        contexts = as_contexts(ctx)
        if batch_size < 1:
            raise VargfaceError(f"--batch-size: expected a positive number, got {batch_size}")
        self.batch_size = -(-int(batch_size) // len(contexts)) * len(contexts)  # split evenly across devices
        self.symbol, arg_params, aux_params, self.input_size = load_embedding_model(prefix, epoch)
        shape = (self.batch_size, 3, self.input_size, self.input_size)
        self.module = mx.mod.Module(self.symbol, data_names=["data"], label_names=None, context=contexts)
        self.module.bind(data_shapes=[("data", shape)], for_training=False)
        self.module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
        self.embedding_size = int(self.module.output_shapes[0][1][1])
        self._forward = module_forward(self.module)

    def forward(self, batch):
        """Raw network output for a float32 NCHW batch of at most batch_size images -> (n, D) numpy."""
        return self._forward(batch)

    def prepare(self, images):
        """uint8 RGB NHWC (any side) -> float32 NCHW at the model's input side."""
        from vargface.data.images import resize
        from vargface.eval.images import to_nchw

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[3] != 3:
            raise VargfaceError(f"images: expected (N, H, W, 3) RGB, got shape {images.shape}")
        side = (self.input_size, self.input_size)
        if images.shape[1:3] != side:
            images = np.stack([resize(image, side) for image in images])
        return to_nchw(images)

    def embed(self, images, flip=True, progress=False):
        """L2-normalised float32 (N, D) embeddings; with ``flip`` each row is the image's plus its mirror's."""
        from vargface.eval.verification import flip_sum_embeddings

        return flip_sum_embeddings(self.prepare(images), self.forward, self.batch_size, flip=flip,
                                   dtype=np.float32, progress=progress)

    def embed_files(self, paths, flip=True, progress=False):
        """Embed image files (aligned faces); a file that does not decode is a VargfaceError naming it.

        Files are decoded a few batches at a time, so memory stays bounded; one progress bar counts images."""
        from tqdm import tqdm

        from vargface.eval.images import read_image

        step, chunks = self.batch_size * 8, []
        with tqdm(total=len(paths), unit="img", desc="embed", disable=not progress) as bar:
            for start in range(0, len(paths), step):
                names = paths[start:start + step]
                chunks.append(self.embed(np.stack([read_image(p, self.input_size) for p in names]), flip=flip))
                bar.update(len(names))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)
