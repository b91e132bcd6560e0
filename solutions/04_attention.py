# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Exercises: attention variants
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/04_attention.ipynb)
#
# Seven pieces of the attention variants of [lesson 04](../lessons/04_attention.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `scaled_dot_product_attention(q, k, v, mask)`: softmax(QKᵀ/√d + mask) V | 2 |
# | 2 | `sliding_window_mask(T, window)`: each token sees its `window` most recent tokens | 2 |
# | 3 | warm-up: `repeat_kv(x, n_rep)`: share each K/V head with its group of query heads (GQA/MQA) | 1 |
# | 4 | `online_softmax_merge(...)`: merge two partial softmax results (FlashAttention's update) | 3 |
# | 5 | `gqa_rope_attention(x, w_qkv, w_o, n_heads, n_kv_heads, base)`: a whole grouped-query attention layer with RoPE | 5 |
# | 6 | `class GQAttention`: grouped-query attention as a module; the check swaps it into a model and trains it | 3 |
# | 7 | `flash_attention_forward(q, k, v, mask, block_q, block_k)`: FlashAttention's tiled forward, with its log-sum-exp | 6 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/04_attention.ipynb` grades the whole notebook.
#
# Conventions: B = batch, nh = query heads, nkv = key/value heads, T = tokens, hs = head size.
# Masks are bool, `True` = may attend.

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
import torch.nn as nn

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · Scaled dot-product attention (2 points)
#
# $\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(QK^\top / \sqrt{d} + M\right) V$, with
# $M = -\infty$ where the mask is False. The softmax runs over the keys (the last axis).

# %%
def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of every query over the keys.

    Args:
        q: ``(B, nh, Tq, hs)`` queries; k: ``(B, nh, Tk, hs)`` keys; v: ``(B, nh, Tk, hv)`` values.
        mask: ``None`` (every key visible) or a bool ``(Tq, Tk)`` tensor, True = may attend.

    Returns:
        ``(B, nh, Tq, hv)``.

    Hint: scores between every query and key, scaled by the head size, masked where not allowed, normalised
    over the keys, then a weighted sum of values.
    """
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, nh, Tq, hv)
    ### END SOLUTION


# %%
check("04.scaled_dot_product_attention", scaled_dot_product_attention)

# %% [markdown]
# ## 2 · Causal sliding-window mask (2 points)
#
# Query $i$ sees the `window` most recent tokens, itself included: keys $j$ with
# $i - \text{window} < j \le i$. `window = 1` sees only itself; `window >= T` is the causal mask.

# %%
def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """The causal sliding-window mask.

    Args:
        T: number of tokens; window: int ``>= 1``, how many recent tokens each query sees (itself included).

    Returns:
        ``(T, T)`` bool tensor, ``[i, j]`` True when ``j <= i`` and ``i - j < window``.

    Hint: compare a column of query positions with a row of key positions (broadcasting); causal, and no
    further back than the window (which counts the token itself).
    """
    ### BEGIN SOLUTION
    i = torch.arange(T)[:, None]  # (T, 1)
    j = torch.arange(T)[None, :]  # (1, T)
    return (j <= i) & (i - j < window)  # (T, T)
    ### END SOLUTION


# %%
check("04.sliding_window_mask", sliding_window_mask)

# %% [markdown]
# ## 3 · `repeat_kv` for grouped-query attention (1 point, warm-up)
#
# With $n_h$ query heads and $n_{kv}$ K/V heads, each K/V head serves $n_{rep} = n_h / n_{kv}$
# consecutive query heads: query head $h$ uses K/V head $h \,/\!/\, n_{rep}$ (LLaMA's convention,
# and PyTorch's `enable_gqa`).

# %%
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each K/V head ``n_rep`` times, in a row.

    Args:
        x: ``(B, nkv, T, hs)``; n_rep: int ``>= 1``.

    Returns:
        ``(B, nkv * n_rep, T, hs)`` where head ``h`` is ``x[:, h // n_rep]``.

    Hint: query heads 0..n_rep-1 share K/V head 0, the next n_rep share head 1, and so on: which torch
    repeat keeps copies of one head next to each other?
    """
    ### BEGIN SOLUTION
    return x.repeat_interleave(n_rep, dim=1)  # (B, nkv * n_rep, T, hs): 0, 0, 1, 1, ...
    ### END SOLUTION


# %%
check("04.repeat_kv", repeat_kv)

# %% [markdown]
# ## 4 · The online-softmax merge (3 points)
#
# FlashAttention processes keys block by block. For a block with scores $s$ and values $v$, a
# *partial result* is the triple $m = \max_j s_j$, $\ell = \sum_j e^{s_j - m}$,
# $\text{acc} = \sum_j e^{s_j - m} v_j$ (one per query row). Two partial results over disjoint key
# sets merge into the partial result over their union; at the end, $\text{acc}/\ell$ is the softmax
# output. Both parts were computed under their own max, so both must be rescaled to the new one.

# %%
def online_softmax_merge(m1, l1, acc1, m2, l2, acc2):
    """Merge two partial softmax results.

    Args:
        m1, l1: ``(R,)`` row max and sum of the first part; acc1: ``(R, hv)``; the same for part 2.
        A part may be empty: ``m = -inf``, ``l = 0``, ``acc = 0`` (the start of a tiled loop, or a tile whose keys
        are all masked for that row). Both may be empty: the union is then empty too, with no NaN.

    Returns:
        ``(m, l, acc)`` of the union: ``m = max(m1, m2)``, ``l`` and ``acc`` rescaled to ``m``.
        Do not change the inputs in place.

    Hint: the two partial results were computed against different running maxima; bring both to the common
    maximum before adding.
    """
    ### BEGIN SOLUTION
    m = torch.maximum(m1, m2)  # (R,)
    ref = torch.where(m == -math.inf, torch.zeros_like(m), m)  # (R,): a row with both parts empty stays empty
    a1, a2 = torch.exp(m1 - ref), torch.exp(m2 - ref)  # (R,): rescale each part to the common max
    return m, a1 * l1 + a2 * l2, a1[:, None] * acc1 + a2[:, None] * acc2
    ### END SOLUTION


# %%
check("04.online_softmax_merge", online_softmax_merge)

# %% [markdown]
# ## 5 · A grouped-query attention layer with RoPE (5 points)
#
# Now the whole layer, as LLaMA-2-70B or SmolLM2 run it. `x` is `(B, T, C)`; `n_heads` query heads of size
# `hs = C // n_heads` but only `n_kv_heads` key/value heads. `w_qkv` has `C + 2 * n_kv_heads * hs` rows: the
# query rows, then the key rows, then the value rows (lmlab's `MultiHeadAttention.qkv` layout, no bias); `w_o` is
# `(C, C)`. Rotate q and k with RoPE (the half-split layout of exercise 03, positions $0..T-1$, `base`), let
# query heads $0..r-1$ share K/V head 0, the next $r$ share head 1 and so on ($r$ = `n_heads // n_kv_heads`),
# attend causally, put the heads back side by side and project with `w_o`. You may use your own attention
# maths or `F.scaled_dot_product_attention` *without* `enable_gqa` (share the heads yourself) and
# `lmlab.model.positions.encodings.apply_rope`. The grader compares with SDPA's own GQA and with lmlab's layer on the same weights.

# %%
import torch.nn.functional as F

from lmlab.model.positions.encodings import apply_rope


def gqa_rope_attention(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, n_heads: int, n_kv_heads: int,
                       base: float = 10000.0) -> torch.Tensor:
    """Causal GQA with RoPE: ``x (B, T, C)`` -> ``(B, T, C)``."""
    ### BEGIN SOLUTION
    B, T, C = x.shape
    hs = C // n_heads
    q, k, v = F.linear(x, w_qkv).split([C, n_kv_heads * hs, n_kv_heads * hs], dim=2)
    q = q.view(B, T, n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, n_kv_heads, hs).transpose(1, 2)  # (B, nkv, T, hs)
    v = v.view(B, T, n_kv_heads, hs).transpose(1, 2)
    q, k = apply_rope(q, T, base=base), apply_rope(k, T, base=base)  # values are not rotated
    r = n_heads // n_kv_heads
    k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)  # (B, nh, T, hs): head h reads h // r
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return F.linear(y.transpose(1, 2).reshape(B, T, C), w_o)  # (B, T, C)
    ### END SOLUTION


# %%
check("04.gqa_rope_attention", gqa_rope_attention)

# %% [markdown]
# ## 6 · Grouped-query attention as a model part (3 points)
#
# Build LLaMA's attention from your parts (`repeat_kv`, `scaled_dot_product_attention`) with Hugging
# Face's layer names. The check puts it in every block of a small model for you
# (`lmlab.model.registry.register_attention("my_gqa", GQAttention)` makes `ModelConfig(attention="my_gqa")`
# valid, and you can do the same to train with it), copies lmlab's fused `qkv` weights into your
# `q_proj`, `k_proj`, `v_proj` (and `proj` into `o_proj`): same logits, and the same losses after 8
# Adam steps (tolerance 1e-4).

# %%
class GQAttention(nn.Module):
    """Causal grouped-query self-attention.

    ``GQAttention(d_model, n_heads, n_kv_heads)``: bias-free ``nn.Linear`` layers ``q_proj``
    (``d_model -> d_model``), ``k_proj`` and ``v_proj`` (``d_model -> n_kv_heads * head_dim``) and
    ``o_proj`` (``d_model -> d_model``), with ``head_dim = d_model // n_heads``.
    ``forward(x (B, T, d_model))`` returns ``(B, T, d_model)``; token ``t`` attends to tokens ``<= t``.

    Hint: ``.view(B, T, heads, head_dim).transpose(1, 2)`` splits heads; your ``repeat_kv`` gives every
    query head its K/V head; a lower-triangular mask; your ``scaled_dot_product_attention``; merge the
    heads back with ``.transpose(1, 2).reshape(B, T, d_model)``, then ``o_proj``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        n_rep = self.n_heads // self.n_kv_heads
        mask = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T): causal
        y = scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        ### END SOLUTION


# %%
check("04.GQAttention", GQAttention)

# %% [markdown]
# ## 7 · FlashAttention's forward pass, tile by tile (6 points)
#
# Now use your merge (exercise 4) for what it is for. FlashAttention never builds the $(T_q, T_k)$ score
# matrix: it takes the queries `block_q` rows at a time and, for each query tile, streams the keys and
# values `block_k` at a time. Each key tile gives a partial result for the tile's rows; the running
# partial result absorbs it; after the last key tile, the output rows are `acc / l`. It also saves, per
# query row, the **log-sum-exp** of its scores, $\mathrm{lse} = \log \sum_j e^{s_j}$ over the keys it may
# see: the backward pass recomputes each tile's probabilities from it instead of storing them.
#
# Masks make tiles where a row sees **no** key at all (causal attention above the diagonal, padding): that
# row's partial result is the empty one, and it must not turn into NaN. Every row sees at least one key
# somewhere. The grader compares with `F.scaled_dot_product_attention` and `torch.logsumexp` at several tile
# sizes and masks, and watches that no tensor as large as the full score matrix is ever made.

# %%
def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                            block_q: int = 4, block_k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention computed tile by tile, with the online softmax.

    Args:
        q: ``(B, nh, Tq, hs)``; k: ``(B, nh, Tk, hs)``; v: ``(B, nh, Tk, hv)``.
        mask: ``None`` or a bool ``(Tq, Tk)`` tensor, True = may attend (every row has at least one True).
        block_q, block_k: tile sizes, ``>= 1``; the last tile of each axis may be shorter.

    Returns:
        ``(out (B, nh, Tq, hv), lse (B, nh, Tq))``, ``lse`` the natural log of the sum of ``exp(score)`` over the
        keys each query may see (scores scaled by ``1 / sqrt(hs)``).

    Hint: two loops, query tiles outside and key tiles inside; one running partial result per query tile,
    starting empty; your merge works on rows, so flatten (B, nh, rows) into one axis for it.
    """
    ### BEGIN SOLUTION
    B, nh, Tq, hs = q.shape
    Tk, hv = k.size(2), v.size(-1)
    out, lse = q.new_empty(B, nh, Tq, hv), q.new_empty(B, nh, Tq)
    for i0 in range(0, Tq, block_q):
        q_i = q[:, :, i0:i0 + block_q]  # (B, nh, bq, hs): one query tile
        bq = q_i.size(2)
        R = B * nh * bq  # rows of this tile, flattened for the merge
        m, l, acc = q.new_full((R,), -math.inf), q.new_zeros(R), q.new_zeros(R, hv)  # the empty partial result
        for j0 in range(0, Tk, block_k):
            k_j, v_j = k[:, :, j0:j0 + block_k], v[:, :, j0:j0 + block_k]  # (B, nh, bk, hs), (B, nh, bk, hv)
            s = q_i @ k_j.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, bq, bk): one score tile
            if mask is not None:
                s = s.masked_fill(~mask[i0:i0 + bq, j0:j0 + block_k], -math.inf)
            m_t = s.amax(-1)  # (B, nh, bq): -inf where this tile hides every key of the row
            p = torch.exp(s - m_t.clamp_min(torch.finfo(s.dtype).min)[..., None])  # (B, nh, bq, bk): 0 where hidden
            m, l, acc = online_softmax_merge(m, l, acc, m_t.reshape(R), p.sum(-1).reshape(R), (p @ v_j).reshape(R, hv))
        out[:, :, i0:i0 + bq] = (acc / l[:, None]).view(B, nh, bq, hv)
        lse[:, :, i0:i0 + bq] = (m + torch.log(l)).view(B, nh, bq)
    return out, lse
    ### END SOLUTION


# %%
check("04.flash_attention_forward", flash_attention_forward)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/04_attention.ipynb` prints in a terminal.

# %%
check_all("04")
