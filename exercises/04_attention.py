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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/04_attention.ipynb)
#
# Seven pieces of the attention variants of [lesson 04](../lessons/04_attention.ipynb), written by you.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | `scaled_dot_product_attention(q, k, v, mask)`: softmax(QKᵀ/√d + mask) V | 2 | 10 min |
# | 2 | `sliding_window_mask(T, window)`: each token sees its `window` most recent tokens | 2 | 5 min |
# | 3 | warm-up: `repeat_kv(x, n_rep)`: share each K/V head with its group of query heads (GQA/MQA) | 1 | 5 min |
# | 4 | `online_softmax_merge(...)`: merge two partial softmax results (FlashAttention's update) | 3 | 15 min |
# | 5 | `gqa_rope_attention(x, w_qkv, w_o, n_heads, n_kv_heads, base)`: a whole grouped-query attention layer with RoPE | 5 | 30 min |
# | 6 | `class GQAttention`: grouped-query attention as a module; the check swaps it into a model and trains it | 3 | 15 min |
# | 7 | `flash_attention_forward(q, k, v, mask, block_q, block_k)`: FlashAttention's tiled forward, with its log-sum-exp | 6 | 40 min |
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
    raise NotImplementedError("scores between every query and key, scaled by the head size, masked where not allowed, normalised over the keys, then a weighted sum of values.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Attention's output for a query is a weighted average of the values; the weights are a softmax over the keys of q . k / sqrt(head size). A boolean mask removes the keys a query may not see (weight exactly 0).
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# q (B, nh, Tq, hs) times k transposed (B, nh, hs, Tk) gives scores (B, nh, Tq, Tk); divide by sqrt(hs). Where mask is False put -inf. Softmax over the last dim (the keys), then times v (B, nh, Tk, hv): (B, nh, Tq, hv). mask=None means no masking.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# scores = ...  # (B, nh, Tq, Tk), scaled
# if mask is not None:
#     scores = ...  # -inf where mask is False
# return ...  # softmax over the keys, then the values
# ```
#
# </details>

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
    raise NotImplementedError("compare a column of query positions with a row of key positions (broadcasting); causal, and no further back than the window (which counts the token itself).")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Sliding-window attention (Longformer, Mistral) lets each token see only its last `window` tokens, itself included, so the cost per token is fixed instead of growing with T.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Query positions as a column (T, 1), key positions as a row (1, T). A key is allowed when it is not in the future and fewer than `window` positions back; combine the two conditions elementwise into a (T, T) bool tensor.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# i = ...  # query positions, a column (T, 1)
# j = ...  # key positions, a row (1, T)
# return (...) & (...)
# ```
#
# </details>

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
    raise NotImplementedError("query heads 0..n_rep-1 share K/V head 0, the next n_rep share head 1, and so on: which torch repeat keeps copies of one head next to each other?")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# In grouped-query attention several query heads share one K/V head. To reuse ordinary attention code, copy each K/V head once for every query head in its group.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# (B, nkv, T, hs) -> (B, nkv * n_rep, T, hs) along dim 1. The order must be 0, 0, 1, 1, ... (copies side by side), not 0, 1, 0, 1, ...: try torch.repeat and torch.repeat_interleave on a small example.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# return ...  # along dim 1, each head's copies next to each other
#
# </details>

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
    raise NotImplementedError("the two partial results were computed against different running maxima; bring both to the common maximum before adding.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# FlashAttention works through the keys in tiles and keeps, per query row, a running max m, a running sum of exponentials l and an unnormalized output acc. Two partial results over different keys merge exactly, which is why it never needs the N x N matrix.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Each part's l and acc were computed with exp(score - its own m). The new max m is the elementwise max of m1 and m2 (R,). Rescale each part by exp(m_part - m) (R,): that factor multiplies its l, and its acc broadcast over the value dim (a[:, None]). Add the parts. (The final output would be acc / l.) When both parts are empty (m1 = m2 = -inf) the new max is -inf too and exp(-inf - (-inf)) is NaN: rescale against 0 for those rows.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# m = ...  # (R,)
# a1, a2 = ...  # (R,) rescaling factors
# l = ...
# acc = ...  # a1 and a2 broadcast over hv
# return m, l, acc
# ```
#
# </details>

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
    raise NotImplementedError("project, split into heads (fewer for K and V), rotate q and k by their positions, let each group of query heads share one K/V head, attend causally, merge, project.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Grouped-query attention keeps n_heads query heads but only n_kv_heads key/value heads: consecutive query heads form a group that shares one K/V head. RoPE rotates queries and keys (never values) by their position before the scores.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# One F.linear with w_qkv gives (B, T, C + 2*n_kv_heads*hs); split it into q (C) and k, v (n_kv_heads*hs each). Views: q (B, nh, T, hs), k and v (B, nkv, T, hs). Rotate q and k (half-split layout, positions 0..T-1, your 03 exercise or lmlab.model.positions.encodings.apply_rope). Expand k and v to nh heads so that query head h reads K/V head h // (nh // nkv). Causal softmax(q k^T / sqrt(hs)) v, heads back to (B, T, C), then w_o.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# q, k, v = F.linear(x, w_qkv).split([...], dim=2)
# q = q.view(...).transpose(1, 2)  # (B, nh, T, hs)
# k, v = ...
# q, k = rope(q), rope(k)
# k, v = ...  # n_kv_heads -> n_heads, groups side by side
# y = ...  # causal attention
# return F.linear(..., w_o)  # heads merged back to (B, T, C)
# ```
#
# </details>

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
        raise NotImplementedError("split q into n_heads and k, v into n_kv_heads heads of d_model // n_heads; your repeat_kv, a causal mask and your scaled_dot_product_attention; merge heads; o_proj.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("split q into n_heads and k, v into n_kv_heads heads of d_model // n_heads; your repeat_kv, a causal mask and your scaled_dot_product_attention; merge heads; o_proj.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# GQA (Ainslie et al.) keeps all the query heads but fewer key/value heads, so the KV cache shrinks by n_heads / n_kv_heads. MQA is the case n_kv_heads = 1; ordinary multi-head attention is n_kv_heads = n_heads.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# head_dim = d_model // n_heads. q_proj: d_model -> d_model; k_proj and v_proj: d_model -> n_kv_heads * head_dim; o_proj: d_model -> d_model; all bias-free. forward: q -> (B, nh, T, hs), k and v -> (B, nkv, T, hs) (view, then transpose(1, 2)); repeat k and v to nh heads; a causal (T, T) mask; attention -> (B, nh, T, hs); back to (B, T, C); o_proj.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# # __init__: head sizes, then the four projections
#
# # forward(self, x):
# B, T, C = x.shape
# q = self.q_proj(x).view(...).transpose(1, 2)  # (B, nh, T, hs)
# k = ...  # (B, nkv, T, hs)
# v = ...
# mask = ...  # causal, (T, T)
# y = scaled_dot_product_attention(q, ..., ..., mask)
# return self.o_proj(...)  # (B, T, C)
# ```
#
# </details>

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
    raise NotImplementedError("query tiles outside, key tiles inside; a running partial result per query tile that starts empty and absorbs each key tile with your merge; divide at the end, and keep the log-sum-exp.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# FlashAttention is exact attention computed in tiles so that the (T, T) scores never exist at once: for each block of queries it keeps the running (max, sum, unnormalised output) of exercise 4 and folds in one block of keys at a time. The log-sum-exp it saves, m + log(l), is all the backward pass needs to recompute any tile's probabilities.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# For a query tile q_i (B, nh, bq, hs): start from the empty partial result (m = -inf, l = 0, acc = 0). For each key tile k_j, v_j (B, nh, bk, ·): scores (B, nh, bq, bk), scaled by 1/sqrt(hs), -inf where the mask's matching (bq, bk) slice is False. The tile's own partial result: its row max, and exp(score - that max) summed and multiplied by v_j; a row the tile hides entirely has max -inf, and its exponentials must come out 0, not NaN (clamp the max you subtract). Merge it into the running one (flatten B, nh and the rows to one axis for your merge). After the last key tile: out rows = acc / l, lse rows = m + log l.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# # every query tile (its first row i0 steps by block_q):
#     q_i = ...        # (B, nh, bq, hs)
#     m, l, acc = ...  # the empty partial result of its rows
#     # every key tile (its first key j0 steps by block_k):
#         s = ...      # (B, nh, bq, bk), scaled and masked
#         ...          # the tile's partial result (the line to think about: a fully hidden row)
#         ...          # merged into the running one (exercise 4)
#     ...              # this tile's rows of out and lse
# return out, lse
# ```
#
# </details>

# %%
check("04.flash_attention_forward", flash_attention_forward)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/04_attention.ipynb` prints in a terminal.

# %%
check_all("04")
