"""The course's shared input checks: one place that says what a valid argument is.

Every public function validates its input and raises a ``ValueError`` that names the parameter and
the allowed values. These helpers are those checks; each returns the (normalised) value so a
function can write ``n = check_int(n, "n_heads", where="MultiHeadAttention")``.

``where`` (optional) is prefixed to the message, e.g. ``"ModelConfig.n_heads must be an int >= 1"``; a
``where`` ending in ``":"`` (``"FeedForward:"``) reads ``"FeedForward: hidden must be ..."`` instead.
``note`` (optional, on the int / number / choice checks) says what the values mean, in parentheses:
``check_int(n, "num_beams", note="1 = greedy")`` reads ``"num_beams must be an int >= 1 (1 = greedy), got 0"``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

__all__ = [
    "check_int", "check_number", "check_positive", "check_probability", "check_choice",
    "check_divides", "check_tensor", "check_bool", "check_qkv", "check_kv_heads",
]


def _note(note: str | None, allow_none: bool = False) -> str:
    """`` (or None; note)``, `` (or None)``, `` (note)`` or nothing."""
    parts = ["or None"] * allow_none + [note] * bool(note)
    return f" ({'; '.join(parts)})" if parts else ""


def _label(name: str, where: str | None) -> str:
    if where and where.endswith(":"):
        return f"{where} {name}"
    return f"{where}.{name}" if where and not where.endswith(")") else (f"{where}: {name}" if where else name)


def check_bool(value: Any, name: str, where: str | None = None) -> bool:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{_label(name, where)} must be True or False, got {value!r}")
    return value


def check_int(value: Any, name: str, where: str | None = None, *, minimum: int | None = 1,
              maximum: int | None = None, allow_none: bool = False, note: str | None = None) -> int | None:
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
        raise ValueError(f"{_label(name, where)} must be an int {rng}{_note(note, allow_none)}, got {value!r}".replace("int  ", "int "))
    return value


def check_number(value: Any, name: str, where: str | None = None, *, low: float | None = None,
                 high: float | None = None, low_inclusive: bool = True, high_inclusive: bool = True,
                 allow_none: bool = False, note: str | None = None) -> float | None:
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
        raise ValueError(f"{_label(name, where)} must be a finite number{rng}{_note(note, allow_none)}, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str, where: str | None = None) -> float:
    """A finite number > 0."""
    return check_number(value, name, where, low=0.0, low_inclusive=False)


def check_probability(value: Any, name: str, where: str | None = None, *, open_low: bool = False,
                      open_high: bool = False) -> float:
    """A number in [0, 1] (either end open on request, e.g. ``open_low=open_high=True`` for (0, 1))."""
    return check_number(value, name, where, low=0.0, high=1.0, low_inclusive=not open_low, high_inclusive=not open_high)


def check_choice(value: Any, name: str, allowed: Iterable, where: str | None = None, *, note: str | None = None) -> Any:
    """``value`` must be one of ``allowed``; the message lists them."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{_label(name, where)} must be one of {allowed}{_note(note)}, got {value!r}")
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


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_heads: bool = True) -> None:
    """Attention inputs (lessons 04, 08): ``q (B, nh, T_q, hs)``, ``k (B, nkv, T_k, hs)``, ``v (B, nkv, T_k, hs_v)``, one dtype and device.

    ``same_heads``: require ``nh == nkv``; otherwise ``nh`` must be a multiple of ``nkv`` (GQA).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor (B, heads, T, head_dim), got {got}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise ValueError(f"q, k, v must share one floating dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}")
    if q.size(0) != k.size(0) or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"q (B, nh, T_q, hs), k (B, nkv, T_k, hs), v (B, nkv, T_k, hs_v) must agree on B, nkv, T_k; "
            f"got q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}"
        )
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same head size (head_dim), got q={tuple(q.shape)}, k={tuple(k.shape)}")
    if same_heads and q.size(1) != k.size(1):
        raise ValueError(f"q and k must have the same number of heads (use repeat_kv for GQA), got q={tuple(q.shape)}, k={tuple(k.shape)}")
    if not same_heads and q.size(1) % k.size(1):
        raise ValueError(f"q's heads ({q.size(1)}) must be a multiple of k/v's heads ({k.size(1)})")


def check_kv_heads(n_kv_heads: Any, n_heads: int, where: str | None = None) -> int:
    """Key/value heads for ``n_heads`` query heads (lesson 04): ``None`` means ``n_heads`` (MHA), else
    an int that divides ``n_heads`` (1 = MQA, in between = GQA). Returns the number."""
    if n_kv_heads is None:
        return n_heads
    if not isinstance(n_kv_heads, int) or isinstance(n_kv_heads, bool) or n_kv_heads < 1 or n_heads % n_kv_heads:
        divisors = [h for h in range(1, n_heads + 1) if n_heads % h == 0]
        raise ValueError(f"{_label('n_kv_heads', where)} must divide n_heads={n_heads} (1 = MQA, {n_heads} = MHA): "
                         f"one of {divisors} (or None), got {n_kv_heads!r}")
    return n_kv_heads
