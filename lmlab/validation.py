"""The course's shared input checks: one place that says what a valid argument is.

Every public function validates its input and raises a ``ValueError`` that names the parameter and
the allowed values. These helpers are those checks; each returns the (normalised) value so a
function can write ``n = check_int(n, "n_heads", where="MultiHeadAttention")``.

``where`` (optional) is prefixed to the message, e.g. ``"ModelConfig.n_heads must be an int >= 1"``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

__all__ = [
    "check_int", "check_number", "check_positive", "check_probability", "check_choice",
    "check_divides", "check_tensor", "check_bool",
]


def _label(name: str, where: str | None) -> str:
    return f"{where}.{name}" if where and not where.endswith(")") else (f"{where}: {name}" if where else name)


def check_bool(value: Any, name: str, where: str | None = None) -> bool:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{_label(name, where)} must be True or False, got {value!r}")
    return value


def check_int(value: Any, name: str, where: str | None = None, *, minimum: int | None = 1,
              maximum: int | None = None, allow_none: bool = False) -> int | None:
    """An ``int`` (not a bool) in ``[minimum, maximum]``; ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        rng = (f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]") if minimum is not None else (
            f"<= {maximum}" if maximum is not None else "")
        tail = " (or None)" if allow_none else ""
        raise ValueError(f"{_label(name, where)} must be an int {rng}{tail}, got {value!r}".replace("int  ", "int "))
    return value


def check_number(value: Any, name: str, where: str | None = None, *, low: float | None = None,
                 high: float | None = None, low_inclusive: bool = True, high_inclusive: bool = True,
                 allow_none: bool = False) -> float | None:
    """A finite real number (int or float, not bool) in the stated range; returns it as ``float``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None and (value < low or (value == low and not low_inclusive)):
        ok = False
    if ok and high is not None and (value > high or (value == high and not high_inclusive)):
        ok = False
    if not ok:
        lo = "" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        if low is not None and high is not None:
            rng = f" in {lo}, {hi}"
        elif low is not None:
            rng = f" {'>=' if low_inclusive else '>'} {low:g}"
        elif high is not None:
            rng = f" {'<=' if high_inclusive else '<'} {high:g}"
        else:
            rng = ""
        raise ValueError(f"{_label(name, where)} must be a finite number{rng}, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str, where: str | None = None) -> float:
    """A finite number > 0."""
    return check_number(value, name, where, low=0.0, low_inclusive=False)


def check_probability(value: Any, name: str, where: str | None = None, *, open_low: bool = False,
                      open_high: bool = False) -> float:
    """A number in [0, 1] (either end open on request, e.g. ``open_low=open_high=True`` for (0, 1))."""
    return check_number(value, name, where, low=0.0, high=1.0, low_inclusive=not open_low, high_inclusive=not open_high)


def check_choice(value: Any, name: str, allowed: Iterable, where: str | None = None) -> Any:
    """``value`` must be one of ``allowed``; the message lists them."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{_label(name, where)} must be one of {allowed}, got {value!r}")
    return value


def check_divides(divisor: int, dividend: int, divisor_name: str, dividend_name: str, where: str | None = None) -> None:
    """``divisor`` must divide ``dividend``; the message lists the divisors that would."""
    if dividend % divisor:
        options = [d for d in range(1, dividend + 1) if dividend % d == 0]
        raise ValueError(f"{_label(divisor_name, where)} ({divisor}) must divide {dividend_name} ({dividend}): "
                         f"one of {options}")


def check_tensor(value: Any, name: str, where: str | None = None, *, dim: int | tuple[int, ...] | None = None,
                 shape: tuple | None = None, dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
                 floating: bool = False) -> torch.Tensor:
    """A ``torch.Tensor`` with the given number of dims, shape (``None`` entries are free) and dtype."""
    label = _label(name, where)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{label} must be a torch.Tensor, got {type(value).__name__}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if value.dim() not in dims:
            raise ValueError(f"{label} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(value.shape)}")
    if shape is not None:
        if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{label} must have shape {want}, got {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{label} must be a floating-point tensor, got {value.dtype}")
    if dtype is not None:
        dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if value.dtype not in dtypes:
            raise ValueError(f"{label} must have dtype {' or '.join(map(str, dtypes))}, got {value.dtype}")
    return value
