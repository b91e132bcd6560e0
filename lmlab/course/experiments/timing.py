"""Small measuring helpers shared by the lessons' experiments (lessons 04 and 08)."""

from __future__ import annotations

import math
import time

__all__ = ["min_time", "fit_slope", "log_log_slope"]


def min_time(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of ``fn()``, in seconds (the least disturbed by a busy machine)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def fit_slope(xs, ys) -> float:
    """Least-squares slope of ``ys`` against ``xs``."""
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys) or len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError(f"xs and ys must be equally long with at least two distinct xs, got {len(xs)} xs and {len(ys)} ys")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def log_log_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x): the exponent p in y ~ x^p."""
    if any(v <= 0 for v in (*xs, *ys)):
        raise ValueError("log_log_slope needs positive xs and ys")
    return fit_slope([math.log(x) for x in xs], [math.log(y) for y in ys])
