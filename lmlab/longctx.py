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
* kNN external memory (:class:`KNNMemory`, :class:`KNNMemoryAttention`, :func:`memorize_segments`, in
  :mod:`lmlab.knn_memory` and re-exported here;
  ``ModelConfig(knn_memory={"layer": i, "top_k": k, "size": M})``): one layer also attends to the
  top-k keys retrieved from past segments (Memorizing Transformers).

Shapes: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head_dim, M = memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import decode_mask, repeat_kv
from .kvcache import LayerKVCache
from .knn_memory import KNNMemory, KNNMemoryAttention, check_knn_memory, memorize_segments, reset_memory  # noqa: F401 (re-exported)
from .positions import AttentionPositions, apply_rope, check_rope_head_dim, rope_cos_sin, rope_frequencies
from .validation import check_int

__all__ = [
    "ROPE_SCALINGS",
    "check_rope_scaling",
    "scaled_rope_frequencies",
    "ntk_base",
    "yarn_ramp",
    "sink_evict",
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
    :class:`lmlab.position_scheme.AttentionPositions`): cos/sin at the new tokens' positions, or, for
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

    Same per-layer protocol as :class:`lmlab.kvcache.KVCache` (``layer(i).update(k, v)``, ``length``,
    ``batch``), so :meth:`lmlab.model.GPT.forward_with_cache` decodes with it: pass it as the cache of
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


def sink_evict(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, n_sink: int, window: int):
    """:class:`SinkKVCache`'s eviction as a function: ``k, v (B, nkv, L, hs)`` and their token
    ``positions (L,)`` -> the kept ``(k, v, positions)``: all of them while ``L <= n_sink + window``,
    else the first ``n_sink`` plus the last ``window``. Graded reference of ``exercises/06_long_context``
    (``06.sink_evict``)."""
    from .validation import check_int, check_tensor

    check_tensor(k, "k", "sink_evict", dim=4)
    check_tensor(v, "v", "sink_evict", shape=tuple(k.shape))
    check_tensor(positions, "positions", "sink_evict", shape=(k.size(2),))
    n_sink, window = check_int(n_sink, "n_sink", "sink_evict", minimum=0), check_int(window, "window", "sink_evict")
    L = k.size(2)
    if L <= n_sink + window:
        return k, v, positions
    keep = torch.cat((torch.arange(n_sink), torch.arange(L - window, L))).to(k.device)
    return k[:, :, keep], v[:, :, keep], positions[keep]
