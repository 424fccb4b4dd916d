"""Embedding distillation losses: the student's embedding is pulled towards the frozen teacher's.

`angular` is the VarGFaceNet form of ShrinkTeaNet's angular distillation: the squared Euclidean distance of the
L2-normalised embeddings, ``||s/|s| - t/|t|||^2 = 2 - 2cos``; it ignores the embedding norm, which the margin loss
does not constrain either. `cosine` is ``1 - cos`` (half of `angular`, kept for users of that form) and `l2` the
raw squared distance (regresses the norm as well)."""
from vargface.errors import VargfaceError

KD_TYPES = ("angular", "cosine", "l2")


def per_sample_distance(student, teacher, kd_type):
    """Symbol (N,) of the per-sample distillation distance; the teacher side gets no gradient."""
    import mxnet as mx

    if kd_type not in KD_TYPES:
        raise VargfaceError(f"--kd-type: unknown distillation loss {kd_type!r}; expected one of {', '.join(KD_TYPES)}")
    teacher = mx.sym.BlockGrad(teacher)
    if kd_type == "l2":
        return mx.sym.sum(mx.sym.square(student - teacher), axis=1)
    s = mx.sym.L2Normalization(student, mode="instance")
    t = mx.sym.L2Normalization(teacher, mode="instance")
    if kd_type == "angular":
        return mx.sym.sum(mx.sym.square(s - t), axis=1)
    return 1.0 - mx.sym.sum(s * t, axis=1)


def distill_loss(student, teacher, kd_type="angular", weight=1.0, name="kd_loss"):
    """Training loss Symbol: outputs the per-sample distance (N,1) (its mean is the metric), and back-propagates
    ``weight * mean(distance)``, so the total objective is margin loss + weight * distillation loss.

    The output is (N,1) because MakeLoss's ``normalization='batch'`` divides by the batch only for 2-d outputs."""
    import mxnet as mx

    if not weight > 0:
        raise VargfaceError(f"--kd-weight: must be > 0 (got {weight}); train without distillation instead")
    return mx.sym.MakeLoss(mx.sym.reshape(per_sample_distance(student, teacher, kd_type), shape=(-1, 1)), grad_scale=float(weight),
                           normalization="batch", name=name)
