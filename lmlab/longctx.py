"""Long-context modeling (lesson 06, ``lessons/06_long_context``).

A model trained on ``L`` tokens meets rotation angles (RoPE) or table rows (learned positions) it
never saw once it reads more. Two families of fixes, each usable from :class:`lmlab.model.ModelConfig`:

**Scaling position embeddings** (RoPE, ``ModelConfig(position="rope", rope_scaling={...})``):

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

**Adapting the context window:**

* parallel context windows (:func:`parallel_context_inputs`, :func:`parallel_context_logits`):
  segments encoded with reused positions ``0..n_i-1``, the task tokens attending to all of them;
* Λ-shaped attention (:func:`lambda_mask`; ``ModelConfig(attention="sliding_window", window=w,
  n_sink=n)``; the bounded cache :class:`SinkKVCache` that evicts the middle): the first ``n``
  "sink" tokens plus the ``w`` most recent ones (LM-Infinite, StreamingLLM);
* kNN external memory (:class:`KNNMemory`, :class:`KNNMemoryAttention`, :func:`memorize_segments`;
  ``ModelConfig(knn_memory={"layer": i, "top_k": k, "size": M})``): one layer also attends to the
  top-k keys retrieved from past segments (Memorizing Transformers).

Shapes: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head size, M = memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import MultiHeadAttention, decode_mask, repeat_kv
from .positions import AttentionPositions, _check_head_dim, _check_int, apply_rope, rope_cos_sin, rope_frequencies

__all__ = [
    "ROPE_SCALINGS",
    "check_rope_scaling",
    "scaled_rope_frequencies",
    "yarn_ramp",
    "yarn_attention_factor",
    "rope_attention_positions",
    "truncated_rope_attention",
    "lambda_mask",
    "SinkKVCache",
    "parallel_context_inputs",
    "parallel_context_logits",
    "KNNMemory",
    "KNNMemoryAttention",
    "check_knn_memory",
    "memorize_segments",
    "reset_memory",
]

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
        _check_int("rope_scaling original_context_length", scaling["original_context_length"])
    if "window" in scaling:
        _check_int("rope_scaling window", scaling["window"])
    for name in ("beta_fast", "beta_slow", "attention_factor"):
        if name in scaling and (isinstance(scaling[name], bool) or not isinstance(scaling[name], (int, float)) or not scaling[name] > 0):
            raise ValueError(f"rope_scaling {name} must be a number > 0, got {scaling[name]!r}")
    if kind == "yarn" and scaling.get("beta_fast", 32) <= scaling.get("beta_slow", 1):
        raise ValueError(f"rope_scaling beta_fast must be > beta_slow, got {scaling.get('beta_fast', 32)} <= {scaling.get('beta_slow', 1)}")


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
        return rope_frequencies(d, base * s ** (d / (d - 2))), 1.0
    if kind == "dynamic_ntk":
        L = scaling["original_context_length"]
        n = max(seq_len or L, L)
        return rope_frequencies(d, base * ((s * n / L) - (s - 1)) ** (d / (d - 2))), 1.0
    # yarn: blend the interpolated and the original frequency pair by pair
    ramp = yarn_ramp(d, base, scaling["original_context_length"], scaling.get("beta_fast", 32), scaling.get("beta_slow", 1))
    inv_freq = (inv_freq / s) * ramp + inv_freq * (1 - ramp)
    return inv_freq, float(scaling.get("attention_factor", yarn_attention_factor(s)))


def rope_attention_positions(head_dim: int, base: float, scaling: dict | None, q_positions: torch.Tensor,
                             k_positions: torch.Tensor) -> AttentionPositions:
    """What a RoPE model's attention layers need for one forward pass (see
    :class:`lmlab.positions.AttentionPositions`): cos/sin at the new tokens' positions, or, for
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
    _check_int("window", window)
    _check_head_dim(q.size(-1))
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


# --------------------------------------------------------------------------------------------
# Λ-shaped attention: sinks + a local window
# --------------------------------------------------------------------------------------------


def lambda_mask(T_q: int, n_sink: int, window: int, T_k: int | None = None, device=None) -> torch.Tensor:
    """``(T_q, T_k)`` causal mask where each query sees the first ``n_sink`` tokens and its
    ``window`` most recent ones (itself included); queries are the last ``T_q`` of ``T_k`` tokens."""
    _check_int("window", window)
    _check_int("n_sink", n_sink, minimum=0)
    return decode_mask(T_q, T_q if T_k is None else T_k, window, device=device, n_sink=n_sink)


class SinkKVCache:
    """A KV cache bounded at ``n_sink + window`` tokens per layer: it keeps the first ``n_sink``
    tokens and the ``window`` most recent ones and evicts the middle (StreamingLLM).

    Same per-layer protocol as :class:`lmlab.kvcache.KVCache` (``layer(i).update(k, v)``).
    Each decode step then sees exactly what :func:`lambda_mask` allows. ``positions(layer)``
    gives the original positions of the kept tokens; StreamingLLM instead numbers them
    ``0..held-1`` inside the cache (``within_cache=True``), which needs keys cached un-rotated
    and rotated when read - so with RoPE the model path uses the mask, not this cache.
    """

    def __init__(self, n_layers: int, n_sink: int, window: int):
        _check_int("n_layers", n_layers)
        _check_int("n_sink", n_sink, minimum=0)
        _check_int("window", window)
        self.n_sink, self.window = n_sink, window
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.pos: list[torch.Tensor | None] = [None] * n_layers
        self.seen = [0] * n_layers  # tokens ever appended

    @property
    def capacity(self) -> int:
        return self.n_sink + self.window

    def __len__(self) -> int:
        return 0 if self.k[0] is None else self.k[0].size(2)

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
    """Pack segments and task tokens into one sequence for :meth:`lmlab.model.GPT.forward`.

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


# --------------------------------------------------------------------------------------------
# kNN external memory (Memorizing Transformers)
# --------------------------------------------------------------------------------------------


class KNNMemory:
    """Keys and values of past segments, ``(B, nkv, M, hs)``, first in first out at ``size``.

    :meth:`search` is exact brute force (every query scores every memory key: ``O(T·M)``). At
    scale (M in the millions) one uses approximate nearest-neighbour search instead (FAISS,
    ScaNN: clustering / product quantization), trading a little recall for sub-linear time.
    """

    def __init__(self, size: int):
        _check_int("size", size)
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
        ``scores (B, nh, T, k)``, ``keys``, ``values (B, nh, T, k, hs)``."""
        _check_int("top_k", top_k)
        n_rep = q.size(1) // self.k.size(1)
        mk, mv = repeat_kv(self.k, n_rep), repeat_kv(self.v, n_rep)  # (B, nh, M, hs)
        scores = q @ mk.transpose(-2, -1)  # (B, nh, T, M): brute force
        top, idx = scores.topk(min(top_k, mk.size(2)), dim=-1)  # (B, nh, T, k)
        gather = idx[..., None].expand(*idx.shape, mk.size(-1))  # (B, nh, T, k, hs)
        expand = (-1, -1, q.size(2), -1, -1)
        keys = mk[:, :, None].expand(*expand).gather(3, gather)  # (B, nh, T, k, hs)
        values = mv[:, :, None].expand(*expand).gather(3, gather)  # (B, nh, T, k, hs)
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
    _check_int("knn_memory top_k", spec["top_k"])
    _check_int("knn_memory size", spec["size"])


class KNNMemoryAttention(MultiHeadAttention):
    """Local causal attention mixed, per head, with attention over the ``top_k`` entries
    retrieved from a :class:`KNNMemory` of past segments: ``y = g·y_mem + (1-g)·y_local`` with a
    learned gate ``g = sigmoid(gate_h)`` (0.5 at init). With an empty memory it is exactly
    :class:`lmlab.attention.MultiHeadAttention`. The memory is read on every call but written
    only while ``memorize`` is True (see :func:`memorize_segments`), and never from a KV-cache step.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, top_k: int = 32,
                 memory_size: int = 4096, **kwargs):
        super().__init__(d_model, n_heads, n_kv_heads, **kwargs)
        _check_int("top_k", top_k)
        self.top_k = top_k
        self.memory = KNNMemory(memory_size)
        self.memorize = False
        self.gate = nn.Parameter(torch.zeros(n_heads))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv_cache=None, positions=None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([C, self.kv_dim, self.kv_dim], dim=2)  # (B, T, C), 2 x (B, T, nkv*hs)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        if positions is not None:
            q, k = positions.rotate(q, k)
        k_new, v_new = k, v
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, nkv, T_past + T, hs)
        mask = attn_mask if attn_mask is not None else decode_mask(T, k.size(2), self.window, device=x.device, n_sink=self.n_sink)
        if positions is not None and positions.changes_scores:
            y = positions.attend(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **({"enable_gqa": True} if self.n_rep > 1 else {}))
        if len(self.memory):
            g = torch.sigmoid(self.gate)[None, :, None, None]  # (1, nh, 1, 1)
            y = g * self.memory.attend(q, self.top_k) + (1 - g) * y  # (B, nh, T, hs)
        if self.memorize and kv_cache is None:
            self.memory.add(k_new, v_new)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.drop(self.proj(y))


def _memory_layers(model) -> list[KNNMemoryAttention]:
    return [m for m in model.modules() if isinstance(m, KNNMemoryAttention)]


def reset_memory(model) -> None:
    """Empty every kNN memory of ``model`` (start of a new document)."""
    for m in _memory_layers(model):
        m.memory.clear()


def memorize_segments(model, ids: torch.Tensor, segment_length: int) -> torch.Tensor:
    """Run a long ``ids (B, N)`` through ``model`` one segment at a time; after each segment its
    keys/values join the memory, so later segments can retrieve them. Returns logits ``(B, N, V)``."""
    _check_int("segment_length", segment_length)
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
