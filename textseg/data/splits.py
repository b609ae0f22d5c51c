"""Label-ratio splits that reproduce Semi-MedRef's published labeled/unlabeled subsets exactly.

Semi-MedRef (Li et al., 2026; ``aierwaixi/Semi-MedRef: scripts/prepare_splits.py`` at ``b9cd4b7``) draws the
labeled part of the training split as follows (``docs/data.md`` §6):

1. copy the list of training names,
2. shuffle it with a *fresh* :class:`random.Random` seeded with 42 (Python's own Mersenne Twister and
   :meth:`random.Random.shuffle`; numpy or torch generators do not reproduce it),
3. keep the first ``max(1, round(n * r))`` names for QaTa-COV19 or ``max(1, floor(n * r))`` for MosMedData+,
4. emit the labeled and unlabeled parts in the *original* order of the names.

Because every ratio takes a prefix of the same shuffled order, the labeled subsets are nested.

The order in which the names are fed in matters: QaTa uses the ``annotation.json`` ``train`` order
(lower-cased mask names), MosMed the code-point-sorted unique image names (:mod:`textseg.data.mosmed`).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from textseg.errors import DataError

__all__ = ["Rounding", "check_ratio", "labeled_count", "select_labeled", "shuffled_names"]

Rounding = Literal["round", "floor"]

#: Seed of Semi-MedRef's ``prepare_splits.py``.
DEFAULT_SEED = 42


def check_ratio(ratio: float) -> float:
    """Validate a label ratio.

    Args:
        ratio: Fraction of the training split that keeps its masks.

    Returns:
        The ratio as a float.

    Raises:
        DataError: If ``ratio`` is not a number in ``(0, 1]`` (NaN included); the message names the value.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise DataError(f"label ratio {ratio!r} is not a number; expected a value in (0, 1]")
    value = float(ratio)
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise DataError(f"label ratio {ratio!r} is outside (0, 1]")
    return value


def labeled_count(n: int, ratio: float, rounding: Rounding = "round") -> int:
    """Number of labeled names Semi-MedRef keeps out of ``n``.

    Args:
        n: Number of training names (positive).
        ratio: Label ratio in ``(0, 1]``.
        rounding: ``"round"`` (Python's round-half-to-even, QaTa) or ``"floor"`` (MosMed).

    Returns:
        ``max(1, round(n * ratio))`` or ``max(1, floor(n * ratio))``.

    Raises:
        DataError: For a bad ratio, ``n < 1`` or an unknown rounding mode.
    """
    value = check_ratio(ratio)
    if n < 1:
        raise DataError(f"cannot draw a labeled subset from {n} names")
    if rounding == "round":
        count = round(n * value)
    elif rounding == "floor":
        count = math.floor(n * value)
    else:
        raise DataError(f"unknown rounding mode {rounding!r}; expected 'round' or 'floor'")
    return min(n, max(1, int(count)))


def shuffled_names(names: Sequence[str], seed: int = DEFAULT_SEED) -> list[str]:
    """Semi-MedRef's shuffled order: a copy of ``names`` shuffled by a fresh ``random.Random(seed)``.

    Args:
        names: Names in the order the algorithm receives them.
        seed: Seed of the fresh :class:`random.Random`.

    Returns:
        The shuffled copy (``names`` is not modified).
    """
    order = list(names)
    random.Random(seed).shuffle(order)
    return order


def select_labeled(
    names: Sequence[str], ratio: float, seed: int = DEFAULT_SEED, rounding: Rounding = "round"
) -> list[str]:
    """Select the labeled names exactly as Semi-MedRef does (``docs/data.md`` §6).

    Args:
        names: Unique names in the order the algorithm receives them (QaTa: ``annotation.json`` train order;
            MosMed: code-point-sorted image names).
        ratio: Label ratio in ``(0, 1]``; 1 selects every name.
        seed: Seed of the fresh :class:`random.Random` used for the shuffle (Semi-MedRef: 42).
        rounding: ``"round"`` for QaTa, ``"floor"`` for MosMed.

    Returns:
        The labeled names in the **original** order of ``names``.

    Raises:
        DataError: If the ratio is outside ``(0, 1]`` (the message names the value), ``names`` is empty or
            contains duplicates.
    """
    value = check_ratio(ratio)
    if len(names) == 0:
        raise DataError("cannot draw a labeled subset from an empty list of names")
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DataError(f"duplicate names in the split input: {dupes[:5]}")
    if value == 1.0:
        return list(names)
    count = labeled_count(len(names), value, rounding)
    chosen = set(shuffled_names(names, seed)[:count])
    return [n for n in names if n in chosen]
