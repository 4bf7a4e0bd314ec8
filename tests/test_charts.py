"""The report's charts (matplotlib, measured in its own layout): plain-number ticks, one point on a sensible
axis, log-scaled losses, and ticks, labels and legend apart at every trial count up to 64."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from rnnfarm.insight import charts

from .browser import _Tree, chart_legend, chart_points, chart_ticks, chart_x_ticks


def test_tick_labels_are_plain_numbers_at_every_magnitude():
    values = [0, 0.00002, 0.25, 3, 999.5, 1000, 1200, 12500, 1.2e6, 5e6, 3.4e9]
    assert [charts.number(v) for v in values] == [
        "0", "0.00002", "0.25", "3", "999.5", "1000", "1200", "12.5k", "1.2M", "5M", "3.4G"
    ]  # fmt: skip


def dom(svg: str):
    tree = _Tree()
    tree.feed(svg)
    (figure,) = tree.root.find_all("figure", "chart")
    return figure


def test_a_one_point_series_is_a_marked_point_on_an_axis_from_step_0():
    shown = dom(charts.line_chart([("val loss", [200], [2.5])], "trial t1", "nats/char", log_y=True))
    assert chart_points(shown) == [1]
    assert chart_x_ticks(shown) == ["0", "50", "100", "150", "200"]
    assert all("e" not in t for t in chart_ticks(shown))


def test_loss_axes_are_log_scaled_with_readable_ticks():
    series = [("val loss", [100, 500, 1000, 2000], [4.2, 2.5, 1.8, 1.45])]
    fig = charts.figure(series, "t", "nats/char", log_y=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    fig.canvas.draw()
    assert [t.get_text() for t in shown_ticks(ax)] == ["0", "500", "1000", "1500", "2000", "1.5", "2", "3", "4"]
    plt.close(fig)


def shown_ticks(ax):
    """The tick labels drawn: those of ticks inside the axes' view (matplotlib keeps a few beyond it)."""
    (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
    xs = [t for v, t in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True) if x_lo <= v <= x_hi]
    ys = [t for v, t in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True) if y_lo <= v <= y_hi]
    return [t for t in (*xs, *ys) if t.get_text()]


def boxes(fig):
    """The drawn boxes of every tick label, axis label, the title and each legend entry."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    found = shown_ticks(ax)
    found += [ax.xaxis.label, ax.yaxis.label, ax.title]
    legend = fig.legends[0].get_texts() if fig.legends else []
    return [(t.get_text(), t.get_window_extent(renderer)) for t in [*found, *legend]]


@pytest.mark.parametrize("trials", [1, 2, 8, 24, 64])
def test_tick_labels_axis_labels_and_legend_never_overlap(trials):
    series = [(f"c13fb_{i:05d}", [20, 40, 60], [4.2 - i * 0.01, 3.0, 2.1 + i * 0.005]) for i in range(trials)]
    fig = charts.figure(series, "val loss, every trial", "nats/char", log_y=True)
    drawn = boxes(fig)
    width, height = fig.bbox.width, fig.bbox.height
    for i, (a, box_a) in enumerate(drawn):
        assert box_a.x0 >= 0 and box_a.y0 >= 0 and box_a.x1 <= width and box_a.y1 <= height, a  # inside
        for b, box_b in drawn[i + 1 :]:
            assert not box_a.overlaps(box_b), (a, b)
    assert len(chart_legend(dom(charts.line_chart(series, "v", "nats/char")))) == (trials if trials > 1 else 0)
    plt.close(fig)


def test_a_speed_axis_reads_in_thousands():
    fig = charts.figure([("main", [10, 20, 30], [18_000.0, 27_500.0, 24_000.0])], "training speed", "chars/s")
    fig.canvas.draw()
    labels = [t.get_text() for t in shown_ticks(fig.axes[0])]
    assert labels[-4:] == ["20k", "22.5k", "25k", "27.5k"], labels
    plt.close(fig)


def test_the_same_data_gives_the_same_svg_bytes():
    series = [("train loss", [10, 20], [3.1, 2.9]), ("val loss", [10, 20], [3.2, 3.0])]
    assert charts.line_chart(series, "trial main", "nats/char") == charts.line_chart(series, "trial main", "nats/char")
