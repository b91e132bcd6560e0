"""Chapter 08 graders (``exercises/08_inference.ipynb``): KV-cache size, a decode step, blocks, block tables
(the generation loop is in ``ch08_parts``, the KV cache class in ``ch08_cache``).

Every check compares with a published number (LLaMA-2's KV cache), the bytes of real tensors,
``F.scaled_dot_product_attention`` over the whole sequence, ``math.ceil``, or an independent
construction (the block table expanded slot by slot). lmlab's own implementation is only the
``reference`` that the tests feed through the same checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_equal, expect_int, expect_tensor, expect_true, seeded_randn
from lmlab.grading.chapters import ch08_cache  # noqa: F401 (registers 08.PreallocatedKVCache)
from lmlab.grading.chapters import ch08_parts  # noqa: F401 (registers 08.generate_with_cache)
from lmlab.grading.registry import Check, Exercise, register
from lmlab.infer.kv_cache import kv_cache_bytes
from lmlab.infer.paged import BlockManager

# The notebook's order (08_inference.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "08.kv_cache_bytes",
    "08.decode_step",
    "08.blocks_needed",
    "08.locate_token",
    "08.generate_with_cache",
    "08.PreallocatedKVCache",
)


# ---------------------------------------------------------------------------------------------
# 08.kv_cache_bytes
# ---------------------------------------------------------------------------------------------



def _kv_published(f):
    what = "kv_cache_bytes(40, 40, 40, 128, 8192, 2) (LLaMA-2-13B, 8,192 tokens, 16-bit)"
    expect_equal(expect_int(f(40, 40, 40, 128, 8192, 2), what), 6_710_886_400, what)
    what = "kv_cache_bytes(80, 64, 8, 128, 1, 2) (LLaMA-2-70B, GQA with 8 K/V heads, one token)"
    expect_equal(expect_int(f(80, 64, 8, 128, 1, 2), what), 327_680, what + " — only the K/V heads are cached")


def _kv_tensors(f):
    for (L, nh, nkv, hs, T, dtype, B) in ((2, 4, 4, 8, 5, torch.float32, 1), (3, 8, 2, 16, 7, torch.float16, 2),
                                          (1, 6, 1, 4, 9, torch.float64, 3)):
        k = torch.zeros(L, B, nkv, T, hs, dtype=dtype)  # what a cache really allocates
        v = torch.zeros_like(k)
        expected = k.numel() * k.element_size() + v.numel() * v.element_size()
        what = f"kv_cache_bytes({L}, {nh}, {nkv}, {hs}, {T}, {k.element_size()}, batch={B})"
        expect_equal(expect_int(f(L, nh, nkv, hs, T, k.element_size(), batch=B), what), expected,
                     what + " (the bytes of real K and V tensors of shape (L, B, n_kv, T, hs))")


def _kv_edge(f):
    what = "kv_cache_bytes(4, 4, 4, 32, 1001, 0.5) (int4: half a byte per value)"
    expect_equal(expect_int(f(4, 4, 4, 32, 1001, 0.5), what), 2 * 4 * 4 * 32 * 1001 // 2, what)
    what = "kv_cache_bytes(4, 4, 4, 32, 0, 2) (an empty cache)"
    expect_equal(expect_int(f(4, 4, 4, 32, 0, 2), what), 0, what)
    what = "kv_cache_bytes(2, 4, 4, 8, 10, 2) (default batch = 1)"
    expect_equal(expect_int(f(2, 4, 4, 8, 10, 2), what), 2 * 2 * 4 * 8 * 10 * 2, what)


def reference_kv_cache_bytes(n_layers, n_heads, n_kv_heads, head_dim, n_tokens, bytes_per_value, batch=1):
    """lmlab's :func:`lmlab.infer.kv_cache.kv_cache_bytes` (which needs only the K/V heads: ``n_heads`` is unused)."""
    return kv_cache_bytes(n_layers, n_kv_heads, head_dim, n_tokens, bytes_per_value, batch=batch)


register(Exercise(
    id="08.kv_cache_bytes",
    points=1,
    signature="kv_cache_bytes(n_layers, n_heads, n_kv_heads, head_dim, n_tokens, bytes_per_value, batch=1) -> int",
    hint="count every value the cache stores: keys and values, per layer, per K/V head (not query head), per head dim, per token, per sequence.",
    minutes=5,
    hints=(
        "During decoding every layer keeps the keys and values of every past token. With GQA only the K/V heads are "
        "stored, which is how it shrinks the cache by n_heads / n_kv_heads.",
        "Multiply: 2 (keys and values) x layers x K/V heads x head_dim x tokens x batch x bytes per value. n_heads "
        "does not enter. Return an int (round first: bytes_per_value may be fractional, e.g. 0.5 for 4-bit).",
        "values = ...  # how many numbers the cache holds\nreturn int(round(values * bytes_per_value))",
    ),
    checks=(
        Check("LLaMA-2-13B at 8,192 tokens and LLaMA-2-70B (GQA-8) per token", _kv_published),
        Check("equals the bytes of real K and V tensors (several shapes, dtypes, batches)", _kv_tensors),
        Check("half-byte values, zero tokens, the default batch", _kv_edge),
    ),
    reference="lmlab.grading.chapters.ch08:reference_kv_cache_bytes",
))

# ---------------------------------------------------------------------------------------------
# 08.decode_step
# ---------------------------------------------------------------------------------------------


def _step_call(f, k_cache, v_cache, q, k_new, v_new, what):
    inputs = [t.clone() for t in (k_cache, v_cache, q, k_new, v_new)]
    got = f(k_cache, v_cache, q, k_new, v_new)
    expect_true(isinstance(got, tuple) and len(got) == 3, f"{what} should return a tuple (out, k_cache, v_cache), got {type(got).__name__}")
    B, nh, T, hs = k_cache.shape
    out = expect_tensor(got[0], f"{what}: out", shape=(B, nh, 1, hs))
    k = expect_tensor(got[1], f"{what}: the new k_cache", shape=(B, nh, T + 1, hs))
    v = expect_tensor(got[2], f"{what}: the new v_cache", shape=(B, nh, T + 1, hs))
    expect_true(all(torch.equal(a, b) for a, b in zip(inputs, (k_cache, v_cache, q, k_new, v_new))),
                f"{what} changed one of its inputs in place; build new tensors (torch.cat)")
    return out, k, v


def _step_vs_sdpa(f):
    B, nh, T, hs = 2, 3, 9, 16
    q, k, v = (seeded_randn(B, nh, T + 1, hs, seed=80 + i) for i in range(3))
    what = f"decode_step(caches of {T} tokens, one new token)"
    out, k_c, v_c = _step_call(f, k[:, :, :T], v[:, :, :T], q[:, :, T:], k[:, :, T:], v[:, :, T:], what)
    expect_close(k_c, k, f"{what}: the new k_cache (old keys, then the new key)")
    expect_close(v_c, v, f"{what}: the new v_cache (old values, then the new value)")
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, :, -1:]
    expect_close(out, expected, f"{what}: out vs the last row of F.scaled_dot_product_attention(q, k, v, is_causal=True)", atol=1e-5)


def _step_from_empty(f):
    B, nh, T, hs = 1, 2, 6, 8
    q, k, v = (seeded_randn(B, nh, T, hs, seed=90 + i) for i in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    k_c, v_c = torch.zeros(B, nh, 0, hs), torch.zeros(B, nh, 0, hs)
    for t in range(T):
        what = f"decode_step, step {t} of a generation that starts from an empty cache (B, nh, 0, hs)"
        out, k_c, v_c = _step_call(f, k_c, v_c, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], what)
        expect_close(out, expected[:, :, t:t + 1], f"{what}: out vs row {t} of causal attention", atol=1e-5)


register(Exercise(
    id="08.decode_step",
    points=3,
    signature="decode_step(k_cache, v_cache: (B, nh, T, hs), q, k_new, v_new: (B, nh, 1, hs)) -> (out (B, nh, 1, hs), k_cache, v_cache (B, nh, T+1, hs))",
    hint="the new token attends to every cached token and to itself; grow the cache first, then attend.",
    minutes=10,
    hints=(
        "Incremental decoding: the new token's query attends to all earlier keys and values (from the cache) and to "
        "its own. No mask is needed: there is no future in the cache.",
        "Append k_new and v_new to the caches along the token axis (dim 2): (B, nh, T+1, hs). Scores: q (B, nh, 1, hs) "
        "times k_cache transposed, over sqrt(hs): (B, nh, 1, T+1); softmax over the last dim; times v_cache: (B, nh, "
        "1, hs). Return the output and both grown caches.",
        "k_cache = ...  # (B, nh, T+1, hs)\nv_cache = ...\nscores = ...  # (B, nh, 1, T+1)\n"
        "return ..., k_cache, v_cache",
    ),
    checks=(
        Check("one step equals the last row of F.scaled_dot_product_attention; the caches grow by the new K/V", _step_vs_sdpa),
        Check("a whole generation from an empty cache reproduces causal attention row by row", _step_from_empty),
    ),
    reference="lmlab.course.experiments.ch08_inference:decode_step",
))

# ---------------------------------------------------------------------------------------------
# 08.blocks_needed
# ---------------------------------------------------------------------------------------------


def _blocks_cases(f):
    for n, bs in ((1, 16), (15, 16), (17, 16), (100, 7), (5, 1), (1000, 64)):
        what = f"blocks_needed({n}, {bs})"
        expect_equal(expect_int(f(n, bs), what), math.ceil(n / bs), what + " (a partly filled last block still takes a whole block)")


def _blocks_exact(f):
    for n, bs in ((16, 16), (32, 16), (64, 8), (0, 16)):
        what = f"blocks_needed({n}, {bs})"
        expect_equal(expect_int(f(n, bs), what), n // bs, what + " (an exact multiple needs no extra block)")


register(Exercise(
    id="08.blocks_needed",
    points=1,
    signature="blocks_needed(n_tokens: int >= 0, block_size: int >= 1) -> int",
    hint="a partly filled block still takes a whole block.",
    minutes=5,
    hints=(
        "PagedAttention stores the KV cache in fixed-size blocks. A sequence gets whole blocks, so only its last block "
        "can be partly empty.",
        "A ceiling division: how many blocks of block_size hold n_tokens? 0 tokens need 0 blocks, exactly block_size "
        "tokens need 1. Stay in integers (no float rounding for large counts).",
        "return ...  # ceil(n_tokens / block_size), with // and + only",
    ),
    checks=(
        Check("partly filled last blocks count (ceil, not floor)", _blocks_cases),
        Check("exact multiples and zero tokens take no extra block", _blocks_exact),
    ),
    reference="lmlab.course.experiments.ch08_inference:blocks_needed",
))

# ---------------------------------------------------------------------------------------------
# 08.locate_token
# ---------------------------------------------------------------------------------------------


def _slots(table, bs):
    return [(b, o) for b in table for o in range(bs)]  # the sequence's token slots, in order


def _locate_all(f):
    for table, bs in (([7, 2, 9, 4], 4), ([3, 0, 5], 16), ([11, 1, 6, 8, 10], 3)):
        for pos, expected in enumerate(_slots(table, bs)):
            what = f"locate_token({table}, {pos}, {bs})"
            got = f(list(table), pos, bs)
            expect_true(isinstance(got, tuple) and len(got) == 2, f"{what} should return a tuple (physical block, offset), got {got!r}")
            expect_equal(tuple(int(x) for x in got), expected, what + " (physical block from the table, offset in it)")


def _locate_paged(f):
    m = BlockManager(n_blocks=12, block_size=4)
    a, b = m.allocate(), m.allocate()
    m.append(a, 3)
    m.append(b, 6)
    m.append(a, 8)  # a's blocks now interleave with b's
    for pos, slot in enumerate(m.append(a, 2), start=11):
        what = f"locate_token(block table {m.block_table(a)}, {pos}, 4)"
        expect_equal(tuple(int(x) for x in f(m.block_table(a), pos, 4)), slot, what + " (the slot a BlockManager wrote it to)")


register(Exercise(
    id="08.locate_token",
    points=1,
    signature="locate_token(block_table: list[int], position: int, block_size: int) -> (physical block, offset)",
    hint="which logical block holds the position, where does the table map it, and how far into the block is it?",
    minutes=5,
    hints=(
        "A block table maps a sequence's logical blocks (0, 1, 2, ...) to physical blocks anywhere in the pool, as a "
        "page table maps virtual memory to physical memory.",
        "The logical block and the offset inside it are the quotient and the remainder of the position by block_size; "
        "the table turns the logical block into a physical one.",
        "logical, offset = ..., ...  # quotient and remainder\nreturn ..., offset  # physical block from the table",
    ),
    checks=(
        Check("every position of three scattered block tables", _locate_all),
        Check("the slots a BlockManager actually hands out", _locate_paged),
    ),
    reference="lmlab.course.experiments.ch08_inference:locate_token",
))
