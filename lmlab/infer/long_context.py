"""Long context at inference time (lesson 06, ``lessons/06_long_context``).

RoPE's context extensions (PI, NTK, YaRN, truncation) change the model's positions, so they live in
:mod:`lmlab.model.positions.rope_scaling`; kNN memory is a kind of attention layer, in
:mod:`lmlab.model.memory`. Here are the tricks that change *what the model reads* at inference:

* parallel context windows (:func:`parallel_context_inputs`, :func:`parallel_context_logits`):
  segments encoded with reused positions ``0..n_i-1``, the task tokens attending to all of them;
* Λ-shaped attention (:func:`lambda_mask`; ``ModelConfig(attention="sliding_window", window=w,
  n_sink=n)``; the bounded cache :class:`SinkKVCache` that evicts the middle): the first ``n``
  "sink" tokens plus the ``w`` most recent ones (LM-Infinite, StreamingLLM);
* kNN external memory (:class:`KNNMemory`, :class:`KNNMemoryAttention`, :func:`memorize_segments`, in
  :mod:`lmlab.model.memory`;
  ``ModelConfig(knn_memory={"layer": i, "top_k": k, "size": M})``): one layer also attends to the
  top-k keys retrieved from past segments (Memorizing Transformers).

Shapes: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head_dim, M = memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.argcheck import check_int, check_tensor
from lmlab.infer.kv_cache import LayerKVCache
from lmlab.model.attention import decode_mask, repeat_kv
from lmlab.model.positions.encodings import AttentionPositions, apply_rope, check_rope_head_dim, rope_cos_sin, rope_frequencies

__all__ = ["lambda_mask", "SinkKVCache", "sink_evict", "parallel_context_inputs", "parallel_context_logits"]

# --------------------------------------------------------------------------------------------
# Λ-shaped attention: sinks + a local window
# --------------------------------------------------------------------------------------------


def lambda_mask(T_q: int, n_sink: int, window: int, T_k: int | None = None, device=None) -> torch.Tensor:
    """``(T_q, T_k)`` causal mask where each query sees the first ``n_sink`` tokens and its
    ``window`` most recent ones (itself included); queries are the last ``T_q`` of ``T_k`` tokens."""
    check_int(T_q, "T_q")
    check_int(window, "window")
    check_int(n_sink, "n_sink", minimum=0)
    if T_k is not None:
        check_int(T_k, "T_k", minimum=T_q)
    return decode_mask(T_q, T_q if T_k is None else T_k, window, device=device, n_sink=n_sink)


class SinkKVCache:
    """A KV cache bounded at ``n_sink + window`` tokens per layer: it keeps the first ``n_sink``
    tokens and the ``window`` most recent ones and evicts the middle (StreamingLLM).

    Same per-layer protocol as :class:`lmlab.infer.kv_cache.KVCache` (``layer(i).update(k, v)``, ``length``,
    ``batch``), so :meth:`lmlab.model.gpt.GPT.forward_with_cache` decodes with it: pass it as the cache of
    a model with ``attention="sliding_window"`` and the same ``window`` and ``n_sink`` (lesson 06).
    ``length`` counts every token ever appended, so a new token gets its true position (keys are
    cached already rotated at their own positions), while ``len(cache)`` is what is held, at most
    ``n_sink + window``. Each decode step then sees exactly what :func:`lambda_mask` allows.
    ``positions(layer)`` gives the original positions of the kept tokens; StreamingLLM instead
    numbers them ``0..held-1`` inside the cache (``within_cache=True``), which needs keys cached
    un-rotated and rotated when read - so with RoPE the model path uses true positions.
    """

    def __init__(self, n_layers: int, n_sink: int, window: int, batch: int = 1):
        check_int(n_layers, "n_layers")
        check_int(n_sink, "n_sink", minimum=0)
        check_int(window, "window")
        check_int(batch, "batch")
        self.n_sink, self.window, self.batch = n_sink, window, batch
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.pos: list[torch.Tensor | None] = [None] * n_layers
        self.seen = [0] * n_layers  # tokens ever appended

    @property
    def capacity(self) -> int:
        return self.n_sink + self.window

    def __len__(self) -> int:
        return 0 if self.k[0] is None else self.k[0].size(2)

    @property
    def n_layers(self) -> int:
        return len(self.k)

    @property
    def lengths(self) -> list[int]:
        """Tokens ever appended, per layer (the position of each layer's next token)."""
        return self.seen

    @property
    def length(self) -> int:
        return self.seen[0]

    def layer(self, index: int) -> LayerKVCache:
        """Layer ``index``'s view, what an attention module sees as ``kv_cache``."""
        if not isinstance(index, int) or not 0 <= index < self.n_layers:
            raise ValueError(f"layer index must be in [0, {self.n_layers}), got {index!r}")
        return LayerKVCache(self, index)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, nkv, T_new, hs)``, evict the middle, return the kept ``(B, nkv, held, hs)``."""
        new_pos = torch.arange(self.seen[layer], self.seen[layer] + k.size(2), device=k.device)
        self.seen[layer] += k.size(2)
        if self.k[layer] is not None:
            k, v = torch.cat((self.k[layer], k), dim=2), torch.cat((self.v[layer], v), dim=2)  # (B, nkv, held + T_new, hs)
            new_pos = torch.cat((self.pos[layer], new_pos))
        if k.size(2) > self.capacity:
            keep = torch.cat((torch.arange(self.n_sink), torch.arange(k.size(2) - self.window, k.size(2)))).to(k.device)
            k, v, new_pos = k[:, :, keep], v[:, :, keep], new_pos[keep]  # (B, nkv, n_sink + window, hs)
        self.k[layer], self.v[layer], self.pos[layer] = k, v, new_pos
        return k, v

    def positions(self, layer: int = 0, within_cache: bool = False) -> torch.Tensor:
        held = self.pos[layer]
        if held is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.arange(len(held), device=held.device) if within_cache else held


# --------------------------------------------------------------------------------------------
# Parallel context windows
# --------------------------------------------------------------------------------------------


def parallel_context_inputs(contexts: list[torch.Tensor], task: torch.Tensor):
    """Pack segments and task tokens into one sequence for :meth:`lmlab.model.gpt.GPT.forward`.

    Returns ``ids (1, N)``, ``position_ids (N,)`` and ``mask (N, N)`` (True = may attend):
    segment ``i`` gets positions ``0..n_i-1`` and sees only itself (causally); the task tokens
    get positions ``max(n_i), max(n_i)+1, ...`` and see every segment plus the earlier task tokens.
    So ``k`` segments of ``n`` tokens need positions only up to ``n + len(task)``, not ``k·n``.
    """
    if not contexts or any(not isinstance(c, torch.Tensor) or c.dim() != 1 or c.numel() == 0 for c in contexts):
        raise ValueError("contexts must be a non-empty list of non-empty 1-D token tensors")
    if not isinstance(task, torch.Tensor) or task.dim() != 1 or task.numel() == 0:
        raise ValueError(f"task must be a non-empty 1-D token tensor, got {getattr(task, 'shape', task)!r}")
    lengths = [len(c) for c in contexts]
    n_ctx, n_task, start = sum(lengths), len(task), max(lengths)
    N = n_ctx + n_task
    ids = torch.cat([*contexts, task])[None]  # (1, N)
    position_ids = torch.cat([torch.arange(n) for n in lengths] + [torch.arange(start, start + n_task)])  # (N,)
    mask = torch.zeros(N, N, dtype=torch.bool)
    offset = 0
    for n in lengths:  # each segment: a causal block on the diagonal
        mask[offset:offset + n, offset:offset + n] = torch.ones(n, n, dtype=torch.bool).tril()
        offset += n
    mask[n_ctx:, :n_ctx] = True  # task tokens see every segment
    mask[n_ctx:, n_ctx:] = torch.ones(n_task, n_task, dtype=torch.bool).tril()
    return ids.to(task.device), position_ids.to(task.device), mask.to(task.device)


@torch.no_grad()
def parallel_context_logits(model, contexts: list[torch.Tensor], task: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(1, len(task), V)`` for the task tokens, decoding over parallel contexts.
    Segment order is invisible to the task tokens (same positions, same mask): PCW's weakness."""
    ids, position_ids, mask = parallel_context_inputs(contexts, task)
    return model(ids, mask, position_ids=position_ids)[:, -len(task):]  # (1, n_task, V)


def sink_evict(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, n_sink: int, window: int):
    """:class:`SinkKVCache`'s eviction as a function: ``k, v (B, nkv, L, hs)`` and their token
    ``positions (L,)`` -> the kept ``(k, v, positions)``: all of them while ``L <= n_sink + window``,
    else the first ``n_sink`` plus the last ``window``. Graded reference of ``exercises/06_long_context``
    (``06.sink_evict``)."""
    check_tensor(k, "k", "sink_evict", dim=4)
    check_tensor(v, "v", "sink_evict", shape=tuple(k.shape))
    check_tensor(positions, "positions", "sink_evict", shape=(k.size(2),))
    n_sink, window = check_int(n_sink, "n_sink", "sink_evict", minimum=0), check_int(window, "window", "sink_evict")
    L = k.size(2)
    if L <= n_sink + window:
        return k, v, positions
    keep = torch.cat((torch.arange(n_sink), torch.arange(L - window, L))).to(k.device)
    return k[:, :, keep], v[:, :, keep], positions[keep]
