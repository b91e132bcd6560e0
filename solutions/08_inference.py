# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Exercises: inference efficiency
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/08_inference.ipynb)
#
# Four pieces of the KV cache and PagedAttention of [lesson 08](../lessons/08_inference.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | warm-up: `kv_cache_bytes(...)`: the memory of a KV cache | 1 |
# | 2 | `decode_step(...)`: append one token's K and V to the cache, attend over it | 3 |
# | 3 | warm-up: `blocks_needed(n_tokens, block_size)`: blocks that hold n tokens | 1 |
# | 4 | warm-up: `locate_token(block_table, position, block_size)`: physical block and offset of a token | 1 |
# | 5 | `generate_with_cache(model, prompt, ...)`: the KV-cache generation loop, filter → sample → append | 4 |
# | 6 | `class PreallocatedKVCache`: the KV cache itself, preallocated, plugged into the model | 5 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/08_inference.ipynb` grades the whole notebook.

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
# ## 1 · The size of a KV cache (1 point, warm-up)
#
# Every layer keeps a key **and** a value vector per K/V head for every token:
# $$\text{bytes} = 2 \times L \times n_{kv} \times d_h \times \text{tokens} \times \text{batch} \times \text{bytes per value}.$$
# With grouped-query or multi-query attention, $n_{kv}$ is smaller than the number of query heads
# $n_h$ — and only the K/V heads are cached. LLaMA-2-13B (40 layers, 40 heads of 128) at 8,192
# tokens in 16-bit: 6,710,886,400 bytes.

# %%
def kv_cache_bytes(n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, n_tokens: int,
                   bytes_per_value: float, batch: int = 1) -> int:
    """Bytes of the K and V cache of a decoder.

    Args:
        n_layers: transformer layers.
        n_heads: query heads (given for completeness: is it needed?).
        n_kv_heads: key/value heads (``n_heads`` for MHA, 1 for MQA, in between for GQA).
        head_dim: size of one head.
        n_tokens: tokens cached per sequence.
        bytes_per_value: 4 (fp32), 2 (fp16/bf16), 1 (int8), 0.5 (int4).
        batch: sequences.

    Returns:
        the number of bytes, as an ``int``.

    Hint: count every value the cache stores: keys and values, per layer, per K/V head (not query head), per
    head dim, per token, per sequence.
    """
    ### BEGIN SOLUTION
    return int(round(2 * n_layers * n_kv_heads * head_dim * n_tokens * batch * bytes_per_value))
    ### END SOLUTION


# %%
check("08.kv_cache_bytes", kv_cache_bytes)

# %% [markdown]
# ## 2 · One decode step with a KV cache (3 points)
#
# The cache holds the keys and values of the $T$ tokens seen so far. For the new token: append its
# key and value, then attend with its query over **all** $T + 1$ keys (its own included — no mask
# is needed, they are all in the past):
# $\mathrm{out} = \mathrm{softmax}\!\left(q K^\top / \sqrt{d_h}\right) V$.

# %%
def decode_step(k_cache: torch.Tensor, v_cache: torch.Tensor, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor):
    """Append one token's key/value to the cache and attend over the whole cache.

    Args:
        k_cache, v_cache: ``(B, nh, T, hs)`` keys and values of the ``T`` earlier tokens (``T`` may be 0).
        q, k_new, v_new: ``(B, nh, 1, hs)`` the new token's query, key and value.

    Returns:
        ``(out, k_cache, v_cache)``: ``out (B, nh, 1, hs)`` the attention output of the new token,
        and the grown caches ``(B, nh, T + 1, hs)`` (old tokens first, then the new one). Do not
        change the inputs in place.

    Hint: the new token attends to every cached token and to itself; grow the cache first, then attend.
    """
    ### BEGIN SOLUTION
    k_cache = torch.cat([k_cache, k_new], dim=2)  # (B, nh, T+1, hs)
    v_cache = torch.cat([v_cache, v_new], dim=2)
    scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, 1, T+1)
    return torch.softmax(scores, dim=-1) @ v_cache, k_cache, v_cache
    ### END SOLUTION


# %%
check("08.decode_step", decode_step)

# %% [markdown]
# ## 3 · Blocks needed for n tokens (1 point, warm-up)
#
# PagedAttention stores a sequence in blocks of `block_size` tokens. How many blocks hold `n`
# tokens? A partly filled last block is still a whole block; an exact multiple needs no extra one.

# %%
def blocks_needed(n_tokens: int, block_size: int) -> int:
    """The number of ``block_size``-token blocks that hold ``n_tokens`` tokens (0 for 0 tokens).

    Hint: a partly filled block still takes a whole block.
    """
    ### BEGIN SOLUTION
    return (n_tokens + block_size - 1) // block_size
    ### END SOLUTION


# %%
check("08.blocks_needed", blocks_needed)

# %% [markdown]
# ## 4 · Where does token p live? (1 point, warm-up)
#
# A sequence's **block table** lists its physical blocks in order: logical block $i$ holds the
# tokens $i \cdot bs, \dots, (i+1) \cdot bs - 1$. Token position $p$ (counted from 0) is therefore in
# logical block $\lfloor p / bs \rfloor$, at offset $p \bmod bs$ inside it.
#
# Example: table `[7, 2, 9]`, block size 4: token 5 is in physical block 2 at offset 1.

# %%
def locate_token(block_table: list[int], position: int, block_size: int) -> tuple[int, int]:
    """``(physical block, offset)`` of token ``position`` (from 0) of a sequence.

    Args:
        block_table: the sequence's physical block ids, in logical order.
        position: a token position, ``0 <= position < len(block_table) * block_size``.
        block_size: tokens per block.

    Returns:
        a tuple ``(physical_block, offset)`` with ``0 <= offset < block_size``.
    """
    ### BEGIN SOLUTION
    return block_table[position // block_size], position % block_size
    ### END SOLUTION


# %%
check("08.locate_token", locate_token)

# %% [markdown]
# ## 5 · The generation loop with a KV cache (4 points)
#
# Put it together: `model` is an `lmlab.GPT` whose plain `model(ids)` is switched off — decode with
# `logits, cache = model.forward_with_cache(ids, cache)` (the first time with a new cache,
# `KVCache.for_model(model, batch=B)`: the **prefill** of the whole prompt), then feed only the newest token each step (**decode**). Each step: take the last position's logits;
# `temperature == 0` is greedy (`argmax`); otherwise **filter** (divide by the temperature, keep the `top_k`
# largest if `top_k` is not None, the rest `-inf`), **sample** one token per row with
# `torch.multinomial(probs, 1, generator=g)` where `g = torch.Generator().manual_seed(seed)` (one draw per step, so
# the grader can replay it), and **append** it. Return the prompt plus `max_new_tokens` new tokens.

# %%
from lmlab.infer.kv_cache import KVCache


def generate_with_cache(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
                        seed: int) -> torch.Tensor:
    """``prompt (B, T)`` -> ``(B, T + max_new_tokens)`` token ids, decoding with the KV cache."""
    ### BEGIN SOLUTION
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, cache = model.forward_with_cache(prompt, KVCache.for_model(model, batch=prompt.size(0)))  # prefill: (B, T, V)
        ids = prompt
        for step in range(max_new_tokens):
            z = logits[:, -1, :]  # (B, V)
            if temperature == 0:
                nxt = z.argmax(-1, keepdim=True)  # (B, 1)
            else:
                z = z / temperature
                if top_k is not None:
                    kth = torch.topk(z, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
                    z = z.masked_fill(z < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=g)  # (B, 1)
            ids = torch.cat([ids, nxt], dim=1)
            if step < max_new_tokens - 1:
                logits, cache = model.forward_with_cache(nxt, cache)  # decode: one token
    return ids
    ### END SOLUTION


# %%
check("08.generate_with_cache", generate_with_cache)

# %% [markdown]
# ## 6 · The KV cache itself (5 points)
#
# Exercise 5 used lmlab's cache; now build one the model can use in its place. It **preallocates** the keys and
# values of every layer for `max_len` tokens, once, and writes each new token into the next free slots — no
# `torch.cat`, which would copy the whole cache at every step. `GPT.forward_with_cache(ids, cache)` talks to it
# through a small protocol:
#
# - `cache.batch` (the batch size B) and `cache.length`: how many tokens are cached. The model places the new tokens
#   at positions `length, length + 1, …` — that is where RoPE rotates them, so a wrong length means wrong positions;
# - `cache.layer(i)`: an object for layer `i` with `update(k_new, v_new)`: `(B, n_kv_heads, T_new, head_dim)` each,
#   appended after that layer's cached tokens; it returns that layer's keys and values so far,
#   `(B, n_kv_heads, length_so_far, head_dim)` each (views of the preallocated storage).
#
# The storage is two attributes, `cache.k` and `cache.v`, each `(n_layers, batch, n_kv_heads, max_len, head_dim)`
# from the start (the grader reads them). Every layer appends the same tokens in one forward pass, so `length`
# counts **tokens**, not `update` calls.
# Appending past `max_len` raises `ValueError`. The grader checks the protocol on its own, then runs lmlab's GPT
# (with RoPE and grouped-query attention) on your cache: prefill + decode must give the logits of the plain
# forward pass.

# %%
class PreallocatedKVCache:
    """``PreallocatedKVCache(n_layers, batch, n_kv_heads, head_dim, max_len)``: keys and values of every layer,
    allocated once for ``max_len`` tokens in ``k`` and ``v`` ``(n_layers, batch, n_kv_heads, max_len, head_dim)``;
    ``batch``, ``length``, ``layer(i).update(k_new, v_new)`` as above.

    Hint: one zero tensor for the keys and one for the values, with a layer axis and a ``max_len`` token axis; a
    fill level per layer; ``layer(i)`` can return a tiny object that remembers the cache and ``i``.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int):
        ### BEGIN SOLUTION
        self.batch, self.max_len = batch, max_len
        self.k = torch.zeros(n_layers, batch, n_kv_heads, max_len, head_dim)  # (L, B, nkv, S, hs)
        self.v = torch.zeros_like(self.k)
        self.filled = [0] * n_layers  # tokens written per layer
        ### END SOLUTION

    @property
    def length(self) -> int:
        ### BEGIN SOLUTION
        return self.filled[0]  # every layer holds the same tokens between forward passes
        ### END SOLUTION

    def layer(self, i: int):
        ### BEGIN SOLUTION
        cache = self

        class _Layer:
            def update(self, k_new, v_new):
                start = cache.filled[i]
                end = start + k_new.size(2)
                if end > cache.max_len:
                    raise ValueError(f"appending {k_new.size(2)} tokens to {start} exceeds max_len={cache.max_len}")
                cache.k[i, :, :, start:end] = k_new  # (B, nkv, T_new, hs), in place
                cache.v[i, :, :, start:end] = v_new
                cache.filled[i] = end
                return cache.k[i, :, :, :end], cache.v[i, :, :, :end]  # views, no copy

        return _Layer()
        ### END SOLUTION


# %%
check("08.PreallocatedKVCache", PreallocatedKVCache)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/08_inference.ipynb` prints in a terminal.

# %%
check_all("08")
