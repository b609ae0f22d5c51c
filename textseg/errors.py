"""Exceptions raised by textseg for bad input, and the range check of numeric arguments."""

from __future__ import annotations

import math


class DataError(ValueError):
    """Bad input data or configuration.

    The message always names the offending file or value and the problem, so that a user can fix the input
    before any training starts.
    """


def check_range(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool = False,
) -> None:
    """Refuse a numeric argument outside its allowed range, naming the argument, its value and the range.

    Args:
        name: The argument's name, as the user writes it.
        value: Its value: a finite int or float (``bool`` is refused); ``None`` only with ``optional``.
        low: Smallest allowed value (``None``: no lower bound).
        high: Largest allowed value (``None``: no upper bound).
        open_low: ``low`` itself is not allowed.
        open_high: ``high`` itself is not allowed.
        optional: ``None`` is allowed (it means "default" or "off").

    Raises:
        DataError: ``"<name> must be in (0, 1], got 1.5"``, ``"batch_size must be >= 1, got 0"``, ...
    """
    if value is None and optional:
        return
    if low is not None and high is not None:
        allowed = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        allowed = f"{'>' if open_low else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if open_high else '<='} {high:g}"
    else:
        allowed = "a finite number"
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = number and (
        (low is None or (value > low if open_low else value >= low))  # type: ignore[operator]
        and (high is None or (value < high if open_high else value <= high))  # type: ignore[operator]
    )
    if not ok:
        raise DataError(f"{name} must be {allowed}, got {value!r}")
