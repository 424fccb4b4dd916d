"""Per-step training metrics and the NaN guard's finite check, computed where the outputs are.

Each device reduces its own outputs to a few numbers (the sum of -log p(label), the correct predictions, the sum
of each plugin loss); the step's row is their sum over devices, left on the first device. Nothing comes to the host
on an ordinary step: the rows of a speedometer window are read in one copy when it is logged (or when a checkpoint
or a stop needs them), so the device never waits for the host between logged steps. The (B, C) class
probabilities stay on their devices. The row's loss is NaN when any probability is not finite (a sum of them would
be), which is the NaN guard's test."""
import math

import numpy as np

LOSS, ACCURACY, GRAD_NORM = "loss", "acc", "grad_norm"


class NanLoss(Exception):
    """A metric or weight became NaN or inf; ``where`` names the worker of a distributed run (' on worker K')."""

    def __init__(self, metric, value, epoch, batch, step, where=""):
        super().__init__(f"{metric} became {value} at epoch {epoch} batch {batch} (update {step + 1}){where}")
        self.metric, self.value, self.epoch, self.batch, self.step = metric, value, epoch, batch, step


def device_row(outputs, label):
    """One device's metric sums (float32 NDArray on that device): [sum of -log p(label), correct predictions,
    sum of each further output]. ``outputs``: the device's outputs, the class probabilities (b, C) first."""
    import mxnet as mx

    prob = outputs[0].astype("float32", copy=False)
    picked = mx.nd.pick(prob, label, axis=1)
    # 0 * sum(prob) is 0, or NaN when any probability is not finite
    nll = -mx.nd.sum(mx.nd.log(mx.nd.maximum(picked, 1e-30))) + 0 * mx.nd.sum(prob)
    correct = mx.nd.sum(mx.nd.argmax(prob, axis=1) == label)
    extras = [mx.nd.sum(out.astype("float32", copy=False)) for out in outputs[1:]]
    return mx.nd.concat(*[value.reshape((1,)) for value in [nll, correct] + extras], dim=0)


def sharded_row(result, per_device_outputs, batch, home):
    """The step's metric sums on ``home`` (no host copy) with the sharded classifier (`vargface.train.partial_fc`):
    its loss and accuracy (``result``, means over the sampled centres) times this worker's ``batch``, its terms
    on the centres (``result.extras``, once), then each further Module output's sum over the devices
    (``per_device_outputs``: the outputs after the embedding, one NDArray per device each)."""
    import mxnet as mx

    values = [result.loss * batch, result.accuracy * batch] + list(result.extras.values())
    values += [mx.nd.add_n(*[mx.nd.sum(out).as_in_context(home) for out in output]) for output in per_device_outputs]
    return mx.nd.concat(*[value.as_in_context(home).reshape((1,)) for value in values], dim=0)


def step_row(per_device_outputs, labels, home):
    """The step's metric sums over devices on ``home`` (no host copy). ``per_device_outputs``: for each output, one
    NDArray per device (`Module.get_outputs(merge_multi_context=False)`); ``labels``: one per device."""
    import mxnet as mx

    rows = [device_row([output[d] for output in per_device_outputs], label).as_in_context(home)
            for d, label in enumerate(labels)]
    return rows[0] if len(rows) == 1 else mx.nd.add_n(*rows)


class Window:
    """The step rows since the last logged line. ``names``: loss, acc, the plugin losses and grad_norm when
    clipping; ``counts``: what each sum is divided by (the batch, each plugin output's size, 1).

    A row is an NDArray (read with the others in one copy at `read`) or already on the host (a step that synced
    anyway: mixed precision or clipping)."""

    def __init__(self, names, counts):
        self.names, self.counts = list(names), np.asarray(counts, np.float64)
        self.rows, self.where, self.batches = [], [], 0

    def add(self, row, where):
        """``row`` of one update; ``where`` its (epoch, batch, update count before it)."""
        self.rows.append(row)
        self.where.append(where)
        self.batches += 1

    def skipped(self):
        """A batch trained on without an update (a mixed-precision overflow): it counts for the speed only."""
        self.batches += 1

    def read(self):
        """The rows as metric values (a float array per row), in one copy from the device."""
        import mxnet as mx

        pending = [i for i, row in enumerate(self.rows) if not isinstance(row, np.ndarray)]
        if pending:
            stacked = mx.nd.stack(*[self.rows[i] for i in pending]).asnumpy()
            for i, values in zip(pending, stacked):
                self.rows[i] = values
        return [np.asarray(row, np.float64) / self.counts for row in self.rows]

    def check(self):
        """Raise `NanLoss` for the first row with a metric that is not finite."""
        for values, where in zip(self.read(), self.where):
            check_row(self.names, values, where)

    def averages(self):
        """{name: mean over the window}; an output named ``loss`` (label smoothing's objective) comes after the
        first column and so replaces −log p(label) under that name."""
        values = self.read()
        return {name: float(np.mean([row[i] for row in values])) for i, name in enumerate(self.names)} \
            if values else {}

    def reset(self):
        self.rows, self.where, self.batches = [], [], 0


def check_row(names, values, where):
    """Raise `NanLoss` naming the first metric of ``values`` that is not finite, at ``where`` (epoch, batch,
    update count)."""
    for name, value in zip(names, values):
        if not math.isfinite(value):
            raise NanLoss(name, float(value), *where)
