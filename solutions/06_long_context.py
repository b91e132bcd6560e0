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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/06_long_context.ipynb)
#
# Four pieces of [lesson 06](../lessons/06_long_context.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | warm-up: `interpolate_positions(positions, factor)`: position interpolation, $p \mapsto p / s$ | 1 |
# | 2 | warm-up: `ntk_base(base, factor, head_dim)`: the NTK-aware base $b\,s^{d/(d-2)}$ | 1 |
# | 3 | `lambda_mask(T, n_sink, window)`: the causal Λ mask (sinks + a local window) | 2 |
# | 4 | `memory_top_k(q, mem_k, mem_v, k)`: exact top-$k$ retrieval from a memory | 3 |
# | 5 | `yarn_frequencies(head_dim, base, factor, original_context_length, ...)`: YaRN's frequency blend | 4 |
# | 6 | `sink_evict(k, v, positions, n_sink, window)`: the attention-sink cache's eviction | 3 |
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
    ### BEGIN SOLUTION
    return positions.float() / factor  # (T,)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    return float(base) * float(factor) ** (head_dim / (head_dim - 2))
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    i = torch.arange(T)[:, None]  # (T, 1)
    j = torch.arange(T)[None, :]  # (1, T)
    return (j <= i) & ((i - j < window) | (j < n_sink))  # (T, T)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    scores = q @ mem_k.T  # (T, M): every query against every memory key
    top, idx = torch.topk(scores, k, dim=-1)  # (T, k) each: largest first
    return top, idx, mem_v[idx]  # mem_v[idx]: (T, k, hv)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    d, L = head_dim, original_context_length
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,) the original frequencies

    def pair_for(turns: float) -> float:  # the pair index whose frequency turns `turns` times over L tokens
        return d * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(pair_for(beta_fast)), 0), min(math.ceil(pair_for(beta_slow)), d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 0 keep, 1 interpolate
    return inv * (1 - ramp) + (inv / factor) * ramp, 0.1 * math.log(factor) + 1.0
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    L = k.size(2)
    if L <= n_sink + window:
        return k, v, positions
    keep = torch.cat((torch.arange(n_sink), torch.arange(L - window, L)))  # sinks, then the recent window
    return k[:, :, keep], v[:, :, keep], positions[keep]
    ### END SOLUTION


# %%
check("06.sink_evict", sink_evict)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/06_long_context.ipynb` prints in a terminal.

# %%
check_all("06")
