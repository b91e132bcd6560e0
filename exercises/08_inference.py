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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/08_inference.ipynb)
#
# Four pieces of the KV cache and PagedAttention of [lesson 08](../lessons/08_inference.ipynb), written by you.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | warm-up: `kv_cache_bytes(...)`: the memory of a KV cache | 1 | 5 min |
# | 2 | `decode_step(...)`: append one token's K and V to the cache, attend over it | 3 | 10 min |
# | 3 | warm-up: `blocks_needed(n_tokens, block_size)`: blocks that hold n tokens | 1 | 5 min |
# | 4 | warm-up: `locate_token(block_table, position, block_size)`: physical block and offset of a token | 1 | 5 min |
# | 5 | `generate_with_cache(model, prompt, ...)`: the KV-cache generation loop, filter → sample → append | 4 | 25 min |
# | 6 | `class PreallocatedKVCache`: the KV cache itself, preallocated, plugged into the model | 5 | 30 min |
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
    raise NotImplementedError("count every value the cache stores: keys and values, per layer, per K/V head (not query head), per head dim, per token, per sequence.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# During decoding every layer keeps the keys and values of every past token. With GQA only the K/V heads are stored, which is how it shrinks the cache by n_heads / n_kv_heads.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Multiply: 2 (keys and values) x layers x K/V heads x head_dim x tokens x batch x bytes per value. n_heads does not enter. Return an int (round first: bytes_per_value may be fractional, e.g. 0.5 for 4-bit).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# values = ...  # how many numbers the cache holds
# return int(round(values * bytes_per_value))
# ```
#
# </details>

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
    raise NotImplementedError("the new token attends to every cached token and to itself; grow the cache first, then attend.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Incremental decoding: the new token's query attends to all earlier keys and values (from the cache) and to its own. No mask is needed: there is no future in the cache.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Append k_new and v_new to the caches along the token axis (dim 2): (B, nh, T+1, hs). Scores: q (B, nh, 1, hs) times k_cache transposed, over sqrt(hs): (B, nh, 1, T+1); softmax over the last dim; times v_cache: (B, nh, 1, hs). Return the output and both grown caches.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# k_cache = ...  # (B, nh, T+1, hs)
# v_cache = ...
# scores = ...  # (B, nh, 1, T+1)
# return ..., k_cache, v_cache
# ```
#
# </details>

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
    raise NotImplementedError("a partly filled block still takes a whole block.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# PagedAttention stores the KV cache in fixed-size blocks. A sequence gets whole blocks, so only its last block can be partly empty.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# A ceiling division: how many blocks of block_size hold n_tokens? 0 tokens need 0 blocks, exactly block_size tokens need 1. Stay in integers (no float rounding for large counts).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# return ...  # ceil(n_tokens / block_size), with // and + only
#
# </details>

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
    raise NotImplementedError("which logical block holds the position, where does the table map it, and how far into the block is it?")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A block table maps a sequence's logical blocks (0, 1, 2, ...) to physical blocks anywhere in the pool, as a page table maps virtual memory to physical memory.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# The logical block and the offset inside it are the quotient and the remainder of the position by block_size; the table turns the logical block into a physical one.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# logical, offset = ..., ...  # quotient and remainder
# return ..., offset  # physical block from the table
# ```
#
# </details>

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
    raise NotImplementedError("run the prompt through the model once; after that the model only needs the token you just chose.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Generation with a KV cache has two phases: a prefill that runs the whole prompt once and fills the cache, and a decode loop in which each step feeds only the newest token, so each step costs one token instead of the whole sequence.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# The prefill, model.forward_with_cache on the whole prompt with a new cache (KVCache.for_model(model, batch=B), from lmlab.infer.kv_cache), gives (B, T, V) logits and the cache. Each step: take the last position's logits (B, V); temperature 0 means argmax; otherwise divide by temperature, keep the top_k largest (others -inf), softmax, and draw with torch.multinomial(probs, 1, generator=g), g a torch.Generator seeded with seed. Append the (B, 1) token to the ids and feed just it: model.forward_with_cache(next_token, cache).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# g = ...  # a generator seeded with seed
# logits, cache = ...  # prefill
# ids = prompt
# for step in range(...):
#     z = logits[:, -1, :]
#     ...  # filter, then sample (or argmax)
#     ids = ...  # append
#     if ...:  # not after the last token
#         logits, cache = ...  # decode: only the new token
# return ids
# ```
#
# </details>

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
        raise NotImplementedError("allocate the keys and values of every layer once; each update writes the new tokens after that layer's cached ones and returns views up to there; length counts tokens.")

    @property
    def length(self) -> int:
        raise NotImplementedError("allocate the keys and values of every layer once; each update writes the new tokens after that layer's cached ones and returns views up to there; length counts tokens.")

    def layer(self, i: int):
        raise NotImplementedError("allocate the keys and values of every layer once; each update writes the new tokens after that layer's cached ones and returns views up to there; length counts tokens.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A KV cache trades memory for time: the keys and values of past tokens never change, so keep them and run only the new token through the model. Real servers preallocate the cache (or its blocks) so that a decode step writes a few numbers instead of copying everything.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Storage: self.k and self.v shaped (n_layers, batch, n_kv_heads, max_len, head_dim), zeros, made in __init__. A list with one fill level per layer. update on layer i: the new tokens go to the slots from that layer's fill level on (slice assignment on the token axis), the fill level moves on, and the return value is the slice of all slots filled so far (a view). length: layer 0's fill level (the layers agree between passes). Check the capacity before writing.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# # __init__: the two preallocated tensors and the fill levels
# # length: the number of tokens cached
# # layer(i): an object whose update(k_new, v_new) does:
# #     capacity check (ValueError)
# #     ...  # write k_new, v_new into layer i's next slots (the line to think about)
# #     ...  # advance the fill level; return the filled slices
# ```
#
# </details>

# %%
check("08.PreallocatedKVCache", PreallocatedKVCache)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/08_inference.ipynb` prints in a terminal.

# %%
check_all("08")
