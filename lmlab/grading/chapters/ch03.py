"""Chapter 03 graders (``exercises/03_positions.ipynb``): the sinusoidal table, RoPE in the half-split
layout, ALiBi slopes, T5's relative position bucket.

Every check compares with values computed here with plain Python loops and ``math`` (the formulas of
the papers, written out scalar by scalar) or with a property (norms kept, scores that depend on the
distance only). lmlab's own implementation (:mod:`lmlab.model.positions.encodings`) is only the ``reference`` that
the tests feed through the same checks.
"""

from __future__ import annotations

import math

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.plugin import expect_trains_like_lmlab
from lmlab.grading.registry import Check, CheckFailed, Exercise, register

# The notebook's order (03_positions.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "03.sinusoidal_embedding",
    "03.apply_rope",
    "03.alibi_slopes",
    "03.relative_position_bucket",
    "03.RotaryEmbedding",
)


# ---------------------------------------------------------------------------------------------
# 03.sinusoidal_embedding
# ---------------------------------------------------------------------------------------------


def _sin_loops(n: int, d: int) -> torch.Tensor:
    pe = torch.zeros(n, d)
    for p in range(n):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)  # pair i: columns 2i (sin) and 2i + 1 (cos)
            pe[p, 2 * i], pe[p, 2 * i + 1] = math.sin(angle), math.cos(angle)
    return pe


def _sin_by_hand(f):
    what = "sinusoidal_embedding(2, 4)"
    got = expect_tensor(f(2, 4), what, shape=(2, 4), dtype=torch.float32)
    expect_close(got[0], torch.tensor([0.0, 1.0, 0.0, 1.0]), f"{what}[0] (position 0: sin 0 = 0, cos 0 = 1 in every pair)")
    expected = torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)])
    expect_close(got[1], expected, f"{what}[1] = [sin(1), cos(1), sin(1/100), cos(1/100)] (pair 1 divides by 10000^(2/4) = 100)")


def _sin_values(f):
    for n, d in ((10, 8), (50, 16), (7, 2), (33, 48)):
        what = f"sinusoidal_embedding({n}, {d})"
        got = expect_tensor(f(n, d), what, shape=(n, d), dtype=torch.float32)
        expect_close(got, _sin_loops(n, d), f"{what} vs the formula PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)",
                     atol=1e-5, rtol=0)


def _sin_shift(f):
    pe = expect_tensor(f(40, 16), "sinusoidal_embedding(40, 16)", shape=(40, 16))
    for k in (1, 5, 12):
        dots = [float(pe[p] @ pe[p + k]) for p in range(40 - k)]
        expect_true(max(dots) - min(dots) < 1e-3,
                    f"PE[p] · PE[p + {k}] should be the same for every p (each pair is a rotation), but it ranges from "
                    f"{min(dots):.4f} to {max(dots):.4f}: are sin and cos of the SAME angle in each pair?")


register(Exercise(
    id="03.sinusoidal_embedding",
    points=2,
    signature="sinusoidal_embedding(n_positions: int, d_model: int) -> (n_positions, d_model) float32 tensor",
    hint="one frequency per pair of columns, falling geometrically from 1 to 1/10000; the pair holds the sine and the cosine of position times frequency.",
    minutes=10,
    hints=(
        "The Transformer's fixed table gives each position a vector of sines and cosines at geometrically spaced "
        "frequencies: the fast ones tell neighbours apart, the slow ones tell far-apart positions apart.",
        "Frequencies: one per column pair i = 0..d/2-1, 10000 ** (-2i / d): (d/2,). Angles: positions (T, 1) times "
        "frequencies (1, d/2) = (T, d/2). Even columns 0, 2, 4, ... hold the sines, odd columns the cosines.",
        "inv_freq = ...  # (d/2,)\nangles = ...  # (T, d/2)\npe = ...  # zeros, (T, d)\npe[:, 0::2] = ...\n"
        "pe[:, 1::2] = ...\nreturn pe",
    ),
    checks=(
        Check("positions 0 and 1 by hand (d_model = 4)", _sin_by_hand),
        Check("equals the formula for several sizes", _sin_values),
        Check("PE[p] · PE[p + k] depends on k only", _sin_shift),
    ),
    reference="lmlab.model.positions.encodings:sinusoidal_embedding",
))

# ---------------------------------------------------------------------------------------------
# 03.apply_rope (half-split layout)
# ---------------------------------------------------------------------------------------------


def _rope_loops(x: torch.Tensor, positions: list[int], base: float) -> torch.Tensor:
    """Half-split RoPE on ``x (..., T, d)`` scalar by scalar: pair i is (x[i], x[i + d/2])."""
    flat = x.reshape(-1, x.size(-2), x.size(-1))  # (N, T, d)
    out = flat.clone()
    d, h = x.size(-1), x.size(-1) // 2
    for n in range(flat.size(0)):
        for t, p in enumerate(positions):
            for i in range(h):
                a = p * base ** (-2 * i / d)
                x1, x2 = float(flat[n, t, i]), float(flat[n, t, i + h])
                out[n, t, i] = x1 * math.cos(a) - x2 * math.sin(a)
                out[n, t, i + h] = x1 * math.sin(a) + x2 * math.cos(a)
    return out.reshape(x.shape)


def _rope_call(f, x, positions, what, **kw):
    before = x.clone()
    got = expect_tensor(f(x, torch.tensor(positions), **kw), what, shape=tuple(x.shape), dtype=x.dtype)
    expect_true(torch.equal(x, before), f"{what} changed x in place; return a new tensor")
    return got


def _rope_by_hand(f):
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # (T=2, d=4)
    what = "apply_rope(x = [[1, 0, 0, 0], [0, 1, 0, 0]], positions = [3, 200])"
    got = _rope_call(f, x, [3, 200], what)
    expected = torch.tensor([[math.cos(3), 0.0, math.sin(3), 0.0], [0.0, math.cos(2.0), 0.0, math.sin(2.0)]])
    expect_close(got, expected, f"{what}: pair 0 is (x[0], x[2]) and turns 1 rad per position; pair 1 is (x[1], x[3]) "
                                f"and turns 1/100 rad per position", atol=1e-5, rtol=0)


def _rope_values(f):
    for shape, positions, base in (((6, 8), list(range(6)), 10000.0), ((2, 3, 5, 16), [0, 7, 1, 30, 4], 10000.0),
                                   ((4, 12), [10, 11, 12, 500], 500.0)):
        x = seeded_randn(*shape, seed=30 + len(shape))
        what = f"apply_rope(x {tuple(shape)}, positions={positions}, base={base})"
        got = _rope_call(f, x, positions, what, base=base)
        expect_close(got, _rope_loops(x, positions, base), f"{what} vs the half-split rotation", atol=1e-4, rtol=1e-4)


def _rope_properties(f):
    x = seeded_randn(1, 2, 9, 16, seed=33)
    pos = list(range(100, 109))
    got = _rope_call(f, x, pos, "apply_rope(x (1, 2, 9, 16), positions 100..108)")
    expect_close(got.norm(dim=-1), x.norm(dim=-1), "the norms of apply_rope's output vectors (a rotation keeps norms)", atol=1e-4)
    q, k = seeded_randn(1, 16, seed=34), seeded_randn(1, 16, seed=35)
    scores = []
    for m, n in ((5, 2), (40, 37), (1003, 1000)):
        qm = expect_tensor(f(q, torch.tensor([m])), f"apply_rope(q (1, 16), [{m}])", shape=(1, 16))
        kn = expect_tensor(f(k, torch.tensor([n])), f"apply_rope(k (1, 16), [{n}])", shape=(1, 16))
        scores.append(float(qm[0] @ kn[0]))
    expect_true(max(scores) - min(scores) < 1e-3,
                f"<rope(q, m), rope(k, n)> should depend on m - n only, but at distance 3 it gives {[round(s, 4) for s in scores]} "
                f"for (m, n) = (5, 2), (40, 37), (1003, 1000)")


register(Exercise(
    id="03.apply_rope",
    points=3,
    signature="apply_rope(x: (..., T, head_dim), positions: (T,) int tensor, base: float = 10000.0) -> (..., T, head_dim)",
    hint="rotate each pair of features (the half-split layout pairs feature i with i + d/2) by an angle that is the position "
         "times that pair's frequency; a 2-D rotation mixes the pair with a cos and a sin.",
    minutes=15,
    hints=(
        "RoPE encodes position by rotation: each pair of features of a query or key at position m turns by the angle m "
        "* theta_i. The dot product of two rotated vectors then depends only on the distance between their positions.",
        "theta_i = base ** (-2i / d) for i = 0..d/2-1: (d/2,). Angles: positions (T, 1) times theta (1, d/2) = (T, "
        "d/2); take their cos and sin. Split x's last dim into a first half x1 and a second half x2, (..., T, d/2) "
        "each: pair i is (x1[i], x2[i]). Rotate with the formula above and join the two halves back: (..., T, d), a "
        "new tensor.",
        "d = x.size(-1)\ntheta = ...  # (d/2,)\nangles = ...  # (T, d/2)\ncos, sin = ...\n"
        "x1, x2 = ...  # the two halves of the last dim\nreturn torch.cat((..., ...), dim=-1)",
    ),
    checks=(
        Check("unit vectors by hand (which dimensions form a pair, how fast each turns)", _rope_by_hand),
        Check("equals the half-split rotation for several shapes, positions and bases", _rope_values),
        Check("keeps norms, and q·k depends on the distance only", _rope_properties),
    ),
    reference="lmlab.model.positions.encodings:apply_rope",  # its default layout is the half split
))

# ---------------------------------------------------------------------------------------------
# 03.alibi_slopes
# ---------------------------------------------------------------------------------------------


def _geometric(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)  # n a power of two: start 2^(-8/n), ratio the same
    return [start ** (i + 1) for i in range(n)]


def _slopes_by_construction(n: int) -> list[float]:
    p = 1
    while p * 2 <= n:  # the largest power of two <= n
        p *= 2
    return _geometric(p) + _geometric(2 * p)[0::2][: n - p]


def _alibi_check(f, heads):
    for n in heads:
        what = f"alibi_slopes({n})"
        got = expect_tensor(f(n), what, shape=(n,))
        expect_true(got.is_floating_point(), f"{what} should be a float tensor, got dtype {got.dtype}")
        expect_close(got.float(), torch.tensor(_slopes_by_construction(n)), what, atol=1e-6, rtol=1e-5, check_dtype=False)


register(Exercise(
    id="03.alibi_slopes",
    points=2,
    signature="alibi_slopes(n_heads: int) -> (n_heads,) float tensor",
    hint="for a power-of-two head count the slopes are a geometric sequence; for other counts ALiBi's code combines "
         "the sequences of two powers of two (read the paper's footnote or its reference code).",
    minutes=10,
    hints=(
        "ALiBi adds -slope * distance to each head's attention scores. Every head gets its own slope, so some heads "
        "look far and some only nearby; the slopes form a geometric sequence.",
        "For n heads, n a power of two: start = 2 ** (-8 / n), and the slopes are start ** 1, start ** 2, ..., start "
        "** n. Otherwise let p be the largest power of two <= n: take the p slopes for p heads, then fill the missing "
        "n - p from the sequence for 2p heads, taking every other one (indices 0, 2, 4, ...).",
        "def geometric(n):\n    start = ...\n    return [...]  # start**1, ..., start**n\n\n"
        "p = ...  # the largest power of two <= n_heads\n"
        "slopes = geometric(p) + ...  # every other slope of geometric(2 * p), as many as are missing\n"
        "return ...  # a float tensor (n_heads,)",
    ),
    checks=(
        Check("powers of two: 1, 2, 4, 8, 16 heads (8 heads: 1/2, 1/4, ..., 1/256)", lambda f: _alibi_check(f, (1, 2, 4, 8, 16))),
        Check("other head counts: 3, 5, 6, 12, 20 heads", lambda f: _alibi_check(f, (3, 5, 6, 12, 20))),
    ),
    reference="lmlab.model.positions.encodings:alibi_slopes",
))

# ---------------------------------------------------------------------------------------------
# 03.relative_position_bucket (T5)
# ---------------------------------------------------------------------------------------------


def _bucket_scalar(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    n, offset = num_buckets, 0
    if bidirectional:
        n //= 2
        offset = n if rel > 0 else 0  # keys after the query: the upper half of the buckets
        rel = abs(rel)
    else:
        rel = max(-rel, 0)  # distance back to the key; keys after the query -> 0
    max_exact = n // 2
    if rel < max_exact:
        return offset + rel
    large = max_exact + int(math.log(rel / max_exact) / math.log(max_distance / max_exact) * (n - max_exact))
    return offset + min(large, n - 1)


def _bucket_check(f, bidirectional, settings, what_mode):
    rel = torch.arange(-200, 201)
    for nb, md in settings:
        kw = {} if (nb, md, bidirectional) == (32, 128, True) else dict(bidirectional=bidirectional, num_buckets=nb, max_distance=md)
        what = f"relative_position_bucket(arange(-200, 201){''.join(f', {k}={v}' for k, v in kw.items())})"
        got = expect_tensor(f(rel.clone(), **kw), what, shape=(401,))
        expect_true(not got.is_floating_point() and got.dtype != torch.bool, f"{what} should be an integer tensor, got dtype {got.dtype}")
        expected = [_bucket_scalar(r, bidirectional, nb, md) for r in rel.tolist()]
        got_list = got.tolist()
        if got_list != expected:
            i = next(i for i, (a, b) in enumerate(zip(got_list, expected)) if a != b)
            raise CheckFailed(f"{what} ({what_mode}): relative position {int(rel[i])} (key - query) should go to bucket "
                              f"{expected[i]}, got {got_list[i]} ({sum(a != b for a, b in zip(got_list, expected))} of 401 differ)")


def _bucket_shape(f):
    rel = torch.arange(8)[None, :] - torch.arange(8)[:, None]  # (T_q, T_k): key - query
    what = "relative_position_bucket(key - query for 8 tokens, a (8, 8) tensor, bidirectional=False, num_buckets=8, max_distance=6)"
    got = expect_tensor(f(rel, bidirectional=False, num_buckets=8, max_distance=6), what, shape=(8, 8))
    expected = [[_bucket_scalar(int(r), False, 8, 6) for r in row] for row in rel.tolist()]
    expect_equal(got.tolist(), expected, what)


register(Exercise(
    id="03.relative_position_bucket",
    points=3,
    signature="relative_position_bucket(relative_position: int tensor, bidirectional=True, num_buckets=32, max_distance=128) "
              "-> int tensor of the same shape",
    hint="near distances get a bucket each, far ones share buckets on a log scale up to max_distance; bidirectional mode "
         "keeps keys before and after the query in separate halves.",
    minutes=20,
    hints=(
        "T5 learns one attention bias per bucket, not per distance: small distances get a bucket each, larger ones "
        "share buckets on a log scale, and everything at or beyond max_distance lands in the last bucket.",
        "relative_position = key - query, any shape; the result has the same shape, dtype long. Steps: (1) how many "
        "buckets one direction owns (bidirectional: half, and keys after the query are offset into the upper half; "
        "causal: all of them); (2) a distance that is never negative (causal: later keys count as distance 0); "
        "(3) the first half of a direction's buckets are exact, one per distance; (4) larger distances follow the "
        "log formula in the markdown above, in float, rounded down, then capped at the direction's last bucket. "
        "Compute both cases for every element and pick with torch.where.",
        "offset = ...     # 0, or the size of one half for keys after the query (bidirectional only)\n"
        "dist = ...       # the distance, never negative, long\n"
        "max_exact = ...  # how many distances get their own bucket\n"
        "large = ...      # the log-spaced bucket: the line to write yourself; clamp dist to >= 1 before the log\n"
        "return offset + torch.where(dist < max_exact, ..., ...)",
    ),
    checks=(
        Check("bidirectional, defaults (32 buckets, max_distance 128) and 16 / 64", lambda f: _bucket_check(f, True, ((32, 128), (16, 64)), "bidirectional")),
        Check("causal (bidirectional=False): 32 / 128 and 10 / 20", lambda f: _bucket_check(f, False, ((32, 128), (10, 20)), "causal")),
        Check("a (T_q, T_k) matrix of relative positions keeps its shape", _bucket_shape),
    ),
    reference="lmlab.model.positions.encodings:relative_position_bucket",
))

# ---------------------------------------------------------------------------------------------
# 03.RotaryEmbedding: your RoPE inside the model (lmlab.model.registry.register_rope), trained
# ---------------------------------------------------------------------------------------------

_ROPE_MODEL = dict(context_length=32, d_model=32, n_layers=2, n_heads=4, position="rope", bias=False)


def _rope_formula(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Independent: float64 complex numbers, pair i = (x_i, x_{i + d/2}) turned by position * base^(-2i/d)."""
    d = x.size(-1)
    xd = x.double()
    z = torch.complex(xd[..., : d // 2], xd[..., d // 2:])  # (..., T, d/2)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    z = z * torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)  # (T, d/2) rotations
    return torch.cat((z.real, z.imag), dim=-1).float()


def _rope_module(cls):
    for head_dim, base in ((8, 10000.0), (6, 100.0)):
        rope = cls(head_dim, base)
        x = seeded_randn(2, 3, 5, head_dim, seed=80 + head_dim)
        positions = torch.tensor([4, 0, 9, 2, 7])
        before = x.clone()
        got = expect_tensor(rope(x, positions), f"RotaryEmbedding({head_dim}, {base})(x (2, 3, 5, {head_dim}), positions)",
                            shape=tuple(x.shape))
        expect_true(torch.equal(x, before), "RotaryEmbedding changed x in place; return a new tensor")
        expect_close(got, _rope_formula(x, positions, base),
                     f"RotaryEmbedding({head_dim}, base={base}) at positions [4, 0, 9, 2, 7] (pairs (i, i + d/2), half-split layout)",
                     atol=1e-5)


def _rope_in_model(cls):
    expect_trains_like_lmlab(cls, "position", _ROPE_MODEL, "your RotaryEmbedding on every layer's queries and keys")


register(Exercise(
    id="03.RotaryEmbedding",
    points=2,
    kind="class",
    signature="class RotaryEmbedding(nn.Module): RotaryEmbedding(head_dim: int, base: float = 10000.0); forward(x (..., T, head_dim), positions (T,)) -> same shape",
    hint="the module only remembers head_dim and base; the rotation is your apply_rope.",
    minutes=5,
    hints=(
        "Wrapping RoPE in an nn.Module lets the model call it like any other layer. RoPE has no trained weights: the "
        "module only keeps its settings.",
        "__init__(head_dim, base): remember them (you may also precompute the frequencies as a buffer). forward(x "
        "(..., T, head_dim), positions (T,)) returns the rotated x, same shape.",
        "# __init__(self, head_dim, base=10000.0):\n...  # remember head_dim and base\n\n"
        "# forward(self, x, positions):\nreturn ...  # your apply_rope",
    ),
    checks=(
        Check("equals a float64 complex-number rotation at arbitrary positions, two bases", _rope_module),
        Check("inside lmlab's model: lmlab's logits, and the same losses after 8 Adam steps", _rope_in_model),
    ),
    reference="lmlab.model.positions.encodings:RotaryEmbedding",
    timeout=30.0,
))
