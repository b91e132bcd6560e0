"""Chapter 04 graders, part 2: a grouped-query attention layer with RoPE (``exercises/04_attention.ipynb``).
Imported by :mod:`lmlab.grading.chapters.ch04`. Checked against ``F.scaled_dot_product_attention(enable_gqa=True)``
on q, k rotated by ``lmlab.model.positions.encodings.apply_rope``, and against lmlab's own attention layer inside a
``position="rope"`` model, loaded with the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_tensor, expect_true, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import global_seed
from lmlab.model import GPT, ModelConfig
from lmlab.model.positions.encodings import apply_rope


def _weights(C, nh, nkv, seed):
    hs = C // nh
    return seeded_randn(C + 2 * nkv * hs, C, seed=seed, scale=0.4), seeded_randn(C, C, seed=seed + 1, scale=0.3)


def _sdpa_expected(x, w_qkv, w_o, nh, nkv, base):
    B, T, C = x.shape
    hs = C // nh
    q, k, v = F.linear(x, w_qkv).split([C, nkv * hs, nkv * hs], dim=2)
    q = apply_rope(q.view(B, T, nh, hs).transpose(1, 2), T, base=base)
    k = apply_rope(k.view(B, T, nkv, hs).transpose(1, 2), T, base=base)
    v = v.view(B, T, nkv, hs).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nkv != nh)
    return F.linear(y.transpose(1, 2).reshape(B, T, C), w_o)


def _variant(x, w_qkv, w_o, nh, nkv, base, mistake):
    """The layer with one named stage wrong (to say which stage a learner's answer got wrong)."""
    B, T, C = x.shape
    hs = C // nh
    q, k, v = F.linear(x, w_qkv).split([C, nkv * hs, nkv * hs], dim=2)
    q, k, v = q.view(B, T, nh, hs).transpose(1, 2), k.view(B, T, nkv, hs).transpose(1, 2), v.view(B, T, nkv, hs).transpose(1, 2)
    if mistake != "no RoPE":
        q = apply_rope(q, T, base=base)
        k = k if mistake == "no RoPE on k" else apply_rope(k, T, base=base)
    v = apply_rope(v, T, base=base) if mistake == "RoPE on v" else v
    r = nh // nkv
    k, v = (k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)) if mistake == "repeat" else (k.repeat_interleave(r, 1), v.repeat_interleave(r, 1))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=mistake != "not causal")
    return F.linear(y.transpose(1, 2).reshape(B, T, C), w_o)


_STAGE_MESSAGES = {
    "repeat": "the K/V heads are tiled (0, 1, 0, 1: torch's .repeat) where query head h must read K/V head h // r "
              "(0, 0, 1, 1: repeat_interleave on the head axis)",
    "no RoPE on k": "q is rotated but k is not: RoPE must rotate both, so that q . k depends on the distance",
    "no RoPE": "neither q nor k is rotated (RoPE is missing)",
    "RoPE on v": "v is rotated too: RoPE rotates only q and k",
    "not causal": "a token sees later tokens: the attention must be causal",
}


def _stage_case(f, what, x, w_qkv, w_o, nh, nkv, base, stage):
    got = expect_tensor(f(x, w_qkv.clone(), w_o.clone(), nh, nkv, base), what, shape=x.shape)
    expected = _variant(x, w_qkv, w_o, nh, nkv, base, "")
    if not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
        for mistake, message in _STAGE_MESSAGES.items():
            if torch.allclose(got, _variant(x, w_qkv, w_o, nh, nkv, base, mistake), atol=1e-5, rtol=1e-4):
                expect_true(False, f"{what}: {message} (max abs difference {(got - expected).abs().max():.3g})")
    expect_close(got, expected, f"{what} vs F.scaled_dot_product_attention; this case tests {stage}", atol=1e-5, rtol=1e-4)


def _gqa_grouping(f):
    x = seeded_randn(2, 1, 16, seed=470)
    w_qkv, w_o = _weights(16, 4, 2, 471)
    _stage_case(f, "gqa_rope_attention(x (2, 1, 16), n_heads=4, n_kv_heads=2) on ONE token (RoPE is the identity at "
                "position 0 and attention returns v)", x, w_qkv, w_o, 4, 2, 10000.0, "the grouping alone")
    x = seeded_randn(1, 1, 24, seed=472)
    w_qkv, w_o = _weights(24, 6, 3, 473)
    _stage_case(f, "gqa_rope_attention(x (1, 1, 24), n_heads=6, n_kv_heads=3) on ONE token", x, w_qkv, w_o, 6, 3, 10000.0,
                "the grouping alone")


def _gqa_rope_alone(f):
    x = seeded_randn(2, 7, 16, seed=480)
    w_qkv, w_o = _weights(16, 4, 4, 481)
    _stage_case(f, "gqa_rope_attention(x (2, 7, 16), n_heads=4, n_kv_heads=4): no grouping, so only RoPE and the causal "
                "attention matter", x, w_qkv, w_o, 4, 4, 500.0, "RoPE alone")


def _gqa_sdpa(f):
    for B, T, C, nh, nkv, base, seed in ((2, 6, 16, 4, 2, 10000.0, 400), (1, 9, 24, 6, 2, 500.0, 410), (2, 5, 16, 4, 4, 10000.0, 420)):
        x = seeded_randn(B, T, C, seed=seed + 5)
        w_qkv, w_o = _weights(C, nh, nkv, seed)
        what = f"gqa_rope_attention(x {B, T, C}, n_heads={nh}, n_kv_heads={nkv}, base={base:g})"
        got = expect_tensor(f(x, w_qkv.clone(), w_o.clone(), nh, nkv, base), what, shape=(B, T, C))
        expect_close(got, _sdpa_expected(x, w_qkv, w_o, nh, nkv, base), what + " vs F.scaled_dot_product_attention(enable_gqa=True) "
                     "on RoPE-rotated q and k", atol=1e-5, rtol=1e-4)


def _gqa_lmlab(f):
    for C, nh, nkv, seed in ((16, 4, 1, 430), (24, 6, 3, 440)):
        cfg = ModelConfig(vocab_size=5, context_length=8, d_model=C, n_layers=1, n_heads=nh, n_kv_heads=nkv, position="rope", bias=False)
        with global_seed(seed):
            model = GPT(cfg).eval()
        attn = model.blocks[0].attn
        w_qkv, w_o = _weights(C, nh, nkv, seed)
        with torch.no_grad():
            attn.qkv.weight.copy_(w_qkv)
            attn.proj.weight.copy_(w_o)
            x = seeded_randn(2, 7, C, seed=seed + 9)
            pos = torch.arange(7)
            expected = attn(x, positions=model.position.for_attention(pos, pos))
        what = f"gqa_rope_attention(x (2, 7, {C}), n_heads={nh}, n_kv_heads={nkv})"
        got = expect_tensor(f(x, w_qkv.clone(), w_o.clone(), nh, nkv, 10000.0), what, shape=(2, 7, C))
        expect_close(got, expected, what + " vs lmlab's attention layer (position='rope') with the same weights", atol=1e-5, rtol=1e-4)


register(Exercise(
    id="04.gqa_rope_attention",
    points=5,
    minutes=30,
    signature="gqa_rope_attention(x: (B, T, C), w_qkv: (C + 2*n_kv_heads*hs, C), w_o: (C, C), n_heads: int, n_kv_heads: int, "
              "base: float = 10000.0) -> (B, T, C)",
    hint="project, split into heads (fewer for K and V), rotate q and k by their positions, let each group of query heads share one K/V head, attend causally, merge, project.",
    hints=(
        "Grouped-query attention keeps n_heads query heads but only n_kv_heads key/value heads: consecutive query heads form a "
        "group that shares one K/V head. RoPE rotates queries and keys (never values) by their position before the scores.",
        "One F.linear with w_qkv gives (B, T, C + 2*n_kv_heads*hs); split it into q (C) and k, v (n_kv_heads*hs each). Views: "
        "q (B, nh, T, hs), k and v (B, nkv, T, hs). Rotate q and k (half-split layout, positions 0..T-1, your 03 exercise or "
        "lmlab.model.positions.encodings.apply_rope). Expand k and v to nh heads so that query head h reads K/V head h // (nh // nkv). Causal "
        "softmax(q k^T / sqrt(hs)) v, heads back to (B, T, C), then w_o.",
        "q, k, v = F.linear(x, w_qkv).split([...], dim=2)\nq = q.view(...).transpose(1, 2)  # (B, nh, T, hs)\nk, v = ...\n"
        "q, k = rope(q), rope(k)\nk, v = ...  # n_kv_heads -> n_heads, groups side by side\ny = ...  # causal attention\n"
        "return F.linear(..., w_o)  # heads merged back to (B, T, C)",
    ),
    checks=(
        Check("the grouping alone: one token (no RoPE effect, attention returns v), 4 on 2 and 6 on 3 K/V heads", _gqa_grouping),
        Check("RoPE alone: as many K/V heads as query heads (no grouping), base 500", _gqa_rope_alone),
        Check("equals F.scaled_dot_product_attention(enable_gqa=True) on RoPE-rotated q, k (GQA, another base, MHA)", _gqa_sdpa),
        Check("equals lmlab's attention layer in a position='rope' model with the same weights (MQA and GQA)", _gqa_lmlab),
    ),
    reference="lmlab.model.attention:gqa_rope_attention",
))
