"""Chapter 04 graders (``exercises/04_attention.ipynb``): attention, a sliding-window mask, repeat_kv,
the online-softmax merge (the GQA layer is in ``ch04_gqa``, FlashAttention's tiled forward in ``ch04_flash``).

Every check compares with ``F.scaled_dot_product_attention`` (with ``enable_gqa`` for repeat_kv), a
construction written here with plain Python loops, ``torch.softmax`` on the concatenated scores, or
a property (inputs unchanged). lmlab's own implementation is only the ``reference`` that the tests
feed through the same checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.chapters import ch04_flash  # noqa: F401 (registers 04.flash_attention_forward)
from lmlab.grading.chapters import ch04_gqa  # noqa: F401 (registers 04.gqa_rope_attention)
from lmlab.grading.plugin import expect_trains_like_lmlab
from lmlab.grading.registry import Check, Exercise, register

# The notebook's order (04_attention.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "04.scaled_dot_product_attention",
    "04.sliding_window_mask",
    "04.repeat_kv",
    "04.online_softmax_merge",
    "04.gqa_rope_attention",
    "04.GQAttention",
    "04.flash_attention_forward",
)


# ---------------------------------------------------------------------------------------------
# 04.scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------


def _sdpa_plain(f):
    q, k, v = seeded_randn(2, 3, 5, 8, seed=40), seeded_randn(2, 3, 7, 8, seed=41), seeded_randn(2, 3, 7, 4, seed=42)
    what = "scaled_dot_product_attention(q (2, 3, 5, 8), k (2, 3, 7, 8), v (2, 3, 7, 4)) with no mask"
    want = F.scaled_dot_product_attention(q, k, v)  # before the learner's call
    got = expect_tensor(f(q, k, v), what, shape=(2, 3, 5, 4), dtype=torch.float32)
    expect_close(got, want, f"{what} vs F.scaled_dot_product_attention", atol=1e-5)


def _sdpa_mask(f):
    q, k, v = (seeded_randn(1, 2, 9, 16, seed=43 + i, scale=2.0) for i in range(3))
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    band = causal & ~torch.ones(9, 9, dtype=torch.bool).tril(-3)
    want_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # both before the learner's calls
    want_band = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    what = "scaled_dot_product_attention(q, k, v, causal mask (9, 9))"
    got = expect_tensor(f(q, k, v, causal), what, shape=(1, 2, 9, 16))
    expect_close(got, want_causal, f"{what} vs SDPA(is_causal=True)", atol=1e-5)
    what = "scaled_dot_product_attention(q, k, v, a band mask (each query sees 3 keys))"
    got = expect_tensor(f(q, k, v, band), what, shape=(1, 2, 9, 16))
    expect_close(got, want_band, f"{what} vs SDPA(attn_mask=band)", atol=1e-5)


def _sdpa_large(f):
    q, k, v = seeded_randn(1, 1, 4, 64, seed=46, scale=10.0), seeded_randn(1, 1, 6, 64, seed=47, scale=10.0), seeded_randn(1, 1, 6, 8, seed=48)
    what = "scaled_dot_product_attention on scores in the hundreds (head size 64, entries ~10)"
    want = F.scaled_dot_product_attention(q, k, v)
    got = expect_tensor(f(q, k, v), what, shape=(1, 1, 4, 8))
    expect_true(not torch.isnan(got).any(), f"{what} contains NaN: exp overflows; use torch.softmax (it subtracts the max)")
    expect_close(got, want, f"{what} vs SDPA", atol=1e-4)


register(Exercise(
    id="04.scaled_dot_product_attention",
    points=2,
    signature="scaled_dot_product_attention(q (B, nh, Tq, hs), k (B, nh, Tk, hs), v (B, nh, Tk, hv), mask=None) -> (B, nh, Tq, hv)",
    hint="scores between every query and key, scaled by the head size, masked where not allowed, normalised over the keys, then a weighted sum of values.",
    minutes=10,
    hints=(
        "Attention's output for a query is a weighted average of the values; the weights are a softmax over the keys "
        "of q . k / sqrt(head size). A boolean mask removes the keys a query may not see (weight exactly 0).",
        "q (B, nh, Tq, hs) times k transposed (B, nh, hs, Tk) gives scores (B, nh, Tq, Tk); divide by sqrt(hs). Where "
        "mask is False put -inf. Softmax over the last dim (the keys), then times v (B, nh, Tk, hv): (B, nh, Tq, hv). "
        "mask=None means no masking.",
        "scores = ...  # (B, nh, Tq, Tk), scaled\nif mask is not None:\n    scores = ...  # -inf where mask is False\n"
        "return ...  # softmax over the keys, then the values",
    ),
    checks=(
        Check("no mask, Tq != Tk, hv != hs: equals F.scaled_dot_product_attention", _sdpa_plain),
        Check("causal and band masks (True = may attend)", _sdpa_mask),
        Check("large scores do not overflow", _sdpa_large),
    ),
    reference="lmlab.model.attention:attention",
))

# ---------------------------------------------------------------------------------------------
# 04.sliding_window_mask
# ---------------------------------------------------------------------------------------------


def _window_loops(T: int, w: int) -> torch.Tensor:
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            m[i, j] = j <= i and i - j < w  # the w most recent tokens, itself included
    return m


def _window_values(f):
    for T, w in ((8, 3), (10, 1), (6, 6), (5, 9), (12, 4)):
        what = f"sliding_window_mask({T}, {w})"
        got = expect_tensor(f(T, w), what, shape=(T, T), dtype=torch.bool)
        expect_equal(got.tolist(), _window_loops(T, w).tolist(), f"{what} (row i: True for keys i-{w}+1 .. i)")


def _window_counts(f):
    got = expect_tensor(f(20, 5), "sliding_window_mask(20, 5)", shape=(20, 20), dtype=torch.bool)
    expect_equal(got.sum(1).tolist(), [min(i + 1, 5) for i in range(20)],
                 "keys seen per query by sliding_window_mask(20, 5) (each query sees at most 5, itself included)")
    expect_true(not got.triu(1).any(), "sliding_window_mask(20, 5) lets a query see a later key (it must stay causal)")


register(Exercise(
    id="04.sliding_window_mask",
    points=2,
    signature="sliding_window_mask(T: int, window: int) -> (T, T) bool tensor, True = may attend",
    hint="compare a column of query positions with a row of key positions (broadcasting); causal, and no further back than the window (which counts the token itself).",
    minutes=5,
    hints=(
        "Sliding-window attention (Longformer, Mistral) lets each token see only its last `window` tokens, itself "
        "included, so the cost per token is fixed instead of growing with T.",
        "Query positions as a column (T, 1), key positions as a row (1, T). A key is allowed when it is not in the "
        "future and fewer than `window` positions back; combine the two conditions elementwise into a (T, T) bool "
        "tensor.",
        "i = ...  # query positions, a column (T, 1)\nj = ...  # key positions, a row (1, T)\nreturn (...) & (...)",
    ),
    checks=(
        Check("equals a loop construction for several T and window", _window_values),
        Check("each query sees min(i + 1, window) keys, none in the future", _window_counts),
    ),
    reference="lmlab.model.attention:sliding_window_mask",
))

# ---------------------------------------------------------------------------------------------
# 04.repeat_kv
# ---------------------------------------------------------------------------------------------


def _rkv_values(f):
    x = seeded_randn(2, 3, 5, 4, seed=49)
    x0 = x.clone()  # what the outputs must repeat, kept before any call
    for n in (1, 2, 4):
        what = f"repeat_kv(x (2, 3, 5, 4), {n})"
        got = expect_tensor(f(x, n), what, shape=(2, 3 * n, 5, 4), dtype=x.dtype)
        for h in range(3 * n):
            expect_close(got[:, h], x0[:, h // n], f"{what}[:, {h}] (query head {h} uses K/V head {h} // {n} = {h // n})", atol=0)


def _rkv_gqa(f):
    q = seeded_randn(1, 8, 6, 16, seed=50)
    k, v = seeded_randn(1, 2, 6, 16, seed=51), seeded_randn(1, 2, 6, 16, seed=52)
    what = "SDPA(q (1, 8, 6, 16), repeat_kv(k, 4), repeat_kv(v, 4))"
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # before the learner's calls
    got = F.scaled_dot_product_attention(q, expect_tensor(f(k, 4), "repeat_kv(k, 4)", shape=(1, 8, 6, 16)),
                                         expect_tensor(f(v, 4), "repeat_kv(v, 4)", shape=(1, 8, 6, 16)), is_causal=True)
    expect_close(got, want, f"{what} vs SDPA(enable_gqa=True)")


register(Exercise(
    id="04.repeat_kv",
    points=1,
    signature="repeat_kv(x: (B, nkv, T, hs), n_rep: int) -> (B, nkv * n_rep, T, hs)",
    hint="query heads 0..n_rep-1 share K/V head 0, the next n_rep share head 1, and so on: which torch repeat keeps copies of one head next to each other?",
    minutes=5,
    hints=(
        "In grouped-query attention several query heads share one K/V head. To reuse ordinary attention code, copy "
        "each K/V head once for every query head in its group.",
        "(B, nkv, T, hs) -> (B, nkv * n_rep, T, hs) along dim 1. The order must be 0, 0, 1, 1, ... (copies side by "
        "side), not 0, 1, 0, 1, ...: try torch.repeat and torch.repeat_interleave on a small example.",
        "return ...  # along dim 1, each head's copies next to each other",
    ),
    checks=(
        Check("query head h gets K/V head h // n_rep", _rkv_values),
        Check("with it, attention equals SDPA's grouped-query attention", _rkv_gqa),
    ),
    reference="lmlab.model.attention:repeat_kv",
))

# ---------------------------------------------------------------------------------------------
# 04.online_softmax_merge
# ---------------------------------------------------------------------------------------------


def _partial(s: torch.Tensor, v: torch.Tensor):
    m = s.amax(dim=-1)
    p = torch.exp(s - m[:, None])
    return m, p.sum(-1), p @ v


def _merge_call(f, a, b, what):
    inputs = [t.clone() for t in (*a, *b)]
    out = f(*a, *b)
    expect_true(isinstance(out, tuple) and len(out) == 3, f"{what} must return a tuple (m, l, acc), got {type(out).__name__}")
    expect_true(all(torch.equal(x, y) for x, y in zip(inputs, (*a, *b))), f"{what} changed its inputs in place")
    return out


def _merge_softmax(f):
    s, v = seeded_randn(4, 30, seed=53, scale=3.0), seeded_randn(30, 6, seed=54)
    s[:, 12:] += 5.0  # the second block holds the larger scores: the old part must be rescaled
    what = "online_softmax_merge(partial(keys 0..11), partial(keys 12..29))"
    m, l, acc = _merge_call(f, _partial(s[:, :12], v[:12]), _partial(s[:, 12:], v[12:]), what)
    expect_close(expect_tensor(m, f"{what}: m", shape=(4,)), s.amax(-1), f"{what}: m (the row max over all keys)")
    expect_close(expect_tensor(l, f"{what}: l", shape=(4,)), torch.exp(s - s.amax(-1)[:, None]).sum(-1),
                 f"{what}: l (sum of exp(s - m) over all keys)", atol=1e-4)
    expect_close(expect_tensor(acc, f"{what}: acc", shape=(4, 6)) / l[:, None], torch.softmax(s, -1) @ v,
                 f"{what}: acc / l vs softmax(s) @ v", atol=1e-5)


def _merge_order(f):
    s, v = seeded_randn(3, 20, seed=55, scale=4.0), seeded_randn(20, 5, seed=56)
    s[:, :8] += 6.0  # now the FIRST block has the larger scores
    what = "online_softmax_merge(partial(keys 0..7), partial(keys 8..19)) with the larger scores first"
    m, l, acc = _merge_call(f, _partial(s[:, :8], v[:8]), _partial(s[:, 8:], v[8:]), what)
    expect_close(acc / l[:, None], torch.softmax(s, -1) @ v, f"{what}: acc / l vs softmax(s) @ v", atol=1e-5)
    parts = [_partial(s[:, a:b], v[a:b]) for a, b in ((0, 5), (5, 11), (11, 20))]
    state = parts[0]
    for p in parts[1:]:
        state = _merge_call(f, state, p, "online_softmax_merge(running state, next block)")
    expect_close(state[2] / state[1][:, None], torch.softmax(s, -1) @ v, "three blocks merged one after another vs softmax(s) @ v",
                 atol=1e-5)


def _merge_empty(f):
    s, v = seeded_randn(2, 10, seed=57), seeded_randn(10, 3, seed=58)
    empty = (torch.full((2,), -math.inf), torch.zeros(2), torch.zeros(2, 3))
    what = "online_softmax_merge(empty state (m=-inf, l=0, acc=0), partial(all keys))"
    m, l, acc = _merge_call(f, empty, _partial(s, v), what)
    expect_true(not torch.isnan(acc).any() and not torch.isnan(l).any(),
                f"{what} gives NaN: with m = max(m1, m2) the empty part's factor exp(-inf - m) is 0, not NaN")
    expect_close(acc / l[:, None], torch.softmax(s, -1) @ v, f"{what}: acc / l", atol=1e-5)


def _merge_both_empty(f):
    s, v = seeded_randn(3, 6, seed=59), seeded_randn(6, 2, seed=60)
    state = (torch.full((3,), -math.inf), torch.zeros(3), torch.zeros(3, 2))
    extra_s = torch.tensor([[-math.inf], [0.5], [-math.inf]])  # one more key: masked for rows 0 and 2
    extra_v = seeded_randn(1, 2, seed=61)
    tile = _partial(extra_s, extra_v)  # rows 0 and 2: m = -inf (and a NaN sum); row 1: m = 0.5, l = 1
    tile = (tile[0], torch.tensor([0.0, 1.0, 0.0]), torch.cat([torch.zeros(1, 2), extra_v, torch.zeros(1, 2)]))
    what = ("online_softmax_merge(empty state, a tile fully masked for rows 0 and 2) — a tiled loop starts empty and "
            "a fully masked tile is common (causal and padding masks)")
    m, l, acc = _merge_call(f, state, tile, what)
    for name, x in (("m", m), ("l", l), ("acc", acc)):
        expect_true(not torch.isnan(x).any(), f"{what}: {name} has NaN in the rows where both parts are empty: "
                    "m = max(-inf, -inf) = -inf and exp(-inf - (-inf)) is NaN; rescale against 0 when the new max is -inf")
    expect_equal(m.tolist(), [-math.inf, 0.5, -math.inf], f"{what}: m")
    expect_equal(l.tolist(), [0.0, 1.0, 0.0], f"{what}: l (an empty row keeps l = 0)")
    expect_close(acc, tile[2], f"{what}: acc (an empty row keeps acc = 0)")
    m, l, acc = _merge_call(f, (m, l, acc), _partial(s, v), "online_softmax_merge(that state, partial(all keys))")
    full_s, full_v = torch.cat([extra_s, s], 1), torch.cat([extra_v, v])  # every key seen, the masked ones at -inf
    expect_close(acc / l[:, None], torch.softmax(full_s, -1) @ full_v,
                 "after a fully masked tile, merging the other keys still gives softmax(s) @ v", atol=1e-5)


register(Exercise(
    id="04.online_softmax_merge",
    points=3,
    signature="online_softmax_merge(m1 (R,), l1 (R,), acc1 (R, hv), m2, l2, acc2) -> (m, l, acc)",
    hint="the two partial results were computed against different running maxima; bring both to the common maximum before adding.",
    minutes=15,
    hints=(
        "FlashAttention works through the keys in tiles and keeps, per query row, a running max m, a running sum of "
        "exponentials l and an unnormalized output acc. Two partial results over different keys merge exactly, which "
        "is why it never needs the N x N matrix.",
        "Each part's l and acc were computed with exp(score - its own m). The new max m is the elementwise max of m1 "
        "and m2 (R,). Rescale each part by exp(m_part - m) (R,): that factor multiplies its l, and its acc broadcast "
        "over the value dim (a[:, None]). Add the parts. (The final output would be acc / l.) When both parts are "
        "empty (m1 = m2 = -inf) the new max is -inf too and exp(-inf - (-inf)) is NaN: rescale against 0 for those rows.",
        "m = ...  # (R,)\na1, a2 = ...  # (R,) rescaling factors\nl = ...\nacc = ...  # a1 and a2 broadcast over hv\n"
        "return m, l, acc",
    ),
    checks=(
        Check("merging two blocks gives the full softmax (the larger scores come second)", _merge_softmax),
        Check("the larger scores first, and three blocks merged in turn", _merge_order),
        Check("merging into the empty state (m = -inf, l = 0) works", _merge_empty),
        Check("both parts empty (a fully masked tile into the empty state): empty, no NaN", _merge_both_empty),
    ),
    reference="lmlab.infer.tiled_attention:online_softmax_merge",
))

# ---------------------------------------------------------------------------------------------
# 04.GQAttention: your attention inside the model (lmlab.model.registry.register_attention), trained
# ---------------------------------------------------------------------------------------------

_ATTN_MODEL = dict(context_length=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, bias=False, attention="full")


def _gqa_module(cls):
    import torch.nn as nn

    for n_heads, n_kv in ((4, 2), (4, 1)):
        m = cls(16, n_heads, n_kv)
        expect_true(isinstance(m, nn.Module), f"GQAttention(16, {n_heads}, {n_kv}) should be an nn.Module, got {type(m).__name__}")
        layers = {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
        kv = n_kv * 16 // n_heads
        want = {"q_proj": (16, 16), "k_proj": (kv, 16), "v_proj": (kv, 16), "o_proj": (16, 16)}
        got = {n: tuple(layers[n].weight.shape) for n in want if n in layers}
        expect_true(got == want and all(layers[n].bias is None for n in want),
                    f"GQAttention(16, {n_heads}, {n_kv}) needs bias-free nn.Linear layers {want}, got {got}")
        x = seeded_randn(2, 6, 16, seed=90 + n_kv)
        B, T, hs = 2, 6, 16 // n_heads
        # the grader's weights, loaded into the learner's layers: the expected output never depends on theirs
        w = {n: seeded_randn(*shape, seed=95 + 10 * n_kv + i, scale=0.4) for i, (n, shape) in enumerate(want.items())}
        with torch.no_grad():
            for n in want:
                layers[n].weight.copy_(w[n])
        q = F.linear(x, w["q_proj"]).view(B, T, n_heads, hs).transpose(1, 2)
        k = F.linear(x, w["k_proj"]).view(B, T, n_kv, hs).transpose(1, 2)
        v = F.linear(x, w["v_proj"]).view(B, T, n_kv, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # query head h reads K/V head h // n_rep
        want_out = F.linear(y.transpose(1, 2).reshape(B, T, 16), w["o_proj"])
        with torch.no_grad():
            expect_close(m(x), want_out, f"GQAttention(16, {n_heads}, {n_kv})(x (2, 6, 16)) vs causal SDPA with enable_gqa", atol=1e-5)


def _gqa_in_model(cls):
    expect_trains_like_lmlab(cls, "attention", _ATTN_MODEL, "your GQAttention (4 query heads, 2 K/V heads) as every layer's attention")


register(Exercise(
    id="04.GQAttention",
    points=3,
    kind="class",
    signature="class GQAttention(nn.Module): GQAttention(d_model, n_heads, n_kv_heads) with bias-free q_proj, k_proj, v_proj, o_proj; forward(x (B, T, C)) -> (B, T, C), causal",
    hint="split q into n_heads and k, v into n_kv_heads heads of d_model // n_heads; your repeat_kv, a causal mask and your scaled_dot_product_attention; merge heads; o_proj.",
    minutes=15,
    hints=(
        "GQA (Ainslie et al.) keeps all the query heads but fewer key/value heads, so the KV cache shrinks by n_heads "
        "/ n_kv_heads. MQA is the case n_kv_heads = 1; ordinary multi-head attention is n_kv_heads = n_heads.",
        "head_dim = d_model // n_heads. q_proj: d_model -> d_model; k_proj and v_proj: d_model -> n_kv_heads * "
        "head_dim; o_proj: d_model -> d_model; all bias-free. forward: q -> (B, nh, T, hs), k and v -> (B, nkv, T, hs) "
        "(view, then transpose(1, 2)); repeat k and v to nh heads; a causal (T, T) mask; attention -> (B, nh, T, hs); "
        "back to (B, T, C); o_proj.",
        "# __init__: head sizes, then the four projections\n\n# forward(self, x):\nB, T, C = x.shape\n"
        "q = self.q_proj(x).view(...).transpose(1, 2)  # (B, nh, T, hs)\nk = ...  # (B, nkv, T, hs)\nv = ...\n"
        "mask = ...  # causal, (T, T)\ny = scaled_dot_product_attention(q, ..., ..., mask)\n"
        "return self.o_proj(...)  # (B, T, C)",
    ),
    checks=(
        Check("four bias-free projections; equals causal SDPA with enable_gqa (GQA and MQA)", _gqa_module),
        Check("inside lmlab's model: lmlab's logits, and the same losses after 8 Adam steps", _gqa_in_model),
    ),
    reference="lmlab.model.attention:GQAttention",
    timeout=30.0,
))
