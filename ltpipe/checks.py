"""Value checks for params: each returns the value or raises ConfigError naming the key and the valid range."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from ltpipe.errors import ConfigError


def check_real(what: str, value: Any, *, low: float = -math.inf, high: float = math.inf, include_low: bool = True,
               include_high: bool = True) -> float:
    """`value` as a float if it is a finite real in the interval, else ConfigError naming the interval."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if include_low else value > low) and (value <= high if include_high else value < high)
    if not ok:
        interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
        raise ConfigError(f"{what} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_int(what: str, value: Any, minimum: int, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def check_choice(what: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_train_counts(train_counts: Sequence[int]) -> np.ndarray:
    """Training images per class as int64 (C,): a non-empty 1-D sequence of integers >= 0."""
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ConfigError(f"train_counts must be a non-empty 1-D sequence of integers >= 0, got {train_counts!r}")
    return counts.astype(np.int64)
