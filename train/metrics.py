"""Per-batch training metrics read from the Module's outputs: softmax cross-entropy, accuracy, and the mean of
each plugin loss. The trainer checks them for NaN/inf before applying the update, then averages them over the
speedometer window."""
import math

import numpy as np


def batch_metrics(outputs, label, extra_names):
    """outputs: [softmax probabilities (B, C), plugin loss outputs...] (merged over devices); label (B,)."""
    prob = outputs[0].asnumpy()
    label = label.asnumpy().astype(np.int64)
    picked = prob[np.arange(len(label)), label]
    values = {"loss": float(-np.mean(np.log(np.maximum(picked, 1e-30)))) if np.all(np.isfinite(prob)) else math.nan,
              "acc": float(np.mean(np.argmax(prob, axis=1) == label))}
    for name, out in zip(extra_names, outputs[1:]):
        values[name] = float(np.mean(out.asnumpy()))
    return values


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
