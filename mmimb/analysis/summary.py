"""How imbalanced a training set is, and which re-sampling / re-weighting settings suit it.

Everything here reads a :class:`mmimb.stats.ClassStats`; nothing counts classes again.

Recommendation rules (both are printed with their numbers by the analysis tool):

* **Repeat-factor threshold** ``t`` (LVIS repeat-factor sampling, Gupta et al., CVPR 2019,
  ``r_c = max(1, (t / f_c) ** p)``, ``f_c`` the fraction of images containing ``c``): the
  rarest class should be repeated at most ``max_repeat`` times, so
  ``t = f_min * max_repeat ** (1 / p)``; with ``max_repeat = 10`` and ``p = 0.5`` this gives
  LVIS v1's own ``t = 0.001`` (``f_min = 1 / 100170``, one image). ``t`` is capped at ``f_max``
  so that the most frequent class is never repeated (then the rarest class gets
  ``(f_max / f_min) ** p < max_repeat``).
* **Class-balanced beta** (Cui et al., CVPR 2019, weights ``w_c ∝ 1 / E(n_c)``,
  ``E(n) = (1 - beta^n) / (1 - beta)``): ``beta`` such that the effective numbers of the most
  and least frequent class (by instances, what a classification loss sees) differ by
  ``target_ratio``, by default ``sqrt(n_max / n_min)``: the weights then span the geometric
  middle between no re-weighting (``beta = 0``, ratio 1) and inverse class frequency
  (``beta -> 1``, ratio ``n_max / n_min``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmimb.evaluation.groups import Grouping, assign_groups, describe_grouping
from mmimb.stats import (
    GROUP_NAMES,
    ClassStats,
    ImageLabels,
    class_frequencies,
    class_repeat_factors,
    effective_number,
    image_repeat_factors,
)

#: Default cap of the rarest class's repeat factor in :func:`recommend_repeat_threshold`.
DEFAULT_MAX_REPEAT = 10.0


def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of per-class counts: 0 when all are equal, ``1 - 1/C`` at most.

    ``G = sum_i sum_j |x_i - x_j| / (2 C^2 mean(x))``, computed from the sorted counts as
    ``G = 2 sum_i i x_(i) / (C sum x) - (C + 1) / C`` (``i = 1..C``).

    Raises:
        ValueError: if there are no classes or a count is negative.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if x.size == 0 or (x < 0).any():
        raise ValueError(f"gini needs at least one count, all >= 0; got {x.tolist()[:5]}")
    if x.sum() == 0:
        return 0.0
    n = len(x)
    return float(2.0 * np.dot(np.arange(1, n + 1), x) / (n * x.sum()) - (n + 1) / n)


def imbalance_ratio(counts: Sequence[float] | np.ndarray) -> float:
    """``max / min`` over the classes with a non-zero count (1 for fewer than 2 such classes)."""
    x = np.asarray(counts, dtype=np.float64)
    x = x[x > 0]
    return float(x.max() / x.min()) if x.size > 1 else 1.0


@dataclass(frozen=True)
class Recommendation:
    """A recommended setting and why.

    Attributes:
        value: the setting.
        reason: one or two sentences with the numbers behind it.
    """

    value: float
    reason: str


def recommend_repeat_threshold(stats: ClassStats, max_repeat: float = DEFAULT_MAX_REPEAT,
                               power: float = 0.5,
                               image_labels: ImageLabels | None = None) -> Recommendation:
    """Repeat-factor threshold ``t`` by the rule of the module docstring.

    Args:
        stats: training statistics.
        max_repeat: repeat factor of the rarest class, ``> 1``.
        power: the sampler's exponent ``p > 0``.
        image_labels: per-image labels, to state how much longer an epoch gets.

    Raises:
        ValueError: if ``max_repeat <= 1``, ``power <= 0``, or no class has an image.
    """
    if not max_repeat > 1:
        raise ValueError(f"max_repeat must be > 1, got {max_repeat!r}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}")
    freq = class_frequencies(stats, "image")
    present = np.flatnonzero(freq > 0)
    if present.size == 0:
        raise ValueError("no class has any image: nothing to re-sample")
    names = stats.classes or tuple(str(i) for i in range(stats.num_classes))
    rarest, commonest = present[np.argmin(freq[present])], present[np.argmax(freq[present])]
    f_min, f_max = freq[rarest], freq[commonest]
    t = f_min * max_repeat ** (1.0 / power)
    reason = (f"t = f_min * {max_repeat:g}^(1/p) = {t:.3g}: the rarest class "
              f"'{names[rarest]}' (in {stats.image_counts[rarest]} of {stats.num_images} "
              f"images, f = {f_min:.3g}) is repeated {max_repeat:g}x")
    if t > f_max:
        t = f_max
        reason = (f"t = f_max = {t:.3g} (capped, so that the most frequent class "
                  f"'{names[commonest]}', f = {f_max:.3g}, is not repeated): the rarest class "
                  f"'{names[rarest]}' (f = {f_min:.3g}) is repeated "
                  f"{(f_max / f_min) ** power:.2f}x, less than the cap {max_repeat:g}x, since "
                  "images are little imbalanced")
    factors = class_repeat_factors(stats, t, power)
    reason += (f". {int(np.count_nonzero(factors > 1))} of {stats.num_classes} classes "
               "over-sampled")
    if image_labels is not None:
        growth = image_repeat_factors(image_labels, factors).mean()
        reason += f", epochs {growth:.2f}x as long"
    ir_instances, ir_images = imbalance_ratio(stats.instance_counts), imbalance_ratio(freq)
    if ir_instances > 2 * ir_images:
        reason += (f". Boxes are more imbalanced ({ir_instances:.3g}:1) than images "
                   f"({ir_images:.3g}:1) and re-sampling evens out images only (frequent classes "
                   "ride along in the repeated images): combine it with loss re-weighting")
    return Recommendation(float(t), reason + ".")


def effective_ratio(n_max: float, n_min: float, beta: float) -> float:
    """``E(n_max) / E(n_min)`` at ``beta`` (1 at ``beta = 0``, ``n_max / n_min`` as beta -> 1)."""
    e = effective_number(np.array([n_max, n_min]), beta)
    return float(e[0] / e[1])


def recommend_cb_beta(counts: Sequence[float] | np.ndarray,
                      target_ratio: float | None = None) -> Recommendation:
    """Class-balanced ``beta`` by the rule of the module docstring.

    Args:
        counts: ``[C]`` training instance counts.
        target_ratio: wanted ``E(n_max) / E(n_min)`` in ``[1, n_max / n_min]``; by default
            ``sqrt(n_max / n_min)``.

    Raises:
        ValueError: if ``target_ratio`` is outside ``[1, n_max / n_min]``.
    """
    x = np.asarray(counts, dtype=np.float64)
    x = x[x > 0]
    ir = imbalance_ratio(x)
    if ir <= 1.0:
        return Recommendation(0.0, "beta = 0 (no re-weighting): every class has the same count.")
    ratio = float(np.sqrt(ir)) if target_ratio is None else float(target_ratio)
    if not 1.0 <= ratio <= ir:
        raise ValueError(f"target_ratio must lie in [1, n_max / n_min = {ir:.4g}], got {ratio}")
    n_max, n_min = x.max(), x.min()
    # E(n_max)/E(n_min) rises from 1 to n_max/n_min as beta -> 1: bisect on -log10(1 - beta).
    lo, hi = 0.0, 16.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if effective_ratio(n_max, n_min, 1.0 - 10.0 ** -mid) < ratio:
            lo = mid
        else:
            hi = mid
    beta = 1.0 - 10.0 ** -hi
    why = f"the square root of the imbalance ratio {ir:.4g}" if target_ratio is None else "as asked"
    return Recommendation(beta, (
        f"E(n_max = {n_max:g}) / E(n_min = {n_min:g}) = {effective_ratio(n_max, n_min, beta):.3g}"
        f", {why}; the class-balanced weights of head and tail then differ by that factor, "
        f"between no re-weighting (1x) and inverse frequency ({ir:.4g}x)."))


@dataclass(frozen=True)
class DatasetSummary:
    """Per-class table and global imbalance measures of a training set.

    Attributes:
        name: what was analysed.
        stats: the counts.
        grouping: the frequency groups (by ``count_by``).
        count_by: ``'image'`` or ``'instance'``.
        beta: the class-balanced beta of the effective-number column.
        effective: ``float64[C]`` effective number of instances at ``beta``.
        repeat: the recommended repeat-factor threshold.
        cb_beta: the recommended class-balanced beta.
        notes: remarks on the input (issues, unknown image total ...).
        per_image: whether per-image labels were known (not for category-info files).
    """

    name: str
    stats: ClassStats
    grouping: Grouping
    count_by: str
    beta: float
    effective: np.ndarray
    repeat: Recommendation
    cb_beta: Recommendation
    notes: tuple[str, ...] = field(default=())
    per_image: bool = True

    @property
    def order(self) -> np.ndarray:
        """Classes by decreasing count (``count_by``), ties by instances, then by index."""
        s = self.stats
        return np.lexsort((np.arange(s.num_classes), -s.instance_counts, -s.counts(self.count_by)))

    def measures(self) -> dict[str, float]:
        """Imbalance ratio and Gini coefficient of instance and image counts."""
        s = self.stats
        return {"imbalance_ratio_instances": imbalance_ratio(s.instance_counts),
                "imbalance_ratio_images": imbalance_ratio(s.image_counts),
                "gini_instances": gini(s.instance_counts), "gini_images": gini(s.image_counts)}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per class, most frequent first."""
        s = self.stats
        names = s.classes or tuple(str(i) for i in range(s.num_classes))
        total = max(int(s.instance_counts.sum()), 1)
        return [{"rank": rank + 1, "class": names[c], "instances": int(s.instance_counts[c]),
                 "images": int(s.image_counts[c]),
                 "group": GROUP_NAMES[int(self.grouping.groups[c])],
                 "instance_share": float(s.instance_counts[c] / total),
                 "effective_number": float(self.effective[c])}
                for rank, c in enumerate(self.order)]


def summarize_dataset(stats: ClassStats, name: str = "dataset", count_by: str = "image",
                      group_by: str = "auto", rare_max: float = 10, common_max: float = 100,
                      quantiles: Sequence[float] = (1 / 3, 2 / 3),
                      frequency: Sequence[str] | None = None,
                      max_repeat: float = DEFAULT_MAX_REPEAT, beta_ratio: float | None = None,
                      image_labels: ImageLabels | None = None,
                      notes: Sequence[str] = ()) -> DatasetSummary:
    """Groups, imbalance measures and recommendations of a training set.

    Args:
        stats: the training set's counts.
        name: what is analysed, for the report.
        count_by: count of the groups and of the sort order, ``'image'`` or ``'instance'``.
        group_by, rare_max, common_max, quantiles, frequency: see
            :func:`mmimb.evaluation.groups.assign_groups`.
        max_repeat: see :func:`recommend_repeat_threshold`.
        beta_ratio: see ``target_ratio`` of :func:`recommend_cb_beta`.
        image_labels: per-image labels, when known.
        notes: remarks to carry into the report.

    Raises:
        ValueError: on invalid arguments, or if the training set has no box at all (its
            annotation list is empty, or holds no class of the class list).
    """
    if not stats.instance_counts.any():
        raise ValueError(
            f"{name}: no boxes in its {stats.num_images} images ({stats.num_classes} classes): "
            "there is no class distribution to analyse; check that the annotation file has "
            "annotations, that the split is the right one and that the class names match")
    counts = stats.counts(count_by)
    grouping = assign_groups(counts, group_by, rare_max, common_max, quantiles, frequency)
    cb = recommend_cb_beta(stats.instance_counts, beta_ratio)
    return DatasetSummary(
        name, stats, grouping, count_by, cb.value,
        effective_number(stats.instance_counts, cb.value),
        recommend_repeat_threshold(stats, max_repeat, image_labels=image_labels), cb,
        tuple(notes), image_labels is not None)


def _table(rows: list[dict[str, Any]], beta: float, count_by: str) -> list[str]:
    lines = [f"| rank | class | instances | images | group (by {count_by}s) | share of instances "
             f"| effective number (beta={beta:.4g}) |", "|---:|---|---:|---:|---|---:|---:|"]
    lines += [f"| {r['rank']} | {r['class']} | {r['instances']} | {r['images']} | {r['group']} | "
              f"{100 * r['instance_share']:.2f}% | {r['effective_number']:.1f} |" for r in rows]
    return lines


def format_summary(summary: DatasetSummary, max_rows: int | None = 40) -> str:
    """A Markdown report: header, per-class table, imbalance measures, recommendations.

    Args:
        summary: the summary.
        max_rows: at most this many classes, the head and the tail; None for all.
    """
    s = summary.stats
    m = summary.measures()
    groups = np.bincount(summary.grouping.groups, minlength=3)
    empty = f" ({s.num_empty_images} without boxes)" if summary.per_image else ""
    lines = [f"**{summary.name}**: {s.num_images} images{empty}, "
             f"{s.num_classes} classes, {int(s.instance_counts.sum())} boxes; "
             + ", ".join(f"{n} {g}" for g, n in zip(GROUP_NAMES, groups, strict=True)) + ".", ""]
    rows = summary.rows()
    if max_rows is not None and len(rows) > max_rows:
        head = rows[:max_rows - max_rows // 2]
        tail = rows[len(rows) - max_rows // 2:]
        table = _table(head, summary.beta, summary.count_by)
        table.append(f"| ... | {len(rows) - len(head) - len(tail)} classes | | | | | |")
        table += _table(tail, summary.beta, summary.count_by)[2:]
    else:
        table = _table(rows, summary.beta, summary.count_by)
    lines += table
    lines += ["", "| measure | instances | images |", "|---|---:|---:|",
              f"| imbalance ratio (max / min) | {m['imbalance_ratio_instances']:.4g} | "
              f"{m['imbalance_ratio_images']:.4g} |",
              f"| Gini coefficient | {m['gini_instances']:.3f} | {m['gini_images']:.3f} |", ""]
    note = describe_grouping(summary.grouping.rule, summary.grouping.thresholds,
                             summary.count_by)
    lines += [note, ""] if note else []
    lines += ["Recommendations:",
              f"- repeat-factor sampling, `oversample_thr={summary.repeat.value:.3g}`: "
              f"{summary.repeat.reason}",
              f"- class-balanced loss, `beta={summary.cb_beta.value:.6f}`: "
              f"{summary.cb_beta.reason}"]
    lines += [f"- note: {n}" for n in summary.notes]
    return "\n".join(lines)


def write_summary(summary: DatasetSummary, out_dir: str | Path,
                  stem: str = "class_stats") -> list[Path]:
    """Write ``{stem}.csv`` (every class) and ``{stem}.json`` (table, measures, advice).

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary.rows()
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
        writer.writeheader()
        writer.writerows(rows)
    data = {"name": summary.name, "count_by": summary.count_by,
            "num_images": summary.stats.num_images,
            "num_empty_images": summary.stats.num_empty_images,
            "grouping": summary.grouping.rule, "thresholds": summary.grouping.thresholds,
            "measures": summary.measures(),
            "recommendations": {
                "oversample_thr": {"value": summary.repeat.value,
                                   "reason": summary.repeat.reason},
                "cb_beta": {"value": summary.cb_beta.value, "reason": summary.cb_beta.reason}},
            "notes": list(summary.notes), "classes": rows}
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return [out / f"{stem}.csv", out / f"{stem}.json"]
