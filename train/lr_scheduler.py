"""Learning-rate schedules on gluoncv's LRScheduler/LRSequential, wrapped for mx.optimizer (per update).

``step``: InsightFace's decay by ``lr_factor`` at each of ``lr_steps`` (global batches). ``cosine``: the
VarGFaceNet authors' advice, cosine decay from ``lr`` to ``lr_min``. Both may start with a linear warm-up from
``warmup_lr`` over ``warmup_steps``. The rate depends only on the update count (and a scale lowered by the NaN
rollback), so a resumed run that restores the count follows the same schedule."""
import mxnet as mx
from gluoncv.utils import LRScheduler as GluonLR
from gluoncv.utils import LRSequential

from vargface.errors import VargfaceError


class Schedule(mx.lr_scheduler.LRScheduler):
    """mx.optimizer-facing wrapper: update ``k`` (1-based, as the optimizer counts) uses the gluoncv schedule at
    ``k - 1`` times ``scale``. The gluoncv parts own the rate; ``base_lr`` is only set to the configured lr because
    mx.optimizer prints a warning when it differs from the optimizer's learning_rate."""

    def __init__(self, sequence, scale=1.0, base_lr=0.01):
        super().__init__(base_lr)
        self.sequence, self.scale = sequence, scale

    def __call__(self, num_update):
        return self.sequence(max(num_update - 1, 0)) * self.scale


def total_steps(config, iters_per_epoch):
    """Length of a cosine schedule: lr_total_steps, else max_steps, else end_epoch epochs."""
    return int(config.lr_total_steps or config.max_steps or config.end_epoch * iters_per_epoch)


def build(config, iters_per_epoch, scale=1.0):
    """The Schedule for ``config.lr_schedule`` (step | cosine)."""
    warmup = int(config.warmup_steps)
    parts = []
    if warmup > 1:
        parts.append(GluonLR("linear", base_lr=float(config.warmup_lr), target_lr=float(config.lr), niters=warmup))
    elif warmup == 1:  # gluoncv's linear ramp divides by niters - 1; one warm-up step runs at warmup_lr
        parts.append(GluonLR("constant", base_lr=float(config.warmup_lr), niters=1))
    if config.lr_schedule == "step":
        steps = [int(s) - warmup for s in config.lr_steps]
        if any(s <= 0 for s in steps) or steps != sorted(steps):
            raise VargfaceError(f"--lr-steps {config.lr_steps}: expected increasing batch counts after the "
                                f"{warmup} warm-up steps")
        horizon = max(steps + [1]) + 10 ** 9
        parts.append(GluonLR("step", base_lr=float(config.lr), niters=horizon, step_iter=steps,
                             step_factor=float(config.lr_factor)))
    elif config.lr_schedule == "cosine":
        length = total_steps(config, iters_per_epoch) - warmup
        if length < 2:
            raise VargfaceError(f"--lr-schedule cosine: {length + warmup} total steps leave no room after "
                                f"{warmup} warm-up steps; set --lr-total-steps or --max-steps")
        parts.append(GluonLR("cosine", base_lr=float(config.lr), target_lr=float(config.lr_min), niters=length))
        # Hold the final rate if training runs past the cosine's end.
        parts.append(GluonLR("constant", base_lr=float(config.lr_min), niters=10 ** 9))
    else:
        raise VargfaceError(f"--lr-schedule {config.lr_schedule!r}: expected 'step' or 'cosine'")
    return Schedule(LRSequential(parts), scale, base_lr=float(config.lr))
