"""kNN external memory (Memorizing Transformers; lesson 06, ``lessons/06_long_context``).

One layer also attends to the top-k keys retrieved from the keys/values of past segments:
:class:`KNNMemory` (exact brute-force search, first in first out), :class:`KNNMemoryAttention`
(local attention mixed with memory attention by a learned gate), :func:`memorize_segments` and
:func:`reset_memory`. Built by ``ModelConfig(knn_memory={"layer": i, "top_k": k, "size": M})`` (the
``knn_memory`` entry of :data:`lmlab.model.registry.LAYER_ATTENTIONS`);
everything here is also re-exported from :mod:`lmlab.infer.long_context`.

Shapes: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head_dim, M = memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model.attention import MultiHeadAttention, repeat_kv
from lmlab.argcheck import check_int

__all__ = ["KNNMemory", "KNNMemoryAttention", "check_knn_memory", "memorize_segments", "reset_memory"]




class KNNMemory:
    """Keys and values of past segments, ``(B, nkv, M, hs)``, first in first out at ``size``.

    :meth:`search` is exact brute force (every query scores every memory key: ``O(T·M)``). At
    scale (M in the millions) one uses approximate nearest-neighbour search instead (FAISS,
    ScaNN: clustering / product quantization), trading a little recall for sub-linear time.
    """

    def __init__(self, size: int):
        check_int(size, "size")
        self.size = size
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def clear(self) -> None:
        self.k = self.v = None

    def add(self, k: torch.Tensor, v: torch.Tensor) -> None:
        k, v = k.detach(), v.detach()  # no gradient into the past (as in the paper)
        if self.k is not None and self.k.shape[:2] != k.shape[:2]:
            raise ValueError(f"memory holds (B, nkv) = {tuple(self.k.shape[:2])}, got keys for {tuple(k.shape[:2])}; call clear() first")
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)  # (B, nkv, M + T, hs)
        self.k, self.v = k[:, :, -self.size:], v[:, :, -self.size:]  # drop the oldest beyond size

    def search(self, q: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``q (B, nh, T, hs)``: the ``top_k`` memory entries by ``q·k`` per query:
        ``scores (B, nh, T, k)``, ``keys (B, nh, T, k, hs)``, ``values (B, nh, T, k, hv)`` (values
        may have another size than keys)."""
        check_int(top_k, "top_k")
        n_rep = q.size(1) // self.k.size(1)
        mk, mv = repeat_kv(self.k, n_rep), repeat_kv(self.v, n_rep)  # (B, nh, M, hs)
        scores = q @ mk.transpose(-2, -1)  # (B, nh, T, M): brute force
        top, idx = scores.topk(min(top_k, mk.size(2)), dim=-1)  # (B, nh, T, k)
        expand = (-1, -1, q.size(2), -1, -1)
        keys = mk[:, :, None].expand(*expand).gather(3, idx[..., None].expand(*idx.shape, mk.size(-1)))  # (B, nh, T, k, hs)
        values = mv[:, :, None].expand(*expand).gather(3, idx[..., None].expand(*idx.shape, mv.size(-1)))  # (B, nh, T, k, hv)
        return top, keys, values

    def attend(self, q: torch.Tensor, top_k: int) -> torch.Tensor:
        """Softmax attention of ``q (B, nh, T, hs)`` over its retrieved entries: ``(B, nh, T, hs)``."""
        scores, _, values = self.search(q, top_k)
        w = F.softmax(scores / math.sqrt(q.size(-1)), dim=-1)  # (B, nh, T, k)
        return (w[..., None] * values).sum(-2)  # (B, nh, T, hs)


def check_knn_memory(spec: dict | None, n_layers: int) -> None:
    """Validate ``ModelConfig.knn_memory``: ``{"layer": i, "top_k": k, "size": M}``."""
    if spec is None:
        return
    if not isinstance(spec, dict) or set(spec) != {"layer", "top_k", "size"}:
        raise ValueError(f"knn_memory must be None or a dict with keys ['layer', 'size', 'top_k'], got {spec!r}")
    if not isinstance(spec["layer"], int) or isinstance(spec["layer"], bool) or not 0 <= spec["layer"] < n_layers:
        raise ValueError(f"knn_memory layer must be an int in [0, n_layers={n_layers}), got {spec['layer']!r}")
    check_int(spec["top_k"], "knn_memory top_k")
    check_int(spec["size"], "knn_memory size")


class KNNMemoryAttention(MultiHeadAttention):
    """Local causal attention mixed, per head, with attention over the ``top_k`` entries
    retrieved from a :class:`KNNMemory` of past segments: ``y = g·y_mem + (1-g)·y_local`` with a
    learned gate ``g = sigmoid(gate_h)`` (0.5 at init). With an empty memory it is exactly
    :class:`lmlab.model.attention.MultiHeadAttention`. The memory is read on every call but written
    only while ``memorize`` is True (see :func:`memorize_segments`), and never from a KV-cache step.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, top_k: int = 32,
                 memory_size: int = 4096, **kwargs):
        super().__init__(d_model, n_heads, n_kv_heads, **kwargs)
        check_int(top_k, "top_k")
        self.top_k = top_k
        self.memory = KNNMemory(memory_size)
        self.memorize = False
        self.gate = nn.Parameter(torch.zeros(n_heads))

    def mix(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, y: torch.Tensor, cached: bool) -> torch.Tensor:
        """Everything else is :class:`lmlab.model.attention.MultiHeadAttention`'s forward (dropout included)."""
        if len(self.memory):
            g = torch.sigmoid(self.gate)[None, :, None, None]  # (1, nh, 1, 1)
            y = g * self.memory.attend(q, self.top_k) + (1 - g) * y  # (B, nh, T, hs)
        if self.memorize and not cached:
            self.memory.add(k_new, v_new)
        return y


def _memory_layers(model) -> list[KNNMemoryAttention]:
    return [m for m in model.modules() if isinstance(m, KNNMemoryAttention)]


def reset_memory(model) -> None:
    """Empty every kNN memory of ``model`` (start of a new document)."""
    for m in _memory_layers(model):
        m.memory.clear()


def memorize_segments(model, ids: torch.Tensor, segment_length: int) -> torch.Tensor:
    """Run a long ``ids (B, N)`` through ``model`` one segment at a time; after each segment its
    keys/values join the memory, so later segments can retrieve them. Returns logits ``(B, N, V)``."""
    check_int(segment_length, "segment_length")
    layers = _memory_layers(model)
    if not layers:
        raise ValueError("model has no kNN memory layer: build it with ModelConfig(knn_memory={'layer': i, 'top_k': k, 'size': M})")
    reset_memory(model)
    for m in layers:
        m.memorize = True
    try:
        return torch.cat([model(ids[:, i:i + segment_length]) for i in range(0, ids.size(1), segment_length)], dim=1)  # (B, N, V)
    finally:
        for m in layers:
            m.memorize = False
