# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Exercises: long-context modeling
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/06_long_context.ipynb)
#
# Four pieces of [lesson 06](../lessons/06_long_context.ipynb), written by you.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | warm-up: `interpolate_positions(positions, factor)`: position interpolation, $p \mapsto p / s$ | 1 | 5 min |
# | 2 | warm-up: `ntk_base(base, factor, head_dim)`: the NTK-aware base $b\,s^{d/(d-2)}$ | 1 | 10 min |
# | 3 | `lambda_mask(T, n_sink, window)`: the causal Λ mask (sinks + a local window) | 2 | 5 min |
# | 4 | `memory_top_k(q, mem_k, mem_v, k)`: exact top-$k$ retrieval from a memory | 3 | 10 min |
# | 5 | `yarn_frequencies(head_dim, base, factor, original_context_length, ...)`: YaRN's frequency blend | 4 | 25 min |
# | 6 | `sink_evict(k, v, positions, n_sink, window)`: the attention-sink cache's eviction | 3 | 15 min |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/06_long_context.ipynb` grades the whole notebook.
#
# Conventions: T = tokens, hs = head size, M = memory entries. Masks are bool, `True` = may attend.

# %%
# Colab setup: install lmlab (Colab already has torch, so it is not reinstalled) and turn on
# widgets. Anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "lmlab @ git+https://github.com/lmlab-course/lmlab"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()
    import plotly.io as pio

    pio.renderers.default = "colab"

# %%
import math

import torch

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · Position interpolation (1 point, warm-up)
#
# A model trained on $L$ tokens knows positions $0..L-1$. To read $L' = sL$ tokens, position
# interpolation (Chen et al. 2023) squeezes them into that range: position $p$ becomes $p / s$
# (fractional positions are fine: RoPE's angle $p\,\theta_i$ works for any real $p$).

# %%
def interpolate_positions(positions: torch.Tensor, factor: float) -> torch.Tensor:
    """Position interpolation.

    Args:
        positions: ``(T,)`` integer tensor of token positions.
        factor: ``s >= 1``, the target length divided by the trained length.

    Returns:
        ``(T,)`` float tensor: every position divided by ``factor``.

    Hint: position interpolation squeezes s·L tokens into the trained range [0, L).
    """
    raise NotImplementedError("position interpolation squeezes s·L tokens into the trained range [0, L).")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Position interpolation (Chen et al. 2023) squeezes a long sequence into the trained position range instead of extrapolating past it: RoPE sees fractional positions it never saw, but all inside the range it knows.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# factor s = new length / trained length. Position m becomes m / s: a float tensor of the same shape (integer division would lose the fractions).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# return ...  # float positions, shrunk by factor
#
# </details>

# %%
check("06.interpolate_positions", interpolate_positions)

# %% [markdown]
# ## 2 · The NTK-aware base (1 point, warm-up)
#
# RoPE's pair $i$ turns by $\theta_i = b^{-2i/d}$ per token. The NTK-aware change replaces the base
# $b$ by a larger $b'$, chosen so that the fastest pair ($i = 0$) is untouched and the slowest
# ($i = d/2 - 1$) turns exactly $s$ times slower — like interpolation, but only where it is needed.
# Solve that condition for $b'$.

# %%
def ntk_base(base: float, factor: float, head_dim: int) -> float:
    """The NTK-aware RoPE base.

    Args:
        base: the original base ``b`` (e.g. 10000); factor: ``s >= 1``; head_dim: ``d``, even, ``>= 4``.

    Returns:
        the new base ``b'`` as a Python float (``ntk_base(10000, 4, 64)`` is about 41,829).

    Hint: choose the new base so that the lowest frequency is stretched by exactly the factor while the
    highest stays put.
    """
    raise NotImplementedError("choose the new base so that the lowest frequency is stretched by exactly the factor while the highest stays put.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# NTK-aware scaling changes RoPE's base instead of the positions: the highest frequency (local order) stays as it is, and the lowest frequency is slowed down by the whole factor, as interpolation would.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Pair i rotates with base ** (-2i / d); the lowest frequency is i = d/2 - 1, that is base ** (-(d - 2) / d). Find the new base b' with b' ** (-(d - 2) / d) = base ** (-(d - 2) / d) / factor; pair 0 (frequency 1) stays put whatever the base.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# exponent = ...  # from solving the equation for b'
# return float(base) * float(factor) ** exponent
# ```
#
# </details>

# %%
check("06.ntk_base", ntk_base)

# %% [markdown]
# ## 3 · The Λ-shaped mask (2 points)
#
# Query $i$ sees the first `n_sink` tokens ("attention sinks") and its `window` most recent tokens,
# itself included — and never a later token: key $j$ is visible when $j \le i$ and
# ($i - j < \text{window}$ or $j < n_\text{sink}$).

# %%
def lambda_mask(T: int, n_sink: int, window: int) -> torch.Tensor:
    """The causal Λ-shaped (sinks + sliding window) mask.

    Args:
        T: tokens; n_sink: ``>= 0`` sink tokens; window: ``>= 1`` recent tokens (itself included).

    Returns:
        ``(T, T)`` bool tensor, ``[i, j]`` True when query ``i`` may attend to key ``j``.

    Hint: a causal sliding window, plus the first n_sink keys that every query may always see.
    """
    raise NotImplementedError("a causal sliding window, plus the first n_sink keys that every query may always see.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Λ-shaped attention (LM-Infinite, StreamingLLM) keeps two kinds of keys for every query: the first few tokens, which soak up attention (the sinks), and a local window of recent ones.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Like chapter 04's sliding-window mask (queries as a column, keys as a row, causal and within `window`), OR'ed with 'the key is one of the first n_sink positions'. It stays causal: no query sees the future, not even a sink.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# i = ...  # (T, 1)
# j = ...  # (1, T)
# return (...) & ((...) | (...))  # causal, and (recent or sink)
# ```
#
# </details>

# %%
check("06.lambda_mask", lambda_mask)

# %% [markdown]
# ## 4 · Exact top-k memory retrieval (3 points)
#
# A kNN memory (Memorizing Transformers) stores the keys and values of past tokens. Each query
# fetches the $k$ entries whose keys have the **largest inner product** with it — brute force here:
# score every entry. (At millions of entries one uses approximate search instead, e.g. FAISS.)

# %%
def memory_top_k(q: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor, k: int):
    """The ``k`` memory entries with the largest ``q · key``, per query, best first.

    Args:
        q: ``(T, hs)`` queries; mem_k: ``(M, hs)`` memory keys; mem_v: ``(M, hv)`` memory values;
        k: ``1 <= k <= M``.

    Returns:
        ``(scores (T, k), indices (T, k), values (T, k, hv))``: the inner products, sorted from the
        largest down, the memory rows they come from, and those rows of ``mem_v``.

    Hint: score every memory key against the query the way attention does (not a distance), keep the best k
    in order, and fetch their values.
    """
    raise NotImplementedError("score every memory key against the query the way attention does (not a distance), keep the best k in order, and fetch their values.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Memorizing Transformers keep an external memory of (key, value) pairs and let each query fetch its k nearest keys, where 'nearest' means the largest attention score q . k, as attention itself would rank them.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Scores: q (T, hs) times mem_k transposed (hs, M) = (T, M). torch.topk along the last dim gives the k best scores and their indices, largest first: (T, k) each. Indexing mem_v (M, hv) with the (T, k) indices gives (T, k, hv).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# scores = ...  # (T, M)
# top, idx = ...  # (T, k) each, best first
# return top, idx, ...  # values (T, k, hv)
# ```
#
# </details>

# %%
check("06.memory_top_k", memory_top_k)

# %% [markdown]
# ## 5 · YaRN's frequency blend (4 points)
#
# RoPE pair $i$ turns at frequency $\theta_i = b^{-2i/d}$. Over the trained length $L$ it makes
# $L\theta_i / 2\pi$ turns. YaRN (Peng et al. 2023, "NTK-by-parts") keeps the frequency of pairs that turn more
# than $\beta_{fast}$ times (they have seen every angle), divides by the factor $s$ the pairs that turn fewer than
# $\beta_{slow}$ times, and blends linearly in between, over the pair index; the ramp's ends are the pair
# indices where the number of turns equals $\beta_{fast}$ (rounded down) and $\beta_{slow}$ (rounded up),
# clamped to $[0, d-1]$. It also returns the attention factor $0.1 \ln s + 1$ (it multiplies cos and sin). Return
# `(inv_freq, attention_factor)`; the grader compares with Hugging Face transformers' YaRN.

# %%
def yarn_frequencies(head_dim: int, base: float, factor: float, original_context_length: int,
                     beta_fast: float = 32.0, beta_slow: float = 1.0) -> tuple:
    """``(inv_freq (head_dim/2,), attention_factor)`` of YaRN."""
    raise NotImplementedError("per frequency pair: how many full turns does it make over the trained length? Fast pairs keep their frequency, slow ones are interpolated, a ramp blends the middle.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# YaRN (NTK-by-parts) treats RoPE's pairs differently: a pair that rotates many times over the trained length L already knows every angle, so it keeps its frequency; a pair that rotates less than once must be interpolated (divided by the factor). In between, blend linearly. The softmax also gets a mild temperature, applied as a factor on cos and sin.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# inv_freq_i = base ** (-2i/d) for i = 0..d/2-1. The pair index where a wavelength fits n times into L solves L / (2 pi base^(2i/d)) = n: i(n) = d ln(L / (2 pi n)) / (2 ln base). Take floor(i(beta_fast)) and ceil(i(beta_slow)) (clamped to [0, d-1]) as the ends of a linear ramp from 0 to 1 over the pair index, clamped to [0, 1]. Blend each pair: (1 - ramp) times its frequency plus ramp times the frequency / factor. Attention factor: 0.1 ln(factor) + 1.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# inv = ...  # (d/2,) RoPE's original frequencies
# lo, hi = ..., ...  # floor / ceil of the pair index, clamped
# if lo == hi:
#     hi += 0.001  # as the reference code does
# ramp = ...  # (d/2,): 0 up to lo, 1 from hi, linear between
# return ..., ...  # blended frequencies, attention factor
# ```
#
# </details>

# %%
check("06.yarn_frequencies", yarn_frequencies)

# %% [markdown]
# ## 6 · The attention-sink cache's eviction (3 points)
#
# With Λ-shaped attention each query sees the first `n_sink` tokens and its `window` most recent ones, so a
# decoder needs to keep only those in its KV cache (StreamingLLM). `k` and `v` are `(B, nkv, L, hs)` with the tokens
# on dim 2, `positions` `(L,)` their positions. While `L <= n_sink + window` keep everything; otherwise keep the first
# `n_sink` and the last `window`, the same tokens in `k`, `v` and `positions`. (`lmlab.infer.long_context.SinkKVCache` does the same
# after every append.)

# %%
def sink_evict(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, n_sink: int, window: int) -> tuple:
    """The kept ``(k, v, positions)`` of an attention-sink cache."""
    raise NotImplementedError("StreamingLLM keeps two things when the cache is over budget: the very first tokens (the sinks) and the most recent ones.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A bounded cache for Λ-shaped attention: every query may see the first n_sink tokens and its last window tokens, so anything else can be thrown away. Under the budget n_sink + window nothing is evicted.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# The token axis is dim 2 of k and v and the only axis of positions. Build one index tensor (the sinks, then the last window indices) and apply the same selection to all three, so keys, values and positions stay aligned.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# L = k.size(2)
# if L <= ...:
#     return k, v, positions
# keep = torch.cat((..., ...))
# return k[:, :, keep], ..., ...
# ```
#
# </details>

# %%
check("06.sink_evict", sink_evict)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/06_long_context.ipynb` prints in a terminal.

# %%
check_all("06")
