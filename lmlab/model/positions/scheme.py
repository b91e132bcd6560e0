"""The model's position module: what :class:`lmlab.model.gpt.GPT` builds from ``ModelConfig.position``
(lessons 03 and 06).

:func:`lmlab.model.gpt.build_position` (from :data:`lmlab.model.registry.POSITIONS`) gives a :class:`PositionScheme` (or ``None`` for ``learned``, whose table is
``GPT.pos_emb``, and ``none``). Once per forward pass the scheme hands every attention layer an
:class:`AttentionPositions`: RoPE's cos/sin, or an additive bias (ALiBi, T5), or its own attention
(RoPE truncation). The schemes themselves are in :mod:`lmlab.model.positions.encodings`; RoPE's context-extension
variants in :mod:`lmlab.model.positions.rope_scaling` (one :data:`~lmlab.model.positions.rope_scaling.ROPE_SCALINGS` entry each).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlab.model.positions.rope_scaling import check_rope_scaling, rope_attention_positions
from lmlab.model.positions.encodings import (SINUSOIDAL_SCALE, AttentionPositions, T5RelativeBias, alibi_bias, alibi_slopes,
                        check_rope_head_dim, sinusoidal_embedding)
from lmlab.argcheck import check_positive

__all__ = ["AttentionPositions", "PositionScheme", "RotaryPositions"]




class PositionScheme(nn.Module):
    """``ModelConfig.position`` as one module (``sinusoidal``, ``t5``, ``rope``, ``alibi``).

    ``embed(x, positions)`` adds an absolute embedding to ``x (B, T, C)`` (sinusoidal only, scaled
    by :data:`SINUSOIDAL_SCALE` to the token embeddings' size);
    ``for_attention(q_positions, k_positions)`` gives the :class:`AttentionPositions` all layers
    share. RoPE frequencies come from ``rope_base`` and ``rope_scaling`` (see
    :func:`lmlab.model.positions.rope_scaling.scaled_rope_frequencies`).
    """

    def __init__(self, kind: str, d_model: int, n_heads: int, rope_base: float = 10000.0, rope_scaling: dict | None = None,
                 t5_num_buckets: int = 32, t5_max_distance: int = 128):
        super().__init__()
        if kind not in ("sinusoidal", "t5", "rope", "alibi"):
            raise ValueError(f"kind must be one of ('sinusoidal', 't5', 'rope', 'alibi'), got {kind!r}")
        self.kind, self.d_model, self.n_heads = kind, d_model, n_heads
        self.head_dim = d_model // n_heads
        self.rope_base, self.rope_scaling = rope_base, rope_scaling
        if kind == "rope":
            check_rope_head_dim(self.head_dim)
            check_positive(rope_base, "rope_base")
            check_rope_scaling(rope_scaling)
        if kind == "alibi":
            self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)  # (nh,)
        if kind == "t5":
            self.t5 = T5RelativeBias(n_heads, t5_num_buckets, t5_max_distance, bidirectional=False)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.kind != "sinusoidal":
            return x
        pe = SINUSOIDAL_SCALE * sinusoidal_embedding(positions, self.d_model)  # (T, C), RMS 0.02 like the tokens
        return x + pe.to(x.dtype)  # (B, T, C) + (T, C)

    def for_attention(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> AttentionPositions | None:
        if self.kind == "alibi":
            return AttentionPositions(bias=alibi_bias(self.n_heads, q_positions, k_positions, self.slopes))
        if self.kind == "t5":
            return AttentionPositions(bias=self.t5(q_positions, k_positions))
        if self.kind == "rope":
            return rope_attention_positions(self.head_dim, self.rope_base, self.rope_scaling, q_positions, k_positions)
        return None


class RotaryPositions(nn.Module):
    """A rotary embedding written elsewhere (a learner's, see :func:`lmlab.model.registry.register_rope`) as
    the model's position scheme: ``rope(x, positions)`` rotates every layer's new queries and keys."""

    def __init__(self, rope):
        super().__init__()
        self.rope = rope  # an nn.Module (its buffers move with the model) or a function

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def for_attention(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> AttentionPositions:
        return AttentionPositions(rotate_fn=lambda t: self.rope(t, q_positions))  # new q and k sit at q_positions
