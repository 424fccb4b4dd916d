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

        Files are decoded a few batches at a time, so memory stays bounded; one progress bar counts images."""
        from vargface.options import progress_bar
        from vargface.eval.images import read_image

        step, chunks = self.batch_size * 8, []
        with progress_bar(total=len(paths), unit="img", desc="embed", enabled=progress) as bar:
            for start in range(0, len(paths), step):
                names = paths[start:start + step]
                chunks.append(self.embed([read_image(p) for p in names], flip=flip))
                bar.update(len(names))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)
