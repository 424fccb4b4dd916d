"""`vargface plot-log`: the curves of a trainer JSON-lines log, one quantity per panel over a shared update axis."""
import json
import math
import os

from vargface.errors import VargfaceError

# Fields of a training line that are not losses: each has its own panel (acc, lr, grad_norm) or none.
NOT_LOSSES = {"type", "epoch", "batch", "step", "speed", "lr", "time", "acc", "grad_norm"}
MARKED_POINTS = 60  # series of at most this many points are drawn with a marker at each point
LOG_SPREAD = 20  # distillation terms that differ by more than this factor are drawn on a log axis


def read_log(path):
    """The JSON lines of ``path`` as a list of dicts; a malformed line is an error naming its number."""
    if not os.path.isfile(path):
        raise VargfaceError(f"log {path} does not exist (the trainer writes PREFIX-log.jsonl)")
    entries = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError included: a binary file
                raise VargfaceError(f"log {path} line {number} is not a JSON line: {line[:60]!r}; expected the "
                                    f"PREFIX-log.jsonl of `vargface train`") from None
            if not isinstance(entry, dict):
                raise VargfaceError(f"log {path} line {number} is not a JSON object: {line[:60]!r}")
            entries.append(entry)
    if not any(e.get("type") == "train" for e in entries):
        raise VargfaceError(f"log {path} has no training lines yet: the trainer writes one every --frequent "
                            f"updates, and this run stopped before the first; train longer or pass a smaller "
                            f"--frequent")
    return entries


def run_name(log_path):
    """The run's prefix, from its log's name (PREFIX-log.jsonl)."""
    return log_path[:-len("-log.jsonl")] if log_path.endswith("-log.jsonl") else log_path


def _series(entries, name):
    """(updates, values) of the lines of ``entries`` that hold a finite ``name``."""
    points = [(e["step"], e[name]) for e in entries
              if isinstance(e.get(name), (int, float)) and math.isfinite(e[name]) and "step" in e]
    return [p[0] for p in points], [p[1] for p in points]


def log_panels(entries):
    """[(title, scale, [(label, updates, values)])]: one panel per kind of quantity, each at its own scale, so that
    a gradient norm in the thousands does not flatten losses near one: the margin loss, the distillation terms
    (on a log axis when they differ by more than LOG_SPREAD times), the gradient norm, the accuracies and the
    learning rate. Panels without data are left out."""
    train = [e for e in entries if e.get("type") == "train"]
    verify = [e for e in entries if e.get("type") == "verify"]
    terms = sorted({k for e in train for k in e if k not in NOT_LOSSES and k != "loss"})
    term_series = [(name, *_series(train, name)) for name in terms]
    targets = sorted({k for e in verify for k in e if k.endswith("_acc")})
    panels = [("margin loss", "linear", [("loss", *_series(train, "loss"))]),
              ("distillation loss" if all(t.startswith("kd_") for t in terms) else "other losses",
               _spread_scale(term_series), term_series),
              ("gradient norm (before clipping)", "log", [("grad_norm", *_series(train, "grad_norm"))]),
              ("training accuracy", "fraction", [("acc", *_series(train, "acc"))]),
              ("verification accuracy", "fraction", [(name[:-4], *_series(verify, name)) for name in targets]),
              ("learning rate", "from zero", [("lr", *_series(train, "lr"))])]
    return [panel for panel in panels if any(values for _, _, values in panel[2])]


def _spread_scale(series):
    values = [v for _, _, vs in series for v in vs]
    positive = [v for v in values if v > 0]
    return "log" if positive and len(positive) == len(values) and max(positive) > LOG_SPREAD * min(positive) \
        else "linear"


def draw_log(entries, title):
    """The figure of ``entries``: the panels of `log_panels`, stacked over one update axis from 0 to the last
    update; rollbacks after a NaN are marked in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = log_panels(entries)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(9, 1.2 + 2.1 * len(panels)), squeeze=False)
    last = max(e["step"] for e in entries if isinstance(e.get("step"), (int, float)))
    rollbacks = [e["step"] for e in entries if e.get("type") == "rollback" and "step" in e]
    for ax, (panel, scale, series) in zip(axes[:, 0], panels):
        for label, updates, values in series:
            ax.plot(updates, values, marker="o" if len(values) <= MARKED_POINTS else None, markersize=4,
                    label=label)
        values = [v for _, _, vs in series for v in vs]
        if scale == "log":
            ax.set_yscale("log")
        elif scale == "fraction":  # accuracies: within 0..1, zoomed to the data
            pad = max(0.02, 0.1 * (max(values) - min(values)))
            low, high = max(0.0, min(values) - pad), min(1.0, max(values) + pad)
            ax.set_ylim(low - 0.03 * (high - low), high + 0.03 * (high - low))
        elif scale == "from zero":
            ax.set_ylim(0.0, max(values) * 1.1 or 1.0)
        for step in rollbacks:
            ax.axvline(step, color="tab:red", linestyle=":", linewidth=1)
        ax.set_title(panel, fontsize=10, loc="left")
        ax.grid(alpha=0.3, which="both")
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlim(-0.04 * max(last, 1), max(last, 1) * 1.04)
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("update" + (" (dotted: rollback after a non-finite loss)" if rollbacks else ""))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_log(log_path, out_path):
    """Draw the curves of the log at ``log_path`` to ``out_path`` (format from its extension, PNG by default),
    titled with the run's prefix."""
    import matplotlib.pyplot as plt

    from vargface.atomic import atomic_path

    fig = draw_log(read_log(log_path), run_name(log_path))
    fmt = os.path.splitext(out_path)[1].lstrip(".").lower() or "png"
    try:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=100)
    finally:
        plt.close(fig)
    return out_path
