"""FaceEmbedder: a checkpoint bound for inference, turning aligned face images into L2-normalised embeddings."""
import numpy as np

from vargface.eval.runner import InferenceRunner


def load_embedding_model(prefix, epoch):
    """(fc1_output symbol, arg_params, aux_params, input side) of a checkpoint: load_checkpoint has already cut
    the graph and checked every array, so this only adds the side to bind and feed at."""
    from vargface.symbols.checkpoint import input_size_of, load_checkpoint

    sym, arg_params, aux_params = load_checkpoint(prefix, epoch)
    return sym, arg_params, aux_params, input_size_of(sym)


class FaceEmbedder(InferenceRunner):
    """Embeds aligned RGB faces with a ``prefix``-``epoch``.params checkpoint (an `InferenceRunner` at fc1_output).

    >>> embedder = FaceEmbedder("model/vargfacenet", 1, ctx="cpu", batch_size=32)
    >>> embedder.embed(images_uint8_nhwc_rgb)          # (N, D) float32, rows of unit length
    """

    def __init__(self, prefix, epoch, ctx=None, batch_size=32):
        from vargface.symbols.checkpoint import checkpoint_checksum

        sym, arg_params, aux_params, _ = load_embedding_model(prefix, epoch)
        super().__init__(sym, arg_params, aux_params, ctx=ctx, batch_size=batch_size,
                         source=f"model {prefix},{epoch}")
        self.checksum = checkpoint_checksum(prefix, epoch)  # of the files just loaded and checked

    def embed_files(self, paths, flip=True, progress=False):
        """Embed image files (aligned faces, any side); a file that does not decode is a VargfaceError naming it.

        Files are decoded by threads while the device embeds the images before them, a few batches ahead, so
        memory stays bounded; one progress bar counts images."""
        from vargface.options import progress_bar

        chunks = []
        with progress_bar(total=len(paths), unit="img", desc="embed", enabled=progress) as bar:
            for block in self.embed_stream(paths, flip=flip):
                chunks.append(block)
                bar.update(len(block))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)

    def embed_stream(self, paths, flip=True, step=None):
        """Embeddings of image files in blocks of ``step`` images (default: eight batches), in order; the next
        block's files decode in threads while this one is embedded (`vargface.eval.images.read_images`)."""
        import itertools

        from vargface.eval.images import read_images

        step = step or self.batch_size * 8
        images = read_images(paths, ahead=step)
        for start in range(0, len(paths), step):
            yield self.embed(list(itertools.islice(images, step)), flip=flip)
