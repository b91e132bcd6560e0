"""Read a trained model's attention weights without changing it (lessons 03 and 06).

lmlab's attention hands q, k, v and the mask (bool, or float for ALiBi / T5 biases) to
``F.scaled_dot_product_attention``, which never materialises the weights. :func:`attention_maps`
wraps that function for one forward pass, recomputes ``softmax(q kᵀ / √d + mask)`` from exactly what
each layer passed, returns the maps, and leaves the computation itself unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["attention_maps"]


@torch.no_grad()
def attention_maps(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model(x)`` (``x``: ``(B, T)`` ids) and return every attention call's weights averaged
    over the batch and heads: one ``(T_q, T_k)`` tensor per layer, in call order."""
    maps: list[torch.Tensor] = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        kk = k.repeat_interleave(q.size(1) // k.size(1), dim=1) if k.size(1) != q.size(1) else k
        scores = q @ kk.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.size(-1)))  # (B, nh, Tq, Tk)
        Tq, Tk = scores.shape[-2:]
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        if is_causal:
            scores = scores.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(1), -math.inf)
        maps.append(torch.softmax(scores.float(), dim=-1).mean(dim=(0, 1)))  # (Tq, Tk)
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        **({"scale": scale} if scale is not None else {}), **({"enable_gqa": True} if enable_gqa else {}))

    F.scaled_dot_product_attention = spy
    try:
        model(x)
    finally:
        F.scaled_dot_product_attention = original
    return maps
