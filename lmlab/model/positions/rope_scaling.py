"""RoPE scaling: reading past the trained length by changing RoPE's angles (lesson 06, ``lessons/06_long_context``).

A model trained on ``L`` tokens meets rotation angles it never saw once it reads more. Each entry below
is a ``ModelConfig(position="rope", rope_scaling={...})`` option:

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

from lmlab.argcheck import check_int
from lmlab.model.attention import repeat_kv
from lmlab.model.positions.encodings import AttentionPositions, apply_rope, check_rope_head_dim, rope_cos_sin, rope_frequencies

__all__ = ["ROPE_SCALINGS", "check_rope_scaling", "scaled_rope_frequencies", "ntk_base", "yarn_ramp",
           "yarn_attention_factor", "rope_attention_positions", "truncated_rope_attention"]

ROPE_SCALINGS = ("linear", "ntk", "dynamic_ntk", "yarn", "truncate")
_SCALING_KEYS = {
    "linear": {"factor"},
    "ntk": {"factor"},
    "dynamic_ntk": {"factor", "original_context_length"},
    "yarn": {"factor", "original_context_length"},
    "truncate": {"window"},
}
_OPTIONAL_KEYS = {"yarn": {"beta_fast", "beta_slow", "attention_factor"}}


# --------------------------------------------------------------------------------------------
# RoPE scaling
# --------------------------------------------------------------------------------------------


def check_rope_scaling(scaling: dict | None) -> None:
    """Validate a ``rope_scaling`` dict (see the module docstring); ``None`` is plain RoPE."""
    if scaling is None:
        return
    if not isinstance(scaling, dict) or scaling.get("type") not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling must be None or a dict with 'type' in {ROPE_SCALINGS}, got {scaling!r}")
    kind = scaling["type"]
    required, optional = _SCALING_KEYS[kind], _OPTIONAL_KEYS.get(kind, set())
    missing, unknown = required - scaling.keys(), scaling.keys() - required - optional - {"type"}
    if missing or unknown:
        raise ValueError(f"rope_scaling of type {kind!r} needs keys {sorted(required)} (optional {sorted(optional)}); "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    if "factor" in scaling:
        f = scaling["factor"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f < 1:
            raise ValueError(f"rope_scaling factor must be a number >= 1 (target length / trained length), got {f!r}")
    if "original_context_length" in scaling:
        check_int(scaling["original_context_length"], "rope_scaling original_context_length")
    if "window" in scaling:
        check_int(scaling["window"], "rope_scaling window")
    for name in ("beta_fast", "beta_slow", "attention_factor"):
        if name in scaling and (isinstance(scaling[name], bool) or not isinstance(scaling[name], (int, float)) or not scaling[name] > 0):
            raise ValueError(f"rope_scaling {name} must be a number > 0, got {scaling[name]!r}")
    if kind == "yarn" and scaling.get("beta_fast", 32) <= scaling.get("beta_slow", 1):
        raise ValueError(f"rope_scaling beta_fast must be > beta_slow, got {scaling.get('beta_fast', 32)} <= {scaling.get('beta_slow', 1)}")


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
    """``(inv_freq (hs/2,), attention_factor)`` for a ``rope_scaling`` dict. ``seq_len`` (the
    current length) only matters for ``dynamic_ntk``. ``truncate`` keeps the plain frequencies."""
    check_rope_scaling(scaling)
    inv_freq = rope_frequencies(head_dim, base)  # (hs/2,)
    if scaling is None or scaling["type"] == "truncate":
        return inv_freq, 1.0
    kind, s = scaling["type"], float(scaling["factor"])
    d = head_dim
    if kind == "linear":
        return inv_freq / s, 1.0
    if kind == "ntk":
        return rope_frequencies(d, ntk_base(base, s, d)), 1.0
    if kind == "dynamic_ntk":
        L = scaling["original_context_length"]
        n = max(seq_len or L, L)
        return rope_frequencies(d, ntk_base(base, (s * n / L) - (s - 1), d)), 1.0
    # yarn: blend the interpolated and the original frequency pair by pair
    ramp = yarn_ramp(d, base, scaling["original_context_length"], scaling.get("beta_fast", 32), scaling.get("beta_slow", 1))
    inv_freq = (inv_freq / s) * ramp + inv_freq * (1 - ramp)
    return inv_freq, float(scaling.get("attention_factor", yarn_attention_factor(s)))


def rope_attention_positions(head_dim: int, base: float, scaling: dict | None, q_positions: torch.Tensor,
                             k_positions: torch.Tensor) -> AttentionPositions:
    """What a RoPE model's attention layers need for one forward pass (see
    :class:`lmlab.model.positions.scheme.AttentionPositions`): cos/sin at the new tokens' positions, or, for
    ``truncate``, an attention function that works on un-rotated q and k."""
    if scaling is not None and scaling["type"] == "truncate":
        window = scaling["window"]
        return AttentionPositions(attend_fn=lambda q, k, v, mask: truncated_rope_attention(
            q, k, v, q_positions, k_positions, window, base=base, mask=mask))
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
