"""Chapter 00 graders, part 2: the model itself (``exercises/00_tour.ipynb``): one causal attention
head, and the whole GPT forward from ``lmlab.GPT``'s state dict. Imported by :mod:`lmlab.grading.chapters.ch00`.

The head is checked against ``F.scaled_dot_product_attention(is_causal=True)`` on the same projections and
by a causality probe; the GPT against ``lmlab.GPT``'s logits with the same (large, random) weights, so a
missing mask, scale or norm cannot hide in init-scale noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_tensor, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator, global_seed
from lmlab.model import GPT, ModelConfig

# ---------------------------------------------------------------------------------------------
# 00.attention_head
# ---------------------------------------------------------------------------------------------


def _head_case(f, B, T, C, hs, seed):
    x = seeded_randn(B, T, C, seed=seed)
    wq, wk, wv = (seeded_randn(hs, C, seed=seed + i, scale=0.7) for i in (1, 2, 3))
    what = f"attention_head(x {B, T, C}, w_q/w_k/w_v {hs, C})"
    q, k, v = (x @ w.T for w in (wq, wk, wv))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # before the learner's call
    got = expect_tensor(f(x, wq, wk, wv), what, shape=(B, T, hs))
    expect_close(got, want, what + " vs F.scaled_dot_product_attention(q, k, v, "
                 "is_causal=True) on the same projections (masked and scaled by 1/sqrt(head size))", atol=1e-5, rtol=1e-4)


def _head_sdpa(f):
    _head_case(f, 2, 6, 8, 4, 100)
    _head_case(f, 1, 9, 16, 16, 110)


def _head_causal(f):
    x = seeded_randn(1, 8, 8, seed=120)
    w = [seeded_randn(4, 8, seed=121 + i) for i in range(3)]
    y = expect_tensor(f(x, *w), "attention_head(x (1, 8, 8), ...)", shape=(1, 8, 4))
    x2 = x.clone()
    x2[0, 5:] = seeded_randn(3, 8, seed=130) * 5  # change the future of position 4
    y2 = expect_tensor(f(x2, *w), "attention_head(x with tokens 5..7 changed)", shape=(1, 8, 4))
    expect_close(y2[0, :5], y[0, :5], "outputs at positions 0..4 after changing tokens 5..7 (a causal head never sees "
                 "the future)", atol=1e-6)


register(Exercise(
    id="00.attention_head",
    points=3,
    minutes=15,
    signature="attention_head(x: (B, T, C), w_q, w_k, w_v: (hs, C) as in nn.Linear) -> (B, T, hs)",
    hint="scores between every query and every key, scaled, with the future hidden, turned into weights that sum to 1 per query.",
    hints=(
        "Attention is a weighted average of values, where the weight of key j for query i grows with q_i . k_j. "
        "A causal decoder must give the future zero weight, and dividing the scores by sqrt(head size) keeps softmax from saturating.",
        "q, k, v = x @ w.T for each weight: (B, T, hs). Scores q @ k^T: (B, T, T), divide by sqrt(hs). Fill the entries above the "
        "diagonal with -inf, softmax over the last dim (the keys), multiply by v: (B, T, hs).",
        "q, k, v = ...\nscores = q @ k.transpose(-2, -1) / ...\nmask = torch.ones(T, T, dtype=torch.bool).tril()\n"
        "scores = scores.masked_fill(~mask, float(\"-inf\"))\nreturn torch.softmax(scores, dim=...) @ v",
    ),
    checks=(
        Check("equals F.scaled_dot_product_attention(is_causal=True) on the same projections", _head_sdpa),
        Check("changing later tokens leaves earlier outputs unchanged", _head_causal),
    ),
    reference="lmlab.model.minimal_gpt:attention_head",
))

# ---------------------------------------------------------------------------------------------
# 00.gpt_forward
# ---------------------------------------------------------------------------------------------


def _gpt_case(f, n_layers, n_heads, d_model, T, seed, scale=0.5):
    cfg = ModelConfig(vocab_size=11, context_length=12, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    with global_seed(seed):
        model = GPT(cfg).eval()
    with torch.no_grad():
        g = check_generator(seed + 1)
        for p in model.parameters():
            p.normal_(0, scale, generator=g)  # large weights: every mistake moves the logits visibly
        idx = torch.randint(11, (2, T), generator=check_generator(seed))
        expected = model(idx)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    what = f"gpt_forward(lmlab.GPT's state dict: {n_layers} layers, {n_heads} heads, d_model {d_model}; idx (2, {T}))"
    got = expect_tensor(f(state, idx.clone(), n_heads), what, shape=(2, T, 11))
    expect_close(got.detach(), expected, what + " vs lmlab.GPT's logits with the same weights", atol=1e-4, rtol=1e-4)


def _gpt_one(f):
    _gpt_case(f, 1, 2, 16, 7, 140)


def _gpt_two(f):
    _gpt_case(f, 2, 4, 16, 12, 150)
    _gpt_case(f, 3, 1, 8, 5, 160)


register(Exercise(
    id="00.gpt_forward",
    points=5,
    minutes=30,
    signature="gpt_forward(state: lmlab.GPT state dict, idx: (B, T) token ids, n_heads: int) -> logits (B, T, V)",
    hint="embed tokens and positions, run every block (attention then MLP, each as a pre-LN residual branch), final norm, tied output layer.",
    hints=(
        "lmlab.GPT's default model is GPT-2's: token + learned position embeddings, a stack of pre-LN blocks "
        "(x = x + attn(norm1(x)); x = x + ffn(norm2(x))), a final LayerNorm, and an output layer that reuses the token embedding.",
        "Print state's keys and shapes first. Per block i: LayerNorm with blocks.i.norm1.weight/.bias (eps 1e-5); one "
        "F.linear with attn.qkv gives q, k, v side by side (3C outputs); split into n_heads heads of C // n_heads; causal "
        "attention per head; join the heads and apply attn.proj; then norm2, ffn.up, exact GELU, ffn.down.",
        "x = ...  # token embeddings of idx + position embeddings of 0..T-1: (B, T, C)\nfor i in ...:  # every block\n"
        "    h = F.layer_norm(x, (C,), ...)\n"
        "    q, k, v = F.linear(h, ...).split(C, dim=2)\n    ...  # heads: view(B, T, nh, hs).transpose(1, 2)\n    x = x + ...\n"
        "return F.linear(F.layer_norm(x, ...), state[\"lm_head.weight\"])",
    ),
    checks=(
        Check("one layer: the logits equal lmlab.GPT's with the same weights", _gpt_one),
        Check("two and three layers, 4 heads and 1 head", _gpt_two),
    ),
    reference="lmlab.model.minimal_gpt:gpt_forward",
))
