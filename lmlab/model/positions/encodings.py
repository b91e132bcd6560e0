"""Position embeddings (lesson 03, ``lessons/03_positions``).

Self-attention without positions is permutation-equivariant: shuffle the tokens and the outputs
are shuffled the same way. Every scheme here breaks that symmetry differently:

* absolute, added to the token embeddings: :func:`sinusoidal_embedding` (Vaswani et al.) and
  :class:`LearnedPositionEmbedding` (GPT-2: a table, so it cannot go past its last row);
* relative, added to the attention scores: the T5 bias (:func:`relative_position_bucket`, exact
  buckets nearby and log-spaced ones far away, :class:`T5RelativeBias`) and ALiBi
  (:func:`alibi_slopes`, :func:`alibi_bias`: a per-head linear penalty on distance);
* relative, by rotating q and k: RoPE (:func:`rope_frequencies`, :func:`apply_rope`) in the
  half-split layout of LLaMA / Hugging Face (``rotate_half``) and the interleaved-pairs layout of
  the paper / GPT-J / Meta's LLaMA code, with the converters :func:`interleaved_to_half` and
  :func:`half_to_interleaved`, and the complex-number form :func:`apply_rope_complex`.

:func:`lmlab.model.gpt.build_position` turns ``ModelConfig.position`` into the module
:class:`lmlab.model.gpt.GPT` uses; the context-extension tricks for RoPE (interpolation, NTK, YaRN, truncation) are in
:mod:`lmlab.model.positions.rope_scaling` (lesson 06).

Shapes: B = batch, nh = heads, T = tokens (T_q queries, T_k keys), hs = head_dim, C = d_model.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.argcheck import check_int, check_positive

__all__ = [
    "POSITIONS",
    "ROPE_LAYOUTS",
    "sinusoidal_embedding",
    "SINUSOIDAL_SCALE",
    "LearnedPositionEmbedding",
    "relative_position_bucket",
    "T5RelativeBias",
    "rope_frequencies",
    "rope_cos_sin",
    "rotate_half",
    "rotate_pairs",
    "apply_rope",
    "apply_rope_complex",
    "interleaved_to_half",
    "half_to_interleaved",
    "alibi_slopes",
    "alibi_bias",
    "check_rope_head_dim",
    "AttentionPositions",
    "RotaryEmbedding",
]

POSITIONS = ("learned", "none", "sinusoidal", "t5", "rope", "alibi")
# The model adds SINUSOIDAL_SCALE * table to the token embeddings. The raw table has RMS 1/sqrt(2) per
# dimension, 35x the 0.02 of GPT-2-initialised token embeddings: unscaled, it drowns the tokens and
# lesson 03's model trained ~0.95 nats worse with it. Scaled, both start at RMS 0.02. Vaswani
# et al. keep the same balance the other way round: embeddings initialised at d**-0.5, times sqrt(d).
SINUSOIDAL_SCALE = 0.02 * math.sqrt(2)
ROPE_LAYOUTS = ("half", "interleaved")


def _as_positions(positions, device=None) -> torch.Tensor:
    """An int ``T`` means ``0..T-1``; a tensor is used as given (1-D, integer)."""
    if isinstance(positions, int) and not isinstance(positions, bool):
        check_int(positions, "positions")
        return torch.arange(positions, device=device)
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1:
        raise ValueError(f"positions must be an int T or a 1-D tensor of positions, got {getattr(positions, 'shape', positions)!r}")
    return positions


# --------------------------------------------------------------------------------------------
# Absolute positions: sinusoidal and learned
# --------------------------------------------------------------------------------------------


def sinusoidal_embedding(n_positions, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The Transformer's fixed embedding, ``(n_positions, d_model)``:

    ``PE[p, 2i] = sin(p / base^(2i/d))``, ``PE[p, 2i+1] = cos(p / base^(2i/d))``.

    ``n_positions`` may also be a 1-D tensor of positions (any values: nothing to extrapolate).
    Each pair of columns is a clock at its own speed: pair ``i`` turns once per ``2π·base**(2i/d)``
    tokens, from ``2π`` (pair 0) to ``2π·base**((d-2)/d)`` (the last pair); ``PE[p + k]`` is a fixed rotation of ``PE[p]``.
    """
    pos = _as_positions(n_positions)
    check_int(d_model, "d_model")
    if d_model % 2:
        raise ValueError(f"d_model must be even for the sinusoidal embedding (sin/cos pairs), got {d_model}")
    check_positive(base, "base")
    inv_freq = 1.0 / (base ** (torch.arange(0, d_model, 2, dtype=torch.float32, device=pos.device) / d_model))  # (C/2,)
    angles = pos.float()[:, None] * inv_freq[None, :]  # (T, C/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (T, C/2, 2) -> (T, C): sin, cos interleaved


class LearnedPositionEmbedding(nn.Embedding):
    """GPT-2's learned absolute positions: one trained row per position ``0..n_positions-1``.

    A plain :class:`torch.nn.Embedding` (so ``GPT.pos_emb.weight`` keeps GPT-2's name) whose
    forward refuses positions past the table with an explanation instead of an index error:
    a row that was never trained does not exist, so learned positions cannot extrapolate.
    """

    def __init__(self, n_positions: int, d_model: int):
        check_int(n_positions, "n_positions")
        check_int(d_model, "d_model")
        super().__init__(n_positions, d_model)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if positions.numel() and (int(positions.max()) >= self.num_embeddings or int(positions.min()) < 0):
            raise ValueError(
                f"n_positions: learned absolute position embeddings have n_positions={self.num_embeddings} rows "
                f"(positions 0..{self.num_embeddings - 1}) and cannot extrapolate, but positions up to "
                f"{int(positions.max())} were requested. Use a relative scheme (position='rope', 'alibi' or 't5') "
                f"to run past the trained length, or train with a larger n_positions."
            )
        return super().forward(positions)  # (T, C)


# --------------------------------------------------------------------------------------------
# T5 relative position bias
# --------------------------------------------------------------------------------------------


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """T5's bucket of each ``relative_position = key_position - query_position`` (Mesh TensorFlow
    and Hugging Face's ``T5Attention._relative_position_bucket``, bit for bit).

    Bidirectional: half of the buckets for keys after the query, half for keys before. Within a
    direction, half of the buckets are exact distances ``0..max_exact-1`` and the rest are
    log-spaced up to ``max_distance``; everything farther shares the last bucket. Causal
    (``bidirectional=False``): keys after the query all land in bucket 0 (they are masked anyway).
    """
    check_int(num_buckets, "num_buckets", minimum=2)
    check_int(max_distance, "max_distance")
    if not isinstance(relative_position, torch.Tensor) or relative_position.is_floating_point():
        raise ValueError(f"relative_position must be an integer tensor, got {getattr(relative_position, 'dtype', type(relative_position).__name__)}")
    relative_buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).long() * num_buckets  # keys after the query: upper half
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)  # distance back to the key; later keys -> 0
    max_exact = num_buckets // 2
    if max_distance <= max_exact:
        raise ValueError(f"max_distance must be > num_buckets // (4 if bidirectional else 2) = {max_exact}, got {max_distance}")
    is_small = relative_position < max_exact
    # same float ops as T5 so the buckets agree exactly; clamp only avoids log(0) in the unused branch
    if_large = max_exact + (
        torch.log(relative_position.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    if_large = torch.clamp(if_large, max=num_buckets - 1)
    return relative_buckets + torch.where(is_small, relative_position.long(), if_large)


class T5RelativeBias(nn.Module):
    """A learned scalar per (bucket, head), added to the attention scores: ``(1, nh, T_q, T_k)``.

    As in T5 one table serves every layer (GPT computes it once per forward). Nearby distances
    each get their own value; far ones share coarse buckets, and everything past
    ``max_distance`` shares one, which is how T5 handles lengths it never saw.
    """

    def __init__(self, n_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = False):
        super().__init__()
        check_int(n_heads, "n_heads")
        check_int(num_buckets, "num_buckets", minimum=2)
        check_int(max_distance, "max_distance")
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)

    def forward(self, q_positions, k_positions=None) -> torch.Tensor:
        dev = self.relative_attention_bias.weight.device
        q = _as_positions(q_positions, dev)
        k = q if k_positions is None else _as_positions(k_positions, dev)
        rel = k[None, :] - q[:, None]  # (T_q, T_k): memory position - query position
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)  # (T_q, T_k)
        values = self.relative_attention_bias(buckets)  # (T_q, T_k, nh)
        return values.permute(2, 0, 1).unsqueeze(0)  # (1, nh, T_q, T_k)


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------


def check_rope_head_dim(head_dim) -> None:
    check_int(head_dim, "head_dim", minimum=2)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE (it rotates pairs of dimensions), got {head_dim}")


def _check_layout(layout: str) -> None:
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"layout must be one of {ROPE_LAYOUTS}, got {layout!r}")


def rope_frequencies(head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """RoPE's ``inv_freq``, ``(head_dim/2,)``: pair ``i`` turns by ``θ_i = base^(-2i/head_dim)``
    radians per token (pair 0 fastest, one turn per 2π tokens; the last one slowest).
    Scaled variants (interpolation, NTK, YaRN) are in :func:`lmlab.model.positions.rope_scaling.scaled_rope_frequencies`."""
    check_rope_head_dim(head_dim)
    check_positive(base, "base")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))  # (hs/2,)


def rope_cos_sin(positions, inv_freq: torch.Tensor, layout: str = "half", attention_factor: float = 1.0):
    """``cos, sin``, each ``(T, head_dim)``, for :func:`apply_rope`. ``half``: the angles of pairs
    ``0..hs/2-1`` repeated twice (``[θ0..θ_{d/2-1}, θ0..θ_{d/2-1}]``); ``interleaved``: each angle
    twice in a row (``[θ0, θ0, θ1, θ1, ...]``). ``attention_factor`` scales both (YaRN)."""
    _check_layout(layout)
    pos = _as_positions(positions, inv_freq.device)
    angles = pos.float()[:, None] * inv_freq.float()[None, :]  # (T, hs/2)
    emb = torch.cat((angles, angles), dim=-1) if layout == "half" else angles.repeat_interleave(2, dim=-1)  # (T, hs)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Half-split layout: pair ``i`` is ``(x[i], x[i + d/2])``; returns ``(-x2, x1)`` per pair."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., hs/2) each
    return torch.cat((-x2, x1), dim=-1)  # (..., hs)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Interleaved layout: pair ``i`` is ``(x[2i], x[2i+1])``; returns ``(-x[2i+1], x[2i])`` per pair."""
    x = x.unflatten(-1, (-1, 2))  # (..., hs/2, 2)
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)  # (..., hs)


def apply_rope(x: torch.Tensor, positions=None, *, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
               base: float = 10000.0, layout: str = "half") -> torch.Tensor:
    """Rotate every pair of dimensions of ``x (..., T, head_dim)`` by ``position × θ_i``.

    Give either ``positions`` (an int ``T`` or a ``(T,)`` tensor; frequencies from ``base``) or
    precomputed ``cos, sin`` of shape ``(T, head_dim)`` from :func:`rope_cos_sin` (same ``layout``).
    ``x·cos + rotate(x)·sin`` is the 2-D rotation ``[[cos, -sin], [sin, cos]]`` on each pair, so
    norms are kept and ``<rope(q, m), rope(k, n)>`` depends on ``m - n`` only.
    """
    _check_layout(layout)
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor (..., T, head_dim), got {getattr(x, 'shape', type(x).__name__)}")
    check_rope_head_dim(x.size(-1))
    if (cos is None) != (sin is None) or (cos is None) == (positions is None):
        raise ValueError("apply_rope needs either positions or both cos and sin")
    if cos is None:
        cos, sin = rope_cos_sin(positions, rope_frequencies(x.size(-1), base, x.device), layout)
    if cos.shape[-1] != x.size(-1) or cos.size(-2) != x.size(-2):
        raise ValueError(f"cos/sin must be (T, head_dim) = ({x.size(-2)}, {x.size(-1)}), got {tuple(cos.shape)}")
    rotate = rotate_half if layout == "half" else rotate_pairs
    return (x * cos + rotate(x) * sin).to(x.dtype)  # (..., T, hs) * (T, hs) broadcast


def apply_rope_complex(x: torch.Tensor, positions, base: float = 10000.0) -> torch.Tensor:
    """RoPE as Meta's LLaMA code writes it: each interleaved pair ``(x[2i], x[2i+1])`` is the
    complex number ``x[2i] + j·x[2i+1]``, multiplied by ``e^{j·p·θ_i}``. Equal to
    ``apply_rope(x, positions, layout="interleaved")`` (lesson 03 proves it, tests check it)."""
    check_rope_head_dim(x.size(-1))
    inv_freq = rope_frequencies(x.size(-1), base, x.device)  # (hs/2,)
    pos = _as_positions(positions, x.device)
    rot = torch.polar(torch.ones(len(pos), len(inv_freq), device=x.device), pos.float()[:, None] * inv_freq[None, :])  # (T, hs/2) complex
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (..., T, hs/2) complex
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)  # (..., T, hs/2, 2) -> (..., T, hs)


def interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """Permute the last dim from interleaved pairs ``(x0, x1), (x2, x3), ...`` to the half-split
    layout ``[x0, x2, x4, ..., x1, x3, x5, ...]``, so that
    ``interleaved_to_half(apply_rope(x, p, layout="interleaved")) == apply_rope(interleaved_to_half(x), p)``.
    Applied to the output rows of ``W_q`` and ``W_k`` of every head, it converts a checkpoint
    written for one layout (Meta's LLaMA) to the other (Hugging Face): the scores do not change."""
    check_rope_head_dim(x.size(-1))
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)  # (..., hs)


def half_to_interleaved(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`interleaved_to_half`: ``[a0..a_{d/2-1}, b0..b_{d/2-1}] -> [a0, b0, a1, b1, ...]``."""
    check_rope_head_dim(x.size(-1))
    a, b = x.chunk(2, dim=-1)  # (..., hs/2) each
    return torch.stack((a, b), dim=-1).flatten(-2)  # (..., hs/2, 2) -> (..., hs)


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes ``(n_heads,)`` (Press et al., the reference code).

    A power of two ``n``: the geometric sequence starting at ``2^(-8/n)`` with that ratio
    (8 heads: 1/2, 1/4, ..., 1/256). Otherwise, with ``p`` the largest power of two below ``n``:
    the ``p`` slopes for ``p`` heads, then every other slope of the ``2p`` sequence
    (``slopes(2p)[0::2]``) for the remaining ``n - p`` heads.
    """
    check_int(n_heads, "n_heads")

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))  # 2^(-8/n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_2(p)
    if p != n_heads:
        slopes += power_of_2(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads: int, q_positions, k_positions=None, slopes: torch.Tensor | None = None) -> torch.Tensor:
    """``(1, nh, T_q, T_k)`` bias ``-slope_h · |q_pos - k_pos|``: the score of a key ``d`` tokens
    back is lowered by ``slope × d`` (``0`` for the query itself). The causal mask removes keys
    after the query, so the absolute value only matters for bidirectional use."""
    slopes = alibi_slopes(n_heads) if slopes is None else slopes
    q = _as_positions(q_positions, slopes.device)
    k = q if k_positions is None else _as_positions(k_positions, slopes.device)
    distance = (q[:, None] - k[None, :]).abs().float()  # (T_q, T_k)
    return (-slopes[:, None, None] * distance[None]).unsqueeze(0)  # (1, nh, T_q, T_k)


class RotaryEmbedding(nn.Module):
    """RoPE as a module (lesson 03's plug-in exercise, like Hugging Face's ``LlamaRotaryEmbedding``):
    ``RotaryEmbedding(head_dim, base)(x (..., T, head_dim), positions (T,))`` is
    :func:`apply_rope` in the half-split layout, with the frequencies kept in a buffer."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        check_rope_head_dim(head_dim)
        self.base = check_positive(base, "base")
        self.register_buffer("inv_freq", rope_frequencies(head_dim, base), persistent=False)  # (head_dim/2,)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_cos_sin(positions.to(self.inv_freq.device), self.inv_freq)  # (T, head_dim) each
        return apply_rope(x, cos=cos.to(x.dtype), sin=sin.to(x.dtype))


# --------------------------------------------------------------------------------------------
# What every attention layer of one forward pass receives (built by lmlab.model.positions.scheme)
# --------------------------------------------------------------------------------------------


@dataclass
class AttentionPositions:
    """What every attention layer of one forward pass needs, computed once by the model.

    ``cos, sin``: RoPE for the *new* queries/keys, ``(T, hs)`` (q and k are rotated before they
    go into the KV cache). ``bias``: an additive float bias ``(1, nh, T_q, T_k)`` (ALiBi, T5).
    ``attend``: set by schemes that need their own attention (RoPE truncation, lesson 06);
    it then receives the *un-rotated* q, k.
    """

    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    attend_fn: object = None
    rotate_fn: object = None  # a learner's rotary embedding (lmlab.model.registry.register_rope): x -> x rotated

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rotate_fn is not None:
            return self.rotate_fn(q), self.rotate_fn(k)
        if self.cos is None:
            return q, k
        return apply_rope(q, cos=self.cos, sin=self.sin), apply_rope(k, cos=self.cos, sin=self.sin)  # (B, nh|nkv, T, hs)

    @property
    def changes_scores(self) -> bool:
        return self.bias is not None or self.attend_fn is not None

    def attend(self, q, k, v, mask: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """Attention with a bool ``mask`` (broadcastable to ``(B, nh, T_q, T_k)``, True = may
        attend) plus this bias: both go to SDPA as one float mask (``-inf`` where masked)."""
        if self.attend_fn is not None:
            return self.attend_fn(q, k, v, mask)
        float_mask = self.bias.to(q.dtype).masked_fill(~mask, float("-inf"))  # (B|1, nh, T_q, T_k)
        gqa = {"enable_gqa": True} if q.size(1) != k.size(1) else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, dropout_p=dropout_p, **gqa)  # (B, nh, T_q, hs)
