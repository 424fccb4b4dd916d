"""`vargface plot-log`: loss, accuracy, learning-rate and verification curves from a trainer JSON-lines log."""
import json
import os

from vargface.errors import VargfaceError


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


def plot_log(log_path, out_path):
    """Draw a 2x2 figure (losses, accuracy, lr, verification accuracy against update count) to ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vargface.atomic import atomic_path

    entries = read_log(log_path)
    train = [e for e in entries if e.get("type") == "train"]
    verify = [e for e in entries if e.get("type") == "verify"]
    steps = [e["step"] for e in train]
    fixed = {"type", "epoch", "batch", "step", "speed", "lr", "time", "acc"}
    losses = sorted({k for e in train for k in e if k not in fixed})
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for name in losses:
        axes[0, 0].plot(steps, [e.get(name, float("nan")) for e in train], label=name)
    axes[0, 0].set_title("loss")
    axes[0, 0].legend()
    axes[0, 1].plot(steps, [e.get("acc", float("nan")) for e in train])
    axes[0, 1].set_title("training accuracy")
    axes[1, 0].plot(steps, [e["lr"] for e in train])
    axes[1, 0].set_title("learning rate")
    targets = sorted({k for e in verify for k in e if k.endswith("_acc")})
    for name in targets:
        axes[1, 1].plot([e["step"] for e in verify], [e.get(name, float("nan")) for e in verify], "o-",
                        label=name[:-4])
    axes[1, 1].set_title("verification accuracy")
    if targets:
        axes[1, 1].legend()
    for ax in axes.flat:
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    fig.suptitle(os.path.basename(log_path))
    fig.tight_layout()
    fmt = os.path.splitext(out_path)[1].lstrip(".").lower() or "png"
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=100)
    plt.close(fig)
    return out_path
