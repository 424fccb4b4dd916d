"""`vargface plot-log`: each quantity in its own panel and scale, every point visible, one update axis, the run's
prefix as the title."""
import json

import pytest


def train_line(step, **values):
    return {"type": "train", "epoch": 0, "batch": step, "step": step, "speed": 10.0, "time": 0.0, "lr": 0.1,
            "acc": 0.1 * step / 10, **values}


def write_log(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return str(path)


@pytest.fixture
def distill_log(tmp_path):
    """A distillation log as the trainer writes it: the baseline verification at update 0, then training lines
    with a gradient norm three orders above the losses, a rollback and a later verification."""
    entries = [{"type": "verify", "step": 0, "epoch": 0, "score": 0.61, "lfw_acc": 0.61}]
    entries += [train_line(step, loss=20.0 - step, kd_loss=1.5 - 0.05 * step, grad_norm=1700.0 - 100 * step)
                for step in range(2, 12, 2)]
    entries += [{"type": "rollback", "step": 6, "at": 7, "lr_scale": 0.5, "metric": "loss"},
                {"type": "verify", "step": 10, "epoch": 0, "score": 0.75, "lfw_acc": 0.75}]
    (tmp_path / "runs" / "kd").mkdir(parents=True)
    return write_log(tmp_path / "runs" / "kd" / "model-gen1-log.jsonl", entries)


def panels_of(fig):
    return {ax.get_title(loc="left"): ax for ax in fig.axes}


def test_every_quantity_has_a_panel_at_its_own_scale_over_one_update_axis(distill_log):
    import matplotlib.pyplot as plt

    from vargface.train.plot_log import draw_log, read_log, run_name

    fig = draw_log(read_log(distill_log), run_name(distill_log))
    try:
        panels = panels_of(fig)
        assert list(panels) == ["margin loss", "distillation loss", "gradient norm (before clipping)",
                                "training accuracy", "verification accuracy", "learning rate"]
        assert fig._suptitle.get_text() == distill_log[:-len("-log.jsonl")]  # the run's prefix
        # the gradient norm on its own log axis; the loss axes hold their losses, not a norm in the thousands
        assert panels["gradient norm (before clipping)"].get_yscale() == "log"
        for name, top in (("margin loss", 18.0), ("distillation loss", 1.4)):  # the highest of each
            low, high = panels[name].get_ylim()
            assert low < top <= high < 2 * top
        assert [line.get_label() for line in panels["distillation loss"].get_lines() if
                line.get_label()[0] != "_"] == ["kd_loss"]
        low, high = panels["verification accuracy"].get_ylim()  # zoomed to the data, within 0..1
        assert 0.5 < low < 0.61 and 0.75 < high <= 1.0
        # one update axis for all, from the baseline verification at 0 to the last update; points are marked
        axes = list(panels.values())
        assert all(axes[0].get_shared_x_axes().joined(axes[0], ax) for ax in axes[1:])
        low, high = axes[-1].get_xlim()
        assert low <= 0 and 10 <= high < 11
        verify_line = panels["verification accuracy"].get_lines()[0]
        assert list(verify_line.get_xdata()) == [0, 10] and verify_line.get_marker() == "o"
        # the rollback is marked in every panel
        assert all(any(list(line.get_xdata()) == [6, 6] for line in ax.get_lines()) for ax in axes)
    finally:
        plt.close(fig)


def test_a_single_logged_point_is_drawn(tmp_path, run_cli):
    import matplotlib.pyplot as plt

    from vargface.train.plot_log import draw_log, read_log

    log = write_log(tmp_path / "one-log.jsonl", [train_line(1, loss=12.5)])
    fig = draw_log(read_log(log), "one")
    try:
        panels = panels_of(fig)
        assert list(panels) == ["margin loss", "training accuracy", "learning rate"]  # no empty panels
        for ax in panels.values():
            (line,) = ax.get_lines()
            assert line.get_marker() == "o" and len(line.get_xdata()) == 1
            low, high = ax.get_ylim()
            assert low < line.get_ydata()[0] < high
    finally:
        plt.close(fig)
    done = run_cli("plot-log", log, "--out", tmp_path / "one.png")
    assert done.returncode == 0 and (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
