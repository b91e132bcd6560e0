# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 13 · Exercises: your own LLaMA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/13_capstone.ipynb)
#
# Four pieces of the capstone of [lesson 13](../lessons/13_capstone.ipynb), written by you: the two
# halves of byte-level BPE, the weight mapping that loads a real GGUF checkpoint, and one LLaMA block.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | `bpe_merge_step(chunks, new_id)`: one BPE training step | 2 | 15 min |
# | 2 | `bpe_encode(ids, merges)`: encode a chunk with learned merges | 2 | 15 min |
# | 3 | `gguf_to_lmlab(tensors, cfg)`: llama.cpp names → lmlab names, undoing the q/k permute | 3 | 20 min |
# | 4 | `llama_block(x, w, n_heads, n_kv_heads, eps, rope_base)`: a LLaMA block from your parts | 3 | 25 min |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/13_capstone.ipynb` grades the whole notebook.

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
import torch.nn.functional as F

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · One BPE merge step (2 points)
#
# Training byte-level BPE repeats one step: count every pair of adjacent tokens **inside** each
# chunk (the pre-tokenizer's pieces: merges never cross them), take the most frequent pair, and
# replace it everywhere by a new token. **Tie rule:** among pairs with the same count, the
# smallest pair `(a, b)` wins (compare `a` first, then `b`), so every machine learns the same merges.
# Replacing goes left to right without overlaps: `[5, 5, 5]` with `(5, 5)` becomes `[new, 5]`.

# %%
def bpe_merge_step(chunks: list[list[int]], new_id: int):
    """One BPE training step.

    Args:
        chunks: token ids of each pre-tokenized chunk, e.g. ``[[116, 104, 101], [32, 116, 104, 101]]``.
        new_id: the id of the token the merged pair becomes.

    Returns:
        ``(pair, new_chunks)``: the merged pair ``(a, b)`` and the chunks with every occurrence
        of it replaced by ``new_id``.

    Hint: a dict (or ``collections.Counter``) of pair counts; a ``min`` over the pairs with a key of
    ``(minus the count, the pair)`` is one way to say "most frequent, then smallest".
    """
    raise NotImplementedError("count adjacent pairs inside each chunk; pick the most frequent (ties: the smallest pair); then rewrite every chunk left to right.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Training byte-level BPE repeats one step: count every adjacent pair of ids and merge the most frequent pair into a new id. Pairs never cross chunk boundaries (the pre-tokenizer's words).
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Count the pairs zip(ids, ids[1:]) of every chunk in one dict. The best pair has the largest count; on a tie, the smallest pair (a, b). Then rewrite each chunk left to right: where the best pair starts at i, emit new_id and jump two, otherwise copy ids[i] and move one (so 'a a a' with pair (a, a) becomes 'X a').
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# counts = ...  # pair -> how often it occurs, over every chunk
# best = ...    # most frequent, then smallest
# # rewrite each chunk with an index i that moves one or two places:
# #   best starts at i -> new_id; otherwise ids[i]
# return best, ...
# ```
#
# </details>

# %%
check("13.bpe_merge_step", bpe_merge_step)

# %% [markdown]
# ## 2 · Encoding with learned merges (2 points)
#
# To encode a chunk, start from its bytes and apply the merges **in the order they were learned**:
# among the adjacent pairs that have a merge, merge the one learned earliest (everywhere in the
# chunk), and repeat until no pair has a merge. `merges` is a dict in learning order (its first key
# was learned first). Example: with `{(b, c): 256, (a, b): 257}`, `abc` becomes `[a, 256]`, not `[257, c]`.

# %%
def bpe_encode(ids: list[int], merges: dict) -> list[int]:
    """Encode one chunk.

    Args:
        ids: the chunk's bytes as ints, e.g. ``list(" the".encode("utf-8"))``.
        merges: ``{(a, b): new_id}`` in learning order.

    Returns:
        the token ids (a list of ints).

    Hint: a dict from each pair to its position in ``merges`` (``enumerate``); look at ``zip(ids, ids[1:])``.
    """
    raise NotImplementedError("Look for the adjacent pair whose merge was learned earliest (its position in merges), merge it everywhere, repeat until none applies.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Encoding with learned merges applies them in the order they were learned, not by how often pairs occur in this text: at each step merge the adjacent pair whose merge is earliest, until no pair has a merge (as Hugging Face's tokenizers and tiktoken do).
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Give every merge its rank (its position in merges). Loop: list the adjacent pairs that have a rank; if there are none, stop; the best is the one with the smallest rank; rewrite the sequence left to right, replacing each occurrence of best with merges[best]. Do not change the caller's list.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# rank = ...  # pair -> its position in merges
# while ...:  # while there are at least two ids
#     pairs = ...  # adjacent pairs that have a merge (none: stop)
#     best = ...   # the one learned earliest
#     ids = ...    # a new list, rewritten left to right (the caller's list stays as it was)
# return ids
# ```
#
# </details>

# %%
check("13.bpe_encode", bpe_encode)

# %% [markdown]
# ## 3 · Loading a GGUF: names and the q/k permute (3 points)
#
# A GGUF file (llama.cpp) names SmolLM2's tensors `token_embd.weight`, `blk.{i}.attn_q.weight`, ...
# lmlab's `GPT` fuses q, k, v into one matrix `blocks.{i}.attn.qkv.weight = [W_q; W_k; W_v]` and
# the SwiGLU projections into `blocks.{i}.ffn.up.weight = [W_up; W_gate]` (value half first).
#
# | GGUF | lmlab |
# |---|---|
# | `token_embd.weight` | `tok_emb.weight` (and `lm_head.weight` when there is no `output.weight`) |
# | `output_norm.weight`, `output.weight` | `final_norm.weight`, `lm_head.weight` |
# | `blk.i.attn_norm.weight`, `blk.i.ffn_norm.weight` | `blocks.i.norm1.weight`, `blocks.i.norm2.weight` |
# | `blk.i.attn_q/attn_k/attn_v.weight` | `blocks.i.attn.qkv.weight` |
# | `blk.i.attn_output.weight` | `blocks.i.attn.proj.weight` |
# | `blk.i.ffn_up/ffn_gate.weight` | `blocks.i.ffn.up.weight` |
# | `blk.i.ffn_down.weight` | `blocks.i.ffn.down.weight` |
#
# The trap: llama.cpp reorders each head's rows of `W_q` and `W_k` for its RoPE. lmlab rotates the
# pairs `(i, i + hs/2)` of a head (half-split); llama.cpp stores the rows so that its pairs are
# `(2i, 2i + 1)` — head by head, its rows are `[x_0, y_0, x_1, y_1, ...]` where lmlab's are
# `[x_0, x_1, ..., y_0, y_1, ...]`. Undo it per head: `n_heads` heads in `W_q`, `n_kv_heads` in `W_k`.

# %%
def gguf_to_lmlab(tensors: dict, cfg) -> dict:
    """llama.cpp tensors -> an lmlab ``GPT`` state dict.

    Args:
        tensors: ``{gguf name: FP32 tensor}`` in torch's ``(out, in)`` layout.
        cfg: the ``ModelConfig`` (``n_layers``, ``n_heads``, ``n_kv_heads``, ``tie_embeddings``...).

    Returns:
        ``{lmlab name: tensor}`` that ``GPT(cfg).load_state_dict`` accepts.

    Hint: for one matrix of ``n`` heads, ``w.reshape(n, hs // 2, 2, C)`` puts each pair on its own
    axis; swapping two axes and reshaping back gives the half-split order.
    """
    raise NotImplementedError("Rename each blk.i.* tensor; W_q and W_k come back from llama.cpp's interleaved rows per head (reshape, swap two axes); cat q, k, v and up, gate.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# GGUF (llama.cpp) names tensors differently (blk.i.attn_q.weight, ...) and stores W_q and W_k with each head's rows interleaved for its RoPE layout. Loading the real SmolLM2 into lmlab means renaming, undoing that permutation, and fusing q, k, v (and up, gate) the way lmlab's layers expect.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Top level: token_embd -> tok_emb, output_norm -> final_norm; lm_head is output.weight if present, otherwise the tied token embedding. Per layer i: attn_norm -> norm1, ffn_norm -> norm2, attn_output -> attn.proj, ffn_down -> ffn.down; attn.qkv joins the q, k, v rows; ffn.up joins the up rows, then the gate rows. Un-permute q (with n_heads) and k (with n_kv_heads): reshape to (n, hs/2, 2, C), swap the two middle axes, reshape back to (rows, C).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# def unpermute(w, n):  # n heads
#     rows, C = w.shape
#     return ...  # (n, ?, 2, C), swap axes 1 and 2, back to (rows, C)
#
# sd = {...}  # embeddings and the final norm
# sd["lm_head.weight"] = ...  # output.weight, or the tied embedding
# for i in ...:  # every layer
#     ...  # rename, un-permute q and k, concatenate
# return sd
# ```
#
# </details>

# %%
check("13.gguf_to_lmlab", gguf_to_lmlab)

# %% [markdown]
# ## 4 · A LLaMA block from your parts (3 points)
#
# Put together what you built in chapters 01–04: RMSNorm (01), SwiGLU (02), RoPE in the half-split
# layout (03), grouped-query causal attention (04), each in a pre-norm residual branch:
#
# $$h = x + W_o\,\mathrm{attn}\big(\mathrm{rope}(W_q n_1(x)),\ \mathrm{rope}(W_k n_1(x)),\ W_v n_1(x)\big),\qquad
# y = h + W_{down}\big(W_{up} n_2(h) \odot \mathrm{silu}(W_{gate} n_2(h))\big)$$
#
# with $n(x) = x / \sqrt{\mathrm{mean}(x^2) + \varepsilon} \cdot g$. With GQA, query head $h$ uses K/V
# head $h \,//\, (n_h / n_{kv})$: consecutive query heads share one K/V head.

# %%
def llama_block(x: torch.Tensor, w: dict, n_heads: int, n_kv_heads: int, eps: float = 1e-5,
                rope_base: float = 10000.0) -> torch.Tensor:
    """One LLaMA block, ``(B, T, C) -> (B, T, C)``, causal.

    Args:
        x: ``(B, T, C)`` the residual stream.
        w: ``norm1, norm2 (C,)``; ``wq (C, C)``; ``wk, wv (n_kv_heads * hs, C)``; ``wo (C, C)``;
           ``w_up, w_gate (F, C)``; ``w_down (C, F)`` — all ``(out, in)``: use ``h @ w["wq"].T``.
        n_heads, n_kv_heads: query heads and K/V heads (``hs = C // n_heads``).
        eps: RMSNorm's epsilon. rope_base: RoPE's base.

    Returns:
        ``(B, T, C)``.

    Hint: RoPE half-split: angles ``pos * base**(-2i/hs)`` for ``i < hs/2``, ``cos``/``sin`` repeated
    twice along the head; ``rotate_half(x) = cat(-x2, x1)``. ``repeat_interleave`` on the head axis.
    """
    raise NotImplementedError("Pre-norm residuals: x + attn(norm1(x)), then + ffn(norm2(.)); RoPE on q and k (half-split pairs); query head h uses K/V head h // (n_heads // n_kv_heads).")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A LLaMA block is a pre-norm block with RMSNorm, grouped-query attention with RoPE on queries and keys, and a SwiGLU FFN: the parts you built in chapters 01 to 04, now from a dict of raw weights.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# h = RMSNorm(x) with w['norm1'] and eps. q from wq: (B, nh, T, hs); k and v from wk, wv: (B, nkv, T, hs). RoPE (half-split, positions 0..T-1, base rope_base) on q and k only. Repeat k and v so query head h reads K/V head h // (nh // nkv). Causal softmax(q k^T / sqrt(hs)) v -> (B, T, C) -> through wo, added to x. Then add w_down(silu(w_gate h2) * w_up h2), with h2 = RMSNorm(x) using w['norm2']. Weights are (out, in): use t @ W.T.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# hs = ...    # the head size
# rms = ...   # a helper: RMSNorm of t with gain g and eps
# rope = ...  # a helper: (B, heads, T, hs), half-split, positions 0..T-1
#
# h = ...  # norm1
# q = ...
# k, v = ...
# ...  # share K/V heads, causal attention
# x = x + ...
# h = ...  # norm2
# return x + ...  # SwiGLU
# ```
#
# </details>

# %%
check("13.llama_block", llama_block)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/13_capstone.ipynb` prints in a terminal.

# %%
check_all("13")
