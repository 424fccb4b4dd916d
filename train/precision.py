"""Mixed-precision training (``--dtype float16|bfloat16``) on the Symbol graph: docs/environment.md#mixed-precision.

MXNet's AMP (`mx.contrib.amp`) converts the training Symbol: convolutions and fully connected layers run in the low
precision, casts are inserted around them, and every weight stays float32 (the optimizer updates float32 masters,
and checkpoints are float32). Its dynamic loss scaling exists for Gluon's Trainer only; for a Module it is built
here: each loss head back-propagates ``S`` times its gradient through a node whose forward pass is the identity, with
``S`` fed as an input (so changing it needs no new binding), and the optimizer divides the gradient by ``S`` again.
A step whose gradients overflow is skipped and ``S`` halved; after `GROWTH_INTERVAL` clean updates it doubles."""
import json
from dataclasses import dataclass

from vargface.errors import VargfaceError

FLOAT32 = "float32"
DTYPES = (FLOAT32, "float16", "bfloat16")
SCALE_INPUT = "loss_scale"
# AMP's own defaults (mx.contrib.amp.loss_scaler.LossScaler); below MIN_SCALE an overflow is a NaN, not a scale
# that is too high.
INITIAL_SCALE, MAX_SCALE, MIN_SCALE, GROWTH_INTERVAL = 2.0 ** 16, 2.0 ** 24, 1.0, 2000
# The ops that generate their own gradient (the heads of a training graph).
LOSS_OPS = ("SoftmaxOutput", "MakeLoss", "LinearRegressionOutput", "LogisticRegressionOutput",
            "MAERegressionOutput", "SVMOutput")


def check_devices(dtype, contexts):
    """Refuse a precision the devices cannot train in, naming the option."""
    if dtype == FLOAT32:
        return
    kinds = {c.device_type for c in contexts}
    if dtype == "float16" and kinds != {"gpu"}:
        raise VargfaceError("--dtype float16 trains on GPUs (MXNet's CPU kernels have no float16 convolution); on "
                            "CPUs use --dtype bfloat16 (oneDNN) or float32")
    if dtype == "bfloat16" and kinds != {"cpu"}:
        raise VargfaceError("--dtype bfloat16 trains on CPUs (oneDNN; MXNet 1.9 has no GPU bfloat16 kernels for "
                            "these networks); on GPUs use --dtype float16")


def _scaled_gradient(x, scale):
    """``x`` in the forward pass; ``scale * dL/dx`` in the backward pass: x + (scale - 1) * (x - BlockGrad(x)),
    where the difference is exactly 0 for finite x. ``scale`` holds one value per sample, all equal, so its first
    serves any ``x``, batch-major or not (RegularFace's term is one number)."""
    import mxnet as mx

    zero = mx.sym.reshape(x - mx.sym.BlockGrad(x), shape=(-1,))
    factor = mx.sym.slice_axis(scale, axis=0, begin=0, end=1) - 1.0
    return x + mx.sym.reshape_like(mx.sym.broadcast_mul(zero, factor), x)


def scale_loss_gradients(heads):
    """The loss Symbols ``heads``, each back-propagating its gradient times the input `SCALE_INPUT` (one value per
    sample, the same for all); an output under BlockGrad back-propagates nothing and is kept as it is."""
    import mxnet as mx

    scale = mx.sym.Variable(SCALE_INPUT)
    scaled = []
    for head in heads:
        node = json.loads(head.tojson())["nodes"][-1]
        if node["op"] == "BlockGrad":  # a logged value with no gradient (label smoothing's loss): as it is
            scaled.append(head)
            continue
        if node["op"] not in LOSS_OPS:
            raise VargfaceError(f"mixed precision: the training output {head.name} is a {node['op']}, not a loss op "
                                f"({', '.join(LOSS_OPS)}); its gradient cannot be scaled")
        inputs = head.get_children()
        rest = [inputs[i] for i in range(1, len(inputs.list_outputs()))]
        scaled.append(getattr(mx.sym, node["op"])(_scaled_gradient(inputs[0], scale), *rest, name=head.name,
                                                  **node.get("attrs", {})))
    return scaled


def convert(train_sym, dtype, input_names):
    """``train_sym`` (already with `scale_loss_gradients`) with AMP's casts for ``dtype``; ``input_names`` are
    its data and label inputs (float32 as fed), every other input is a float32 weight."""
    from mxnet.contrib import amp

    return amp.convert_symbol(train_sym, target_dtype=dtype, data_names=list(input_names))


@dataclass
class LossScale:
    """The dynamic loss scale and the clean updates since it last changed (part of the training state, so a
    resumed run continues with the same scale)."""

    scale: float = INITIAL_SCALE
    clean: int = 0

    def overflowed(self):
        """Halve the scale after an overflow; False when it is at its floor (the gradient is NaN at any scale)."""
        if self.scale <= MIN_SCALE:
            return False
        self.scale, self.clean = max(self.scale / 2.0, MIN_SCALE), 0
        return True

    def updated(self):
        """Count a clean update; True when the scale grows (doubles) now."""
        self.clean += 1
        if self.clean >= GROWTH_INTERVAL and self.scale < MAX_SCALE:
            self.scale, self.clean = min(self.scale * 2.0, MAX_SCALE), 0
            return True
        return False
