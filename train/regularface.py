"""RegularFace's exclusive regularization (docs/losses.md#regularface): (λ / C) · Σ_i max_{j≠i} cos(W_i, W_j) over
the classifier's C class centres, which pushes every centre away from its nearest other one.

The nearest other centre of every row is searched blockwise: rows in blocks whose cosines to all C centres take at
most `BLOCK_BYTES`, each block's row maxima found at once, so no C x C matrix ever exists. Given those partners, the
value and the gradient cost O(C·D): the gradient of each maximum flows to its two centres, the row and its partner
(the first of tied partners, as MXNet's argmax picks it). `penalty` works on one weight matrix of NDArrays: the full
head calls it through the `regularface_loss` symbol (a custom operator), a sampled classifier on the centres it
sampled."""
import mxnet as mx
import numpy as np

# Cosines of one block of rows against every centre: C x (rows in the block) float32 at most this large (with the
# mask of the rows' own columns and their difference, three such arrays exist at once).
BLOCK_BYTES = 64 << 20
# Keeps the norm of an all-zero row finite (its unit vector is then zero).
TINY = 1e-24
OP_TYPE = "vargface_regularface"


def block_rows(num_rows, budget=None):
    """Rows per block so that one block's cosines to all ``num_rows`` centres fit in ``budget`` bytes (default:
    `BLOCK_BYTES`, read when called), at least 1."""
    return max(1, (BLOCK_BYTES if budget is None else budget) // (4 * max(1, num_rows)))


def nearest_others(unit, rows_per_block=None):
    """(C,) int64: for each row of the L2-normalised ``unit`` (C, D), the index of the most similar other row,
    searched ``rows_per_block`` rows at a time (default: `block_rows`)."""
    count = unit.shape[0]
    step = rows_per_block or block_rows(count)
    partners = []
    for start in range(0, count, step):
        stop = min(count, start + step)
        cos = mx.nd.dot(unit[start:stop], unit, transpose_b=True)
        # a row's own cosine (≈ 1) drops to ≈ −3, below every cosine to another row
        own = mx.nd.one_hot(mx.nd.arange(start, stop, ctx=unit.context), count, on_value=4.0)
        partners.append(mx.nd.argmax(cos - own, axis=1))
    return mx.nd.concat(*partners, dim=0).astype("int64")


def penalty(weight, lam, rows_per_block=None):
    """(value (1,), gradient (C, D)) of (λ / C) · Σ_i max_{j≠i} cos(W_i, W_j) for the centres ``weight`` (C, D),
    NDArrays on ``weight``'s device. Fewer than two centres have no other one: value and gradient are zero."""
    count = weight.shape[0]
    if count < 2 or not lam:
        return mx.nd.zeros((1,), ctx=weight.context), mx.nd.zeros_like(weight)
    norm = mx.nd.sqrt(mx.nd.sum(mx.nd.square(weight), axis=1, keepdims=True) + TINY)
    unit = mx.nd.broadcast_div(weight, norm)
    partner = nearest_others(unit, rows_per_block)
    nearest = mx.nd.take(unit, partner)
    scale = float(lam) / count
    value = mx.nd.sum(unit * nearest).reshape((1,)) * scale
    # d/d unit_i = scale · (unit_partner(i) + Σ of unit_k over the rows k whose partner is i): the second sum is
    # chooserᵀ · unit, chooser the sparse (C, C) matrix with one 1 per row, at its partner's column.
    ctx = weight.context
    chooser = mx.nd.sparse.csr_matrix((mx.nd.ones(count, ctx=ctx), partner,
                                       mx.nd.arange(count + 1, ctx=ctx).astype("int64")), shape=(count, count),
                                      ctx=ctx)
    chosen_by = mx.nd.sparse.dot(chooser, unit, transpose_a=True, forward_stype="default")
    grad_unit = (nearest + chosen_by) * scale
    # through the normalisation W / ‖W‖: (g − û (û·g)) / ‖W‖
    radial = mx.nd.sum(unit * grad_unit, axis=1, keepdims=True)
    return value, mx.nd.broadcast_div(grad_unit - mx.nd.broadcast_mul(unit, radial), norm)


class _RegularFace(mx.operator.CustomOp):
    """`penalty` as a graph operator: its value forward, its gradient (times the output's gradient) backward."""

    def __init__(self, lam, rows_per_block):
        super().__init__()
        self.lam, self.rows_per_block, self.grad = lam, rows_per_block, None

    def forward(self, is_train, req, in_data, out_data, aux):
        value, grad = penalty(in_data[0], self.lam, self.rows_per_block)
        self.grad = grad if is_train else None
        self.assign(out_data[0], req[0], value)

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        self.assign(in_grad[0], req[0], mx.nd.broadcast_mul(self.grad, out_grad[0].reshape((1, 1))))
        self.grad = None


@mx.operator.register(OP_TYPE)
class _RegularFaceProp(mx.operator.CustomOpProp):
    def __init__(self, lam, rows_per_block="0"):
        super().__init__(need_top_grad=True)
        self.lam, self.rows_per_block = float(lam), int(rows_per_block) or None

    def list_arguments(self):
        return ["weight"]

    def list_outputs(self):
        return ["output"]

    def infer_shape(self, in_shape):
        return in_shape, [(1,)], []

    def infer_type(self, in_type):
        # float32 whether or not the centres' type is known yet (MakeLoss after it needs one)
        return [np.float32], [np.float32], []

    def create_operator(self, ctx, shapes, dtypes):
        return _RegularFace(self.lam, self.rows_per_block)


def regularface_loss(weight, lam, rows_per_block=None):
    """The loss Symbol (1,) of the RegularFace term on the centres Symbol ``weight`` (C, D)."""
    term = mx.sym.Custom(weight, op_type=OP_TYPE, lam=float(lam), rows_per_block=int(rows_per_block or 0),
                         name="regularface")
    return mx.sym.MakeLoss(term, name="regularface_loss")
