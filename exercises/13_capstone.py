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
# | 1 | `bpe_merge_step(chunks, new_id)`: one BPE training step | 2 | 10 min |
# | 2 | `bpe_encode(ids, merges)`: encode a chunk with learned merges | 2 | 10 min |
# | 3 | `gguf_to_lmlab(tensors, cfg)`: llama.cpp names → lmlab names, undoing the q/k permute | 3 | 15 min |
# | 4 | `llama_block(x, w, n_heads, n_kv_heads, eps, rope_base)`: a LLaMA block from your parts | 3 | 15 min |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Replace the
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

from lmlab.grading import check, check_all

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

    Hint: a dict (or ``collections.Counter``) of pair counts; ``min(counts, key=lambda p: (-counts[p], p))``
    is one way to say "most frequent, then smallest".
    """
    raise NotImplementedError("Count adjacent pairs inside each chunk; pick the largest count, ties to the smallest (a, b); then rewrite each chunk left to right.")


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

    Hint: ``rank = {pair: r for r, pair in enumerate(merges)}``; look at ``zip(ids, ids[1:])``.
    """
    raise NotImplementedError("Look for the adjacent pair whose merge was learned earliest (its position in merges), merge it everywhere, repeat until none applies.")


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


# %%
check("13.llama_block", llama_block)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/13_capstone.ipynb` prints in a terminal.

# %%
check_all("13")
