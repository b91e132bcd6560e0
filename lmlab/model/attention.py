"""Attention variants (lesson 04, ``lessons/04_attention``).

* :func:`attention` - the plain reference ``softmax(Q K^T / sqrt(d)) V``, written out so every
  step is visible. Everything else in this chapter is checked against it.
* Sparse patterns as boolean masks (the convention of :mod:`lmlab.data.masks`: ``(T_q, T_k)``,
  ``True`` = may attend): :func:`sliding_window_mask`, :func:`strided_mask`,
  :func:`global_local_mask`; and the same patterns as FlexAttention ``mask_mod`` functions
  (:func:`sliding_window_mask_mod`, ...), run by :func:`flex_attention` where
  ``torch.nn.attention.flex_attention`` works (forward only on CPU, see :func:`flex_available`).
* Multi-query / grouped-query attention: :func:`repeat_kv` and :class:`MultiHeadAttention` with
  ``n_kv_heads`` (``1`` = MQA, ``n_heads`` = plain multi-head attention, in between = GQA).
* The tiled FlashAttention algorithm (``flash_attention``, ``IOStats``, ...) lives in
  :mod:`lmlab.infer.tiled_attention`.

Shapes: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head_dim.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from lmlab.model.positions.encodings import apply_rope
from lmlab.argcheck import check_int, check_kv_heads, check_qkv, check_tensor

__all__ = [
    "gqa_rope_attention",
    "attention",
    "check_qkv",
    "sliding_window_mask",
    "strided_mask",
    "global_local_mask",
    "causal_mask_mod",
    "sliding_window_mask_mod",
    "strided_mask_mod",
    "global_local_mask_mod",
    "mask_from_mask_mod",
    "flex_available",
    "flex_attention",
    "repeat_kv",
    "MultiHeadAttention",
    "GQAttention",
    "decode_mask",
]


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: ``softmax(q k^T / sqrt(hs) + mask) v``; ``(B, nh, T_q, hs) -> (B, nh, T_q, hs_v)``.

    ``mask``: bool, broadcastable to ``(B, nh, T_q, T_k)``, True = may attend (``None``: every key).
    It builds the full ``(T_q, T_k)`` score matrix - exactly what FlashAttention avoids.
    A query row whose mask is all False has no distribution: its output is NaN, as in softmax.
    """
    check_qkv(q, k, v)
    T_q, T_k = q.size(-2), k.size(-2)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() < 2 or mask.shape[-2:] != (T_q, T_k):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor whose last two dims are (T_q, T_k) = ({T_q}, {T_k}), got {got}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, nh, T_q, T_k)
    weights = torch.softmax(scores, dim=-1)  # (B, nh, T_q, T_k): each row sums to 1
    return weights @ v  # (B, nh, T_q, hs_v)


# --------------------------------------------------------------------------------------------
# Sparse patterns as dense masks (causal by default)
# --------------------------------------------------------------------------------------------


def _positions(T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(T, device=device)[:, None]  # (T, 1): query position
    j = torch.arange(T, device=device)[None, :]  # (1, T): key position
    return i, j


def sliding_window_mask(T: int, window: int, causal: bool = True, device=None) -> torch.Tensor:
    """``(T, T)``: token i sees the ``window`` most recent tokens ``i-window+1 .. i`` (Longformer's
    local attention, Mistral's sliding window). ``causal=False``: every j with ``|i - j| < window``.
    ``window >= T`` (causal) is the causal mask; ``window=1`` sees only itself."""
    check_int(T, "T")
    check_int(window, "window")
    i, j = _positions(T, device)
    near = (i - j).abs() < window  # (T, T): the band
    return near & (j <= i) if causal else near


def strided_mask(T: int, stride: int, causal: bool = True, device=None) -> torch.Tensor:
    """``(T, T)``: the Sparse Transformer's strided pattern (Child et al. 2019): token i sees the
    previous ``stride`` tokens (local head) plus every token a multiple of ``stride`` back
    (strided head), i.e. ``i - j < stride or (i - j) % stride == 0``. Each row sees about
    ``stride + T/stride`` keys: ``O(T sqrt T)`` in total for ``stride ~ sqrt(T)``."""
    check_int(T, "T")
    check_int(stride, "stride")
    i, j = _positions(T, device)
    d = (i - j).abs()  # (T, T): distance
    pattern = (d < stride) | (d % stride == 0)
    return pattern & (j <= i) if causal else pattern


def global_local_mask(T: int, n_global: int, window: int, causal: bool = True, device=None) -> torch.Tensor:
    """``(T, T)``: a sliding window of ``window`` tokens plus ``n_global`` global tokens at the start
    (Longformer/BigBird's global+local; with causal=True it is the Λ-shaped mask of LM-Infinite /
    StreamingLLM's "attention sinks", lesson 06). Non-causal: global tokens also see everything."""
    check_int(T, "T")
    check_int(n_global, "n_global", minimum=0)
    check_int(window, "window")
    i, j = _positions(T, device)
    pattern = sliding_window_mask(T, window, causal=False, device=device) | (j < n_global)  # (T, T)
    if causal:
        return pattern & (j <= i)
    return pattern | (i < n_global)  # global rows see every key


# --------------------------------------------------------------------------------------------
# The same patterns as FlexAttention mask_mods: (b, h, q_idx, kv_idx) -> bool
# --------------------------------------------------------------------------------------------

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal_mask_mod(b, h, q_idx, kv_idx):
    """FlexAttention's causal ``mask_mod``: key ``kv_idx`` visible from query ``q_idx``."""
    return q_idx >= kv_idx


def sliding_window_mask_mod(window: int, causal: bool = True) -> MaskMod:
    """:func:`sliding_window_mask` as a FlexAttention ``mask_mod``."""
    check_int(window, "window")

    def mask_mod(b, h, q_idx, kv_idx):
        near = (q_idx - kv_idx).abs() < window
        return near & (q_idx >= kv_idx) if causal else near

    return mask_mod


def strided_mask_mod(stride: int, causal: bool = True) -> MaskMod:
    """:func:`strided_mask` as a FlexAttention ``mask_mod``."""
    check_int(stride, "stride")

    def mask_mod(b, h, q_idx, kv_idx):
        d = (q_idx - kv_idx).abs()
        pattern = (d < stride) | (d % stride == 0)
        return pattern & (q_idx >= kv_idx) if causal else pattern

    return mask_mod


def global_local_mask_mod(n_global: int, window: int, causal: bool = True) -> MaskMod:
    """:func:`global_local_mask` as a FlexAttention ``mask_mod``."""
    check_int(n_global, "n_global", minimum=0)
    check_int(window, "window")

    def mask_mod(b, h, q_idx, kv_idx):
        pattern = ((q_idx - kv_idx).abs() < window) | (kv_idx < n_global)
        return pattern & (q_idx >= kv_idx) if causal else pattern | (q_idx < n_global)

    return mask_mod


def mask_from_mask_mod(mask_mod: MaskMod, T_q: int, T_k: int | None = None, device=None) -> torch.Tensor:
    """Evaluate a ``mask_mod`` on every (query, key) pair: a dense ``(T_q, T_k)`` bool mask.
    Needs no FlexAttention, so it works on any torch."""
    check_int(T_q, "T_q")
    T_k = T_q if T_k is None else T_k
    check_int(T_k, "T_k")
    zero = torch.zeros((), dtype=torch.long, device=device)
    q_idx = torch.arange(T_q, device=device)[:, None]  # (T_q, 1)
    kv_idx = torch.arange(T_k, device=device)[None, :]  # (1, T_k)
    return mask_mod(zero, zero, q_idx, kv_idx).expand(T_q, T_k).to(torch.bool)  # (T_q, T_k)


def flex_available() -> tuple[bool, str]:
    """``(True, "")`` if ``torch.nn.attention.flex_attention`` runs a tiny forward here, else
    ``(False, reason)``. On CPU only the forward runs (no backward): call it under ``no_grad``."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
        from torch.nn.attention.flex_attention import flex_attention as _flex  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the torch build
        return False, f"torch {torch.__version__} has no usable torch.nn.attention.flex_attention ({e})"
    try:
        x = torch.randn(1, 1, 4, 4)
        with torch.no_grad():
            flex_attention(x, x, x, causal_mask_mod)
    except Exception as e:  # pragma: no cover
        return False, f"flex_attention does not run on this machine: {type(e).__name__}: {e}"
    return True, ""


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_mod: MaskMod | None = None) -> torch.Tensor:
    """Run PyTorch's FlexAttention with a ``mask_mod`` (eager; ``torch.compile`` it for speed).

    ``(B, nh, T_q, hs)`` q and ``(B, nkv, T_k, hs)`` k, v (``nh`` a multiple of ``nkv``). Unlike
    the reference, only the blocks the mask touches are computed. On CPU: forward only, so call
    it under ``torch.no_grad()``.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as _flex

    check_qkv(q, k, v, same_heads=False)
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, q.size(-2), k.size(-2), device=q.device)
    with warnings.catch_warnings():  # eager flex warns that it is unfused; the lesson knows
        warnings.simplefilter("ignore", UserWarning)
        return _flex(q, k, v, block_mask=block_mask, enable_gqa=q.size(1) != k.size(1))  # (B, nh, T_q, hs)


# --------------------------------------------------------------------------------------------
# MQA / GQA
# --------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, nkv, T, hs) -> (B, nkv * n_rep, T, hs)``: each K/V head serves ``n_rep`` query heads
    (query head ``h`` uses K/V head ``h // n_rep``, as in LLaMA and SDPA's ``enable_gqa``)."""
    check_int(n_rep, "n_rep")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (B, n_kv_heads, T, head_dim), got {getattr(x, 'shape', type(x).__name__)}")
    if n_rep == 1:
        return x
    return repeat(x, "b kv t d -> b (kv r) t d", r=n_rep)  # (B, nh, T, hs): head h reads K/V head h // n_rep


def decode_mask(T_q: int, T_k: int, window: int | None = None, device=None, n_sink: int = 0) -> torch.Tensor:
    """Causal ``(T_q, T_k)`` mask for the *last* ``T_q`` queries of a ``T_k``-token sequence (the
    new tokens of a cached forward): query i sits at position ``T_k - T_q + i``. ``window`` also
    limits each query to its ``window`` most recent keys; ``n_sink`` keeps the first ``n_sink``
    keys visible too (Λ-shaped attention, lesson 06)."""
    offset = T_k - T_q
    i = torch.arange(T_q, device=device)[:, None] + offset  # (T_q, 1): absolute query position
    j = torch.arange(T_k, device=device)[None, :]  # (1, T_k)
    mask = j <= i
    return mask & ((i - j < window) | (j < n_sink)) if window is not None else mask  # (T_q, T_k)


class MultiHeadAttention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads sharing ``n_kv_heads`` K/V heads.

    ``n_kv_heads = n_heads``: multi-head attention (MHA); ``1``: multi-query (MQA, PaLM,
    StarCoder); in between: grouped-query (GQA, LLaMA-2-70B). One fused projection ``qkv`` of
    ``(n_heads + 2 * n_kv_heads) * hs`` outputs (``3 * d_model`` for MHA), then ``proj``.
    ``window``: sliding-window attention (every token sees its ``window`` most recent tokens).

    The fast path calls ``F.scaled_dot_product_attention`` (``enable_gqa`` for MQA/GQA).
    ``kv_cache``: a per-layer cache (:meth:`lmlab.infer.kv_cache.KVCache.layer`) with
    ``update(k, v) -> (k_all, v_all)``; ``x`` then holds only the new tokens (lesson 08).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, bias: bool = True,
                 dropout: float = 0.0, window: int | None = None, n_sink: int = 0):
        super().__init__()
        check_int(d_model, "d_model")
        check_int(n_heads, "n_heads")
        self.n_kv_heads = check_kv_heads(n_kv_heads, n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if window is not None:
            check_int(window, "window")
        check_int(n_sink, "n_sink", minimum=0)
        self.n_heads, self.head_dim, self.window, self.n_sink = n_heads, d_model // n_heads, window, n_sink
        self.n_rep = n_heads // self.n_kv_heads
        self.kv_dim = self.n_kv_heads * self.head_dim  # width of k (and of v)
        self.qkv = nn.Linear(d_model, d_model + 2 * self.kv_dim, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_roles(self) -> list[tuple[nn.Linear, slice, str]]:
        """What each weight does, for :func:`lmlab.model.gpt.init_weights`: rows of ``qkv`` make q and k
        (``qk``) or v (``value``); ``proj`` writes into the residual stream (``output``)."""
        C = self.qkv.in_features
        return [(self.qkv, slice(0, C + self.kv_dim), "qk"), (self.qkv, slice(C + self.kv_dim, None), "value"),
                (self.proj, slice(None), "output")]

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, T, C)`` -> ``q (B, nh, T, hs)``, ``k, v (B, nkv, T, hs)``: one matmul, split per head."""
        q_dim = self.n_heads * self.head_dim  # C, or this rank's heads' share under tensor parallelism (lesson 12)
        q, k, v = self.qkv(x).split([q_dim, self.kv_dim, self.kv_dim], dim=2)  # (B, T, nh*hs), 2 x (B, T, nkv*hs)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.n_heads)  # (B, nh, T, hs)
        k = rearrange(k, "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, nkv, T, hs)
        v = rearrange(v, "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, nkv, T, hs)
        return q, k, v

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv_cache=None, positions=None) -> torch.Tensor:
        q, k, v = self.project_qkv(x)  # (B, nh, T, hs), (B, nkv, T, hs) x 2
        if positions is not None:  # lesson 03: lmlab.model.positions.scheme.AttentionPositions of this forward pass
            q, k = positions.rotate(q, k)  # RoPE: new q and k rotated at their positions, before caching
        k_new, v_new = k, v
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, nkv, T_past + T, hs): all keys so far
        y = self.attend(q, k, v, attn_mask, positions)  # (B, nh, T, hs)
        y = self.mix(q, k_new, v_new, y, cached=kv_cache is not None)  # (B, nh, T, hs): a subclass's extra source
        y = rearrange(y, "b h t d -> b t (h d)")  # (B, T, C): heads side by side again
        return self.drop(self.proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
               positions=None) -> torch.Tensor:
        """Causal (or ``attn_mask``, or windowed) attention of the new queries ``q (B, nh, T, hs)`` over
        all keys ``k, v (B, nkv, T_k, hs)``: ``(B, nh, T, hs)``."""
        T, T_k = q.size(2), k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if positions is not None and positions.changes_scores:  # ALiBi / T5 bias, RoPE truncation
            mask = attn_mask if attn_mask is not None else decode_mask(T, T_k, self.window, q.device, self.n_sink)
            return positions.attend(q, k, v, mask, dropout_p)  # (B, nh, T, hs)
        is_causal = attn_mask is None and T_k == T and self.window is None
        one_new_token = T == 1 and self.window is None  # decode step: it sees every cached key
        if attn_mask is None and not is_causal and not one_new_token:
            attn_mask = decode_mask(T, T_k, self.window, device=q.device, n_sink=self.n_sink)  # (T, T_k)
        return F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=dropout_p,
            **({"enable_gqa": True} if self.n_rep > 1 else {}),
        )  # (B, nh, T, hs)

    def mix(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, y: torch.Tensor, cached: bool) -> torch.Tensor:
        """Hook for attention that also reads another source (:class:`lmlab.model.memory.KNNMemoryAttention`):
        receives the new queries, the new keys/values and the attention output; returns the output."""
        return y


class GQAttention(nn.Module):
    """Causal grouped-query self-attention in Hugging Face's layout (lesson 04's plug-in exercise):
    ``q_proj (C -> C)``, ``k_proj``, ``v_proj (C -> nkv * hs)``, ``o_proj (C -> C)``, no biases;
    ``(B, T, C) -> (B, T, C)``. :class:`MultiHeadAttention` is the same function with one fused
    ``qkv`` matrix ``[q_proj; k_proj; v_proj]`` (and KV cache, masks, positions)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None):
        super().__init__()
        check_int(d_model, "d_model", "GQAttention:")
        check_int(n_heads, "n_heads", "GQAttention:")
        self.n_heads, self.n_kv_heads = n_heads, check_kv_heads(n_kv_heads, n_heads, "GQAttention:")
        if d_model % n_heads:
            raise ValueError(f"GQAttention: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.head_dim = d_model // n_heads
        kv = self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, kv, bias=False)
        self.v_proj = nn.Linear(d_model, kv, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, nh, T, hs): head h reads K/V head h // n_rep
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


def gqa_rope_attention(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, n_heads: int, n_kv_heads: int,
                       base: float = 10000.0) -> torch.Tensor:
    """Causal grouped-query attention with RoPE as one function of its weights (lessons 03-04): what
    :class:`MultiHeadAttention` (``bias=False``) computes inside a ``position="rope"`` model.

    ``x (B, T, C)``; ``w_qkv (C + 2 * n_kv_heads * hs, C)``: q, k, v rows stacked as in ``MultiHeadAttention.qkv``;
    ``w_o (C, C)``. q and k are rotated (half-split RoPE, positions ``0..T-1``); query head ``h`` uses K/V
    head ``h // (n_heads // n_kv_heads)``. Graded reference of ``exercises/04_attention`` (``04.gqa_rope_attention``).
    """
    check_tensor(x, "x", "gqa_rope_attention", dim=3, floating=True)
    B, T, C = x.shape
    n_heads, n_kv_heads = check_int(n_heads, "n_heads", "gqa_rope_attention"), check_int(n_kv_heads, "n_kv_heads", "gqa_rope_attention")
    if C % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"gqa_rope_attention: n_heads ({n_heads}) must divide C ({C}) and n_kv_heads ({n_kv_heads}) must divide n_heads")
    hs = C // n_heads
    check_tensor(w_qkv, "w_qkv", "gqa_rope_attention", shape=(C + 2 * n_kv_heads * hs, C))
    check_tensor(w_o, "w_o", "gqa_rope_attention", shape=(C, C))
    q, k, v = F.linear(x, w_qkv).split([C, n_kv_heads * hs, n_kv_heads * hs], dim=2)
    q = q.view(B, T, n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
    k, v = (t.view(B, T, n_kv_heads, hs).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hs)
    q, k = apply_rope(q, T, base=base), apply_rope(k, T, base=base)
    k, v = (t.repeat_interleave(n_heads // n_kv_heads, dim=1) for t in (k, v))  # (B, nh, T, hs): groups side by side
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return F.linear(y.transpose(1, 2).reshape(B, T, C), w_o)  # (B, T, C)
