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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/12_parallelism.ipynb)
#
# Lesson [12](../lessons/12_parallelism.ipynb)'s parallel training, written by you. No processes are
# spawned: a "rank" here is an entry of a Python list, so every collective is a loop you can read. Five
# 1-point warm-ups (formulas), then four components run over simulated ranks.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | warm-up: `ring_send_chunk(rank, step, n_ranks)`: which chunk a rank sends in a ring all-reduce | 1 | 5 min |
# | 2 | warm-up: `zero_bytes_per_gpu(n_params, n_gpus, stage)`: ZeRO's memory per GPU | 1 | 5 min |
# | 3 | warm-up: `bubble_fraction(p, m)`: the pipeline bubble (GPipe's definition) | 1 | 3 min |
# | 4 | warm-up: `column_parallel_forward(x, weight_shards, bias_shards)`: a column-parallel linear layer | 1 | 5 min |
# | 5 | warm-up: `rank_coords(rank, dp, pp, tp)`: a rank's place on the 3D grid | 1 | 5 min |
# | 6 | `ring_all_reduce_sim(tensors)`: a ring all-reduce (reduce-scatter, then all-gather) over simulated ranks | 4 | 25 min |
# | 7 | `zero1_step(params, grads, states, step, ...)`: a ZeRO-1 AdamW step over simulated ranks | 4 | 25 min |
# | 8 | `row_parallel_forward(x_shards, weight_shards, bias)`: a row-parallel linear and its all-reduce | 3 | 15 min |
# | 9 | `one_f_one_b(p, m, stage)`: the 1F1B pipeline schedule's order of operations | 3 | 15 min |
#
# **How it works.** Each docstring says what to build and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
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

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · The ring all-reduce schedule (1 point, warm-up)
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
    ### BEGIN SOLUTION
    if step < n_ranks - 1:  # reduce-scatter
        return (rank - step) % n_ranks
    return (rank + 1 - (step - (n_ranks - 1))) % n_ranks  # all-gather: pass the finished chunk on
    ### END SOLUTION


# %%
check("12.ring_send_chunk", ring_send_chunk)

# %% [markdown]
# ## 2 · ZeRO's memory per GPU (1 point, warm-up)
#
# Mixed-precision Adam costs 16 bytes per parameter: 2 (16-bit weights) + 2 (16-bit gradients) + 12
# (fp32 master weights, momentum and variance). Stage 1 shards the optimizer state over the $N$ GPUs,
# stage 2 also the gradients, stage 3 also the weights. The ZeRO paper's 7.5B model on 64 GPUs needs
# 120 / 31.4 / 16.6 / 1.9 GB per GPU.

# %%
def zero_bytes_per_gpu(n_params: float, n_gpus: int, stage: int) -> float:
    """Bytes of weights + gradients + optimizer state per GPU with ZeRO ``stage`` (0, 1, 2 or 3).

    Hint: three parts (weights, gradients, optimizer state); which does each stage shard?
    """
    ### BEGIN SOLUTION
    params, grads, optimizer = 2 * n_params, 2 * n_params, 12 * n_params
    if stage >= 1:
        optimizer /= n_gpus
    if stage >= 2:
        grads /= n_gpus
    if stage >= 3:
        params /= n_gpus
    return params + grads + optimizer
    ### END SOLUTION


# %%
check("12.zero_bytes_per_gpu", zero_bytes_per_gpu)

# %% [markdown]
# ## 3 · The pipeline bubble (1 point, warm-up)
#
# $p$ stages, $m$ micro-batches, every forward and backward taking the same time on each stage. The
# bubble is the fraction of the total (GPipe) step time a stage is idle. (Megatron's papers divide the
# same idle time by the *ideal* time instead — a different number.)

# %%
def bubble_fraction(p: int, m: int) -> float:
    """Idle fraction of the total pipeline time, GPipe's definition.

    Hint: count the time slots of the whole pipeline, and those in which one stage works.
    """
    ### BEGIN SOLUTION
    return (p - 1) / (m + p - 1)
    ### END SOLUTION


# %%
check("12.bubble_fraction", bubble_fraction)

# %% [markdown]
# ## 4 · A column-parallel linear layer (1 point, warm-up)
#
# Megatron splits $W$ (shape `(out, in)`, as in `nn.Linear`) by **output rows** over $t$ ranks: rank $r$
# holds $W_r$ of shape `(out/t, in)` and the matching bias slice, and computes $x W_r^\top + b_r$ — its
# slice of the output features. Here you get all shards in one process; put the full output together.

# %%
def column_parallel_forward(x: torch.Tensor, weight_shards: list, bias_shards: list | None) -> torch.Tensor:
    """``(..., in)`` input, ``t`` weight shards ``(out/t, in)`` and bias shards ``(out/t,)`` (or None)
    -> ``(..., out)``: the same as ``F.linear(x, torch.cat(weight_shards), torch.cat(bias_shards))``.

    Hint: each rank computes a slice of the output features.
    """
    ### BEGIN SOLUTION
    biases = bias_shards if bias_shards is not None else [None] * len(weight_shards)
    return torch.cat([F.linear(x, w, b) for w, b in zip(weight_shards, biases)], dim=-1)  # (..., out)
    ### END SOLUTION


# %%
check("12.column_parallel_forward", column_parallel_forward)

# %% [markdown]
# ## 5 · Rank coordinates on the 3D grid (1 point, warm-up)
#
# $dp \times pp \times tp$ ranks are numbered with tensor parallelism fastest (neighbouring ranks share
# a node and its fast links), then pipeline, then data: $\text{rank} = (d \cdot pp + p) \cdot tp + t$.

# %%
def rank_coords(rank: int, dp: int, pp: int, tp: int) -> tuple:
    """``(d, p, t)``: the data-, pipeline- and tensor-parallel coordinates of ``rank``.

    Hint: read the rank like a number in a mixed base (tensor parallel is the last digit).
    """
    ### BEGIN SOLUTION
    return rank // (pp * tp), (rank // tp) % pp, rank % tp
    ### END SOLUTION


# %%
check("12.rank_coords", rank_coords)

# %% [markdown]
# ## 6 · A ring all-reduce over simulated ranks (4 points)
#
# Now run the whole ring. `tensors[r]` is rank $r$'s 1-D vector (its length divisible by $N$); cut it into
# $N$ chunks. In each of the $2(N-1)$ steps **every rank sends at once** (what it held before the step) one
# chunk to rank $r+1$, using the schedule of exercise 1: during the reduce-scatter the receiver *adds* the
# chunk to its own, during the all-gather it *copies* it. Return the **history**: after each step, a copy of
# all $N$ vectors — so the grader can check each step against the schedule, and the last entry against the
# sum. Do not modify the inputs. The lesson runs the same algorithm over real gloo processes
# (`lmlab.parallel.collectives.ring_all_reduce`).

# %%
def ring_all_reduce_sim(tensors: list) -> list:
    """``N`` rank vectors ``(n,)`` -> ``history``: ``2(N-1)`` lists of ``N`` vectors, after each step."""
    ### BEGIN SOLUTION
    n = len(tensors)
    state = [t.clone().view(n, -1) for t in tensors]  # state[r][c]: rank r's chunk c, (n / N,)
    history = []
    for s in range(2 * (n - 1)):
        reduce = s < n - 1
        out = [(r - s) % n if reduce else (r + 1 - (s - (n - 1))) % n for r in range(n)]  # chunk each rank sends
        msgs = [state[r][out[r]].clone() for r in range(n)]  # everyone sends before anyone receives
        for r in range(n):
            c, chunk = out[(r - 1) % n], msgs[(r - 1) % n]  # from the left neighbour
            if reduce:
                state[r][c] += chunk
            else:
                state[r][c] = chunk
        history.append([x.reshape(-1).clone() for x in state])
    return history
    ### END SOLUTION


# %%
check("12.ring_all_reduce_sim", ring_all_reduce_sim)

# %% [markdown]
# ## 7 · A ZeRO-1 optimizer step over simulated ranks (4 points)
#
# Data parallel: every rank holds the full flat parameters `params[r]` $(n,)$ and computed its own gradient
# `grads[r]` on its part of the batch. ZeRO-1 keeps the AdamW state only for the rank's **shard**
# (`states[r]["exp_avg"]`, `states[r]["exp_avg_sq"]`, each $(n/N,)$; shard $r$ is `t.chunk(N)[r]`). One step:
#
# 1. **reduce-scatter**: rank $r$ gets the *mean* over ranks of the gradient, for its shard only;
# 2. **AdamW on the shard** (`step` counts from 1): $p \leftarrow p(1-\eta\lambda)$, $m \leftarrow \beta_1 m + (1-\beta_1) g$,
#    $v \leftarrow \beta_2 v + (1-\beta_2) g^2$, $p \leftarrow p - \eta\,\hat m / (\sqrt{\hat v} + \epsilon)$ with
#    $\hat m = m / (1-\beta_1^t)$, $\hat v = v / (1-\beta_2^t)$;
# 3. **all-gather**: every rank receives every updated shard.
#
# Return `(new_params, new_states)` shaped like the inputs. The grader runs three steps and compares every
# rank with `torch.optim.AdamW` on the full tensor.

# %%
def zero1_step(params: list, grads: list, states: list, step: int, lr: float = 1e-3, betas=(0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 0.01) -> tuple:
    """One ZeRO-1 AdamW step over ``N`` simulated ranks -> ``(new_params, new_states)``."""
    ### BEGIN SOLUTION
    n = len(params)
    b1, b2 = betas
    g_shards = torch.stack(grads).mean(0).chunk(n)  # reduce-scatter (mean): rank r keeps chunk r
    shards, new_states = [], []
    for r in range(n):
        p = params[r].chunk(n)[r] * (1 - lr * weight_decay)  # decoupled weight decay
        g = g_shards[r]
        m = b1 * states[r]["exp_avg"] + (1 - b1) * g
        v = b2 * states[r]["exp_avg_sq"] + (1 - b2) * g * g
        shards.append(p - lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps))
        new_states.append({"exp_avg": m, "exp_avg_sq": v})
    full = torch.cat(shards)  # all-gather
    return [full.clone() for _ in range(n)], new_states
    ### END SOLUTION


# %%
check("12.zero1_step", zero1_step)

# %% [markdown]
# ## 8 · A row-parallel linear layer and its all-reduce (3 points)
#
# The second half of Megatron's MLP. $W$ `(out, in)` is split by **input columns**: rank $r$ holds
# $W_r$ `(out, in/t)` and the matching slice $x_r$ `(..., in/t)` of the input (the column-parallel layer before it
# produced exactly that slice). $x_r W_r^\top$ is only a *partial* output; the all-reduce sums them, and the
# (replicated) bias is added once. Return every rank's output, each equal to `F.linear(x, W, b)`.

# %%
def row_parallel_forward(x_shards: list, weight_shards: list, bias: torch.Tensor | None) -> list:
    """``t`` input shards ``(..., in/t)`` and weight shards ``(out, in/t)`` -> ``t`` outputs ``(..., out)``."""
    ### BEGIN SOLUTION
    partial = [F.linear(x, w) for x, w in zip(x_shards, weight_shards)]  # (..., out) on every rank
    total = torch.stack(partial).sum(0)  # the all-reduce
    if bias is not None:
        total = total + bias  # once, after the sum
    return [total.clone() for _ in x_shards]
    ### END SOLUTION


# %%
check("12.row_parallel_forward", row_parallel_forward)

# %% [markdown]
# ## 9 · The 1F1B schedule (3 points)
#
# $p$ stages, $m$ micro-batches. Stage `stage` runs `("F", i)` (forward of micro-batch $i$) and `("B", i)`
# (its backward) in some order. GPipe runs all forwards, then all backwards, so every stage stores $m$
# micro-batches' activations. 1F1B (PipeDream-Flush, Megatron) starts each backward as early as it can:
# stage $s$ runs $p - 1 - s$ warm-up forwards (at most $m$), then alternates one forward and one backward
# (oldest backward first), then runs the remaining backwards. Return the order for one stage. The grader
# also runs your orders on a timeline: no deadlock, at most $p - s$ micro-batches stored on stage $s$, and
# the same bubble as GPipe.

# %%
def one_f_one_b(p: int, m: int, stage: int) -> list:
    """The order of ``("F", i)`` / ``("B", i)`` that ``stage`` (0-based) of ``p`` runs for ``m`` micro-batches."""
    ### BEGIN SOLUTION
    warmup = min(p - 1 - stage, m)
    ops = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):  # steady state: one forward, one backward
        ops += [("F", warmup + i), ("B", i)]
    return ops + [("B", i) for i in range(m - warmup, m)]
    ### END SOLUTION


# %%
check("12.one_f_one_b", one_f_one_b)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/12_parallelism.ipynb` prints in a terminal.

# %%
check_all("12")
