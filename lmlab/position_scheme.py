"""The model's position module: what :class:`lmlab.model.GPT` builds from ``ModelConfig.position``
(lessons 03 and 06).

:func:`build_position` gives a :class:`PositionScheme` (or ``None`` for ``learned``, whose table is
``GPT.pos_emb``, and ``none``). Once per forward pass the scheme hands every attention layer an
:class:`AttentionPositions`: RoPE's cos/sin, or an additive bias (ALiBi, T5), or its own attention
(RoPE truncation). The schemes themselves are in :mod:`lmlab.positions`; RoPE's context-extension
variants in :mod:`lmlab.longctx`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .positions import (POSITIONS, SINUSOIDAL_SCALE, T5RelativeBias, _check_head_dim, _check_positive, alibi_bias,
                        alibi_slopes, apply_rope, sinusoidal_embedding)

__all__ = ["AttentionPositions", "PositionScheme", "build_position"]




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

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


class PositionScheme(nn.Module):
    """``ModelConfig.position`` as one module (``sinusoidal``, ``t5``, ``rope``, ``alibi``).

    ``embed(x, positions)`` adds an absolute embedding to ``x (B, T, C)`` (sinusoidal only, scaled
    by :data:`SINUSOIDAL_SCALE` to the token embeddings' size);
    ``for_attention(q_positions, k_positions)`` gives the :class:`AttentionPositions` all layers
    share. RoPE frequencies come from ``rope_base`` and ``rope_scaling`` (see
    :func:`lmlab.longctx.scaled_rope_frequencies`).
    """

    def __init__(self, kind: str, d_model: int, n_heads: int, rope_base: float = 10000.0, rope_scaling: dict | None = None,
                 t5_num_buckets: int = 32, t5_max_distance: int = 128):
        super().__init__()
        if kind not in ("sinusoidal", "t5", "rope", "alibi"):
            raise ValueError(f"kind must be one of ('sinusoidal', 't5', 'rope', 'alibi'), got {kind!r}")
        self.kind, self.d_model, self.n_heads = kind, d_model, n_heads
        self.head_size = d_model // n_heads
        self.rope_base, self.rope_scaling = rope_base, rope_scaling
        if kind == "rope":
            from .longctx import check_rope_scaling

            _check_head_dim(self.head_size)
            _check_positive("rope_base", rope_base)
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
            from .longctx import rope_attention_positions

            return rope_attention_positions(self.head_size, self.rope_base, self.rope_scaling, q_positions, k_positions)
        return None


def build_position(cfg) -> PositionScheme | None:
    """``cfg.position`` -> the module :class:`lmlab.model.GPT` keeps as ``.position``: ``None``
    for ``learned`` (GPT-2's table stays ``GPT.pos_emb``, a :class:`LearnedPositionEmbedding`)
    and ``none``; a :class:`PositionScheme` otherwise."""
    if cfg.position not in POSITIONS:
        raise ValueError(f"ModelConfig.position must be one of {POSITIONS}, got {cfg.position!r}")
    if cfg.position in ("learned", "none"):
        return None
    return PositionScheme(cfg.position, cfg.d_model, cfg.n_heads, cfg.rope_base, cfg.rope_scaling)
