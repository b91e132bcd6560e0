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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/13_capstone.ipynb)
#
# Four pieces of the capstone of [lesson 13](../lessons/13_capstone.ipynb), written by you: the two
# halves of byte-level BPE, the weight mapping that loads a real GGUF checkpoint, and one LLaMA block.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `bpe_merge_step(chunks, new_id)`: one BPE training step | 2 |
# | 2 | `bpe_encode(ids, merges)`: encode a chunk with learned merges | 2 |
# | 3 | `gguf_to_lmlab(tensors, cfg)`: llama.cpp names → lmlab names, undoing the q/k permute | 3 |
# | 4 | `llama_block(x, w, n_heads, n_kv_heads, eps, rope_base)`: a LLaMA block from your parts | 3 |
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
    ### BEGIN SOLUTION
    counts = {}
    for ids in chunks:
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    best = min(counts, key=lambda p: (-counts[p], p))
    new_chunks = []
    for ids in chunks:
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        new_chunks.append(out)
    return best, new_chunks
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    rank = {pair: r for r, pair in enumerate(merges)}
    ids = list(ids)
    while len(ids) >= 2:
        pairs = [p for p in zip(ids, ids[1:]) if p in rank]
        if not pairs:
            break
        best = min(pairs, key=rank.__getitem__)
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                out.append(merges[best])
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    def unpermute(w, n):
        rows, C = w.shape
        return w.reshape(n, rows // n // 2, 2, C).transpose(1, 2).reshape(rows, C)

    sd = {"tok_emb.weight": tensors["token_embd.weight"], "final_norm.weight": tensors["output_norm.weight"]}
    sd["lm_head.weight"] = tensors.get("output.weight", tensors["token_embd.weight"])
    for i in range(cfg.n_layers):
        b, o = f"blk.{i}.", f"blocks.{i}."
        q = unpermute(tensors[b + "attn_q.weight"], cfg.n_heads)
        k = unpermute(tensors[b + "attn_k.weight"], cfg.n_kv_heads)
        sd[o + "attn.qkv.weight"] = torch.cat([q, k, tensors[b + "attn_v.weight"]])
        sd[o + "attn.proj.weight"] = tensors[b + "attn_output.weight"]
        sd[o + "norm1.weight"] = tensors[b + "attn_norm.weight"]
        sd[o + "norm2.weight"] = tensors[b + "ffn_norm.weight"]
        sd[o + "ffn.up.weight"] = torch.cat([tensors[b + "ffn_up.weight"], tensors[b + "ffn_gate.weight"]])
        sd[o + "ffn.down.weight"] = tensors[b + "ffn_down.weight"]
    return sd
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    B, T, C = x.shape
    hs = C // n_heads

    def rms(t, g):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * g

    def rope(t):
        inv = 1.0 / rope_base ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]  # (T, hs/2)
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        t1, t2 = t[..., : hs // 2], t[..., hs // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    h = rms(x, w["norm1"])
    q = rope((h @ w["wq"].T).view(B, T, n_heads, hs).transpose(1, 2))
    k = rope((h @ w["wk"].T).view(B, T, n_kv_heads, hs).transpose(1, 2))
    v = (h @ w["wv"].T).view(B, T, n_kv_heads, hs).transpose(1, 2)
    rep = n_heads // n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    x = x + (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C) @ w["wo"].T
    h = rms(x, w["norm2"])
    return x + (h @ w["w_up"].T * F.silu(h @ w["w_gate"].T)) @ w["w_down"].T
    ### END SOLUTION


# %%
check("13.llama_block", llama_block)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/13_capstone.ipynb` prints in a terminal.

# %%
check_all("13")
