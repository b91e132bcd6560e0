"""Tests for lmlab.infer.decoding: logit transforms, sampling, repetition control and generate.

Beam search has its own file, tests/test_beam_search.py. Hand-made callables returning fixed
logits give exact checks; tiny untrained GPTs check the lmlab-model path.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmlab.infer.decoding import (
    apply_repetition_penalty,
    apply_temperature,
    block_repeated_ngrams,
    filter_logits,
    filtered_probs,
    generate,
    next_token_logits,
    repetition_rate,
    sample,
    sequence_logprob,
    top_k_filter,
    top_p_filter,
)
from lmlab.model import GPT, ModelConfig
from lmlab.train.loop import seed_everything

NEG = -math.inf
EXACT = dict(rtol=0.0, atol=0.0)


def tiny_gpt(vocab_size: int = 13, context_length: int = 16, seed: int = 0) -> GPT:
    seed_everything(seed)
    return GPT(ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, n_layers=1, n_heads=2))


class FixedLogits:
    """A 'model' that ignores its input: every position gets the same logits (V,)."""

    def __init__(self, logits):
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.seen_lengths: list[int] = []

    def __call__(self, idx):
        self.seen_lengths.append(idx.size(1))
        return self.logits.expand(idx.size(0), idx.size(1), -1).clone()  # (B, T, V)


class NextTokenTable:
    """Bigram 'model': the logits at a position depend only on the token there, table[token] (V,)."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)  # (V, V)

    def __call__(self, idx):
        return self.table[idx]  # (B, T, V)


def loop_model(V: int = 8) -> NextTokenTable:
    """After token i, token (i + 1) % 3 is by far the most likely: greedy cycles 0 1 2 0 1 2 ..."""
    table = torch.ones(V, V)
    for i in range(V):
        table[i, (i + 1) % 3] = 2.0
    return NextTokenTable(table)


def keep_mask(logits: torch.Tensor) -> list[bool]:
    return (~torch.isneginf(logits)).tolist()


# --------------------------------------------------------------------------------------------
# Reference implementations written from the textbook definitions, in plain Python
# --------------------------------------------------------------------------------------------


def ref_ranking(xs: list[float]) -> list[int]:
    return sorted(range(len(xs)), key=lambda i: (-xs[i], i))  # larger first, ties: lower id


def ref_top_k(xs: list[float], k: int) -> list[bool]:
    kept = set(ref_ranking(xs)[:k])
    return [i in kept for i in range(len(xs))]


def ref_probs(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) if x != NEG else 0.0 for x in xs]
    return [v / sum(e) for v in e]


def ref_top_p(xs: list[float], p: float) -> list[bool]:
    probs, kept, mass = ref_probs(xs), set(), 0.0
    for i in ref_ranking(xs):
        if kept and mass >= p:
            break
        kept.add(i)
        mass += probs[i]
    return [i in kept and xs[i] != NEG for i in range(len(xs))]


# --------------------------------------------------------------------------------------------
# Temperature
# --------------------------------------------------------------------------------------------


def test_temperature_scales_the_softmax():
    x = torch.tensor([[2.0, 1.0, -1.0, 0.5]], dtype=torch.float64)
    for t in (0.25, 1.0, 3.0):
        torch.testing.assert_close(F.softmax(apply_temperature(x, t), -1), F.softmax(x / t, -1), rtol=1e-12, atol=1e-12)


def test_temperature_zero_is_greedy_with_first_index_on_ties():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 0.0, 5.0, NEG]])
    out = apply_temperature(x, 0)
    assert keep_mask(out) == [[False, True, False, False], [True, False, False, False]]
    torch.testing.assert_close(F.softmax(out, -1), F.one_hot(x.argmax(-1), 4).float(), **EXACT)


def test_temperature_limits():
    x = torch.tensor([3.0, 1.0, 0.0, -2.0, NEG])
    # t -> 0: the argmax gets all the mass (within 1e-6)
    torch.testing.assert_close(F.softmax(apply_temperature(x, 1e-3), -1), torch.tensor([1.0, 0, 0, 0, 0]), rtol=0, atol=1e-6)
    # tiny t does not overflow (the max is subtracted first)
    assert not torch.isnan(F.softmax(apply_temperature(x, 1e-40), -1)).any()
    # t -> inf: uniform over the 4 tokens that are not filtered out, within 1e-5 at t = 1e6
    uniform = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0])
    torch.testing.assert_close(F.softmax(apply_temperature(x, 1e6), -1), uniform, rtol=0, atol=1e-5)
    torch.testing.assert_close(F.softmax(apply_temperature(x, math.inf), -1), uniform, **EXACT)


def test_temperature_sharpens_monotonically():
    x = torch.tensor([2.0, 1.0, 0.0])
    tops = [F.softmax(apply_temperature(x, t), -1)[0].item() for t in (0.1, 0.5, 1.0, 2.0, 10.0)]
    assert tops == sorted(tops, reverse=True)


# --------------------------------------------------------------------------------------------
# top-k
# --------------------------------------------------------------------------------------------


def test_top_k_hand_made_cases():
    x = torch.tensor([1.0, 3.0, 3.0, 2.0])
    assert keep_mask(top_k_filter(x, 1)) == [False, True, False, False]  # tie at the top: lower id
    assert keep_mask(top_k_filter(x, 2)) == [False, True, True, False]
    y = torch.tensor([3.0, 2.0, 2.0, 1.0])
    assert keep_mask(top_k_filter(y, 2)) == [True, True, False, False]  # tie at the k-th place: exactly k kept
    for k in (4, 5, 100):  # k >= V keeps everything, values untouched
        torch.testing.assert_close(top_k_filter(x, k), x, **EXACT)
    kept = top_k_filter(x, 3)
    torch.testing.assert_close(kept[[1, 2, 3]], x[[1, 2, 3]], **EXACT)  # kept logits are unchanged


def test_top_k_renormalised_distribution():
    x = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    torch.testing.assert_close(filtered_probs(x, top_k=2).double(), torch.tensor([4 / 7, 3 / 7, 0, 0], dtype=torch.float64), rtol=0, atol=1e-6)


@settings(max_examples=150, deadline=None)
@given(xs=st.lists(st.integers(-3, 3), min_size=1, max_size=7), k=st.integers(1, 9))
def test_top_k_matches_reference(xs, k):
    x = torch.tensor(xs, dtype=torch.float64)
    assert keep_mask(top_k_filter(x, k)) == ref_top_k([float(v) for v in xs], k)


# --------------------------------------------------------------------------------------------
# top-p
# --------------------------------------------------------------------------------------------


def test_top_p_hand_made_cases():
    x = torch.log(torch.tensor([0.2, 0.5, 0.3]))  # ranking: 1 (0.5), 2 (0.3), 0 (0.2)
    assert keep_mask(top_p_filter(x, 0.5)) == [False, True, False]  # reached exactly by the first token
    assert keep_mask(top_p_filter(x, 0.49)) == [False, True, False]
    assert keep_mask(top_p_filter(x, 0.51)) == [False, True, True]  # the crossing token is kept
    assert keep_mask(top_p_filter(x, 0.8)) == [False, True, True]  # 0.5 + 0.3 reaches 0.8 exactly: stop
    assert keep_mask(top_p_filter(x, 0.81)) == [True, True, True]
    assert keep_mask(top_p_filter(x, 1e-9)) == [False, True, False]  # tiny p: at least one token
    torch.testing.assert_close(top_p_filter(x, 1.0), x, **EXACT)  # p = 1: everything


def test_top_p_ties_and_masked_tokens():
    x = torch.log(torch.tensor([0.2, 0.4, 0.2, 0.2]))
    assert keep_mask(top_p_filter(x, 0.5)) == [True, True, False, False]  # tied 0.2s: lower id first
    assert keep_mask(top_p_filter(x, 0.6)) == [True, True, False, False]  # 0.4 + 0.2 = 0.6 exactly
    assert keep_mask(top_p_filter(x, 0.61)) == [True, True, True, False]
    y = torch.tensor([0.0, NEG, 0.0])
    assert keep_mask(top_p_filter(y, 1.0)) == [True, False, True]  # -inf stays filtered at p = 1
    assert keep_mask(top_p_filter(y, 0.99)) == [True, False, True]


def test_top_p_renormalised_distribution():
    x = torch.log(torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64))
    torch.testing.assert_close(filtered_probs(x, top_p=0.7).double(), torch.tensor([0, 2 / 3, 1 / 3], dtype=torch.float64), rtol=0, atol=1e-6)


@settings(max_examples=150, deadline=None)
@given(xs=st.lists(st.integers(-3, 3), min_size=1, max_size=7), p=st.floats(1e-6, 1.0))
def test_top_p_matches_reference(xs, p):
    floats = [float(v) for v in xs]
    probs = ref_probs(floats)
    cums = [sum(probs[i] for i in ref_ranking(floats)[:j]) for j in range(1, len(xs) + 1)]
    assume(all(abs(c - p) > 1e-9 for c in cums))  # boundary cases are the hand-made tests' job
    x = torch.tensor(floats, dtype=torch.float64)
    assert keep_mask(top_p_filter(x, p)) == ref_top_p(floats, p)


# --------------------------------------------------------------------------------------------
# Composition order: temperature -> top-k -> top-p
# --------------------------------------------------------------------------------------------


def test_filters_compose_in_the_documented_order():
    x = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    # top-k first renormalises to [4/7, 3/7]; then top-p = 0.5 keeps only token 0.
    assert keep_mask(filter_logits(x, top_k=2, top_p=0.5)) == [True, False, False, False]
    # (top-p on the original distribution would keep tokens 0 and 1: 0.4 < 0.5)
    assert keep_mask(top_p_filter(x, 0.5)) == [True, True, False, False]
    # temperature before top-p: t = 0.25 sharpens to ~[0.72, 0.23, ...], so p = 0.7 keeps one token
    assert keep_mask(filter_logits(x, temperature=0.25, top_p=0.7)) == [True, False, False, False]
    assert keep_mask(top_p_filter(x, 0.7)) == [True, True, False, False]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 11, generator=g)
    expected = top_p_filter(top_k_filter(apply_temperature(z, 0.7), 6), 0.8)
    torch.testing.assert_close(filter_logits(z, 0.7, 6, 0.8), expected, **EXACT)


# --------------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible():
    z = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    a = sample(z, 0.9, 20, 0.9, generator=torch.Generator().manual_seed(7))
    b = sample(z, 0.9, 20, 0.9, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, **EXACT)
    assert a.shape == (8,) and sample(z[0], generator=torch.Generator().manual_seed(0)).shape == ()


def test_top_k_one_tiny_p_and_zero_temperature_equal_greedy():
    z = torch.randn(200, 30, generator=torch.Generator().manual_seed(2))
    z[:10, 3] = z[:10].max(-1).values + 1
    z[:10, 7] = z[:10, 3]  # ties at the top: greedy takes id 3
    greedy = z.argmax(-1)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sample(z, top_k=1, generator=g), greedy, **EXACT)
    torch.testing.assert_close(sample(z, top_p=1e-8, generator=g), greedy, **EXACT)
    torch.testing.assert_close(sample(z, temperature=2.0, top_k=1, generator=g), greedy, **EXACT)
    state = g.get_state()
    torch.testing.assert_close(sample(z, temperature=0.0, generator=g), greedy, **EXACT)
    assert torch.equal(g.get_state(), state)  # greedy draws no random numbers


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 4, 0.8), (1.5, None, 0.6), (1.0, 3, None)])
def test_sampling_frequencies_match_the_renormalised_distribution(temperature, top_k, top_p):
    """N = 20,000 draws. Each token's count is Binomial(N, q); we allow 5 standard deviations,
    |freq - q| <= 5 * sqrt(q (1 - q) / N) (a false alarm has probability ~6e-7 per token),
    and filtered-out tokens (q = 0) must never be drawn."""
    N = 20_000
    logits = torch.log(torch.tensor([0.30, 0.25, 0.15, 0.12, 0.10, 0.05, 0.03]))
    q = filtered_probs(logits, temperature, top_k, top_p).double()  # (V,)
    draws = sample(logits.expand(N, -1), temperature, top_k, top_p, generator=torch.Generator().manual_seed(123))
    freq = torch.bincount(draws, minlength=logits.numel()).double() / N
    bound = 5 * torch.sqrt(q * (1 - q) / N)
    assert torch.all((freq - q).abs() <= bound), (freq, q, bound)
    assert torch.all(freq[q == 0] == 0)
    # and q itself is the textbook renormalisation of the kept tokens
    kept = ~torch.isneginf(filter_logits(logits, temperature, top_k, top_p))
    ref = F.softmax(logits.double() / temperature, -1) * kept
    torch.testing.assert_close(q, ref / ref.sum(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_parameters_name_the_parameter_and_range():
    z = torch.randn(2, 5)
    cases = [
        (lambda: sample(z, temperature=-0.1), r"temperature must be a number >= 0"),
        (lambda: apply_temperature(z, float("nan")), r"temperature must be a number >= 0"),
        (lambda: sample(z, top_k=0), r"top_k must be an int >= 1 \(or None; None = off\)"),
        (lambda: top_k_filter(z, 2.5), r"top_k must be an int >= 1 \(or None; None = off\)"),
        (lambda: sample(z, top_p=0.0), r"top_p must be a finite number in \(0, 1\] \(or None; None = off\)"),
        (lambda: top_p_filter(z, 1.5), r"top_p must be a finite number in \(0, 1\] \(or None; None = off\)"),
        (lambda: apply_repetition_penalty(z, torch.zeros(2, 1, dtype=torch.long), 0.0), r"repetition_penalty must be a finite number > 0"),
        (lambda: block_repeated_ngrams(z, torch.zeros(2, 1, dtype=torch.long), -1), r"no_repeat_ngram_size must be an int >= 0"),
        (lambda: repetition_rate([1, 2], n=0), r"n must be an int >= 1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_nan_logits_are_reported_not_sampled():
    z = torch.randn(3, 5)
    z[1, 2] = float("nan")
    for call in (lambda: sample(z), lambda: sample(z, temperature=0), lambda: top_p_filter(z, 0.5), lambda: filter_logits(z)):
        with pytest.raises(ValueError, match=r"logits contain NaN in batch row\(s\) \[1\]"):
            call()
    nan_model = FixedLogits([0.0, float("nan"), 1.0])
    for strategy in ("greedy", "sample"):
        with pytest.raises(ValueError, match="NaN"):
            generate(nan_model, torch.tensor([0]), 3, strategy)


def test_generate_rejects_bad_arguments():
    m = FixedLogits([0.0, 1.0])
    with pytest.raises(ValueError, match=r"strategy must be one of \('greedy', 'sample', 'beam'\)"):
        generate(m, torch.tensor([0]), 2, "nucleus")
    with pytest.raises(ValueError, match=r"only apply to strategy='sample'"):
        generate(m, torch.tensor([0]), 2, "greedy", temperature=0.5)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int >= 0"):
        generate(m, torch.tensor([0]), -1)
    with pytest.raises(ValueError, match=r"prompt_ids must be integer ids"):
        generate(m, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"num_beams must be an int >= 1"):
        generate(m, torch.tensor([0]), 2, "beam", num_beams=0)
    with pytest.raises(ValueError, match=r"eos_id must be a token id in \[0, V=2\)"):
        generate(m, torch.tensor([0]), 2, eos_id=2)
    with pytest.raises(ValueError, match=r"the model must map ids \(B, T\)"):
        generate(lambda idx: torch.zeros(3), torch.tensor([0]), 1)


# --------------------------------------------------------------------------------------------
# Repetition control
# --------------------------------------------------------------------------------------------


def test_repetition_penalty_hand_made():
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(x, torch.tensor([[0, 1, 1]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]), **EXACT)  # /2 if > 0, *2 if < 0
    torch.testing.assert_close(apply_repetition_penalty(x, torch.tensor([[0, 1]]), 1.0), x, **EXACT)


def test_ngram_blocking_hand_made():
    ids = torch.tensor([[1, 2, 3, 1, 2]])  # bigram (2, 3) seen -> after '2', token 3 is banned
    x = torch.zeros(1, 5)
    assert keep_mask(block_repeated_ngrams(x, ids, 2)) == [[True, True, True, False, True]]
    assert keep_mask(block_repeated_ngrams(x, ids, 3)) == [[True, True, True, False, True]]  # trigram (1, 2, 3)
    assert keep_mask(block_repeated_ngrams(x, ids, 1)) == [[True, False, False, False, True]]  # every seen token
    assert keep_mask(block_repeated_ngrams(x, ids, 6)) == [[True] * 5]  # history shorter than the n-gram
    torch.testing.assert_close(block_repeated_ngrams(x, ids, 0), x, **EXACT)


def test_greedy_loops_and_repetition_control_breaks_the_loop():
    m = loop_model(V=8)
    out = generate(m, torch.tensor([0]), 30)
    assert out[:7].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert repetition_rate(out, n=4) > 0.8
    blocked = generate(m, torch.tensor([0]), 30, no_repeat_ngram_size=3)
    assert repetition_rate(blocked, n=3) == 0.0  # by construction no trigram repeats
    penalised = generate(m, torch.tensor([0]), 30, repetition_penalty=3.0)
    # seen tokens drop from logit 2 to 2/3 < 1: every unseen token is tried before the loop returns
    assert penalised[:8].tolist() == list(range(8))
    assert repetition_rate(penalised, n=4) < repetition_rate(out, n=4)


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 1, 2, 3], n=3) == pytest.approx(1 / 4)  # 123 231 312 123
    assert repetition_rate(torch.tensor([7, 7, 7, 7]), n=1) == pytest.approx(3 / 4)
    assert repetition_rate([1, 2, 3], n=4) == 0.0
    assert repetition_rate(list(range(10)), n=2) == 0.0


# --------------------------------------------------------------------------------------------
# generate and the model interface
# --------------------------------------------------------------------------------------------


def test_greedy_generate_matches_the_lesson00_version():
    m = tiny_gpt(context_length=8)
    prompt = torch.randint(13, (2, 5), generator=torch.Generator().manual_seed(0))
    idx = prompt  # lesson 00's loop: the whole (cropped) text through the model, argmax, append
    with torch.no_grad():
        for _ in range(12):
            idx = torch.cat([idx, m(idx[:, -8:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    torch.testing.assert_close(generate(m, prompt, 12), idx, **EXACT)


def test_seeded_generate_is_reproducible_and_differs_across_seeds():
    m = tiny_gpt()
    p = torch.tensor([1, 2, 3])
    runs = [generate(m, p, 20, "sample", temperature=1.5, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0], runs[1], **EXACT)
    assert not torch.equal(runs[0], runs[2])


def test_sample_with_temperature_zero_or_top_k_one_is_greedy_generation():
    m = tiny_gpt()
    p = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = generate(m, p, 15)
    torch.testing.assert_close(generate(m, p, 15, "sample", temperature=0.0), greedy, **EXACT)
    torch.testing.assert_close(generate(m, p, 15, "sample", top_k=1, generator=torch.Generator().manual_seed(0)), greedy, **EXACT)


def test_eos_stops_rows_and_pads_with_eos():
    # row 0 starts at token 0 -> 1 -> 2(eos); row 1 never meets 2 fast: 3 -> 4 -> 5 -> ...
    table = torch.full((8, 8), -5.0)
    for i in range(8):
        table[i, (i + 1) % 8] = 5.0
    m = NextTokenTable(table)
    out = generate(m, torch.tensor([[0], [3]]), 6, eos_id=2)
    assert out.tolist() == [[0, 1, 2, 2, 2, 2, 2], [3, 4, 5, 6, 7, 0, 1]]
    short = generate(m, torch.tensor([[0], [1]]), 6, eos_id=2)
    assert short.tolist() == [[0, 1, 2], [1, 2, 2]]  # everyone finished: stop early


def test_context_is_cropped_only_for_models_with_a_config():
    logits = [0.0, 1.0, 0.5]
    plain = FixedLogits(logits)
    generate(plain, torch.tensor([0, 0, 0]), 5)
    assert plain.seen_lengths == [3, 4, 5, 6, 7]  # no .config: never cropped
    cropped = FixedLogits(logits)
    cropped.config = SimpleNamespace(context_length=4)
    generate(cropped, torch.tensor([0, 0, 0, 0, 0, 0]), 3)  # a prompt longer than the window is fine
    assert cropped.seen_lengths == [4, 4, 4]
    hf_like = FixedLogits(logits)
    hf_like.config = SimpleNamespace(n_positions=2)  # a config without context_length: no cropping
    generate(hf_like, torch.tensor([0, 0, 0]), 2)
    assert hf_like.seen_lengths == [3, 4]


def test_any_callable_and_hf_style_outputs():
    m = tiny_gpt()
    p = torch.tensor([[3, 1, 4]])
    wrapped = lambda idx: SimpleNamespace(logits=m(idx))  # noqa: E731 -- what a Hugging Face model returns
    torch.testing.assert_close(generate(wrapped, p, 8), generate(m, p, 8), **EXACT)
    tupled = lambda idx: (m(idx), None)  # noqa: E731
    torch.testing.assert_close(generate(tupled, p, 8), generate(m, p, 8), **EXACT)
    torch.testing.assert_close(next_token_logits(m, p), m(p)[:, -1], **EXACT)


def test_generate_restores_training_mode_and_needs_no_grad():
    m = tiny_gpt()
    m.train()
    out = generate(m, torch.tensor([1]), 3, "sample", generator=torch.Generator().manual_seed(0))
    assert m.training and not out.requires_grad and out.shape == (4,)


class PrefixHash:
    """Logits that depend on the *whole* prefix (a rolling hash into a random table), with an
    optional fake KV cache that just remembers the tokens it has seen."""

    M = 1009

    def __init__(self, V: int, seed: int = 0, scale: float = 2.0):
        self.table = scale * torch.randn(self.M, V, generator=torch.Generator().manual_seed(seed))
        self.calls: list[int] = []

    def __call__(self, idx):  # (B, T) -> (B, T, V)
        h = torch.zeros(idx.size(0), dtype=torch.long)
        out = []
        for t in range(idx.size(1)):
            h = (h * 31 + idx[:, t] + 1) % self.M
            out.append(self.table[h])
        return torch.stack(out, dim=1)


class CachedPrefixHash(PrefixHash):
    class Cache:
        def __init__(self, ids):
            self.ids = ids

        def reorder(self, beam_idx):
            return CachedPrefixHash.Cache(self.ids[beam_idx])

    def forward_with_cache(self, new_ids, cache):
        self.calls.append(new_ids.size(1))
        full = new_ids if cache is None else torch.cat([cache.ids, new_ids], dim=1)
        return self(full)[:, -new_ids.size(1):], CachedPrefixHash.Cache(full)


def test_generate_uses_the_kv_cache_protocol():
    cached, plain = CachedPrefixHash(V=9), PrefixHash(V=9)
    p = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = generate(cached, p, 10, "sample", generator=torch.Generator().manual_seed(0))
    b = generate(plain, p, 10, "sample", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, **EXACT)
    assert cached.calls == [3] + [1] * 9  # prefill the prompt, then one token per step
    cached.calls.clear()
    generate(cached, p, 4, use_cache=False)
    assert cached.calls == []


def test_cache_is_abandoned_when_the_window_slides():
    cached = CachedPrefixHash(V=9)
    cached.config = SimpleNamespace(context_length=5)
    plain = PrefixHash(V=9)
    plain.config = SimpleNamespace(context_length=5)
    p = torch.tensor([1, 2, 3])
    torch.testing.assert_close(generate(cached, p, 8), generate(plain, p, 8), **EXACT)
    assert cached.calls == [3, 1, 1]  # lengths 3, 4, 5 via the cache; from 6 on: recompute the window


# --------------------------------------------------------------------------------------------
# sequence_logprob
# --------------------------------------------------------------------------------------------


def test_sequence_logprob_is_the_sum_of_token_logprobs():
    m = tiny_gpt()
    ids = torch.randint(13, (2, 9), generator=torch.Generator().manual_seed(0))
    logp = F.log_softmax(m(ids).double(), -1)
    by_hand = sum(logp[:, t - 1].gather(-1, ids[:, t:t + 1]).squeeze(-1) for t in range(3, 9))
    torch.testing.assert_close(sequence_logprob(m, ids, prompt_len=3).double(), by_hand, rtol=1e-5, atol=1e-5)
    per_token = sequence_logprob(m, ids, prompt_len=3, reduction="none")
    assert per_token.shape == (2, 6)
    torch.testing.assert_close(sequence_logprob(m, ids, 3, "mean"), per_token.mean(-1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"prompt_len must be an int in \[1, 9\] \(T = 9"):
        sequence_logprob(m, ids, prompt_len=0)


def test_sequence_logprob_past_the_context_uses_the_sliding_window():
    m = tiny_gpt(context_length=4)
    ids = torch.randint(13, (7,), generator=torch.Generator().manual_seed(1))
    expected = sum(F.log_softmax(m(ids[max(0, t - 4):t][None])[0, -1], -1)[ids[t]] for t in range(1, 7))
    torch.testing.assert_close(sequence_logprob(m, ids), expected, rtol=1e-5, atol=1e-5)
