"""Chapter 06 graders (``exercises/06_long_context.ipynb``): position interpolation, the NTK-aware
base, the Λ-shaped (sinks + window) mask, exact top-k memory retrieval.

Every check compares with values computed here from the definitions (plain Python loops and
``math``, ``torch.topk`` / sorting on brute-force inner products) or with a property (the
interpolated positions of ``s·L`` tokens stay below ``L``; with the NTK base the slowest pair is
slowed by exactly ``s``). lmlab's own implementation (:mod:`lmlab.infer.long_context`) is only the
``reference`` that the tests feed through the same checks.
"""

from __future__ import annotations

import math

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.chapters import ch06_parts  # noqa: F401 (registers 06.yarn_frequencies, 06.sink_evict)
from lmlab.grading.registry import CheckFailed, Check, Exercise, register
from lmlab.model.memory import KNNMemory
from lmlab.model.positions.rope_scaling import scaled_rope_frequencies

# The notebook's order (06_long_context.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "06.interpolate_positions",
    "06.ntk_base",
    "06.lambda_mask",
    "06.memory_top_k",
    "06.yarn_frequencies",
    "06.sink_evict",
)


# ---------------------------------------------------------------------------------------------
# 06.interpolate_positions
# ---------------------------------------------------------------------------------------------


def _pi_values(f):
    for T, s in ((8, 2.0), (12, 4.0), (5, 1.0), (10, 3.0)):
        pos = torch.arange(T)
        what = f"interpolate_positions(torch.arange({T}), factor={s:g})"
        got = expect_tensor(f(pos.clone(), s), what, shape=(T,))
        expect_true(got.is_floating_point(), f"{what} should return float positions (p / s is not an integer), got dtype {got.dtype}")
        expected = torch.tensor([p / s for p in range(T)], dtype=got.dtype)
        expect_close(got, expected, f"{what} (position p becomes p / s)", atol=1e-6, check_dtype=False)


def _pi_range(f):
    L, s = 16, 4.0
    pos = torch.arange(int(s * L))
    got = expect_tensor(f(pos, s), f"interpolate_positions(torch.arange({int(s * L)}), factor={s:g})", shape=(int(s * L),))
    expect_true(float(got.max()) < L, f"after interpolation {int(s * L)} tokens must fit in the trained range [0, {L}): "
                                      f"the largest position is {float(got.max()):g}")
    odd = torch.tensor([3, 7, 100])
    got = expect_tensor(f(odd, 4.0), "interpolate_positions(torch.tensor([3, 7, 100]), factor=4)", shape=(3,))
    expect_close(got.double(), torch.tensor([0.75, 1.75, 25.0], dtype=torch.float64),
                 "interpolate_positions(torch.tensor([3, 7, 100]), factor=4): fractional positions are kept", atol=1e-6)


def reference_interpolate_positions(positions, factor):
    """Position interpolation from lmlab's :func:`lmlab.model.positions.rope_scaling.scaled_rope_frequencies` (linear scaling)."""
    # a head of size 2 has one pair turning 1 radian per token; PI divides that by s: angle = p / s
    return positions.float() * scaled_rope_frequencies(2, 10000.0, {"type": "linear", "factor": factor})[0][0]


register(Exercise(
    id="06.interpolate_positions",
    points=1,
    signature="interpolate_positions(positions: (T,) int tensor, factor: float) -> (T,) float tensor",
    hint="position interpolation squeezes s·L tokens into the trained range [0, L).",
    minutes=5,
    hints=(
        "Position interpolation (Chen et al. 2023) squeezes a long sequence into the trained position range instead of "
        "extrapolating past it: RoPE sees fractional positions it never saw, but all inside the range it knows.",
        "factor s = new length / trained length. Position m becomes m / s: a float tensor of the same shape (integer "
        "division would lose the fractions).",
        "return ...  # float positions, shrunk by factor",
    ),
    checks=(
        Check("p / s for several lengths and factors, as floats", _pi_values),
        Check("s·L tokens land below L; fractional positions are kept", _pi_range),
    ),
    reference="lmlab.grading.chapters.ch06:reference_interpolate_positions",
))

# ---------------------------------------------------------------------------------------------
# 06.ntk_base
# ---------------------------------------------------------------------------------------------


def _call_number(f, args, what):
    got = f(*args)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise CheckFailed(f"{what} should return a number, got {type(got).__name__}")
    return float(got)


def _ntk_values(f):
    for base, s, d in ((10000.0, 4.0, 16), (10000.0, 8.0, 128), (500.0, 2.0, 64), (10000.0, 1.0, 32)):
        what = f"ntk_base(base={base:g}, factor={s:g}, head_dim={d})"
        got = _call_number(f, (base, s, d), what)
        expected = base * s ** (d / (d - 2))
        expect_true(math.isclose(got, expected, rel_tol=1e-6), f"{what}: expected {expected:.6g}, got {got:.6g}")


def _ntk_property(f):
    base, s, d = 10000.0, 4.0, 8
    new = _call_number(f, (base, s, d), f"ntk_base({base:g}, {s:g}, {d})")
    plain = [base ** (-2 * i / d) for i in range(d // 2)]
    scaled = [new ** (-2 * i / d) for i in range(d // 2)] if new > 0 else [float("nan")] * (d // 2)
    ratio = plain[-1] / scaled[-1]
    expect_true(math.isclose(ratio, s, rel_tol=1e-6),
                f"with ntk_base({base:g}, {s:g}, {d}) the slowest pair (i = {d // 2 - 1}) should turn exactly {s:g}× slower, "
                f"it turns {ratio:.4g}× slower (the exponent is d/(d-2) so that (d-2)/d · d/(d-2) = 1)")
    expect_true(math.isclose(scaled[0], plain[0]), "the fastest pair (i = 0) must not change (any base to the power 0 is 1)")


register(Exercise(
    id="06.ntk_base",
    points=1,
    signature="ntk_base(base: float, factor: float, head_dim: int) -> float",
    hint="choose the new base so that the lowest frequency is stretched by exactly the factor while the highest stays put.",
    minutes=10,
    hints=(
        "NTK-aware scaling changes RoPE's base instead of the positions: the highest frequency (local order) stays as "
        "it is, and the lowest frequency is slowed down by the whole factor, as interpolation would.",
        "Pair i rotates with base ** (-2i / d); the lowest frequency is i = d/2 - 1, that is base ** (-(d - 2) / d). "
        "Find the new base b' with b' ** (-(d - 2) / d) = base ** (-(d - 2) / d) / factor; pair 0 (frequency 1) stays "
        "put whatever the base.",
        "exponent = ...  # from solving the equation for b'\nreturn float(base) * float(factor) ** exponent",
    ),
    checks=(
        Check("base · s^(d/(d-2)) for several bases, factors and head sizes", _ntk_values),
        Check("the slowest pair slows by exactly s, the fastest not at all", _ntk_property),
    ),
    reference="lmlab.model.positions.rope_scaling:ntk_base",
))

# ---------------------------------------------------------------------------------------------
# 06.lambda_mask
# ---------------------------------------------------------------------------------------------


def _lambda_loops(T: int, n_sink: int, window: int) -> torch.Tensor:
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):  # causal: j <= i
            m[i, j] = i - j < window or j < n_sink  # the window counts the token itself
    return m


def _lambda_values(f):
    for T, n_sink, window in ((8, 2, 3), (6, 1, 2), (10, 0, 4), (7, 3, 1), (5, 2, 9)):
        what = f"lambda_mask(T={T}, n_sink={n_sink}, window={window})"
        got = expect_tensor(f(T, n_sink, window), what, shape=(T, T), dtype=torch.bool)
        expect_close(got, _lambda_loops(T, n_sink, window), f"{what} (row i: keys j <= i with i - j < window or j < n_sink)")


def _lambda_counts(f):
    T, n_sink, window = 24, 2, 5
    what = f"lambda_mask({T}, {n_sink}, {window})"
    got = expect_tensor(f(T, n_sink, window), what, shape=(T, T), dtype=torch.bool)
    expect_true(not got.triu(1).any(), f"{what} lets a query see a later key; sinks too must stay causal (j <= i)")
    expect_equal(got.sum(1).tolist(), [min(i + 1, window + n_sink) for i in range(T)],
                 f"keys seen per query by {what} (at most {n_sink} sinks + {window} recent, itself included)")


register(Exercise(
    id="06.lambda_mask",
    points=2,
    signature="lambda_mask(T: int, n_sink: int, window: int) -> (T, T) bool tensor, True = may attend",
    hint="a causal sliding window, plus the first n_sink keys that every query may always see.",
    minutes=5,
    hints=(
        "Λ-shaped attention (LM-Infinite, StreamingLLM) keeps two kinds of keys for every query: the first few tokens, "
        "which soak up attention (the sinks), and a local window of recent ones.",
        "Like chapter 04's sliding-window mask (queries as a column, keys as a row, causal and within `window`), OR'ed "
        "with 'the key is one of the first n_sink positions'. It stays causal: no query sees the future, not even a "
        "sink.",
        "i = ...  # (T, 1)\nj = ...  # (1, T)\nreturn (...) & ((...) | (...))  # causal, and (recent or sink)",
    ),
    checks=(
        Check("equals a loop construction for several T, n_sink, window", _lambda_values),
        Check("causal, and each query sees min(i + 1, n_sink + window) keys", _lambda_counts),
    ),
    reference="lmlab.infer.long_context:lambda_mask",
))

# ---------------------------------------------------------------------------------------------
# 06.memory_top_k
# ---------------------------------------------------------------------------------------------


def _topk_call(f, q, mk, mv, k, what):
    inputs = [t.clone() for t in (q, mk, mv)]
    out = f(q, mk, mv, k)
    expect_true(isinstance(out, tuple) and len(out) == 3, f"{what} must return a tuple (scores, indices, values), got {type(out).__name__}")
    expect_true(all(torch.equal(a, b) for a, b in zip(inputs, (q, mk, mv))), f"{what} changed its inputs in place")
    T, hv = q.size(0), mv.size(1)
    scores = expect_tensor(out[0], f"{what}: scores", shape=(T, k))
    idx = expect_tensor(out[1], f"{what}: indices", shape=(T, k))
    vals = expect_tensor(out[2], f"{what}: values", shape=(T, k, hv))
    expect_true(not idx.is_floating_point(), f"{what}: indices must be integers (rows of the memory), got {idx.dtype}")
    return scores, idx, vals


def _brute_force(q, mk, k):
    """Per query: every memory row's inner product, sorted from the largest (plain Python)."""
    best = []
    for t in range(q.size(0)):
        scored = sorted(((float(q[t] @ mk[m]), m) for m in range(mk.size(0))), reverse=True)[:k]
        best.append(scored)
    return best


def _topk_values(f):
    q, mk, mv = seeded_randn(5, 8, seed=60), seeded_randn(20, 8, seed=61), seeded_randn(20, 3, seed=62)
    what = "memory_top_k(q (5, 8), mem_k (20, 8), mem_v (20, 3), k=4)"
    scores, idx, vals = _topk_call(f, q, mk, mv, 4, what)
    best = _brute_force(q, mk, 4)
    expect_equal(idx.tolist(), [[m for _, m in row] for row in best],
                 f"{what}: indices (the 4 LARGEST inner products q·k, from the largest down)")
    expect_close(scores, torch.tensor([[s for s, _ in row] for row in best]), f"{what}: scores (q·k of those rows)", atol=1e-5)
    expect_close(vals, mv[torch.tensor([[m for _, m in row] for row in best])], f"{what}: values (mem_v at those rows)", atol=0)


def _topk_inner_product(f):
    # memory keys of very different norms: inner product and L2 distance disagree on the nearest
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mk = torch.tensor([[0.9, 0.1], [5.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.1, 0.9]])
    mv = torch.arange(10.0).reshape(5, 2)
    what = "memory_top_k(q = [[1, 0], [0, 1]], mem_k = 5 keys of different norms, k=2)"
    scores, idx, vals = _topk_call(f, q, mk, mv, 2, what)
    expect_equal(idx.tolist(), [[1, 0], [2, 4]],
                 f"{what}: indices (by inner product q·k — the big key [5, 0] wins for q = [1, 0], though [0.9, 0.1] is nearer in L2)")
    expect_close(scores, torch.tensor([[5.0, 0.9], [3.0, 0.9]]), f"{what}: scores", atol=1e-6)
    k_all = mk.size(0)
    scores, idx, _ = _topk_call(f, q, mk, mv, k_all, f"memory_top_k(..., k={k_all}) (the whole memory)")
    expect_true(bool((scores[:, :-1] >= scores[:, 1:]).all()), "scores must be sorted from the largest down")


def reference_memory_top_k(q, mem_k, mem_v, k):
    """The top-k search of lmlab's :class:`lmlab.model.memory.KNNMemory` on one head, with the row index of each key."""
    mem = KNNMemory(size=mem_k.size(0))
    mem.add(mem_k[None, None], mem_v[None, None])  # (B=1, nkv=1, M, hs)
    scores, keys, values = mem.search(q[None, None], k)  # (1, 1, T, k), (1, 1, T, k, hs), (1, 1, T, k, hv)
    idx = (keys[0, 0][:, :, None, :] == mem_k[None, None]).all(-1).float().argmax(-1)  # (T, k): which row each key is
    return scores[0, 0], idx, values[0, 0]


register(Exercise(
    id="06.memory_top_k",
    points=3,
    signature="memory_top_k(q (T, hs), mem_k (M, hs), mem_v (M, hv), k: int) -> (scores (T, k), indices (T, k), values (T, k, hv))",
    hint="score every memory key against the query the way attention does (not a distance), keep the best k in order, and fetch their values.",
    minutes=10,
    hints=(
        "Memorizing Transformers keep an external memory of (key, value) pairs and let each query fetch its k nearest "
        "keys, where 'nearest' means the largest attention score q . k, as attention itself would rank them.",
        "Scores: q (T, hs) times mem_k transposed (hs, M) = (T, M). torch.topk along the last dim gives the k best "
        "scores and their indices, largest first: (T, k) each. Indexing mem_v (M, hv) with the (T, k) indices gives "
        "(T, k, hv).",
        "scores = ...  # (T, M)\ntop, idx = ...  # (T, k) each, best first\nreturn top, idx, ...  # values (T, k, hv)",
    ),
    checks=(
        Check("the k largest inner products, sorted, with their rows and values", _topk_values),
        Check("inner product (not L2 distance) decides; the whole memory comes back sorted", _topk_inner_product),
    ),
    reference="lmlab.grading.chapters.ch06:reference_memory_top_k",
))
