"""PNG figures of class imbalance and of long-tail results (matplotlib, Agg, no pyplot state).

- :func:`plot_long_tail`: the long-tail curve of a training set (counts by class rank, log scale).
- :func:`plot_resampling`: raw per-class counts next to the expected counts after re-sampling.
- :func:`plot_ap_vs_frequency`: per-class AP against training frequency, coloured by group.
- :func:`plot_ap_difference`: per-class AP difference between two runs (method - baseline).

Classes are drawn as bars with their names when there are few (at most :data:`MAX_BARS`), as
curves over the class rank otherwise. Each ``plot_*`` saves the figure its ``*_figure`` twin
builds (``bbox_inches='tight'``). Figures do not mislead: a log count axis starts below the
smallest count, so a count of 1 has a bar, and counts of 0 are drawn at a marked
:func:`zero_level`; point labels are placed clear of each other (:func:`place_point_labels`);
AP differences are shown on at least +-:data:`MIN_AP_DIFFERENCE_RANGE`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Annotation

from mmimb.analysis.resampling import ResamplingEffect
from mmimb.analysis.summary import DatasetSummary, gini, imbalance_ratio
from mmimb.evaluation.long_tail import LongTailResult
from mmimb.stats import GROUP_NAMES, ClassStats

#: Colour of each frequency group.
GROUP_COLORS: dict[str, str] = {"rare": "#d62728", "common": "#ff7f0e", "frequent": "#1f77b4"}

#: Largest number of classes drawn as labelled bars.
MAX_BARS = 30

_SIZE = (7.0, 3.6)
_DPI = 100


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=_SIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the PNG; ``bbox_inches='tight'`` keeps every label (legends outside too) in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _group_legend(ax: Axes, present: set[str],
                  loc: Literal["upper right", "lower right", "best", "outside"],
                  title: str | None = None) -> None:
    """Legend of the frequency groups; ``'outside'``: right of the axes, top-aligned."""
    handles = [Patch(color=GROUP_COLORS[g], label=g) for g in GROUP_NAMES if g in present]
    where: dict[str, Any] = ({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
                             if loc == "outside" else {"loc": loc})
    ax.legend(handles=handles, fontsize=8, title=title, title_fontsize=8, **where)


def zero_level(values: np.ndarray) -> float:
    """Where a count of 0 is drawn on a log axis: half the decade of the smallest positive count.

    A count of 1 then rises 0.3 decade above it, and the axis starts at this level (half of it
    when some count is 0), so the smallest count still has a visible bar.
    """
    positive = values[values > 0]
    return 0.5 * 10.0 ** np.floor(np.log10(positive.min())) if positive.size else 0.5


def _log_count_axis(ax: Axes, values: np.ndarray) -> float:
    """Log y axis for ``values`` with its bottom below :func:`zero_level`; returns that level.

    When some value is 0 a dotted line marks the level where zeros are drawn.
    """
    zero = zero_level(values)
    ax.set_yscale("log")
    if (values == 0).any():
        ax.axhline(zero, color="0.5", ls=":", lw=0.8)
        ax.set_ylim(bottom=zero / 2)
    else:
        ax.set_ylim(bottom=zero)
    return zero


def _count_bars(ax: Axes, x: np.ndarray, values: np.ndarray, zero: float, width: float,
                color: str | list[str], **kwargs: Any) -> None:
    """Bars of counts on a log axis; a count of 0 is a hatched bar up to ``zero``, labelled '0'."""
    bars = ax.bar(x, np.where(values > 0, values, zero), width, color=color, **kwargs)
    for bar, value in zip(bars, values, strict=True):
        if value == 0:
            bar.set_edgecolor(bar.get_facecolor())
            bar.set_facecolor("none")
            bar.set_hatch("////")
            ax.annotate("0", (bar.get_x() + bar.get_width() / 2, zero), xytext=(0, 1),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)


def _bar_labels(ax: Axes, names: list[str]) -> None:
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0, ha="right"
                       if len(names) > 4 else "center", fontsize=8)


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether boxes ``[x0, y0, x1, y1]`` ``a`` and ``b`` intersect (touching does not count)."""
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


#: Distances (pixels) of a label from its point, tried in order; beyond the first a leader line
#: joins them.
_LABEL_RADII = (3.0, 10.0, 18.0, 28.0, 40.0, 55.0, 75.0, 100.0, 130.0, 170.0)


def place_point_labels(ax: Axes, xy: np.ndarray, names: list[str], fontsize: float = 7,
                       marker_radius: float = 3.0) -> list[Annotation]:
    """Label points so that no label overlaps another, a point, the legend or the axes border.

    A deterministic greedy search in display space: each label in turn tries 16 directions at
    growing distances (:data:`_LABEL_RADII`) and takes the first box that stays inside the axes
    and clear of every placed label, every point's marker and the legend; a label away from its
    point gets a thin leader line. A label that fits nowhere takes the candidate that overlaps
    least. Call it after the layout is final (``tight_layout``), since it works in pixels.

    Args:
        ax: axes whose limits and layout are set.
        xy: ``float[N, 2]`` points in data coordinates.
        names: ``N`` labels.
        fontsize: of the labels, in points.
        marker_radius: half the side of the box kept free around each point, in pixels.

    Returns:
        The ``N`` annotations.
    """
    canvas = ax.figure.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        raise TypeError(f"ax must be drawn by matplotlib's Agg canvas, got {type(canvas)!r}")
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer).extents + np.array([2.0, 2.0, -2.0, -2.0])
    pts = ax.transData.transform(xy)
    taken = [np.array([px - marker_radius, py - marker_radius, px + marker_radius,
                       py + marker_radius]) for px, py in pts]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(np.asarray(legend.get_window_extent(renderer).extents))
    angles = np.deg2rad(np.arange(0, 360, 22.5))
    texts = []
    for (px, py), point, name in zip(pts, xy, names, strict=True):
        probe = ax.text(0, 0, name, fontsize=fontsize)
        w, h = probe.get_window_extent(renderer).size
        probe.remove()
        best: tuple[int, np.ndarray, float] | None = None
        for r in _LABEL_RADII:
            for a in angles:
                cos, sin = np.cos(a), np.sin(a)
                # the side of the box that faces the point touches the circle of radius r
                x0 = px + (r + marker_radius) * cos - w * (0.5 - 0.5 * np.clip(2 * cos, -1, 1))
                y0 = py + (r + marker_radius) * sin - h * (0.5 - 0.5 * np.clip(2 * sin, -1, 1))
                box = np.array([x0, y0, x0 + w, y0 + h])
                inside = (box[:2] >= frame[:2]).all() and (box[2:] <= frame[2:]).all()
                cost = sum(_overlap(box, t) for t in taken) + (0 if inside else len(taken) + 1)
                if best is None or cost < best[0]:
                    best = (cost, box, r)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:  # no radii: cannot happen, _LABEL_RADII is not empty
            raise ValueError("_LABEL_RADII is empty")
        _, box, r = best
        taken.append(box + np.array([-1.0, -1.0, 1.0, 1.0]))
        to_pt = 72.0 / ax.figure.dpi
        texts.append(ax.annotate(
            name, tuple(point), xytext=((box[0] - px) * to_pt, (box[1] - py) * to_pt),
            textcoords="offset points", ha="left", va="bottom", fontsize=fontsize,
            arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=2)
            if r > _LABEL_RADII[0] else None))
    return texts


def long_tail_figure(summary: DatasetSummary) -> Figure:
    """The figure of :func:`plot_long_tail`."""
    s = summary.stats
    order = summary.order
    groups = [GROUP_NAMES[int(g)] for g in summary.grouping.groups[order]]
    colors = [GROUP_COLORS[g] for g in groups]
    inst, imgs = s.instance_counts[order], s.image_counts[order]
    fig, ax = _figure()
    x = np.arange(len(order))
    both = np.concatenate([inst, imgs]).astype(np.float64)
    zero = zero_level(both)
    if len(order) <= MAX_BARS:
        names = [s.classes[c] if s.classes else str(c) for c in order]
        _count_bars(ax, x - 0.2, inst, zero, 0.4, colors, label="instances")
        _count_bars(ax, x + 0.2, imgs, zero, 0.4, colors, alpha=0.45, label="images")
        _bar_labels(ax, names)
        ax.set_xlabel("class (solid: instances, light: images"
                      + ("; hatched: 0)" if (both == 0).any() else ")"))
    else:  # each count sorted on its own: two long-tail curves
        ax.plot(x + 1, np.maximum(np.sort(s.instance_counts)[::-1], zero), color="0.3", lw=1,
                label="instances")
        by_images = np.argsort(-s.image_counts, kind="stable")
        ax.scatter(x + 1, np.maximum(s.image_counts[by_images], zero), s=3, label="images",
                   c=[GROUP_COLORS[GROUP_NAMES[int(g)]]
                      for g in summary.grouping.groups[by_images]])
        ax.set_xlabel("class rank (line: instances, dots: images"
                      + ("; 0 on the dotted line)" if (both == 0).any() else ")"))
        if summary.grouping.rule != "frequency":
            for key in ("rare_max", "common_max"):
                ax.axhline(summary.grouping.thresholds[key], color="0.6", ls="--", lw=0.8)
    _log_count_axis(ax, both)
    ax.set_ylabel("training count")
    ax.set_title(textwrap.fill(
        f"{summary.name}: {s.num_classes} classes; instances: imbalance "
        f"{imbalance_ratio(s.instance_counts):.3g}:1, Gini {gini(s.instance_counts):.2f}", 90),
        fontsize=9)
    _group_legend(ax, set(groups), "upper right", f"group (by {summary.count_by})")
    fig.tight_layout()
    return fig


def plot_long_tail(summary: DatasetSummary, path: str | Path) -> Path:
    """The long-tail curve: instances and images per class, by decreasing frequency, log scale.

    Counts of 0 are drawn at :func:`zero_level` (hatched bars labelled '0', or on a dotted line).

    Args:
        summary: the training set's summary (its groups colour the classes).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    return _save(long_tail_figure(summary), path)


def resampling_figure(stats: ClassStats, effect: ResamplingEffect) -> Figure:
    """The figure of :func:`plot_resampling`."""
    use_instances = not np.isnan(effect.instances).any()
    raw = (stats.instance_counts if use_instances else stats.image_counts).astype(np.float64)
    new = effect.instances if use_instances else effect.images
    order = np.lexsort((np.arange(stats.num_classes), -raw))
    what = "instances" if use_instances else "images"
    fig, ax = _figure()
    x = np.arange(len(order))
    both = np.concatenate([raw, new])
    zero = zero_level(both)
    if len(order) <= MAX_BARS:
        _count_bars(ax, x - 0.2, raw[order], zero, 0.4, "0.6", label=f"raw {what}")
        _count_bars(ax, x + 0.2, new[order], zero, 0.4, "#2ca02c",
                    label=f"expected {what} per epoch" + ("" if effect.exact else " (at least)"))
        _bar_labels(ax, [stats.classes[c] if stats.classes else str(c) for c in order])
    else:
        ax.plot(x + 1, np.maximum(raw[order], zero), color="0.5", lw=1, label=f"raw {what}")
        ax.plot(x + 1, np.maximum(new[order], zero), color="#2ca02c", lw=1,
                label=f"expected {what} per epoch")
        ax.set_xlabel("class rank (by raw count" + ("; 0 on the dotted line)"
                                                    if (both == 0).any() else ")"))
    _log_count_axis(ax, both)
    ax.set_ylabel(what)
    ax.set_title(textwrap.fill(effect.method, 100), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_resampling(stats: ClassStats, effect: ResamplingEffect, path: str | Path) -> Path:
    """Raw counts per class next to the expected counts per epoch after re-sampling.

    Instances are shown when the method predicts them, otherwise images (under-sampling).
    Counts of 0 are drawn as in :func:`plot_long_tail`.

    Returns:
        ``path``.
    """
    return _save(resampling_figure(stats, effect), path)


def ap_vs_frequency_figure(result: LongTailResult) -> Figure:
    """The figure of :func:`plot_ap_vs_frequency`."""
    rows = [r for r in result.classes if r["AP"] >= 0]
    fig, ax = _figure()
    counts = np.array([r["train_count"] for r in rows], dtype=np.float64)
    x = np.where(counts > 0, counts, 0.5)
    y = np.array([r["AP"] for r in rows])
    size = 18 if len(rows) < 100 else 5
    ax.scatter(x, y, c=[GROUP_COLORS[r["group"]] for r in rows], s=size)
    for name, g in result.groups.items():
        if g["AP"] >= 0:
            ax.axhline(g["AP"], color=GROUP_COLORS[name], ls="--", lw=0.8)
    xlabel = f"training {result.count_by}s"
    if (counts == 0).any():
        ax.axvline(0.5, color="0.5", ls=":", lw=0.8)
        xlabel += " (0 drawn at 0.5, dotted)"
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP (IoU 0.5:0.95)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"per-class AP vs training frequency (mAP {result.overall['mAP']:.3f}); "
                 "dashed: group AP", fontsize=9)
    _group_legend(ax, {r["group"] for r in rows}, "outside")  # hides no point, no label
    fig.tight_layout()
    if len(rows) <= MAX_BARS:
        place_point_labels(ax, np.column_stack([x, y]), [r["name"] for r in rows],
                           marker_radius=np.sqrt(size) / 2 * fig.dpi / 72 + 1)
    return fig


def plot_ap_vs_frequency(result: LongTailResult, path: str | Path) -> Path:
    """Per-class AP against the training count, one point per class, coloured by group.

    Classes without ground truth in the evaluated split (AP -1) are left out; a class with no
    training sample is drawn at 0.5 on the log axis, on a dotted line. Dashed lines: each
    group's AP. Up to :data:`MAX_BARS` points are labelled by :func:`place_point_labels`.

    Returns:
        ``path``.
    """
    return _save(ap_vs_frequency_figure(result), path)


#: Smallest half-range of the AP-difference axis, so that a difference of 1e-4 looks like one.
MIN_AP_DIFFERENCE_RANGE = 0.05


def ap_difference_figure(baseline: LongTailResult, method: LongTailResult,
                         labels: tuple[str, str] = ("baseline", "method")) -> Figure:
    """The figure of :func:`plot_ap_difference`."""
    base = {r["name"]: r for r in baseline.classes}
    if set(base) != {r["name"] for r in method.classes}:
        raise ValueError(f"the two reports have different classes: {sorted(base)[:5]} ... vs "
                         f"{sorted(r['name'] for r in method.classes)[:5]} ...")
    rows = sorted((r for r in method.classes if r["AP"] >= 0 and base[r["name"]]["AP"] >= 0),
                  key=lambda r: -base[r["name"]]["train_count"])
    delta = np.array([r["AP"] - base[r["name"]]["AP"] for r in rows])
    fig, ax = _figure()
    x = np.arange(len(rows))
    ax.bar(x, delta, 0.8, color=[GROUP_COLORS[base[r["name"]]["group"]] for r in rows])
    ax.axhline(0, color="0.2", lw=0.8)
    half = max(MIN_AP_DIFFERENCE_RANGE, 1.1 * float(np.abs(delta).max(initial=0.0)))
    ax.set_ylim(-half, half)
    if len(rows) <= MAX_BARS:
        _bar_labels(ax, [r["name"] for r in rows])
    else:
        ax.set_xlabel("class, by decreasing training count")
    ax.set_ylabel(f"AP({labels[1]}) - AP({labels[0]})")
    diffs = ", ".join(
        f"{g} {method.groups[g]['AP'] - baseline.groups[g]['AP']:+.3f}" for g in GROUP_NAMES
        if baseline.groups[g]["AP"] >= 0 and method.groups[g]["AP"] >= 0)
    ax.set_title(f"{labels[1]} vs {labels[0]}: mAP "
                 f"{method.overall['mAP'] - baseline.overall['mAP']:+.3f}; {diffs}", fontsize=9)
    _group_legend(ax, {base[r["name"]]["group"] for r in rows}, "best")
    fig.tight_layout()
    return fig


def plot_ap_difference(baseline: LongTailResult, method: LongTailResult, path: str | Path,
                       labels: tuple[str, str] = ("baseline", "method")) -> Path:
    """Per-class AP of ``method`` minus ``baseline``, classes by decreasing training count.

    The y axis is symmetric about 0 and spans at least :data:`MIN_AP_DIFFERENCE_RANGE` either
    way, so small differences look small.

    Args:
        baseline: the reference run.
        method: the compared run (same classes).
        path: the PNG to write.
        labels: names of the two runs for the title.

    Returns:
        ``path``.

    Raises:
        ValueError: if the two reports do not have the same classes.
    """
    return _save(ap_difference_figure(baseline, method, labels), path)


def plot_gain_vs_frequency(summary: dict[str, Any], path: str | Path) -> Path:
    """Per-class AP gain of every method over the baseline against training frequency.

    ``summary`` is a quality-benchmark table (:func:`mmimb.quality.tables.summarize`). Classes
    run along x from the rarest to the most frequent (their training counts in the labels), so
    that close counts never overlap. Each method is one colour; a point is the mean over seeds of
    the per-seed difference ``AP(method) - AP(baseline)``, its error bar the range (min to max)
    of those differences (no bar for one seed); methods sit side by side within a class.

    Returns:
        ``path``.
    """
    classes = sorted(summary["classes"], key=lambda c: c["train_count"])
    methods = [r for r in summary["rows"][1:] if r["delta"]]
    fig = Figure(figsize=(10.0, 4.6), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pos = np.arange(len(classes), dtype=np.float64)
    width = 0.7 / max(len(methods), 1)
    for i, r in enumerate(methods):
        stats = [r["delta"].get(f"AP/{c['name']}") for c in classes]
        keep = [j for j, s in enumerate(stats) if s is not None]
        mean = np.array([stats[j]["mean"] for j in keep])
        lo = mean - np.array([stats[j]["min"] for j in keep])
        hi = np.array([stats[j]["max"] for j in keep]) - mean
        n = max(stats[j]["n"] for j in keep)
        x = pos[keep] + (i - (len(methods) - 1) / 2) * width
        ax.errorbar(x, mean, yerr=np.vstack([lo, hi]) if n > 1 else None, fmt="o", ms=4,
                    color=f"C{i % 10}", capsize=2, lw=1,
                    label=f"{r['label']} ({n} seed{'s' * (n > 1)})")
    ax.axhline(0, color="0.2", lw=0.8)
    ax.set_xticks(pos, [f"{c['name']} ({c['train_count']})" for c in classes], rotation=35,
                  ha="right", fontsize=7)
    for tick, c in zip(ax.get_xticklabels(), classes, strict=True):
        tick.set_color(GROUP_COLORS.get(c["group"], "0.3"))
    base = summary["rows"][0]
    ax.set_xlabel("class (training count), rarest first; colour: frequency group", fontsize=8)
    ax.set_ylabel(f"AP(method) - AP({base['label']})", fontsize=8)
    ax.set_title(f"{summary['table']}: per-class AP gain over the baseline, mean over seeds, "
                 "bars min-max", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)
