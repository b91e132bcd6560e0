"""Chapter 04 graders, part 3: FlashAttention's tiled forward (``exercises/04_attention.ipynb``, exercise 7).
Imported by :mod:`lmlab.grading.chapters.ch04`.

Checked against ``F.scaled_dot_product_attention`` (the output) and ``torch.logsumexp`` of the masked, scaled
scores (the saved log-sum-exp) at several tile sizes and masks (none, causal, sliding window, padded keys), with
scores large enough to overflow a naive ``exp``; and, under a ``TorchFunctionMode`` that sees every tensor the
answer makes, that no tensor as large as the ``(B, nh, Tq, Tk)`` score matrix is ever built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lmlab.grading.assertions import expect_close, expect_tensor, expect_true, seeded_randn
from lmlab.grading.harness import call_with
from lmlab.grading.registry import Check, CheckFailed, Exercise, register
from lmlab.infer.tiled_attention import online_softmax_merge


def reference_flash_attention_forward(q, k, v, mask=None, block_q=4, block_k=4):
    """The grader's reference: lmlab's merge over query and key tiles (a mask hides keys per tile)."""
    B, nh, Tq, hs = q.shape
    out, lse = q.new_empty(B, nh, Tq, v.size(-1)), q.new_empty(B, nh, Tq)
    for i0 in range(0, Tq, block_q):
        q_i = q[:, :, i0:i0 + block_q]  # (B, nh, bq, hs)
        bq = q_i.size(2)
        m, l, acc = q.new_full((B, nh, bq), -math.inf), q.new_zeros(B, nh, bq), q.new_zeros(B, nh, bq, v.size(-1))
        for j0 in range(0, k.size(2), block_k):
            s = q_i @ k[:, :, j0:j0 + block_k].transpose(-2, -1) / math.sqrt(hs)  # (B, nh, bq, bk)
            if mask is not None:
                s = s.masked_fill(~mask[i0:i0 + bq, j0:j0 + block_k], -math.inf)
            m_t = s.amax(-1)  # (B, nh, bq)
            p = torch.exp(s - m_t.clamp_min(torch.finfo(s.dtype).min)[..., None])  # (B, nh, bq, bk)
            m, l, acc = online_softmax_merge(m, l, acc, m_t, p.sum(-1), p @ v[:, :, j0:j0 + block_k])
        out[:, :, i0:i0 + bq], lse[:, :, i0:i0 + bq] = acc / l[..., None], m + torch.log(l)
    return out, lse


def _inputs(B, nh, Tq, Tk, hs, hv, seed, scale=1.0):
    return (seeded_randn(B, nh, Tq, hs, seed=seed, scale=scale), seeded_randn(B, nh, Tk, hs, seed=seed + 1, scale=scale),
            seeded_randn(B, nh, Tk, hv, seed=seed + 2))


def _expected(q, k, v, mask):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.logsumexp(s, dim=-1)


def _case(f, q, k, v, mask, bq, bk, what):
    B, nh, Tq, _ = q.shape
    got = f(q.clone(), k.clone(), v.clone(), None if mask is None else mask.clone(), bq, bk)
    expect_true(isinstance(got, tuple) and len(got) == 2, f"{what} must return a tuple (out, lse), got {type(got).__name__}")
    out = expect_tensor(got[0], f"{what}: out", shape=(B, nh, Tq, v.size(-1)), dtype=torch.float32)
    lse = expect_tensor(got[1], f"{what}: lse", shape=(B, nh, Tq), dtype=torch.float32)
    want_out, want_lse = _expected(q, k, v, mask)
    expect_true(not torch.isnan(out).any(), f"{what}: out has NaN (a row that a whole key tile hides must stay the "
                "empty partial result, m = -inf, l = 0, not NaN)")
    expect_close(out, want_out, f"{what}: out vs F.scaled_dot_product_attention", atol=1e-5, rtol=1e-4)
    expect_close(lse, want_lse, f"{what}: lse vs torch.logsumexp of the scaled, masked scores", atol=1e-4, rtol=1e-5)


def _no_mask(f):
    q, k, v = _inputs(2, 3, 10, 13, 8, 5, seed=700)
    for bq, bk in ((4, 4), (3, 5), (1, 1), (16, 16)):
        _case(f, q, k, v, None, bq, bk, f"flash_attention_forward(q (2, 3, 10, 8), k (2, 3, 13, 8), no mask, "
              f"block_q={bq}, block_k={bk})")


def _causal(f):
    q, k, v = _inputs(1, 2, 11, 11, 8, 8, seed=710)
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    for bq, bk in ((2, 3), (4, 4), (5, 2)):
        _case(f, q, k, v, causal, bq, bk, f"flash_attention_forward(T=11, causal mask, block_q={bq}, block_k={bk}: "
              "tiles above the diagonal hide every key of their rows)")


def _window_and_padding(f):
    q, k, v = _inputs(2, 2, 12, 12, 8, 6, seed=720)
    i, j = torch.arange(12)[:, None], torch.arange(12)[None, :]
    window = (j <= i) & (i - j < 3)
    _case(f, q, k, v, window, 4, 3, "flash_attention_forward(T=12, sliding window of 3, block_q=4, block_k=3)")
    padded = torch.ones(12, 12, dtype=torch.bool)
    padded[:, 7:] = False  # keys 7..11 are padding: the last key tiles are hidden for every row
    _case(f, q, k, v, padded, 5, 4, "flash_attention_forward(T=12, keys 7..11 padded out, block_q=5, block_k=4)")


def _large(f):
    q, k, v = _inputs(1, 1, 9, 9, 64, 4, seed=730, scale=6.0)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    _case(f, q, k, v, causal, 3, 3, "flash_attention_forward on scores in the hundreds (head size 64, entries ~6), causal: "
          "exp must only ever see score - running max")


class _Largest(TorchFunctionMode):
    """Records the largest tensor any torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest, self.shape = 0, ()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.shape = t.numel(), tuple(t.shape)
        return out


def harness_largest_tensor(f, B: int, nh: int, T: int) -> dict:
    """Run the learner's ``f`` (where it lives: the sandbox's child) under :class:`_Largest`; plain data back."""
    q, k, v = _inputs(B, nh, T, T, 8, 8, seed=740)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    with _Largest() as seen:
        f(q, k, v, causal, 4, 6)
    return dict(largest=int(seen.largest), shape=[int(n) for n in seen.shape])


def _tiled(f):
    B, nh, T = 2, 3, 24
    seen = call_with(f, "lmlab.grading.chapters.ch04_flash:harness_largest_tensor", B, nh, T)
    full = B * nh * T * T
    if seen["largest"] >= full:
        raise CheckFailed(f"flash_attention_forward(T=24, block_q=4, block_k=6) made a tensor of shape {tuple(seen['shape'])} "
                          f"({seen['largest']} numbers), as large as the whole (B, nh, Tq, Tk) score matrix ({full}): work on "
                          "one (block_q, block_k) tile of scores at a time")


register(Exercise(
    id="04.flash_attention_forward",
    points=6,
    minutes=40,
    signature="flash_attention_forward(q (B, nh, Tq, hs), k (B, nh, Tk, hs), v (B, nh, Tk, hv), mask=None, block_q=4, "
              "block_k=4) -> (out (B, nh, Tq, hv), lse (B, nh, Tq))",
    hint="query tiles outside, key tiles inside; a running partial result per query tile that starts empty and absorbs "
         "each key tile with your merge; divide at the end, and keep the log-sum-exp.",
    hints=(
        "FlashAttention is exact attention computed in tiles so that the (T, T) scores never exist at once: for each "
        "block of queries it keeps the running (max, sum, unnormalised output) of exercise 4 and folds in one block of "
        "keys at a time. The log-sum-exp it saves, m + log(l), is all the backward pass needs to recompute any tile's "
        "probabilities.",
        "For a query tile q_i (B, nh, bq, hs): start from the empty partial result (m = -inf, l = 0, acc = 0). For each "
        "key tile k_j, v_j (B, nh, bk, ·): scores (B, nh, bq, bk), scaled by 1/sqrt(hs), -inf where the mask's matching "
        "(bq, bk) slice is False. The tile's own partial result: its row max, and exp(score - that max) summed and "
        "multiplied by v_j; a row the tile hides entirely has max -inf, and its exponentials must come out 0, not NaN "
        "(clamp the max you subtract). Merge it into the running one (flatten B, nh and the rows to one axis for your "
        "merge). After the last key tile: out rows = acc / l, lse rows = m + log l.",
        "# every query tile (its first row i0 steps by block_q):\n"
        "    q_i = ...        # (B, nh, bq, hs)\n"
        "    m, l, acc = ...  # the empty partial result of its rows\n"
        "    # every key tile (its first key j0 steps by block_k):\n"
        "        s = ...      # (B, nh, bq, bk), scaled and masked\n"
        "        ...          # the tile's partial result (the line to think about: a fully hidden row)\n"
        "        ...          # merged into the running one (exercise 4)\n"
        "    ...              # this tile's rows of out and lse\n"
        "return out, lse",
    ),
    checks=(
        Check("no mask, Tq != Tk, tile sizes 4/4, 3/5, 1/1 and larger than T: out and lse", _no_mask),
        Check("causal mask with tiles that hide whole rows (block sizes 2/3, 4/4, 5/2)", _causal),
        Check("a sliding window, and padded keys that hide whole key tiles", _window_and_padding),
        Check("large scores do not overflow", _large),
        Check("never builds the whole (B, nh, Tq, Tk) score matrix", _tiled),
    ),
    reference="lmlab.grading.chapters.ch04_flash:reference_flash_attention_forward",
))
