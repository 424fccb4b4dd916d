"""The evaluation commands' PNG plots (matplotlib, Agg), each written atomically after its results are printed."""


def figure(columns=1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(6 * columns, 4.5), squeeze=False)


def save_figure(fig, path, option, layout=True):
    """Write ``fig`` as PNG to ``path`` atomically (``layout``: tight, else as its maker laid it out); a failure
    names the option and says the results stand."""
    import matplotlib.pyplot as plt

    from vargface.atomic import atomic_path
    from vargface.errors import VargfaceError

    if layout:
        fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    except OSError as error:
        raise VargfaceError(f"{option} {path}: cannot write the plot ({error.strerror or error}); the results "
                            f"above are complete") from None
    finally:
        plt.close(fig)


def log_far_axis(ax, title):
    ax.set_xscale("log")
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)


def plot_ijb_roc(result, scores, genuine, path):
    """The template-pair ROC of an IJB run, with InsightFace's nearest-point TARs marked."""
    from sklearn.metrics import roc_curve

    fig, axes = figure()
    ax = axes[0, 0]
    fpr, tpr, _ = roc_curve(genuine, scores)
    ax.step(fpr, tpr, where="post", label=f"{result['target']} {result['mode']}")
    fars = [float(f) for f in result["tar_at_far"]]
    ax.plot(fars, list(result["tar_at_far"].values()), "o", ms=4, label="TAR@FAR (nearest ROC point)")
    ax.set_xlim(min(fars + [1e-6]), 1)
    log_far_axis(ax, f"ROC, {result['target']} 1:1 template pairs")
    save_figure(fig, path, "--roc")


def plot_cmc(result, path):
    """Left: the CMC curve (identification rate by rank) at each gallery size; right: rank-1 by gallery size."""
    fig, axes = figure(2)
    sizes = sorted(result["results"], key=int)
    for size in sizes:
        rates = result["results"][size]["rank"]
        axes[0, 0].plot([int(r) for r in rates], list(rates.values()), marker=".", label=f"{int(size):,} distractors")
    axes[0, 0].set_xlabel("rank")
    axes[0, 0].set_ylabel("identification rate")
    axes[0, 0].set_title("CMC")
    axes[0, 0].legend(loc="lower right")
    axes[0, 1].plot([int(s) for s in sizes], [result["results"][s]["rank"]["1"] for s in sizes], marker="o")
    axes[0, 1].set_xscale("log")
    axes[0, 1].set_xlabel("distractors")
    axes[0, 1].set_ylabel("rank-1 identification rate")
    axes[0, 1].set_title("rank-1 by gallery size")
    for ax in axes[0]:
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path, "--cmc")
