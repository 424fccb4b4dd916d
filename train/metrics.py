"""Per-batch training metrics read from the Module's outputs: softmax cross-entropy, accuracy, and the mean of
each plugin loss. The trainer checks them for NaN/inf before applying the update, then averages them over the
speedometer window."""
import math

import numpy as np


def batch_metrics(outputs, label, extra_names):
    """outputs: [softmax probabilities (B, C), the head's and the plugin's loss outputs...] (merged over devices),
    named by ``extra_names``; label (B,). The loss is −log p_y unless an output named ``loss`` gives it (the
    label-smoothed cross-entropy).

    The (B, C) probabilities stay on their device and only (B,) vectors come to the host: with ~90k classes and
    batch 512, copying the whole matrix (~190 MB) and scanning it in NumPy would take a large share of each step. Probabilities lie in [0, 1] or are NaN,
    so their sum is finite exactly when every entry is."""
    import mxnet as mx

    prob = outputs[0]
    label = label.as_in_context(prob.context)
    picked = mx.nd.pick(prob, label, axis=1).asnumpy()
    correct = (mx.nd.argmax(prob, axis=1) == label).asnumpy()
    finite = math.isfinite(float(mx.nd.sum(prob).asscalar()))
    values = {"loss": float(-np.mean(np.log(np.maximum(picked, 1e-30)))) if finite else math.nan,
              "acc": float(np.mean(correct))}
    return {**values, **plugin_metrics(outputs[1:], extra_names)}


def sharded_metrics(result, outputs, extra_names):
    """The sharded classifier's loss and accuracy (a `vargface.train.partial_fc.StepResult`: over the sampled
    centres; label-smoothed with label smoothing), its terms on the centres (``regularface``), and the plugin
    losses' means from the Module's ``outputs`` after the embedding."""
    values = {"loss": float(result.loss.asscalar()), "acc": float(result.accuracy.asscalar()),
              **{name: float(value.asscalar()) for name, value in result.extras.items()}}
    return {**values, **plugin_metrics(outputs, extra_names)}


def plugin_metrics(outputs, extra_names):
    """{name: mean} of the plugin losses' outputs (merged over devices)."""
    return {name: float(np.mean(out.asnumpy())) for name, out in zip(extra_names, outputs)}


def first_nonfinite(values):
    """Name of the first metric that is NaN or infinite (None when all are finite)."""
    return next((k for k, v in values.items() if not math.isfinite(v)), None)


class Window:
    """Averages of the per-batch metrics since the last reset (one speedometer line)."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, values):
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def averages(self):
        return {key: value / max(self.count, 1) for key, value in self.sums.items()}

    def reset(self):
        self.sums, self.count = {}, 0
