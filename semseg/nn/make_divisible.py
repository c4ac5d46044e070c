"""Channel rounding of the MobileNet family (the TF-slim rule MMSegmentation's checkpoints were built with)."""

from __future__ import annotations


def make_divisible(value: float, divisor: int, min_value: int | None = None, min_ratio: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``),
    bumped up one ``divisor`` when rounding lost more than ``1 - min_ratio`` of it."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < min_ratio * value else rounded
