"""Helpers for writing checks: each raises :class:`CheckFailed` with a message a learner can act on.

Messages say what was expected and what came back: the type, the shape, the dtype, and for values
the largest absolute difference and where it is. Small boolean matrices (masks) are drawn.
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.grading.registry import CheckFailed
from lmlab.grading.seeds import check_generator

__all__ = ["expect_tensor", "expect_close", "expect_equal", "expect_true", "expect_int", "seeded_randn", "describe", "draw_mask"]


def describe(value: Any) -> str:
    """A short description of a value's type (and shape/dtype for tensors)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if value is None:
        return "None (did you forget to return?)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def draw_mask(mask: torch.Tensor) -> str:
    """A small boolean matrix as rows of ``1``/``.`` (rows = queries)."""
    return "\n".join("  " + " ".join("1" if v else "." for v in row) for row in mask.tolist())


def expect_tensor(got: Any, what: str, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``got`` must be a tensor (of ``shape`` and ``dtype`` when given); returns it."""
    if not isinstance(what, str) or not what:
        raise ValueError("what must be a non-empty description of the value, e.g. 'causal_mask(4)'")
    want = "a tensor" + (f" of shape {tuple(shape)}" if shape is not None else "") + (f" and dtype {dtype}" if dtype is not None else "")
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{what} should return {want}, got {describe(got)}")
    if shape is not None and tuple(got.shape) != tuple(shape):
        raise CheckFailed(f"{what} should return {want}, got shape {tuple(got.shape)}")
    if dtype is not None and got.dtype != dtype:
        raise CheckFailed(f"{what} should return {want}, got dtype {got.dtype}")
    return got


def expect_close(got: Any, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-5, check_dtype: bool = True,
                 allow_nan: bool = False) -> None:
    """``got`` must be a tensor equal to ``expected`` (within ``atol + rtol*|expected|``).

    NaN and ±inf must sit at the same places on both sides (an inf must have the same sign). A NaN in
    ``expected`` is refused (ValueError: the check computed something wrong, e.g. from inputs the
    learner's code changed) unless the check says ``allow_nan=True``."""
    if not isinstance(expected, torch.Tensor):
        raise ValueError(f"expected must be a tensor, got {type(expected).__name__}")
    got = expect_tensor(got, what, shape=tuple(expected.shape), dtype=expected.dtype if check_dtype else None)
    g, e = got.detach().cpu(), expected.detach().cpu()
    g, e = g.to(torch.float64), e.to(torch.float64)
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    if nan_e.any() and not allow_nan:
        raise ValueError(f"the expected value of {what!r} contains NaN; pass allow_nan=True if the check means it")
    if (nan_g & ~nan_e).any():
        raise CheckFailed(f"{what} contains NaN where a number was expected; look for log(0), 0/0 or exp overflow")
    if (nan_e & ~nan_g).any():
        i = _unravel(int(torch.argmax((nan_e & ~nan_g).to(torch.uint8))), tuple(e.shape))
        raise CheckFailed(f"{what}: expected NaN{' at index ' + str(list(i)) if i else ''}, got {g[i].item():.6g}")
    inf_g, inf_e = torch.isinf(g), torch.isinf(e)
    wrong_inf = (inf_g | inf_e) & ~(inf_g & inf_e & (g == e))
    if wrong_inf.any():
        i = _unravel(int(torch.argmax(wrong_inf.to(torch.uint8))), tuple(e.shape))
        raise CheckFailed(f"{what}: expected {e[i].item():.6g}{' at index ' + str(list(i)) if i else ''}, got {g[i].item():.6g} "
                          "(infinities must match exactly)")
    g, e = g.masked_fill(nan_g | inf_g, 0.0), e.masked_fill(nan_e | inf_e, 0.0)  # both NaN or the same inf here: equal
    diff = (g - e).abs()
    bad = diff > atol + rtol * e.abs()
    if not bad.any():
        return
    worst = int(torch.argmax(torch.where(bad, diff, torch.zeros_like(diff))))
    index = _unravel(worst, tuple(e.shape))
    at = f" at index {list(index)}" if index else ""
    if expected.dtype == torch.bool:
        msg = f"{what}: differs{at}: expected {bool(e[index])}, got {bool(g[index])} ({int(bad.sum())} entries differ)"
    else:
        msg = f"{what}: max abs difference {float(diff.max()):.4g}{at}: expected {e[index].item():.6g}, got {g[index].item():.6g}"
    if expected.dtype == torch.bool and expected.dim() == 2 and max(expected.shape) <= 8:
        msg += f"\nexpected (1 = may attend, rows = queries):\n{draw_mask(expected)}\ngot:\n{draw_mask(got.bool())}"
    raise CheckFailed(msg)


def expect_equal(got: Any, expected: Any, what: str) -> None:
    """Plain Python equality (lists, strings, numbers), with the first differing item for sequences."""
    if type(expected) in (list, tuple) and not isinstance(got, (list, tuple)):
        raise CheckFailed(f"{what} should be a {type(expected).__name__}, got {describe(got)}")
    if got == expected:
        return
    if isinstance(expected, (list, tuple, str)) and isinstance(got, (list, tuple, str)):
        if len(got) != len(expected):
            raise CheckFailed(f"{what}: expected length {len(expected)}, got length {len(got)}: expected {_short(expected)}, got {_short(got)}")
        i = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        raise CheckFailed(f"{what}: first difference at position {i}: expected {expected[i]!r}, got {got[i]!r}")
    raise CheckFailed(f"{what}: expected {_short(expected)}, got {_short(got)}")


def expect_true(condition: bool, message: str) -> None:
    """Fail with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def expect_int(got: Any, what: str) -> int:
    """``got`` if it is a plain ``int`` (not a bool, float or tensor), else fail saying what came back."""
    expect_true(isinstance(got, int) and not isinstance(got, bool), f"{what} should return an int, got {type(got).__name__} {got!r}")
    return got


def seeded_randn(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale`` times standard-normal test inputs, the same on every machine and in every call."""
    return torch.randn(*shape, generator=check_generator(seed), dtype=dtype) * scale


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index of entry ``flat`` of a row-major tensor of ``shape`` (``()`` for a scalar). Plain Python:
    ``torch.unravel_index``'s first call imports torch's compiler stack, seconds inside a timed check."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
