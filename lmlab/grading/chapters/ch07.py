"""Chapter 07 graders (``exercises/07_decoding.ipynb``): temperature, top-k, top-p, a beam step, a penalty.

Every check compares with ``torch.softmax``, an independent construction written here with plain
Python loops and sorting, or a property (rows sum to 1, inputs left unchanged, t = 0 is the argmax).
lmlab's own implementation is only the ``reference`` that the tests feed through the same checks.
"""

from __future__ import annotations

import math

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.chapters import ch07_beam  # noqa: F401 (registers 07.beam_step)
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator

# The notebook's order (07_decoding.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "07.softmax_with_temperature",
    "07.top_k_filter",
    "07.top_p_filter",
    "07.beam_step",
    "07.repetition_penalty",
)


NEG = -math.inf



def _ranked(row: list[float]) -> list[int]:
    """Token ids by value, largest first; equal values: lower id first."""
    return sorted(range(len(row)), key=lambda i: (-row[i], i))


# ---------------------------------------------------------------------------------------------
# 07.softmax_with_temperature
# ---------------------------------------------------------------------------------------------


def _temp_call(f, logits, t, what):
    before = logits.clone()
    got = expect_tensor(f(logits, t), what, shape=tuple(logits.shape), dtype=logits.dtype)
    expect_true(torch.equal(logits, before), f"{what} changed its input logits in place; work on a copy")
    return got


def _temp_values(f):
    logits = seeded_randn(3, 7, seed=70, scale=2.0)
    for t in (1.0, 0.5, 2.0):
        what = f"softmax_with_temperature(logits (3, 7), {t})"
        got = _temp_call(f, logits, t, what)
        expect_close(got, torch.softmax(logits / t, dim=-1), f"{what} vs softmax(logits / {t})", atol=1e-6)


def _temp_zero(f):
    logits = torch.tensor([[0.5, 2.0, -1.0, 2.0, 1.0], [-3.0, -1.0, -2.0, -1.5, -4.0]])
    what = "softmax_with_temperature(logits, 0) (t = 0 is greedy: all the probability on the first argmax)"
    got = _temp_call(f, logits, 0.0, what)
    expected = torch.zeros_like(logits)
    expected[0, 1] = 1.0  # the first of the two tied maxima
    expected[1, 1] = 1.0
    expect_close(got, expected, what, atol=1e-6)


def _temp_extremes(f):
    logits = seeded_randn(2, 9, seed=71, scale=40.0)
    what = "softmax_with_temperature(logits around ±100, 0.01)"
    got = _temp_call(f, logits, 0.01, what)
    expect_true(not torch.isnan(got).any(), f"{what} contains NaN: exp(logits / t) overflows; subtract the row maximum first "
                "(or use torch.softmax)")
    expect_close(got, torch.softmax(logits / 0.01, dim=-1), what, atol=1e-6)
    what = "softmax_with_temperature(logits, 1e6) (t → ∞ approaches uniform)"
    got = _temp_call(f, logits, 1e6, what)
    expect_close(got, torch.full_like(logits, 1 / 9), what, atol=1e-4)
    masked = logits.clone()
    masked[:, ::2] = NEG  # tokens already filtered out
    what = "softmax_with_temperature(logits with -inf entries, 3.0)"
    got = _temp_call(f, masked, 3.0, what)
    expect_close(got, torch.softmax(masked / 3.0, dim=-1), f"{what} (a -inf logit must keep probability 0)", atol=1e-6)


register(Exercise(
    id="07.softmax_with_temperature",
    points=2,
    signature="softmax_with_temperature(logits: (B, V) float tensor, temperature: float >= 0) -> (B, V) probabilities",
    hint="temperature rescales the logits, not the probabilities; t = 0 is the limit, so it needs its own case.",
    minutes=5,
    hints=(
        "Temperature divides the logits before the softmax: t < 1 sharpens the distribution, t > 1 flattens it; t -> "
        "infinity tends to uniform and t -> 0 to greedy (all the mass on the argmax).",
        "(B, V) -> (B, V) rows that sum to 1. t = 0 cannot be divided by: return a one-hot row at each row's argmax, "
        "in the logits' dtype. Otherwise a softmax over the last dim of logits / t.",
        "if temperature == 0:\n    return ...  # one-hot at the argmax, the logits' dtype\nreturn ...",
    ),
    checks=(
        Check("t = 1, 0.5 and 2 against softmax(logits / t)", _temp_values),
        Check("t = 0 puts all the probability on the first argmax", _temp_zero),
        Check("tiny t does not overflow, huge t is uniform, -inf stays at probability 0", _temp_extremes),
    ),
    reference="lmlab.infer.decoding:filtered_probs",
))

# ---------------------------------------------------------------------------------------------
# 07.top_k_filter
# ---------------------------------------------------------------------------------------------


def _top_k_expected(logits: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.full_like(logits, NEG)
    for b, row in enumerate(logits.tolist()):
        for i in _ranked(row)[:k]:
            out[b, i] = logits[b, i]
    return out


def _filter_call(f, logits, arg, what):
    before = logits.clone()
    got = expect_tensor(f(logits, arg), what, shape=tuple(logits.shape), dtype=logits.dtype)
    expect_true(torch.equal(logits, before), f"{what} changed its input logits in place; work on a copy (logits.clone())")
    return got


def _kept(got: torch.Tensor, b: int = 0) -> list[int]:
    return torch.isfinite(got[b]).nonzero().flatten().tolist()


def _top_k_random(f):
    logits = seeded_randn(4, 12, seed=72, scale=2.0)
    for k in (1, 3, 7):
        what = f"top_k_filter(logits (4, 12), {k})"
        got = _filter_call(f, logits, k, what)
        expect_close(got, _top_k_expected(logits, k), f"{what} (kept logits unchanged, the rest -inf)")


def _top_k_ties(f):
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    what = "top_k_filter([[1, 3, 3, 3, 0], [2, 2, 2, 2, 2]], 2)"
    got = _filter_call(f, logits, 2, what)
    counts = torch.isfinite(got).sum(dim=-1).tolist()
    expect_equal(counts, [2, 2], f"{what}: number of tokens kept per row (exactly k, also when the k-th value is tied)")
    expect_equal(_kept(got, 0), [1, 2], f"{what}: kept ids of row 0 (ties go to the lower token id)")
    expect_equal(_kept(got, 1), [0, 1], f"{what}: kept ids of row 1 (ties go to the lower token id)")


def _top_k_edges(f):
    logits = seeded_randn(2, 6, seed=73)
    what = "top_k_filter(logits (2, 6), 6) (k = V keeps everything)"
    expect_close(_filter_call(f, logits, 6, what), logits, what)
    what = "top_k_filter(logits (2, 6), 10) (k > V keeps everything)"
    expect_close(_filter_call(f, logits, 10, what), logits, what)
    masked = logits.clone()
    masked[:, 1::2] = NEG  # three finite logits per row
    what = "top_k_filter(logits with 3 finite entries per row, 2)"
    expect_close(_filter_call(f, masked, 2, what), _top_k_expected(masked, 2), what)


register(Exercise(
    id="07.top_k_filter",
    points=2,
    signature="top_k_filter(logits: (B, V) float tensor, k: int >= 1) -> (B, V) logits, -inf outside the top k",
    hint="find the k largest per row (ties: the lower id wins, so sort stably), keep exactly those and make every other logit impossible.",
    minutes=10,
    hints=(
        "Top-k sampling keeps only the k most likely tokens and renormalizes among them; every other token gets "
        "probability 0, that is a logit of -inf.",
        "Per row (B, V): the indices of the k largest logits. With ties the lower id must win, so use a stable "
        "descending sort (torch.sort(..., stable=True)) rather than topk. Turn the first k indices into a (B, V) bool "
        "'keep' mask (scatter) and fill the rest with -inf, in a new tensor.",
        "order = ...  # (B, V) indices, best first, ties -> lower id\n"
        "keep = ...  # (B, V) bool, True at the first k of order\nreturn ...  # -inf where not kept",
    ),
    checks=(
        Check("random logits, k = 1, 3, 7: the k largest keep their value", _top_k_random),
        Check("ties at the k-th place: exactly k kept, lower ids first", _top_k_ties),
        Check("k >= V keeps everything; -inf entries are never revived", _top_k_edges),
    ),
    reference="lmlab.infer.decoding:top_k_filter",
))

# ---------------------------------------------------------------------------------------------
# 07.top_p_filter
# ---------------------------------------------------------------------------------------------


def _top_p_kept(probs: list[float], p: float) -> list[int]:
    kept, mass = [], 0.0
    for i in _ranked(probs):
        if mass >= p:
            break
        kept.append(i)
        mass += probs[i]
    return sorted(kept)


def _top_p_expected(logits: torch.Tensor, p: float) -> torch.Tensor:
    out = torch.full_like(logits, NEG)
    probs = torch.softmax(logits.double(), dim=-1)
    for b in range(logits.size(0)):
        for i in _top_p_kept(probs[b].tolist(), p):
            out[b, i] = logits[b, i]
    return out


def _top_p_known(f):
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    for p, ids in ((0.6, [1, 3]), (0.7, [1, 3]), (0.85, [0, 1, 3]), (0.97, [0, 1, 2, 3]), (0.2, [1])):
        what = f"top_p_filter(log [[0.15, 0.5, 0.05, 0.3]], {p})"
        got = _filter_call(f, logits, p, what)
        expect_equal(_kept(got), ids, f"{what}: kept token ids (the smallest set reaching p, the token that crosses p included)")
        expect_close(got, _top_p_expected(logits, p), f"{what} (kept logits unchanged, the rest -inf)")


def _top_p_random(f):
    logits = seeded_randn(5, 20, seed=74, scale=2.0)
    for p in (0.5, 0.8, 0.95):
        what = f"top_p_filter(logits (5, 20), {p})"
        expect_close(_filter_call(f, logits, p, what), _top_p_expected(logits, p), what)


def _top_p_edges(f):
    logits = seeded_randn(2, 8, seed=75)
    what = "top_p_filter(logits, 1.0) (p = 1 keeps everything)"
    expect_close(_filter_call(f, logits, 1.0, what), logits, what)
    what = "top_p_filter(logits, 1e-4) (a tiny p keeps only the most likely token)"
    got = _filter_call(f, logits, 1e-4, what)
    expect_close(torch.isfinite(got), torch.nn.functional.one_hot(logits.argmax(-1), 8).bool(), what)
    confident = torch.tensor([[0.0, 12.0, 1.0, -2.0, 0.5]])  # one token holds > 99.9%
    what = "top_p_filter(a confident row, 0.9)"
    expect_equal(_kept(_filter_call(f, confident, 0.9, what)), [1], f"{what}: kept ids")


register(Exercise(
    id="07.top_p_filter",
    points=3,
    signature="top_p_filter(logits: (B, V) float tensor, p: float in (0, 1]) -> (B, V) logits, -inf outside the nucleus",
    hint="sorted by probability, keep tokens while the mass before them is still under p (the token that crosses p stays), then undo the sort.",
    minutes=15,
    hints=(
        "Top-p (nucleus) sampling keeps the smallest set of most likely tokens whose total probability reaches p. The "
        "set adapts: a few tokens when the model is sure, many when it is not.",
        "Softmax to probabilities (B, V); sort each row in descending order (stably). For each sorted token, the mass "
        "of the tokens before it is the cumulative sum minus its own probability. Keep it while that mass is < p (so "
        "the token that crosses p stays, and the top token always does). Scatter the keep mask back to token order; "
        "-inf elsewhere.",
        "probs = ...\norder = ...  # (B, V), descending, stable\nsorted_probs = ...\nmass_before = ...\n"
        "keep_sorted = ...\nkeep = ...  # back in token order (scatter)\nreturn ...  # -inf outside the nucleus",
    ),
    checks=(
        Check("a known distribution: the token that crosses p is kept", _top_p_known),
        Check("random logits against an independent construction", _top_p_random),
        Check("p = 1 keeps all, a tiny p keeps the argmax, a confident row keeps one", _top_p_edges),
    ),
    reference="lmlab.infer.decoding:top_p_filter",
))


# ---------------------------------------------------------------------------------------------
# 07.repetition_penalty
# ---------------------------------------------------------------------------------------------


def _penalty_expected(logits, ids, penalty):
    out = logits.clone()
    for b in range(logits.size(0)):
        for i in set(ids[b].tolist()):
            x = float(logits[b, i])
            out[b, i] = x / penalty if x > 0 else x * penalty
    return out


def _penalty_call(f, logits, ids, penalty, what):
    before_l, before_i = logits.clone(), ids.clone()
    got = expect_tensor(f(logits, ids, penalty), what, shape=tuple(logits.shape), dtype=logits.dtype)
    expect_true(torch.equal(logits, before_l) and torch.equal(ids, before_i), f"{what} changed its inputs in place; work on a copy")
    return got


def _penalty_known(f):
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    ids = torch.tensor([[0, 1, 4]])
    what = "repetition_penalty(logits [[2, -1, 0.5, 3, -2, 1]], ids [[0, 1, 4]], 2.0)"
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0, -4.0, 1.0]])  # positive / 2, negative * 2, unseen unchanged
    expect_close(_penalty_call(f, logits, ids, 2.0, what), expected, f"{what} (seen: positive logits / penalty, negative * penalty)")


def _penalty_repeats(f):
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    ids = torch.tensor([[3, 3, 3, 1, 3]])
    what = "repetition_penalty(logits, ids [[3, 3, 3, 1, 3]], 1.5) (a token seen 4 times is penalised once)"
    expect_close(_penalty_call(f, logits, ids, 1.5, what), _penalty_expected(logits, ids, 1.5), what)
    what = "repetition_penalty(logits, ids, 1.0) (penalty 1 changes nothing)"
    expect_close(_penalty_call(f, logits, ids, 1.0, what), logits, what)


def _penalty_batch(f):
    logits = seeded_randn(3, 10, seed=79, scale=2.0)
    ids = torch.randint(10, (3, 6), generator=check_generator(80))
    what = "repetition_penalty(logits (3, 10), ids (3, 6), 1.3) (each row uses its own history)"
    expect_close(_penalty_call(f, logits, ids, 1.3, what), _penalty_expected(logits, ids, 1.3), what)


register(Exercise(
    id="07.repetition_penalty",
    points=2,
    signature="repetition_penalty(logits: (B, V) float tensor, ids: (B, T) long tensor, penalty: float > 0) -> (B, V) logits",
    hint="CTRL's penalty must make every seen token less likely, whatever the sign of its logit; leave the caller's tensor alone.",
    minutes=10,
    hints=(
        "CTRL's repetition penalty makes tokens that already appeared less likely. Dividing a positive logit by the "
        "penalty lowers it, but dividing a negative one would raise it, so negative logits are multiplied instead.",
        "Gather the logits of the seen ids per row: (B, T). Where positive, divide by the penalty; otherwise multiply. "
        "Write them back at the same ids into a copy of the logits (scatter, not the in-place scatter_, so the "
        "caller's tensor is untouched). A token seen twice is penalized once.",
        "seen = ...  # (B, T): logits of the tokens already used\nseen = torch.where(..., ..., ...)\n"
        "return ...  # a new (B, V) tensor",
    ),
    checks=(
        Check("a known case: positive logits divided, negative multiplied, unseen unchanged", _penalty_known),
        Check("a token seen many times is penalised once; penalty 1 is a no-op", _penalty_repeats),
        Check("a batch: each row penalises its own history", _penalty_batch),
    ),
    reference="lmlab.infer.decoding:apply_repetition_penalty",
))
