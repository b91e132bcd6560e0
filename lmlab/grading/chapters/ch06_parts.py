"""Chapter 06 graders, part 2 (``exercises/06_long_context.ipynb``): YaRN's frequency blend and the
attention-sink cache's eviction. Imported by :mod:`lmlab.grading.chapters.ch06`.

YaRN is checked against Hugging Face's own ``ROPE_INIT_FUNCTIONS["yarn"]`` (the parity code of
tests/test_longctx.py) when transformers is installed, and always against a construction written
here from the paper; the eviction against slicing by hand and a run of appends.
"""

from __future__ import annotations

import math

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.model.positions.rope_scaling import scaled_rope_frequencies

_YARN_CASES = ((32, 10000.0, 4.0, 32, 32.0, 1.0), (32, 10000.0, 8.0, 256, 16.0, 2.0), (64, 500000.0, 2.0, 1024, 32.0, 1.0), (16, 10000.0, 4.0, 64, 32.0, 1.0))


def _yarn_expected(d, base, s, L, beta_fast, beta_slow):
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)

    def dim(n_rot):  # the pair index whose wavelength fits n_rot times into L tokens
        return d * math.log(L / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = max(math.floor(dim(beta_fast)), 0), min(math.ceil(dim(beta_slow)), d - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)  # 0: keep, 1: interpolate
    return inv * (1 - ramp) + inv / s * ramp, 0.1 * math.log(s) + 1.0


def _yarn_call(f, case):
    d, base, s, L, bf, bs = case
    what = f"yarn_frequencies(head_dim={d}, base={base:g}, factor={s:g}, original_context_length={L}, beta_fast={bf:g}, beta_slow={bs:g})"
    out = f(d, base, s, L, bf, bs)
    expect_true(isinstance(out, (tuple, list)) and len(out) == 2, f"{what} should return (inv_freq, attention_factor)")
    inv, af = out
    inv = expect_tensor(inv, what + "[0] (inv_freq)", shape=(d // 2,))
    expect_true(isinstance(af, (int, float)) and not isinstance(af, bool), f"{what}[1] (attention_factor) should be a float, got {af!r}")
    return what, inv.float(), float(af)


def _yarn_paper(f):
    for case in _YARN_CASES:
        what, inv, af = _yarn_call(f, case)
        want_inv, want_af = _yarn_expected(*case)
        expect_close(inv, want_inv, what + "[0]: the blend of original and interpolated frequencies", atol=1e-7, rtol=1e-5)
        expect_close(torch.tensor(af), torch.tensor(want_af), what + "[1]: the attention factor 0.1 ln(s) + 1", atol=1e-9)


def _yarn_hf(f):
    try:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except Exception:  # transformers is optional: the paper's construction stands in
        return _yarn_paper(f)
    for d, base, s, L, bf, bs in _YARN_CASES[:3]:
        cfg = LlamaConfig(hidden_size=d * 4, num_attention_heads=4, max_position_embeddings=L, rope_theta=base,
                          rope_scaling={"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L, "beta_fast": bf, "beta_slow": bs})
        ref_inv, ref_af = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
        what, inv, af = _yarn_call(f, (d, base, s, L, bf, bs))
        expect_close(inv, ref_inv.float(), what + "[0] vs Hugging Face transformers' YaRN (ROPE_INIT_FUNCTIONS['yarn'])", atol=1e-7, rtol=1e-5)
        expect_close(torch.tensor(af), torch.tensor(float(ref_af)), what + "[1] vs transformers' attention factor", atol=1e-6)


register(Exercise(
    id="06.yarn_frequencies",
    points=4,
    minutes=25,
    timeout=20.0,  # importing transformers for the parity check takes seconds
    signature="yarn_frequencies(head_dim, base, factor, original_context_length, beta_fast=32, beta_slow=1) "
              "-> (inv_freq: (head_dim/2,) tensor, attention_factor: float)",
    hint="per frequency pair: how many full turns does it make over the trained length? Fast pairs keep their frequency, slow ones are interpolated, a ramp blends the middle.",
    hints=(
        "YaRN (NTK-by-parts) treats RoPE's pairs differently: a pair that rotates many times over the trained length L already "
        "knows every angle, so it keeps its frequency; a pair that rotates less than once must be interpolated (divided by the "
        "factor). In between, blend linearly. The softmax also gets a mild temperature, applied as a factor on cos and sin.",
        "inv_freq_i = base ** (-2i/d) for i = 0..d/2-1. The pair index where a wavelength fits n times into L solves "
        "L / (2 pi base^(2i/d)) = n: i(n) = d ln(L / (2 pi n)) / (2 ln base). Take floor(i(beta_fast)) and ceil(i(beta_slow)) "
        "(clamped to [0, d-1]) as the ends of a linear ramp from 0 to 1 over the pair index, clamped to [0, 1]. "
        "Blend each pair: (1 - ramp) times its frequency plus ramp times the frequency / factor. Attention factor: 0.1 ln(factor) + 1.",
        "inv = ...  # (d/2,) RoPE's original frequencies\nlo, hi = ..., ...  # floor / ceil of the pair index, clamped\n"
        "if lo == hi:\n    hi += 0.001  # as the reference code does\nramp = ...  # (d/2,): 0 up to lo, 1 from hi, linear between\n"
        "return ..., ...  # blended frequencies, attention factor",
    ),
    checks=(
        Check("equals the YaRN paper's construction (4 configurations)", _yarn_paper),
        Check("equals Hugging Face transformers' YaRN frequencies and attention factor", _yarn_hf),
    ),
    reference="lmlab.grading.chapters.ch06_parts:reference_yarn_frequencies",
))


def reference_yarn_frequencies(d, base, s, L, bf=32.0, bs=1.0):
    """lmlab's :func:`lmlab.model.positions.rope_scaling.scaled_rope_frequencies` with a YaRN ``scaling`` dict built from the arguments."""
    return scaled_rope_frequencies(d, base, {"type": "yarn", "factor": s, "original_context_length": L, "beta_fast": bf, "beta_slow": bs})

# ---------------------------------------------------------------------------------------------
# 06.sink_evict
# ---------------------------------------------------------------------------------------------


def _evict_call(f, L, n_sink, window, seed, start=0):
    k, v = seeded_randn(2, 2, L, 4, seed=seed), seeded_randn(2, 2, L, 4, seed=seed + 1)
    pos = torch.arange(start, start + L)
    what = f"sink_evict(k, v of {L} tokens, positions {start}..{start + L - 1}, n_sink={n_sink}, window={window})"
    out = f(k.clone(), v.clone(), pos.clone(), n_sink, window)
    expect_true(isinstance(out, (tuple, list)) and len(out) == 3, f"{what} should return (k, v, positions)")
    keep = list(range(L)) if L <= n_sink + window else list(range(n_sink)) + list(range(L - window, L))
    idx = torch.tensor(keep)
    expect_close(out[2], pos[idx], what + ": the kept positions", atol=0, rtol=0)
    expect_close(out[0], k[:, :, idx], what + ": the kept keys (the same tokens as the positions, in order)", atol=0, rtol=0)
    expect_close(out[1], v[:, :, idx], what + ": the kept values", atol=0, rtol=0)
    return out


def _evict_cases(f):
    _evict_call(f, 12, 2, 6, 600)  # evicts the middle
    _evict_call(f, 8, 2, 6, 610)  # exactly at capacity: nothing to evict
    _evict_call(f, 5, 2, 6, 620)  # under capacity
    _evict_call(f, 10, 0, 4, 630)  # no sinks: a plain sliding window
    _evict_call(f, 9, 4, 1, 640)


def _evict_stream(f):
    """Append one token at a time and evict after each, as a decoding loop does: the cache must end
    with the sinks and the most recent window, and never exceed n_sink + window."""
    n_sink, window = 2, 5
    k = v = torch.zeros(1, 1, 0, 2)
    pos = torch.zeros(0, dtype=torch.long)
    for t in range(20):
        new = torch.full((1, 1, 1, 2), float(t))
        k, v, pos = torch.cat((k, new), 2), torch.cat((v, -new), 2), torch.cat((pos, torch.tensor([t])))
        out = f(k, v, pos, n_sink, window)
        expect_true(isinstance(out, (tuple, list)) and len(out) == 3, "sink_evict should return (k, v, positions)")
        k, v, pos = out
        expect_true(k.size(2) <= n_sink + window, f"after token {t} the cache holds {k.size(2)} tokens; at most n_sink + window = {n_sink + window}")
    expect_equal(pos.tolist(), [0, 1, 15, 16, 17, 18, 19], "positions kept after streaming 20 tokens (n_sink=2, window=5)")
    expect_equal(k[0, 0, :, 0].tolist(), [0.0, 1.0, 15.0, 16.0, 17.0, 18.0, 19.0], "keys kept after streaming 20 tokens")


register(Exercise(
    id="06.sink_evict",
    points=3,
    minutes=15,
    signature="sink_evict(k: (B, nkv, L, hs), v: (B, nkv, L, hs), positions: (L,), n_sink: int, window: int) -> (k, v, positions)",
    hint="StreamingLLM keeps two things when the cache is over budget: the very first tokens (the sinks) and the most recent ones.",
    hints=(
        "A bounded cache for Λ-shaped attention: every query may see the first n_sink tokens and its last window tokens, so "
        "anything else can be thrown away. Under the budget n_sink + window nothing is evicted.",
        "The token axis is dim 2 of k and v and the only axis of positions. Build one index tensor (the sinks, then the last "
        "window indices) and apply the same selection to all three, so keys, values and positions stay aligned.",
        "L = k.size(2)\nif L <= ...:\n    return k, v, positions\nkeep = torch.cat((..., ...))\nreturn k[:, :, keep], ..., ...",
    ),
    checks=(
        Check("over, at and under capacity; no sinks", _evict_cases),
        Check("streaming 20 tokens one at a time keeps the sinks and the last window", _evict_stream),
    ),
    reference="lmlab.infer.long_context:sink_evict",
))
