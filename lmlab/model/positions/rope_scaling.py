"""RoPE scaling: reading past the trained length by changing RoPE's angles (lesson 06, ``lessons/06_long_context``).

A model trained on ``L`` tokens meets rotation angles it never saw once it reads more. Each entry below
is a ``ModelConfig(position="rope", rope_scaling={...})`` option and one entry of the table
:data:`ROPE_SCALINGS` (like Hugging Face's ``ROPE_INIT_FUNCTIONS``): its required and optional keys,
each with its check, and its frequency function ``(head_dim, base, scaling, seq_len) -> (inv_freq,
attention_factor)``. :func:`check_rope_scaling` validates from the entry; a new scaling is one
:func:`register_rope_scaling` call:

* ``{"type": "linear", "factor": s}`` - position interpolation: position ``p`` becomes ``p / s``
  (equivalently every frequency is divided by ``s``), so ``s·L`` tokens reuse the trained angles.
* ``{"type": "ntk", "factor": s}`` - NTK-aware base change: ``base' = base · s^(d/(d-2))``; fast
  pairs barely change (local order kept), the slowest pair is interpolated by exactly ``s``.
* ``{"type": "dynamic_ntk", "factor": s, "original_context_length": L}`` - the NTK base computed
  from the current length ``n``: ``base · (s·n/L - (s-1))^(d/(d-2))``, the plain base while
  ``n <= L`` (Hugging Face's ``dynamic``). The angles change with ``n``, so cached decoding past
  ``L`` differs from a full recompute (keys in the cache keep their older rotation) - as in HF.
* ``{"type": "yarn", "factor": s, "original_context_length": L, "beta_fast": 32, "beta_slow": 1}``
  - YaRN: pairs that turn more than ``beta_fast`` times within ``L`` are kept (extrapolated), pairs
  that turn fewer than ``beta_slow`` times are interpolated by ``s``, a linear ramp in between;
  plus the attention temperature ``sqrt(1/t) = 0.1·ln(s) + 1`` multiplying cos and sin
  (optional ``"attention_factor"`` overrides it).
* ``{"type": "truncate", "window": w}`` - position truncation (ReRoPE without the leak):
  relative distances ``>= w`` are clipped to ``w``, so no angle past ``w`` is ever used. Needs
  two score matrices, so keys are cached un-rotated and the scores are computed explicitly.

Shapes: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from typing import Callable

from lmlab.argcheck import check_int
from lmlab.model.attention import repeat_kv
from lmlab.model.parts import Part, PartRegistry
from lmlab.model.positions.encodings import AttentionPositions, apply_rope, check_rope_head_dim, rope_cos_sin, rope_frequencies

__all__ = ["ROPE_SCALINGS", "register_rope_scaling", "check_rope_scaling", "scaled_rope_frequencies", "ntk_base",
           "yarn_ramp", "yarn_attention_factor", "rope_attention_positions", "truncated_rope_attention"]

# rope_scaling["type"] -> Part(build = frequency function, info = {"required", "optional", "check", "attention"})
ROPE_SCALINGS = PartRegistry("rope_scaling type", "ROPE_SCALINGS")


# --------------------------------------------------------------------------------------------
# RoPE scaling
# --------------------------------------------------------------------------------------------


def _factor(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"rope_scaling {name} must be a number >= 1 (target length / trained length), got {value!r}")


def _length(value, name: str) -> None:
    check_int(value, f"rope_scaling {name}")


def _positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"rope_scaling {name} must be a number > 0, got {value!r}")


def register_rope_scaling(name: str, frequencies: Callable, *, required: dict, optional: dict | None = None,
                          check: Callable | None = None, attention: Callable | None = None) -> Part:
    """One RoPE scaling, ``rope_scaling={"type": name, ...}``.

    ``frequencies(head_dim, base, scaling, seq_len) -> (inv_freq (hs/2,), attention_factor)``;
    ``required`` / ``optional``: ``{key: check(value, key)}`` (a check raises ``ValueError``);
    ``check(scaling)``: a test across keys; ``attention(head_dim, base, scaling, q_positions, k_positions)
    -> AttentionPositions``: for a scaling that replaces RoPE's rotation with its own attention."""
    return ROPE_SCALINGS.register(name, frequencies, required=dict(required), optional=dict(optional or {}),
                                  check=check, attention=attention)


def check_rope_scaling(scaling: dict | None) -> None:
    """Validate a ``rope_scaling`` dict against its :data:`ROPE_SCALINGS` entry; ``None`` is plain RoPE."""
    if scaling is None:
        return
    if not isinstance(scaling, dict) or scaling.get("type") not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling must be None or a dict with 'type' in {ROPE_SCALINGS.names()}, got {scaling!r}")
    kind = scaling["type"]
    info = ROPE_SCALINGS[kind].info
    required, optional = info["required"], info["optional"]
    missing, unknown = required.keys() - scaling.keys(), scaling.keys() - required.keys() - optional.keys() - {"type"}
    if missing or unknown:
        raise ValueError(f"rope_scaling of type {kind!r} needs keys {sorted(required)} (optional {sorted(optional)}); "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    for key, value in scaling.items():
        if key != "type":
            {**required, **optional}[key](value, key)
    if info["check"] is not None:
        info["check"](scaling)


def ntk_base(base: float, factor: float, head_dim: int) -> float:
    """The NTK-aware base ``base · factor^(d/(d-2))``: with it the slowest pair turns exactly
    ``factor`` times slower and the fastest one not at all (lesson 06's exercise)."""
    check_rope_head_dim(head_dim)
    if head_dim < 4:
        raise ValueError(f"head_dim must be >= 4 for the NTK base (d/(d-2) is undefined at d = 2), got {head_dim}")
    for name, value, low in (("base", base, 1), ("factor", factor, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return float(base) * float(factor) ** (head_dim / (head_dim - 2))


def yarn_attention_factor(factor: float) -> float:
    """YaRN's temperature as a factor on cos and sin: ``0.1·ln(s) + 1`` (1 for ``s <= 1``); the
    scores get its square, i.e. softmax temperature ``t`` with ``sqrt(1/t) = 0.1 ln s + 1``."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_ramp(head_dim: int, base: float, original_context_length: int, beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    """Per pair, ``(hs/2,)``: 0 = keep the original frequency (extrapolate), 1 = divide it by the
    factor (interpolate). Pair ``i`` turns ``L / (2π base^(2i/d))`` times over ``L`` tokens; the
    pair dimension where that count equals ``beta`` is ``d·ln(L/(2π·beta)) / (2 ln base)``. The ramp
    goes linearly from 0 at the ``beta_fast`` dimension (floor) to 1 at the ``beta_slow`` one (ceil)."""
    def dim_for(n_turns: float) -> float:
        return head_dim * math.log(original_context_length / (n_turns * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dim_for(beta_fast)), 0)
    high = min(math.ceil(dim_for(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero
    return ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (hs/2,)


def scaled_rope_frequencies(head_dim: int, base: float = 10000.0, scaling: dict | None = None,
                            seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """``(inv_freq (hs/2,), attention_factor)`` for a ``rope_scaling`` dict: its :data:`ROPE_SCALINGS`
    entry's frequency function. ``seq_len`` (the current length) only matters for ``dynamic_ntk``."""
    check_rope_scaling(scaling)
    if scaling is None:
        return rope_frequencies(head_dim, base), 1.0  # (hs/2,)
    return ROPE_SCALINGS[scaling["type"]].build(head_dim, base, scaling, seq_len)


# --------------------------------------------------------------------------------------------
# The built-in scalings: one entry each
# --------------------------------------------------------------------------------------------


def _linear(head_dim, base, scaling, seq_len):  # position interpolation: every frequency / s
    return rope_frequencies(head_dim, base) / float(scaling["factor"]), 1.0


def _ntk(head_dim, base, scaling, seq_len):  # NTK-aware: a larger base
    return rope_frequencies(head_dim, ntk_base(base, float(scaling["factor"]), head_dim)), 1.0


def _dynamic_ntk(head_dim, base, scaling, seq_len):  # the NTK base from the current length n
    s, L = float(scaling["factor"]), scaling["original_context_length"]
    n = max(seq_len or L, L)
    return rope_frequencies(head_dim, ntk_base(base, (s * n / L) - (s - 1), head_dim)), 1.0


def _yarn(head_dim, base, scaling, seq_len):  # blend the interpolated and the original frequency pair by pair
    s = float(scaling["factor"])
    inv_freq = rope_frequencies(head_dim, base)  # (hs/2,)
    ramp = yarn_ramp(head_dim, base, scaling["original_context_length"], scaling.get("beta_fast", 32), scaling.get("beta_slow", 1))
    inv_freq = (inv_freq / s) * ramp + inv_freq * (1 - ramp)
    return inv_freq, float(scaling.get("attention_factor", yarn_attention_factor(s)))


def _check_yarn(scaling: dict) -> None:
    if scaling.get("beta_fast", 32) <= scaling.get("beta_slow", 1):
        raise ValueError(f"rope_scaling beta_fast must be > beta_slow, got {scaling.get('beta_fast', 32)} <= {scaling.get('beta_slow', 1)}")


def _truncate(head_dim, base, scaling, seq_len):  # the plain frequencies; the clipping is in the attention
    return rope_frequencies(head_dim, base), 1.0


def _truncate_attention(head_dim, base, scaling, q_positions, k_positions) -> AttentionPositions:
    window = scaling["window"]
    return AttentionPositions(attend_fn=lambda q, k, v, mask: truncated_rope_attention(
        q, k, v, q_positions, k_positions, window, base=base, mask=mask))


register_rope_scaling("linear", _linear, required={"factor": _factor})
register_rope_scaling("ntk", _ntk, required={"factor": _factor})
register_rope_scaling("dynamic_ntk", _dynamic_ntk, required={"factor": _factor, "original_context_length": _length})
register_rope_scaling("yarn", _yarn, required={"factor": _factor, "original_context_length": _length},
                      optional={"beta_fast": _positive, "beta_slow": _positive, "attention_factor": _positive}, check=_check_yarn)
register_rope_scaling("truncate", _truncate, required={"window": _length}, attention=_truncate_attention)


def rope_attention_positions(head_dim: int, base: float, scaling: dict | None, q_positions: torch.Tensor,
                             k_positions: torch.Tensor) -> AttentionPositions:
    """What a RoPE model's attention layers need for one forward pass (see
    :class:`lmlab.model.positions.scheme.AttentionPositions`): cos/sin at the new tokens' positions, or, for
    ``truncate``, an attention function that works on un-rotated q and k."""
    attention = None if scaling is None else ROPE_SCALINGS[scaling["type"]].info["attention"]
    if attention is not None:  # truncate: its own attention on un-rotated q and k
        return attention(head_dim, base, scaling, q_positions, k_positions)
    seq_len = int(k_positions.max()) + 1 if k_positions.numel() else 1
    inv_freq, attention_factor = scaled_rope_frequencies(head_dim, base, scaling, seq_len)
    cos, sin = rope_cos_sin(q_positions, inv_freq.to(q_positions.device), attention_factor=attention_factor)  # (T, hs) each
    return AttentionPositions(cos=cos, sin=sin)


def truncated_rope_attention(q, k, v, q_positions, k_positions, window: int, *, base: float = 10000.0,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention whose RoPE distance is ``min(q_pos - k_pos, window)`` (ReRoPE, no leak).

    ``q (B, nh, T_q, hs)``, ``k, v (B, nkv, T_k, hs)``: *un-rotated*. Scores inside the window
    come from normal RoPE; beyond it from q rotated by ``window`` against the un-rotated key
    (a rotation by the window, whatever the real distance). ``mask``: bool, True = may attend.
    """
    check_int(window, "window")
    check_rope_head_dim(q.size(-1))
    k, v = repeat_kv(k, q.size(1) // k.size(1)), repeat_kv(v, q.size(1) // v.size(1))  # (B, nh, T_k, hs)
    scale = 1.0 / math.sqrt(q.size(-1))
    near = apply_rope(q, q_positions, base=base) @ apply_rope(k, k_positions, base=base).transpose(-2, -1)  # (B, nh, T_q, T_k)
    far_q = apply_rope(q, torch.full_like(q_positions, window), base=base)  # (B, nh, T_q, hs): rotated by w
    far = far_q @ k.transpose(-2, -1)  # (B, nh, T_q, T_k): key at rotation 0, so relative distance = w
    distance = q_positions[:, None] - k_positions[None, :]  # (T_q, T_k)
    scores = torch.where(distance < window, near, far) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores.float(), dim=-1).to(q.dtype) @ v  # (B, nh, T_q, hs)
