"""The config's checks: numbers in a range, integers, image/patch pairs.

One home for the small rules that the config, the callbacks, the policies and the command-line tools all apply, so
that every bad value is refused with the same kind of message: the argument's name, the value and the allowed range.

This file is part of the remote-code set copied into every saved checkpoint (the config imports it), so it imports
only the standard library.
"""

import math
import numbers
from collections.abc import Sequence


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_number(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = True,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """Return `value` as a float, or raise `ValueError` naming `name` unless it is a finite real in the range.

    The range defaults to `(low, high]`; `low_open` / `high_open` say whether each end is excluded. Booleans are
    refused (`True` is an `int` in Python, but never what a user meant by a rate).
    """
    allowed = _interval(low, high, low_open, high_open)
    suffix = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a number in {allowed}{suffix}, got {value!r} of type {type(value).__name__}."
        )
    if not -math.inf < value < math.inf:  # not `math.isfinite`: a compiled forward passes a symbolic float here
        raise ValueError(f"`{name}` must be a number in {allowed}{suffix}, got {value!r}.")
    above_low = value > low if low_open else value >= low
    below_high = value < high if high_open else value <= high
    if not (above_low and below_high):
        raise ValueError(f"`{name}` must be in {allowed}{suffix}, got {value!r}.")
    return float(value)


def check_fraction(name: str, value: object, *, allow_zero: bool = False, allow_one: bool = True) -> float:
    """A share of something: `(0, 1]` by default; `allow_zero` admits 0 and `allow_one=False` refuses 1."""
    return check_number(name, value, 0.0, 1.0, low_open=not allow_zero, high_open=not allow_one)


def check_keep_rate(name: str, value: object) -> float:
    """A keep rate: a fraction in (0, 1], where 1.0 keeps everything."""
    return check_number(name, value, 0.0, 1.0, hint="1.0 keeps everything")


def check_int(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """Return `value` as an int, or raise `ValueError` naming `name` unless it is an integer in `[low, high]`."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r} of type {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
    return int(value)


def as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    """`(height, width)` from ViT's `image_size` / `patch_size` convention: one int for a square, or a pair."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"expected an integer or a (height, width) pair, got {value!r}.")


__all__ = [
    "as_pair",
    "check_fraction",
    "check_int",
    "check_keep_rate",
    "check_number",
]
