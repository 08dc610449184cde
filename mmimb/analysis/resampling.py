"""Expected per-class counts of one epoch after re-sampling, from a sampler or wrapper config.

Nothing is drawn: the expectations follow from the statistics functions that the samplers and
wrappers themselves call (:mod:`mmimb.stats`), read from their code, never from an instance.

===========================  ===============================================================
config ``type``              expected draws of image ``i`` per epoch
===========================  ===============================================================
``RepeatFactorSampler``      ``r_i`` (stochastic rounding; ``ceil``/``floor``/``round`` as
                             given), ``r_i`` from :func:`mmimb.stats.image_repeat_factors`
``RepeatFactorDataset``      the same; stochastic: ``r_i * L / sum(r)`` with ``L = round(sum r)``
``ClassBalancedDataset``     mmengine's wrapper: ``ceil(r_i)``, ``p = 0.5``, by image, max
``ClassAwarePowerSampler``   ``num_samples * w_i / sum(w)``, :func:`mmimb.stats.class_aware_weights`
``UndersampleSampler``       not in closed form for multi-label images: the per-class image
                             targets of :func:`mmimb.stats.undersampling_targets` are shown,
                             a lower bound on the images kept (exact for one class per image)
===========================  ===============================================================

Shape shorthand: N images, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmimb.samplers import resolve_oversample_thr, round_factors
from mmimb.stats import (
    AUTO_THRESHOLD,
    ClassStats,
    ImageLabels,
    class_aware_weights,
    class_repeat_factors,
    image_repeat_factors,
    undersampling_targets,
    validate_repeat_factor_args,
)

#: Sampler and wrapper types whose effect can be computed.
RESAMPLING_TYPES: tuple[str, ...] = ("RepeatFactorSampler", "RepeatFactorDataset",
                                     "ClassBalancedDataset", "ClassAwarePowerSampler",
                                     "UndersampleSampler")

#: Dataset wrappers that re-sample (the analysis reads the dataset they wrap).
RESAMPLING_WRAPPERS: tuple[str, ...] = ("RepeatFactorDataset", "ClassBalancedDataset")

#: Defaults of each type's arguments, as in their constructors.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "RepeatFactorSampler": {"oversample_thr": 1e-3, "power": 0.5, "by": "image",
                            "reduce": "max", "rounding": "stochastic"},
    "RepeatFactorDataset": {"oversample_thr": 1e-3, "power": 0.5, "by": "image",
                            "reduce": "max", "rounding": "stochastic"},
    "ClassBalancedDataset": {"oversample_thr": 1e-3},
    "ClassAwarePowerSampler": {"power": 1.0, "by": "image", "reduce": "max",
                               "num_samples": None},
    "UndersampleSampler": {"sampling_strategy": "auto"},
}


@dataclass(frozen=True)
class ResamplingEffect:
    """Expected counts of one epoch under a re-sampling method, next to the raw ones.

    Attributes:
        method: the method and its arguments, e.g. ``RepeatFactorSampler(oversample_thr=0.001)``.
        instances: ``float64[C]`` expected boxes of each class drawn per epoch (NaN if unknown).
        images: ``float64[C]`` expected draws of images containing each class per epoch.
        epoch_length: expected images per epoch (NaN if unknown).
        exact: False when ``images`` is a lower bound (under-sampling of multi-label images).
    """

    method: str
    instances: np.ndarray
    images: np.ndarray
    epoch_length: float
    exact: bool = True


def _describe(kind: str, args: dict[str, Any]) -> str:
    shown = {k: f"{v:.4g}" if isinstance(v, float) else repr(v) for k, v in args.items()}
    return f"{kind}(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"


def resampling_effect(spec: dict[str, Any], image_labels: ImageLabels,
                      stats: ClassStats) -> ResamplingEffect:
    """The expected effect of a sampler or wrapper config on the class counts.

    Args:
        spec: the config dict (``type`` and arguments; ``dataset`` and seeds are ignored).
        image_labels: labels of the training images.
        stats: their counts (for under-sampling targets and class names).

    ``oversample_thr='auto'`` is resolved by the samplers' own rule
    (:func:`mmimb.samplers.resolve_oversample_thr`).

    Raises:
        ValueError: if ``type`` is not one of :data:`RESAMPLING_TYPES`, or an argument is
            invalid (the same checks as the sampler's).
        TypeError: if a numeric argument is not a number.
    """
    kind = spec.get("type")
    if kind not in RESAMPLING_TYPES:
        raise ValueError(f"cannot compute the effect of {kind!r}; supported: {RESAMPLING_TYPES}")
    unknown = set(spec) - set(_DEFAULTS[kind]) - {"type", "dataset", "seed", "shuffle",
                                                   "infinite", "lazy_init", "filter_empty_gt",
                                                   "background_ratio", "background_count"}
    if unknown:
        raise ValueError(f"{kind} has no argument(s) {sorted(unknown)}; known: "
                         f"{sorted(_DEFAULTS[kind])}")
    args = {**_DEFAULTS[kind], **{k: v for k, v in spec.items() if k in _DEFAULTS[kind]}}
    if isinstance(args.get("oversample_thr"), str) and args["oversample_thr"] == AUTO_THRESHOLD:
        if kind == "ClassBalancedDataset":
            raise ValueError("oversample_thr='auto' is understood by RepeatFactorSampler and "
                             "RepeatFactorDataset; mmengine's ClassBalancedDataset needs a "
                             "number in (0, 1]")
        # The rule the sampler and the wrapper apply; the method shows the number it chose.
        validate_repeat_factor_args(args["oversample_thr"], args["power"], args["by"],
                                    args["reduce"])
        args["oversample_thr"] = resolve_oversample_thr(AUTO_THRESHOLD, stats, args["power"])
    method = _describe(kind, args)
    n = image_labels.num_images
    if kind == "UndersampleSampler":
        targets = undersampling_targets(stats, args["sampling_strategy"]).astype(np.float64)
        return ResamplingEffect(method, np.full(stats.num_classes, np.nan), targets, np.nan,
                                exact=False)
    if kind == "ClassAwarePowerSampler":
        weights = class_aware_weights(image_labels, args["power"], args["by"], args["reduce"])
        total = n if args["num_samples"] is None else args["num_samples"]
        draws = weights * (total / weights.sum())
    else:
        if kind == "ClassBalancedDataset":  # mmengine: sqrt, by image, max, rounded up
            args = {"oversample_thr": args["oversample_thr"], "power": 0.5, "by": "image",
                    "reduce": "max", "rounding": "ceil"}
        validate_repeat_factor_args(args["oversample_thr"], args["power"], args["by"],
                                    args["reduce"])
        factors = image_repeat_factors(
            image_labels, class_repeat_factors(stats, args["oversample_thr"], args["power"],
                                               args["by"]), args["reduce"])
        if args["rounding"] != "stochastic":
            draws = round_factors(factors, args["rounding"]).astype(np.float64)
        elif kind == "RepeatFactorDataset":  # fixed length L = round(sum r)
            draws = factors * (np.floor(factors.sum() + 0.5) / factors.sum())
        else:
            draws = factors
    instances, images = image_labels.class_counts(draws)
    return ResamplingEffect(method, instances, images, float(draws.sum()))


def format_effect(effect: ResamplingEffect, stats: ClassStats, max_rows: int | None = 40) -> str:
    """A Markdown table: raw and expected per-class counts per epoch, most frequent first."""
    names = stats.classes or tuple(str(i) for i in range(stats.num_classes))
    order = np.lexsort((np.arange(stats.num_classes), -stats.instance_counts))
    if max_rows is not None and len(order) > max_rows:
        order = np.concatenate([order[:max_rows - max_rows // 2], order[-(max_rows // 2):]])
    bound = "" if effect.exact else " (at least)"
    lines = [f"Expected per epoch with {effect.method}:", "",
             f"| class | instances | expected instances | images | expected images{bound} | "
             "images x |", "|---|---:|---:|---:|---:|---:|"]
    for c in order:
        ratio = effect.images[c] / stats.image_counts[c] if stats.image_counts[c] else np.nan
        inst = "-" if np.isnan(effect.instances[c]) else f"{effect.instances[c]:.1f}"
        lines.append(f"| {names[c]} | {stats.instance_counts[c]} | {inst} | "
                     f"{stats.image_counts[c]} | {effect.images[c]:.1f} | {ratio:.2f} |")
    length = ("unknown" if np.isnan(effect.epoch_length)
              else f"{effect.epoch_length:.1f} (raw {stats.num_images})")
    lines += ["", f"Images per epoch: {length}."]
    if not effect.exact:
        lines.append("Under-sampling keeps at least each class's target; images holding "
                     "several classes can keep more, and instances are not predictable.")
    return "\n".join(lines)
