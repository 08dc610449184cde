"""The figures read what they show: a count of 1 has a bar, a count of 0 is drawn and labelled,
point labels neither overlap nor leave the figure, and small AP differences look small.

Checked on the matplotlib artists after ``canvas.draw()``, in display pixels."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation, Text

from mmimb.analysis.plots import (
    MAX_BARS,
    MIN_AP_DIFFERENCE_RANGE,
    ap_difference_figure,
    ap_vs_frequency_figure,
    long_tail_figure,
    plot_ap_vs_frequency,
    resampling_figure,
    zero_level,
)
from mmimb.analysis.resampling import ResamplingEffect
from mmimb.analysis.summary import summarize_dataset
from mmimb.evaluation.long_tail import LongTailResult
from mmimb.stats import GROUP_NAMES, ClassStats

#: Fewest pixels a bar of the smallest count must rise above the axis bottom.
MIN_BAR_PX = 5.0

#: Training counts and APs of the demo RetinaNet baseline on ltsynth: the four ``checkered_*``
#: classes (15 to 26 images) crowd together and ``solid_circle`` is the rightmost point.
LTSYNTH = {"solid_circle": 848, "solid_square": 350, "solid_triangle": 182, "solid_diamond": 110,
           "striped_circle": 74, "striped_square": 54, "striped_triangle": 41,
           "striped_diamond": 32, "checkered_circle": 26, "checkered_square": 21,
           "checkered_triangle": 18, "checkered_diamond": 15}


def axis_bottom_px(ax: Axes) -> float:
    return float(ax.transData.transform((0, ax.get_ylim()[0]))[1])


def bars(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def check_count_bars(fig: Figure, values: np.ndarray) -> None:
    """Every bar rises visibly above the axis bottom; each 0 is a hatched bar with a '0'."""
    fig.canvas.draw()
    ax = fig.axes[0]
    drawn = bars(ax)
    assert len(drawn) == values.size  # zeros are drawn too
    bottom = axis_bottom_px(ax)
    zero = zero_level(values)
    zero_bars = []
    for bar in drawn:
        top = ax.transData.transform((0, bar.get_height()))[1]
        assert top - bottom >= MIN_BAR_PX, (bar.get_height(), ax.get_ylim())
        if bar.get_hatch():
            zero_bars.append(bar)
            assert bar.get_height() == pytest.approx(zero)
    assert len(zero_bars) == (values == 0).sum()
    zero_texts = [t for t in ax.texts if t.get_text() == "0"]
    assert sorted(t.xy[0] for t in zero_texts if isinstance(t, Annotation)) == pytest.approx(
        sorted(b.get_x() + b.get_width() / 2 for b in zero_bars))


@pytest.mark.parametrize("counts", [[300, 40, 1, 0], [2382, 214, 209], [5, 1, 1, 0, 0]])
def test_long_tail_bars_show_one_and_zero(counts: list[int]) -> None:
    inst = np.array(counts)
    imgs = np.minimum(inst, np.array([120, 30, 1, 0, 0])[:inst.size])
    stats = ClassStats(inst, imgs, 150, 3, tuple("abcde"[:inst.size]))
    fig = long_tail_figure(summarize_dataset(stats, "toy", "instance"))
    check_count_bars(fig, np.concatenate([inst, imgs]).astype(float))
    # the axis starts below the smallest count, a count of 1 included
    assert fig.axes[0].get_ylim()[0] < inst[inst > 0].min()


def test_long_tail_curve_draws_zero_counts_on_the_marked_floor() -> None:
    rng = np.random.default_rng(0)
    inst = np.sort(rng.integers(1, 5000, MAX_BARS + 10))[::-1]
    inst[-3:] = [1, 0, 0]
    stats = ClassStats(inst, np.minimum(inst, 300), 400, 0)
    fig = long_tail_figure(summarize_dataset(stats, "toy", "instance"))
    fig.canvas.draw()
    ax = fig.axes[0]
    zero = zero_level(np.concatenate([inst, np.minimum(inst, 300)]).astype(float))
    dots = ax.collections[0].get_offsets()
    assert len(dots) == inst.size  # every class, 0 included, is a dot
    assert np.asarray(dots)[:, 1].min() == pytest.approx(zero)
    assert ax.get_ylim()[0] < zero
    assert any(ln.get_linestyle() == ":" and ln.get_ydata()[0] == pytest.approx(zero)
               for ln in ax.lines)


def test_resampling_bars_show_fractional_and_zero_expected_counts() -> None:
    stats = ClassStats(np.array([900, 60, 3, 1]), np.array([90, 30, 3, 1]), 100, 0,
                       ("a", "b", "c", "d"))
    effect = ResamplingEffect("UndersampleSampler(toy)", np.array([90.0, 6.0, 0.3, 0.0]),
                              np.array([9.0, 3.0, 0.3, 0.0]), 10.0)
    fig = resampling_figure(stats, effect)
    check_count_bars(fig, np.array([900, 60, 3, 1, 90.0, 6.0, 0.3, 0.0]))


def long_tail_result(counts: dict[str, int], ap: np.ndarray) -> LongTailResult:
    groups = {name: GROUP_NAMES[0 if c <= 30 else 1 if c <= 100 else 2]
              for name, c in counts.items()}
    classes = [{"name": n, "train_count": c, "AP": float(a), "group": groups[n]}
               for (n, c), a in zip(counts.items(), ap, strict=True)]
    group_ap = {g: {"AP": float(np.mean(aps)) if (aps := [r["AP"] for r in classes
                                                            if r["group"] == g]) else -1.0}
                for g in GROUP_NAMES}
    return LongTailResult({"mAP": float(ap.mean())}, classes, group_ap, "image")


def label_boxes(fig: Figure) -> list[np.ndarray]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    # the text itself: an annotation's own extent also spans its leader line
    return [np.asarray(Text.get_window_extent(t, renderer).extents) for t in fig.axes[0].texts]


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


APS = {"near-equal": lambda rng, n: 0.75 + 0.05 * rng.random(n),
       "all zero": lambda rng, n: np.zeros(n),
       "random": lambda rng, n: rng.random(n)}


@pytest.mark.parametrize("case", sorted(APS))
def test_point_labels_do_not_overlap_and_stay_in_the_figure(case: str) -> None:
    rng = np.random.default_rng(3)
    result = long_tail_result(LTSYNTH, APS[case](rng, len(LTSYNTH)))
    fig = ap_vs_frequency_figure(result)
    boxes = label_boxes(fig)
    assert [t.get_text() for t in fig.axes[0].texts] == list(LTSYNTH)
    for a, b in combinations(boxes, 2):
        assert not overlaps(a, b), (a, b)
    frame = fig.axes[0].get_window_extent().extents
    points = fig.axes[0].transData.transform(
        [(c, r["AP"]) for c, r in zip(LTSYNTH.values(), result.classes, strict=True)])
    for box in boxes:
        assert (box[:2] >= frame[:2]).all() and (box[2:] <= frame[2:]).all(), (box, frame)
        inside = (points >= box[:2]) & (points <= box[2:])
        assert not inside.all(axis=1).any()  # no label covers a point
    legend = np.asarray(fig.axes[0].get_legend().get_window_extent().extents)
    assert not any(overlaps(box, legend) for box in boxes)


def test_fixed_offsets_would_overlap_on_these_points() -> None:
    """The cases above are hard: labels at a fixed offset from their points do collide."""
    result = long_tail_result(LTSYNTH, np.zeros(len(LTSYNTH)))
    fig = ap_vs_frequency_figure(result)
    ax = fig.axes[0]
    for t in list(ax.texts):
        t.remove()
    for r in result.classes:
        ax.annotate(r["name"], (r["train_count"], r["AP"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    boxes = label_boxes(fig)
    assert any(overlaps(a, b) for a, b in combinations(boxes, 2))
    fig_right = fig.bbox.extents[2]
    ax_right = ax.get_window_extent().extents[2]
    assert max(b[2] for b in boxes) > min(fig_right, ax_right)  # solid_circle runs off


def test_zero_training_count_is_drawn_on_a_marked_line(tmp_path: Path) -> None:
    counts = {"a": 500, "b": 20, "c": 0}
    result = long_tail_result(counts, np.array([0.6, 0.3, 0.1]))
    fig = ap_vs_frequency_figure(result)
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets()[2][0] == 0.5
    assert any(ln.get_linestyle() == ":" and ln.get_xdata()[0] == 0.5 for ln in ax.lines)
    assert "0 drawn at 0.5" in ax.get_xlabel()
    # the saved PNG keeps the legend that sits right of the axes
    png = imread(plot_ap_vs_frequency(result, tmp_path / "ap.png"))
    width = fig.get_size_inches()[0] * fig.dpi
    assert png.shape[1] >= 0.9 * width and png[:, -40:].std() > 0.01


@pytest.mark.parametrize("delta", [1e-4, -3e-3, 0.049, 0.08, -0.25])
def test_ap_difference_axis_is_symmetric_with_a_minimum_range(delta: float) -> None:
    rng = np.random.default_rng(1)
    counts = {f"c{i}": int(c) for i, c in enumerate([900, 400, 120, 60, 20, 5])}
    base_ap = 0.3 + 0.6 * rng.random(len(counts))
    change = np.zeros(len(counts))
    change[-1] = delta
    fig = ap_difference_figure(long_tail_result(counts, base_ap),
                               long_tail_result(counts, base_ap + change))
    lo, hi = fig.axes[0].get_ylim()
    assert lo == pytest.approx(-hi)
    assert hi >= MIN_AP_DIFFERENCE_RANGE and hi >= abs(delta)
    heights = [b.get_height() for b in bars(fig.axes[0])]
    assert heights[-1] == pytest.approx(delta)
    # a tiny difference fills a tiny part of the axis, a large one most of it
    assert abs(delta) / hi == pytest.approx(min(abs(delta) / MIN_AP_DIFFERENCE_RANGE,
                                                1 / 1.1), rel=1e-6)
