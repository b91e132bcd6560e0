"""The KV cache: prefill once, then decode one token per step (lesson 08, ``lessons/08_inference``).

A causal decoder's keys and values for token t never change once t is processed (later tokens
cannot influence earlier ones). So instead of re-running the whole sequence for every new token
(``O(T²)`` work per step, ``O(T³)`` for a generation), keep each layer's K and V in a cache:

* **prefill** - the whole prompt in one forward pass (compute-bound: big matrix multiplies),
  filling the cache;
* **decode** - one new token per step: its query attends to all cached keys (memory-bound: the
  whole cache is read to produce one token), and its own key/value are appended.

:class:`KVCache` implements the protocol of :mod:`lmlab.infer.decoding.generation`
(``GPT.forward_with_cache(new_ids, cache) -> (logits, cache)`` and ``cache.reorder(beam_idx)``).
:func:`kv_cache_bytes` is the size calculator; :mod:`lmlab.infer.paged` stores the same cache in
fixed-size blocks (PagedAttention).

Shapes: L = layers, B = batch, nkv = key/value heads, S = capacity (max tokens), hs = head_dim.
"""

from __future__ import annotations

import math

import torch

from lmlab.argcheck import check_int

__all__ = ["KVCache", "kv_cache_bytes", "decode_step"]


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, n_tokens: int, bytes_per_value: float, batch: int = 1) -> int:
    """Bytes of K and V for ``n_tokens`` tokens: ``2 x layers x kv_heads x head_dim x tokens x
    bytes_per_value x batch``. LLaMA-2-13B (40, 40, 128) at 8,192 tokens in 16-bit (2 bytes):
    6,710,886,400 bytes; LLaMA-2-70B (80 layers, 8 KV heads by GQA, 128): 327,680 bytes per token."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim), ("batch", batch)):
        check_int(value, name)
    check_int(n_tokens, "n_tokens", minimum=0)
    if isinstance(bytes_per_value, bool) or not isinstance(bytes_per_value, (int, float)) or not bytes_per_value > 0:
        raise ValueError(f"bytes_per_value must be a number > 0 (2 for fp16/bf16, 1 for int8, 0.5 for int4), got {bytes_per_value!r}")
    n = 2 * n_layers * n_kv_heads * head_dim * n_tokens * batch * bytes_per_value
    return int(round(n))


def decode_step(k_cache: torch.Tensor, v_cache: torch.Tensor, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor):
    """One decode step of one attention layer, written out (lesson 08's exercise): append
    ``k_new, v_new (B, nh, 1, hs)`` to the caches ``(B, nh, T, hs)`` and attend with ``q (B, nh, 1, hs)``
    over all ``T + 1`` keys. Returns ``(out (B, nh, 1, hs), k_cache (B, nh, T+1, hs), v_cache)``.

    :class:`KVCache` does the same without the copies: it writes into preallocated buffers
    (``update``) and :class:`lmlab.model.attention.MultiHeadAttention` attends with SDPA; the tests check
    that both give this function's numbers."""
    k_cache = torch.cat([k_cache, k_new], dim=2)  # (B, nh, T+1, hs)
    v_cache = torch.cat([v_cache, v_new], dim=2)
    scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, 1, T+1): the new token sees every key
    return torch.softmax(scores, dim=-1) @ v_cache, k_cache, v_cache


class LayerKVCache:
    """One layer's view of a :class:`KVCache`: what an attention module sees as ``kv_cache``."""

    def __init__(self, cache: "KVCache", layer: int):
        self.cache, self.index = cache, layer

    @property
    def length(self) -> int:
        """Tokens already cached in this layer (the position of the next new token)."""
        return self.cache.lengths[self.index]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(self.index, k, v)


class KVCache:
    """Contiguous, preallocated keys and values of every layer: ``k, v: (L, B, nkv, S, hs)``.

    ``update(layer, k_new, v_new)`` appends ``(B, nkv, T_new, hs)`` at the layer's current length
    and returns that layer's keys/values so far, ``(B, nkv, length, hs)`` (views, no copy).
    Appending past the capacity ``max_len`` raises ``ValueError``.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, value in (("n_layers", n_layers), ("batch", batch), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim), ("max_len", max_len)):
            check_int(value, name)
        self.max_len = max_len
        self.k = torch.zeros(n_layers, batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)  # (L, B, nkv, S, hs)
        self.v = torch.zeros_like(self.k)  # (L, B, nkv, S, hs)
        self.lengths = [0] * n_layers

    @classmethod
    def for_model(cls, model, batch: int = 1, max_len: int | None = None, dtype=torch.float32, device=None) -> "KVCache":
        """An empty cache shaped for an lmlab :class:`~lmlab.model.gpt.GPT` (capacity: its context): what the
        caller hands :meth:`~lmlab.model.gpt.GPT.forward_with_cache` for the prefill (the model makes none)."""
        cfg = model.config
        return cls(cfg.n_layers, batch, cfg.n_kv_heads, cfg.head_dim, max_len or cfg.context_length, dtype=dtype, device=device)

    @property
    def n_layers(self) -> int:
        return self.k.size(0)

    @property
    def batch(self) -> int:
        return self.k.size(1)

    @property
    def length(self) -> int:
        """Tokens cached (in layer 0; all layers agree between forward passes)."""
        return self.lengths[0]

    def __len__(self) -> int:
        return self.length

    def layer(self, index: int) -> LayerKVCache:
        if not isinstance(index, int) or not 0 <= index < self.n_layers:
            raise ValueError(f"layer index must be in [0, {self.n_layers}), got {index!r}")
        return LayerKVCache(self, index)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v (B, nkv, T_new, hs)`` to ``layer``; return ``(B, nkv, length, hs)`` each."""
        expected = (self.batch, self.k.size(2), self.k.size(4))
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or (t.size(0), t.size(1), t.size(3)) != expected:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape (B, nkv, T_new, hs) = ({expected[0]}, {expected[1]}, T_new, {expected[2]}), got {got}")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        start = self.lengths[layer]
        end = start + k.size(2)
        if end > self.max_len:
            raise ValueError(f"appending {k.size(2)} tokens to {start} cached would exceed the cache's capacity max_len={self.max_len}")
        self.k[layer, :, :, start:end] = k  # (B, nkv, T_new, hs) written in place
        self.v[layer, :, :, start:end] = v
        self.lengths[layer] = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nkv, end, hs) each

    def reorder(self, beam_idx: torch.Tensor) -> "KVCache":
        """Row ``i`` becomes old row ``beam_idx[i]`` (beam search keeps the surviving beams)."""
        beam_idx = torch.as_tensor(beam_idx, device=self.k.device)
        if beam_idx.dim() != 1 or beam_idx.dtype not in (torch.long, torch.int32) or (
            beam_idx.numel() and (int(beam_idx.min()) < 0 or int(beam_idx.max()) >= self.batch)
        ):
            raise ValueError(f"beam_idx must be a 1-D long tensor of row indices in [0, {self.batch}), got {beam_idx}")
        self.k = self.k.index_select(1, beam_idx)  # (L, B', nkv, S, hs)
        self.v = self.v.index_select(1, beam_idx)
        return self

    @property
    def nbytes(self) -> int:
        """Bytes reserved (the whole capacity, used or not)."""
        return self.k.numel() * self.k.element_size() * 2

    @property
    def used_bytes(self) -> int:
        """Bytes holding real tokens: :func:`kv_cache_bytes` of the cached length."""
        L, B, nkv, _, hs = self.k.shape
        return kv_cache_bytes(L, nkv, hs, self.length, self.k.element_size(), batch=B)
