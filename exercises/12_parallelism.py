# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 12 · Exercises: scalable training
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/12_parallelism.ipynb)
#
# Five pieces of [lesson 12](../lessons/12_parallelism.ipynb)'s parallel training, written by you. No
# processes are spawned: everything here is arithmetic or a single-process tensor computation.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `ring_send_chunk(rank, step, n_ranks)`: which chunk a rank sends in a ring all-reduce | 2 |
# | 2 | `zero_bytes_per_gpu(n_params, n_gpus, stage)`: ZeRO's memory per GPU | 2 |
# | 3 | `bubble_fraction(p, m)`: the pipeline bubble (GPipe's definition) | 2 |
# | 4 | `column_parallel_forward(x, weight_shards, bias_shards)`: a column-parallel linear layer | 2 |
# | 5 | `rank_coords(rank, dp, pp, tp)`: a rank's place on the 3D grid | 2 |
#
# **How it works.** Each docstring says what to build and gives a hint. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. The last
# cell shows your score; in a terminal, `lmlab grade exercises/12_parallelism.ipynb` grades the notebook.

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
import torch
import torch.nn.functional as F

from lmlab.grading import check, check_all

# %% [markdown]
# ## 1 · The ring all-reduce schedule (2 points)
#
# $N$ ranks in a ring; each cuts its vector into $N$ chunks and, at every step, sends one chunk to
# rank $r+1$ while receiving one from rank $r-1$. Steps $0 \dots N-2$ are the **reduce-scatter**: rank
# $r$ sends chunk $(r - s) \bmod N$ and adds what it receives; afterwards rank $r$ holds the finished
# sum of chunk $(r+1) \bmod N$. Steps $N-1 \dots 2N-3$ are the **all-gather**: at all-gather step
# $s' = s - (N-1)$ rank $r$ passes on the finished chunk $(r + 1 - s') \bmod N$ and the receiver copies it.

# %%
def ring_send_chunk(rank: int, step: int, n_ranks: int) -> int:
    """The index of the chunk ``rank`` sends to its right neighbour at ``step`` (``0 <= step < 2(N-1)``).

    Hint: Python's ``%`` is already non-negative for a positive modulus: ``(-1) % 4 == 3``.
    """
    raise NotImplementedError("reduce-scatter step s: (rank - s) mod N; all-gather step s' = s - (N-1): the finished chunk (rank + 1 - s') mod N.")


# %%
check("12.ring_send_chunk", ring_send_chunk)

# %% [markdown]
# ## 2 · ZeRO's memory per GPU (2 points)
#
# Mixed-precision Adam costs 16 bytes per parameter: 2 (16-bit weights) + 2 (16-bit gradients) + 12
# (fp32 master weights, momentum and variance). Stage 1 shards the optimizer state over the $N$ GPUs,
# stage 2 also the gradients, stage 3 also the weights. The ZeRO paper's 7.5B model on 64 GPUs needs
# 120 / 31.4 / 16.6 / 1.9 GB per GPU.

# %%
def zero_bytes_per_gpu(n_params: float, n_gpus: int, stage: int) -> float:
    """Bytes of weights + gradients + optimizer state per GPU with ZeRO ``stage`` (0, 1, 2 or 3).

    Hint: start from 2, 2 and 12 bytes per parameter and divide each part by ``n_gpus`` if it is sharded.
    """
    raise NotImplementedError("2 (16-bit weights) + 2 (16-bit grads) + 12 (fp32 master, momentum, variance) bytes per parameter; stage k divides the first k of optimizer, grads, params by N.")


# %%
check("12.zero_bytes_per_gpu", zero_bytes_per_gpu)

# %% [markdown]
# ## 3 · The pipeline bubble (2 points)
#
# $p$ stages, $m$ micro-batches, every forward and backward taking the same time on each stage. The
# bubble is the fraction of the total (GPipe) step time a stage is idle. (Megatron's papers divide the
# same idle time by the *ideal* time instead — a different number.)

# %%
def bubble_fraction(p: int, m: int) -> float:
    """Idle fraction of the total pipeline time, GPipe's definition.

    Hint: the pipeline takes ``m + p - 1`` time slots; each stage works in ``m`` of them.
    """
    raise NotImplementedError("the pipeline runs m + p - 1 slots, each stage is busy for m of them.")


# %%
check("12.bubble_fraction", bubble_fraction)

# %% [markdown]
# ## 4 · A column-parallel linear layer (2 points)
#
# Megatron splits $W$ (shape `(out, in)`, as in `nn.Linear`) by **output rows** over $t$ ranks: rank $r$
# holds $W_r$ of shape `(out/t, in)` and the matching bias slice, and computes $x W_r^\top + b_r$ — its
# slice of the output features. Here you get all shards in one process; put the full output together.

# %%
def column_parallel_forward(x: torch.Tensor, weight_shards: list, bias_shards: list | None) -> torch.Tensor:
    """``(..., in)`` input, ``t`` weight shards ``(out/t, in)`` and bias shards ``(out/t,)`` (or None)
    -> ``(..., out)``: the same as ``F.linear(x, torch.cat(weight_shards), torch.cat(bias_shards))``.

    Hint: ``F.linear(x, w_r, b_r)`` per shard, then ``torch.cat(..., dim=-1)``.
    """
    raise NotImplementedError("each rank r computes x @ W_r^T + b_r (its slice of the outputs); the full output is their concatenation along the last dim.")


# %%
check("12.column_parallel_forward", column_parallel_forward)

# %% [markdown]
# ## 5 · Rank coordinates on the 3D grid (2 points)
#
# $dp \times pp \times tp$ ranks are numbered with tensor parallelism fastest (neighbouring ranks share
# a node and its fast links), then pipeline, then data: $\text{rank} = (d \cdot pp + p) \cdot tp + t$.

# %%
def rank_coords(rank: int, dp: int, pp: int, tp: int) -> tuple:
    """``(d, p, t)``: the data-, pipeline- and tensor-parallel coordinates of ``rank``.

    Hint: peel off the fastest coordinate with ``%``, then divide.
    """
    raise NotImplementedError("rank = (d * pp + p) * tp + t: t = rank % tp, p = (rank // tp) % pp, d = rank // (pp * tp).")


# %%
check("12.rank_coords", rank_coords)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/12_parallelism.ipynb` prints in a terminal.

# %%
check_all("12")
