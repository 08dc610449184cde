"""PNG figures of class imbalance and of long-tail results (matplotlib, Agg, no pyplot state).

- :func:`plot_long_tail`: the long-tail curve of a training set (counts by class rank, log scale).
- :func:`plot_resampling`: raw per-class counts next to the expected counts after re-sampling.
- :func:`plot_ap_vs_frequency`: per-class AP against training frequency, coloured by group.
- :func:`plot_ap_difference`: per-class AP difference between two runs (method - baseline).

Classes are drawn as bars with their names when there are few (at most :data:`MAX_BARS`), as
curves over the class rank otherwise.
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def _group_legend(ax: Axes, present: set[str], loc: Literal["upper right", "lower right", "best"],
                  title: str | None = None) -> None:
    handles = [Patch(color=GROUP_COLORS[g], label=g) for g in GROUP_NAMES if g in present]
    ax.legend(handles=handles, fontsize=8, loc=loc, title=title, title_fontsize=8)


def _log_floor(ax: Axes, values: np.ndarray) -> None:
    """Start a log axis at the decade below the smallest positive value, so bars have a base."""
    positive = values[values > 0]
    if positive.size:
        ax.set_ylim(bottom=10.0 ** np.floor(np.log10(positive.min())))


def _bar_labels(ax: Axes, names: list[str]) -> None:
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0, ha="right"
                       if len(names) > 4 else "center", fontsize=8)


def plot_long_tail(summary: DatasetSummary, path: str | Path) -> Path:
    """The long-tail curve: instances and images per class, by decreasing frequency, log scale.

    Args:
        summary: the training set's summary (its groups colour the classes).
        path: the PNG to write.

    Returns:
        ``path``.
    """
    s = summary.stats
    order = summary.order
    groups = [GROUP_NAMES[int(g)] for g in summary.grouping.groups[order]]
    colors = [GROUP_COLORS[g] for g in groups]
    inst, imgs = s.instance_counts[order], s.image_counts[order]
    fig, ax = _figure()
    x = np.arange(len(order))
    if len(order) <= MAX_BARS:
        names = [s.classes[c] if s.classes else str(c) for c in order]
        ax.bar(x - 0.2, inst, 0.4, color=colors, label="instances")
        ax.bar(x + 0.2, imgs, 0.4, color=colors, alpha=0.45, label="images")
        _bar_labels(ax, names)
        ax.set_yscale("log")
        _log_floor(ax, np.concatenate([inst, imgs]).astype(np.float64))
        ax.set_xlabel("class (solid: instances, light: images)")
    else:  # each count sorted on its own: two long-tail curves
        ax.plot(x + 1, np.sort(s.instance_counts)[::-1], color="0.3", lw=1, label="instances")
        by_images = np.argsort(-s.image_counts, kind="stable")
        ax.scatter(x + 1, s.image_counts[by_images], s=3, label="images",
                   c=[GROUP_COLORS[GROUP_NAMES[int(g)]]
                      for g in summary.grouping.groups[by_images]])
        ax.set_xlabel("class rank (line: instances, dots: images)")
        if summary.grouping.rule != "frequency":
            for key in ("rare_max", "common_max"):
                ax.axhline(summary.grouping.thresholds[key], color="0.6", ls="--", lw=0.8)
        ax.set_yscale("log")
    ax.set_ylabel("training count")
    ax.set_title(textwrap.fill(
        f"{summary.name}: {s.num_classes} classes; instances: imbalance "
        f"{imbalance_ratio(s.instance_counts):.3g}:1, Gini {gini(s.instance_counts):.2f}", 90),
        fontsize=9)
    _group_legend(ax, set(groups), "upper right", f"group (by {summary.count_by})")
    return _save(fig, path)


def plot_resampling(stats: ClassStats, effect: ResamplingEffect, path: str | Path) -> Path:
    """Raw counts per class next to the expected counts per epoch after re-sampling.

    Instances are shown when the method predicts them, otherwise images (under-sampling).

    Returns:
        ``path``.
    """
    use_instances = not np.isnan(effect.instances).any()
    raw = (stats.instance_counts if use_instances else stats.image_counts).astype(np.float64)
    new = effect.instances if use_instances else effect.images
    order = np.lexsort((np.arange(stats.num_classes), -raw))
    what = "instances" if use_instances else "images"
    fig, ax = _figure()
    x = np.arange(len(order))
    if len(order) <= MAX_BARS:
        ax.bar(x - 0.2, raw[order], 0.4, color="0.6", label=f"raw {what}")
        ax.bar(x + 0.2, new[order], 0.4, color="#2ca02c",
               label=f"expected {what} per epoch" + ("" if effect.exact else " (at least)"))
        _bar_labels(ax, [stats.classes[c] if stats.classes else str(c) for c in order])
        ax.set_yscale("log")
        _log_floor(ax, np.concatenate([raw, new]))
    else:
        ax.plot(x + 1, raw[order], color="0.5", lw=1, label=f"raw {what}")
        ax.plot(x + 1, new[order], color="#2ca02c", lw=1, label=f"expected {what} per epoch")
        ax.set_xlabel("class rank (by raw count)")
        ax.set_yscale("log")
    ax.set_ylabel(what)
    ax.set_title(textwrap.fill(effect.method, 100), fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ap_vs_frequency(result: LongTailResult, path: str | Path) -> Path:
    """Per-class AP against the training count, one point per class, coloured by group.

    Classes without ground truth in the evaluated split (AP -1) are left out; a class with no
    training sample is drawn at 0.5 on the log axis. Dashed lines: each group's AP.

    Returns:
        ``path``.
    """
    rows = [r for r in result.classes if r["AP"] >= 0]
    fig, ax = _figure()
    x = np.array([max(r["train_count"], 0.5) for r in rows], dtype=np.float64)
    y = np.array([r["AP"] for r in rows])
    ax.scatter(x, y, c=[GROUP_COLORS[r["group"]] for r in rows], s=18 if len(rows) < 100 else 5)
    if len(rows) <= MAX_BARS:
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(r["name"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for name, g in result.groups.items():
        if g["AP"] >= 0:
            ax.axhline(g["AP"], color=GROUP_COLORS[name], ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"training {result.count_by}s")
    ax.set_ylabel("AP (IoU 0.5:0.95)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"per-class AP vs training frequency (mAP {result.overall['mAP']:.3f}); "
                 "dashed: group AP", fontsize=9)
    _group_legend(ax, {r["group"] for r in rows}, "lower right")
    return _save(fig, path)


def plot_ap_difference(baseline: LongTailResult, method: LongTailResult, path: str | Path,
                       labels: tuple[str, str] = ("baseline", "method")) -> Path:
    """Per-class AP of ``method`` minus ``baseline``, classes by decreasing training count.

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
    return _save(fig, path)


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
