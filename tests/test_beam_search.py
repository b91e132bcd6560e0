"""Tests for lmlab.infer.decoding.beam_search: greedy equivalence, exhaustive search, scoring, stopping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmlab.infer.decoding import beam_search, generate, sequence_logprob
from lmlab.model import GPT, ModelConfig
from lmlab.train.loop import seed_everything
from test_decoding import CachedPrefixHash, PrefixHash

EXACT = dict(rtol=0.0, atol=0.0)
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 sums of a handful of log-probs


class Tree:
    """A hand-made model: next-token probabilities for given generated prefixes (prompt ignored);
    unlisted prefixes put almost all mass on EOS-less token 0."""

    def __init__(self, V: int, probs: dict[tuple[int, ...], list[float]], prompt_len: int = 1):
        self.V, self.probs, self.prompt_len = V, probs, prompt_len

    def __call__(self, idx):  # (B, T) -> (B, T, V); only the last position matters here
        out = torch.full((idx.size(0), idx.size(1), self.V), -20.0)
        for b, row in enumerate(idx.tolist()):
            p = self.probs.get(tuple(row[self.prompt_len:]))
            out[b, -1] = torch.log(torch.tensor(p)) if p is not None else torch.tensor([0.0] + [-20.0] * (self.V - 1))
        return out


def brute_force(model, prompt: list[int], V: int, L: int, length_penalty: float, eos_id: int | None):
    """Every hypothesis (ends at the first EOS, or has L tokens) with its score; returns the best."""
    seqs = torch.tensor([prompt + list(s) for s in itertools.product(range(V), repeat=L)])
    tok_logp = sequence_logprob(model, seqs, prompt_len=len(prompt), reduction="none").double()  # (V^L, L)
    hyps = {}
    for s, lp in zip(seqs[:, len(prompt):].tolist(), tok_logp):
        n = s.index(eos_id) + 1 if eos_id is not None and eos_id in s else L
        total = lp[:n].sum().item()
        hyps[tuple(s[:n])] = total / n ** length_penalty
    best = max(hyps.items(), key=lambda kv: kv[1])
    return list(best[0]), best[1], hyps


# --------------------------------------------------------------------------------------------
# Exhaustive search and greedy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eos_id", [None, 0])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_wide_beam_finds_the_exhaustive_best(eos_id, length_penalty, early_stopping):
    V, L, prompt = 3, 4, [1, 2]
    model = PrefixHash(V, seed=3, scale=1.5)
    best, best_score, _ = brute_force(model, prompt, V, L, length_penalty, eos_id)
    r = beam_search(model, torch.tensor(prompt), V ** L, L, length_penalty, eos_id, early_stopping)
    assert r.sequences[0].tolist() == prompt + best
    assert r.scores[0].item() == pytest.approx(best_score, rel=1e-5, abs=1e-5)


def test_every_finished_hypothesis_scores_as_stated():
    V, L, prompt = 3, 4, [2]
    model = PrefixHash(V, seed=5, scale=1.5)
    _, _, hyps = brute_force(model, prompt, V, L, 1.0, 0)
    r = beam_search(model, torch.tensor(prompt), 5, L, length_penalty=1.0, eos_id=0, early_stopping="never")
    assert len(r.hypotheses[0]) == 5
    # they are the 5 best of all hypotheses, best first, with score = sum_logprobs / length ** 1
    expected = sorted(hyps.values(), reverse=True)[:5]
    assert [h.score for h in r.hypotheses[0]] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    for h in r.hypotheses[0]:
        assert h.length == h.ids.numel() - 1
        assert h.sum_logprobs == pytest.approx(sequence_logprob(model, h.ids, 1).item(), rel=1e-5, abs=1e-5)
        assert h.score == pytest.approx(h.sum_logprobs / h.length, rel=1e-12)


def sharp_gpt(seed: int, vocab_size: int, context_length: int) -> GPT:
    """A tiny untrained GPT with untied, scaled-up output weights: peaked, prefix-dependent logits."""
    seed_everything(seed)
    m = GPT(ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, n_layers=1, n_heads=2, tie_embeddings=False))
    with torch.no_grad():
        m.lm_head.weight.mul_(40)
    return m


@pytest.mark.parametrize("eos_id", [None, 3])
@pytest.mark.parametrize("which", ["gpt", "prefix-hash"])
def test_one_beam_is_greedy(eos_id, which):
    m = sharp_gpt(0, 7, 8) if which == "gpt" else PrefixHash(6, seed=11)
    hit_eos = False
    for prompt in ([1, 2], [4], [5, 3, 0], [2, 2, 2, 2, 2, 2, 2, 2, 2]):  # the last is longer than the GPT's window
        p = torch.tensor(prompt)
        greedy = generate(m, p, 12, eos_id=eos_id)
        hit_eos |= eos_id is not None and eos_id in greedy[len(prompt):].tolist()
        for stopping in (False, True):
            beam = beam_search(m, p, 1, 12, eos_id=eos_id, early_stopping=stopping).sequences[0]
            torch.testing.assert_close(beam, greedy, **EXACT)
        torch.testing.assert_close(generate(m, p, 12, "beam", num_beams=1, eos_id=eos_id), greedy, **EXACT)
    assert hit_eos or eos_id is None  # the EOS path is exercised


def test_beam_finds_what_greedy_misses():
    # The textbook case: greedy takes 'A' (0.5) then at best 0.4 -> 0.20; beam keeps 'B' (0.4) whose
    # next token has 0.9 -> 0.36. V = 3: tokens 1 = A, 2 = B, 0 = filler.
    tree = Tree(3, {(): [0.1, 0.5, 0.4], (1,): [0.3, 0.3, 0.4], (2,): [0.05, 0.9, 0.05]})
    p = torch.tensor([0])
    assert generate(tree, p, 2).tolist() == [0, 1, 2]
    r = beam_search(tree, p, 2, 2, length_penalty=0.0)
    assert r.sequences[0].tolist() == [0, 2, 1]
    assert r.scores[0].item() == pytest.approx(math.log(0.36), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Length penalty and early stopping
# --------------------------------------------------------------------------------------------


def short_or_long() -> Tree:
    """EOS (token 0) right away has p = 0.4; the long road has per-token p = 0.6, 0.9, 0.9, 0.9 then EOS 0.9.
    Raw log-prob: short log 0.4 = -0.92 beats long (-1.03). Per token: long -0.21 beats short -0.92."""
    return Tree(3, {
        (): [0.4, 0.6, 1e-6],
        (1,): [0.05, 0.05, 0.9], (1, 2): [0.05, 0.05, 0.9], (1, 2, 2): [0.05, 0.05, 0.9], (1, 2, 2, 2): [0.9, 0.05, 0.05],
    })


def test_length_penalty_zero_prefers_short_outputs():
    tree, p = short_or_long(), torch.tensor([1])
    short = beam_search(tree, p, 2, 6, length_penalty=0.0, eos_id=0, early_stopping="never")
    assert short.sequences[0].tolist() == [1, 0]
    long = beam_search(tree, p, 2, 6, length_penalty=1.0, eos_id=0, early_stopping="never")
    assert long.sequences[0].tolist() == [1, 1, 2, 2, 2, 0]
    assert long.scores[0].item() == pytest.approx(math.log(0.6 * 0.9 ** 4) / 5, rel=1e-5)


def test_early_stopping_modes():
    tree, p = short_or_long(), torch.tensor([1])
    # Two beams. Step 1 finishes "EOS now" (-0.92); step 2 finishes [1, EOS] (-3.5 / 2): the heap is full.
    # True stops there, with the short hypothesis as the best.
    assert beam_search(tree, p, 2, 6, 1.0, 0, early_stopping=True).sequences[0].tolist() == [1, 0]
    # False: the running beam's -0.62 / 2 beats the heap's worst (-1.75), so it goes on and finds the long one.
    for stopping in (False, "never"):
        assert beam_search(tree, p, 2, 6, 1.0, 0, early_stopping=stopping).sequences[0].tolist() == [1, 1, 2, 2, 2, 0]
    # With one beam, EOS at step 1 ranks second (0.4 < 0.6): outside the top num_beams candidates it
    # is not a hypothesis at all (Hugging Face's rule), so even True runs on to the long one.
    one = beam_search(tree, p, 1, 6, 1.0, 0, early_stopping=True)
    assert one.sequences[0].tolist() == [1, 1, 2, 2, 2, 0] and len(one.hypotheses[0]) == 1


def test_eos_counts_only_among_the_top_num_beams_candidates():
    # Two beams, [1] and [2]. Step 2's candidates: [1, EOS] 0.30, [1, 1] 0.27, [2, EOS] 0.24, [2, 1] 0.08, ...
    # [2, EOS] ranks third (>= num_beams), so it is not a finished hypothesis; the heap ends with
    # [1, EOS] and the running beam [1, 1] (added at max_new_tokens).
    tree = Tree(3, {(): [1e-4, 0.6, 0.3999], (1,): [0.5, 0.45, 0.05], (2,): [0.6, 0.2, 0.2]})
    r = beam_search(tree, torch.tensor([0]), 2, 2, length_penalty=0.0, eos_id=0, early_stopping=True)
    assert [h.ids.tolist() for h in r.hypotheses[0]] == [[0, 1, 0], [0, 1, 1]]
    assert [h.score for h in r.hypotheses[0]] == pytest.approx([math.log(0.3), math.log(0.27)], rel=1e-5)


def test_early_stopping_false_is_a_heuristic_never_is_exact():
    # One beam. Step 1: EOS (0.5) ranks first and finishes with score log 0.5 = -0.69; the beam goes on
    # with token 1 (0.45, -0.80). False compares -0.69 with -0.80 / 1 and stops: greedy's answer.
    # "never" compares with -0.80 / 6 (the longest length still possible) and goes on to find
    # [1, 2, 2, EOS]: log(0.45 * 0.98 ** 3) / 4 = -0.21, the better score.
    tree = Tree(3, {(): [0.5, 0.45, 0.05], (1,): [0.01, 0.01, 0.98], (1, 2): [0.01, 0.01, 0.98], (1, 2, 2): [0.98, 0.01, 0.01]})
    p = torch.tensor([1])
    assert beam_search(tree, p, 1, 6, 1.0, 0, early_stopping=False).sequences[0].tolist() == [1, 0]
    assert beam_search(tree, p, 1, 6, 1.0, 0, early_stopping=True).sequences[0].tolist() == [1, 0]
    never = beam_search(tree, p, 1, 6, 1.0, 0, early_stopping="never")
    assert never.sequences[0].tolist() == [1, 1, 2, 2, 0]
    assert never.scores[0].item() == pytest.approx(math.log(0.45 * 0.98 ** 3) / 4, rel=1e-5)


def test_max_new_tokens_zero_and_no_eos_lengths():
    model = PrefixHash(4, seed=0)
    r = beam_search(model, torch.tensor([1, 2]), 3, 0)
    assert r.sequences[0].tolist() == [1, 2] and r.scores[0].item() == 0.0
    r = beam_search(model, torch.tensor([1, 2]), 3, 5)
    assert all(h.length == 5 and h.ids.numel() == 7 for h in r.hypotheses[0]) and len(r.hypotheses[0]) == 3


# --------------------------------------------------------------------------------------------
# Batching, caching, repetition control, bad input
# --------------------------------------------------------------------------------------------


def test_batched_prompts_equal_one_at_a_time():
    m = sharp_gpt(1, 9, 6)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 0]])
    batched = beam_search(m, prompts, 3, 8, eos_id=1)  # 8 new tokens: the window (6) slides
    assert len({s.numel() for s in batched.sequences}) > 1  # some rows ended on EOS earlier than others
    for b in range(3):
        alone = beam_search(m, prompts[b], 3, 8, eos_id=1)
        torch.testing.assert_close(batched.sequences[b], alone.sequences[0], **EXACT)
        torch.testing.assert_close(batched.scores[b], alone.scores[0], **TOL)
    padded = generate(m, prompts, 8, "beam", num_beams=3, eos_id=1)
    assert padded.shape[0] == 3 and padded[0, : batched.sequences[0].numel()].tolist() == batched.sequences[0].tolist()


def test_beam_search_with_kv_cache_reorders_it():
    cached, plain = CachedPrefixHash(5, seed=2), PrefixHash(5, seed=2)
    p = torch.tensor([[1, 2], [3, 4]])
    a = beam_search(cached, p, 4, 7, eos_id=0)
    b = beam_search(plain, p, 4, 7, eos_id=0)
    for x, y in zip(a.sequences, b.sequences):
        torch.testing.assert_close(x, y, **EXACT)
    torch.testing.assert_close(a.scores, b.scores, **EXACT)
    assert cached.calls[0] == 2 and set(cached.calls[1:]) == {1}


def test_no_repeat_ngram_in_beam_search():
    tree_loop = PrefixHash(4, seed=7)
    r = beam_search(tree_loop, torch.tensor([1]), 3, 10, no_repeat_ngram_size=2)
    for h in r.hypotheses[0]:
        grams = [tuple(h.ids[i:i + 2].tolist()) for i in range(h.ids.numel() - 1)]
        assert len(grams) == len(set(grams))


def test_bad_arguments():
    m = PrefixHash(4)
    p = torch.tensor([1])
    for kwargs, message in [
        (dict(num_beams=0), r"num_beams must be an int >= 1 \(1 = greedy\)"),
        (dict(num_beams=2.0), r"num_beams must be an int >= 1"),
        (dict(length_penalty=math.nan), r"length_penalty must be a finite number"),
        (dict(early_stopping="sometimes"), r"early_stopping must be one of \(True, False, 'never'\)"),
        (dict(max_new_tokens=-2), r"max_new_tokens must be an int >= 0"),
        (dict(eos_id=9), r"eos_id must be a token id in \[0, V=4\)"),
    ]:
        args = dict(num_beams=2, max_new_tokens=3) | kwargs
        with pytest.raises(ValueError, match=message):
            beam_search(m, p, **args)
    nan = lambda idx: torch.full((idx.size(0), idx.size(1), 4), math.nan)  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        beam_search(nan, p, 2, 3)


# --------------------------------------------------------------------------------------------
# beam_step: one step of beam_search with plain values (lesson 07's graded reference)
# --------------------------------------------------------------------------------------------


def _search_with_beam_step(model, prompt, K, L, length_penalty, eos_id):
    """beam_search(..., early_stopping="never") for one row, written as a loop of beam_step."""
    from lmlab.infer.decoding import beam_step

    beams, sums, finished = torch.tensor([prompt]), torch.zeros(1), []
    for step in range(L):
        logprobs = torch.log_softmax(model(beams)[:, -1].float(), dim=-1)  # (K, V)
        b, t, sums, finished, done = beam_step(sums, logprobs, step, finished, K, eos_id, length_penalty, L)
        beams = torch.cat([beams[b], t[:, None]], dim=1)
        if done:
            return finished
    for s in sums.tolist():  # max_length reached: the live beams finish too
        finished = sorted(finished + [s / L ** length_penalty], reverse=True)[:K]
    return finished


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("K", [1, 2, 4])
def test_beam_step_loop_equals_beam_search(length_penalty, K):
    V, L, prompt = 4, 6, [1, 2]
    model = PrefixHash(V, seed=11, scale=2.0)
    got = _search_with_beam_step(model, prompt, K, L, length_penalty, eos_id=0)
    ref = beam_search(model, torch.tensor(prompt), K, L, length_penalty, 0, early_stopping="never")
    assert got == pytest.approx([h.score for h in ref.hypotheses[0]], rel=1e-5, abs=1e-5)


def test_beam_step_finishes_only_top_k_eos_and_uses_the_exact_rule():
    from lmlab.infer.decoding import beam_step

    # two beams; sums -1 and -1.5; EOS = token 0
    sums = torch.tensor([-1.0, -1.5])
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    b, t, s, fin, done = beam_step(sums, logprobs, 3, [], 2, 0, 1.0, 10)
    # candidates by sum: (0,0)=EOS -1.69 rank 0 -> finished; (1,1) -2.01; (0,1) -2.20; (1,2) -2.70; (1,0)=EOS -3.80
    assert fin == pytest.approx([(-1.0 + math.log(0.5)) / 4])
    assert list(zip(b.tolist(), t.tolist())) == [(1, 1), (0, 1)]
    torch.testing.assert_close(s, torch.stack([sums[1] + logprobs[1, 1], sums[0] + logprobs[0, 1]]))
    # an EOS ranked below the top K is dropped: beam 1's EOS is 5th of 6 here
    _, _, _, fin1, _ = beam_step(sums[1:], logprobs[1:], 3, [], 2, 0, 1.0, 10)
    assert fin1 == []
    assert not done  # only one finished hypothesis of 2
    # the heap is full and beats the best candidate at its current length, but not at max_length
    full = [-0.2, -0.3]
    assert beam_step(sums, logprobs, 3, full, 2, 0, 1.0, 100)[4] is False  # -1.69/100 > -0.3: could still win
    assert beam_step(sums, logprobs, 3, full, 2, 0, 1.0, 4)[4] is True
    with pytest.raises(ValueError, match="max_length"):
        beam_step(sums, logprobs, 3, full, 2, 0, 1.0, 3)
