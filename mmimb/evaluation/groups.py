"""Frequency groups of classes (rare / common / frequent) for long-tail reports.

Three rules, chosen with ``group_by``:

- ``'threshold'``: absolute thresholds on the training count, :func:`mmimb.stats.frequency_groups`
  (LVIS v1: rare 1-10 training images, common 11-100, frequent more than 100).
- ``'quantile'``: the same rule with thresholds taken at quantiles of the classes' counts, so
  that each group holds about the same number of classes. ``rare_max`` is the count of the class
  at quantile ``q1`` (``numpy.quantile(..., method='lower')``, an actual class count) and
  ``common_max`` the one at ``q2``; classes with equal counts always share a group.
- ``'frequency'``: the ``frequency`` letter (``r``/``c``/``f``) that LVIS json files store in
  their categories.

``'auto'`` is ``'frequency'`` when every class has such a letter, else ``'threshold'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmimb.stats import frequency_groups

#: Valid values of ``group_by``.
GROUPINGS: tuple[str, ...] = ("auto", "threshold", "quantile", "frequency")

#: LVIS's frequency letters, in the order of :data:`mmimb.stats.GROUP_NAMES`.
FREQUENCY_LETTERS: tuple[str, str, str] = ("r", "c", "f")


@dataclass(frozen=True)
class Grouping:
    """How classes were put into groups, and the result.

    Attributes:
        groups: ``int64[K]`` group index of every class (see :data:`mmimb.stats.GROUP_NAMES`).
        rule: ``'threshold'``, ``'quantile'`` or ``'frequency'`` (never ``'auto'``).
        thresholds: ``{'rare_max': ..., 'common_max': ...}`` applied to the counts (empty for
            ``'frequency'``); for ``'quantile'`` also ``q1`` and ``q2``.
    """

    groups: np.ndarray
    rule: str
    thresholds: dict[str, float]


def describe_grouping(rule: str, thresholds: dict[str, float], count_by: str) -> str:
    """One sentence that says how the groups were made, for reports (``''`` if unknown)."""
    if rule == "frequency":
        return "Groups from the categories' LVIS `frequency` field (r / c / f)."
    if not thresholds:
        return ""
    text = (f"Groups by training {count_by} count: rare <= {thresholds['rare_max']:g} < common "
            f"<= {thresholds['common_max']:g} < frequent")
    if rule == "quantile":
        text += (f" (thresholds at the {thresholds['q1']:.3g} and {thresholds['q2']:.3g} "
                 "quantiles of the classes' counts)")
    return text + "."


def check_grouping_args(group_by: str, rare_max: float, common_max: float,
                        quantiles: Sequence[float]) -> None:
    """Validate the arguments of :func:`assign_groups`.

    Raises:
        ValueError: if ``group_by`` is not one of :data:`GROUPINGS`, the thresholds are invalid,
            or ``quantiles`` is not two increasing numbers in ``[0, 1]``.
    """
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")
    frequency_groups([], rare_max, common_max)  # validates the thresholds
    q = tuple(quantiles)
    if len(q) != 2 or not 0.0 <= q[0] <= q[1] <= 1.0:
        raise ValueError(f"quantiles must be two numbers 0 <= q1 <= q2 <= 1, got {quantiles!r}")


def groups_from_frequency(letters: Sequence[str]) -> np.ndarray:
    """``int64[K]`` group indices from LVIS frequency letters ``'r'``, ``'c'``, ``'f'``.

    Raises:
        ValueError: naming the first letter that is none of those.
    """
    lookup = {letter: i for i, letter in enumerate(FREQUENCY_LETTERS)}
    bad = [x for x in letters if x not in lookup]
    if bad:
        raise ValueError(f"frequency must be one of {FREQUENCY_LETTERS}, got {bad[0]!r}")
    return np.array([lookup[x] for x in letters], dtype=np.int64)


def assign_groups(counts: np.ndarray, group_by: str = "auto",
                  rare_max: float = 10, common_max: float = 100,
                  quantiles: Sequence[float] = (1 / 3, 2 / 3),
                  frequency: Sequence[str] | None = None) -> Grouping:
    """Put every class into a frequency group.

    Args:
        counts: ``[K]`` training counts (images or instances) per class.
        group_by: ``'auto'``, ``'threshold'``, ``'quantile'`` or ``'frequency'`` (see the
            module docstring).
        rare_max: largest count of a rare class (``'threshold'``).
        common_max: largest count of a common class (``'threshold'``).
        quantiles: ``(q1, q2)`` for ``'quantile'``.
        frequency: ``[K]`` LVIS frequency letters, when the annotation has them.

    Returns:
        The :class:`Grouping`.

    Raises:
        ValueError: on invalid arguments, or ``group_by='frequency'`` without letters for every
            class.
    """
    check_grouping_args(group_by, rare_max, common_max, quantiles)
    counts = np.asarray(counts)
    if group_by == "auto":
        group_by = "frequency" if frequency is not None else "threshold"
    if group_by == "frequency":
        if frequency is None or len(frequency) != len(counts):
            raise ValueError("group_by='frequency' needs an LVIS `frequency` letter for every "
                             "class in the training annotation's categories")
        return Grouping(groups_from_frequency(frequency), "frequency", {})
    if group_by == "quantile":
        q1, q2 = (float(q) for q in quantiles)
        if len(counts) == 0:
            raise ValueError("group_by='quantile' needs at least one class")
        rare, common = np.quantile(counts, [q1, q2], method="lower")
        return Grouping(frequency_groups(counts, rare, common), "quantile",
                        {"rare_max": float(rare), "common_max": float(common), "q1": q1, "q2": q2})
    return Grouping(frequency_groups(counts, rare_max, common_max), "threshold",
                    {"rare_max": float(rare_max), "common_max": float(common_max)})

