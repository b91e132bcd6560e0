"""Chapter 07 graders, part 2: one beam-search step (``exercises/07_decoding.ipynb``). Imported by
:mod:`lmlab.grading.chapters.ch07`.

The expected step is built here with plain Python sorting over every (beam, token) continuation.
"""

from __future__ import annotations

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import using_salt

# ---------------------------------------------------------------------------------------------
# 07.beam_step
# ---------------------------------------------------------------------------------------------


def _beam_expected(sums, logprobs, length, finished, num_beams, eos_id, lp, max_length):
    """Plain-Python beam step: candidates by sum (ties: lower flat index), top 2K walked in order."""
    K, V = logprobs.shape
    cands = sorted((-(float(sums[k]) + float(logprobs[k, v])), k * V + v) for k in range(K) for v in range(V))
    cands = cands[:2 * num_beams]
    scores, kept = sorted(finished, reverse=True), []
    for rank, (neg, i) in enumerate(cands):
        if i % V == eos_id:
            if rank < num_beams:
                scores.append(-neg / (length + 1) ** lp)
        else:
            kept.append((i // V, i % V, -neg))
        if len(kept) == num_beams:
            break
    scores = sorted(scores, reverse=True)[:num_beams]
    reach = max_length if lp > 0 else length + 1
    done = not kept or (len(scores) == num_beams and scores[-1] >= -cands[0][0] / reach ** lp)
    return kept, scores, done


def _beam_call(f, sums, logprobs, length, finished, num_beams, eos_id, lp, max_length, what, n):
    got = f(sums.clone(), logprobs.clone(), length, list(finished), num_beams, eos_id, lp, max_length)
    expect_true(isinstance(got, (tuple, list)) and len(got) == 5,
                f"{what} should return a tuple (beam_idx, token_idx, new_sums, finished, done), got "
                + (f"{type(got).__name__} of length {len(got)}" if isinstance(got, (tuple, list)) else type(got).__name__))
    beam_idx = expect_tensor(got[0], f"beam_idx from {what} (one per running beam kept)", shape=(n,))
    token_idx = expect_tensor(got[1], f"token_idx from {what}", shape=tuple(beam_idx.shape))
    new_sums = expect_tensor(got[2], f"new_sums from {what}", shape=tuple(beam_idx.shape))
    fin = got[3]
    expect_true(isinstance(fin, (list, tuple)) and all(isinstance(x, (int, float)) for x in fin),
                f"finished from {what} should be a list of float scores, got {type(fin).__name__}")
    expect_true(isinstance(got[4], bool), f"done from {what} should be True or False, got {type(got[4]).__name__}")
    return beam_idx.tolist(), token_idx.tolist(), new_sums, [float(x) for x in fin], got[4]


def _beam_compare(f, sums, logprobs, length, finished, num_beams, eos_id, lp, max_length, what, parts="rfd"):
    kept, scores, edone = _beam_expected(sums, logprobs, length, finished, num_beams, eos_id, lp, max_length)
    b, t, s, fin, done = _beam_call(f, sums, logprobs, length, finished, num_beams, eos_id, lp, max_length, what, len(kept))
    if "r" in parts:
        expect_equal(list(zip(b, t)), [(k, v) for k, v, _ in kept],
                     f"{what}: the running (beam, token) pairs, best sum first (an EOS candidate never keeps running)")
        expect_close(s.double(), torch.tensor([x for _, _, x in kept], dtype=torch.float64),
                     f"{what}: new_sums (the plain sum of log-probs)", atol=1e-5)
    if "f" in parts:
        expect_close(torch.tensor(fin, dtype=torch.float64), torch.tensor(scores, dtype=torch.float64),
                     f"{what}: finished scores, best first (sum / (length + 1) ** length_penalty for an EOS among the "
                     "top num_beams candidates; at most num_beams kept)", atol=1e-5)
    if "d" in parts:
        expect_equal(done, edone, f"{what}: done")
    return b, t, s, fin, done


def _logprobs(K, V, seed):
    return torch.log_softmax(seeded_randn(K, V, seed=seed, scale=2.0), dim=-1)


def _beam_running(f):
    sums = torch.tensor([-1.0, -1.7, -2.4])
    _beam_compare(f, sums, _logprobs(3, 6, seed=76), 3, [], 3, None, 1.0, 10,
                  "beam_step(3 beams, V = 6, no EOS, num_beams=3)")
    _beam_compare(f, torch.zeros(1), _logprobs(1, 6, seed=77), 0, [], 4, None, 0.0, 10,
                  "beam_step(the prompt only: 1 beam, V = 6, num_beams=4)")
    # the penalty cannot change the running ranking: every running beam has the same length
    for lp in (0.0, 1.0, 2.0):
        _beam_compare(f, sums, _logprobs(3, 6, seed=81), 5, [], 3, None, lp, 10,
                      f"beam_step(3 beams, no EOS, length_penalty={lp})", parts="r")


def _beam_eos(f):
    # EOS = token 0. Beam 0's EOS is the best candidate: it finishes, and two other candidates run on.
    sums = torch.tensor([-0.5, -1.0, -1.1])
    logprobs = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.5, 0.45], [0.3, 0.6, 0.1]]))
    for lp in (0.0, 1.0):
        _beam_compare(f, sums, logprobs, 4, [], 2, 0, lp, 20,
                      f"beam_step(EOS = 0 is the best candidate, num_beams=2, length 4, length_penalty={lp})")
    late = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1]]))  # beam 1's EOS is the 3rd candidate
    _beam_compare(f, torch.tensor([-0.5, -1.0]), late, 4, [], 2, 0, 1.0, 20,
                  "beam_step(an EOS candidate ranked 3rd with num_beams=2: only the top num_beams may finish)")
    # a heap already full: a better new hypothesis evicts the worst one
    _beam_compare(f, sums, logprobs, 4, [-0.30, -0.55], 2, 0, 1.0, 20,
                  "beam_step(finished = [-0.30, -0.55] already full, a new EOS hypothesis scores -0.17)")
    _beam_compare(f, sums, logprobs, 4, [-0.05, -0.08], 2, 0, 1.0, 20,
                  "beam_step(finished = [-0.05, -0.08] already full and better than the new one)", parts="f")


def _beam_done(f):
    sums = torch.tensor([-1.0, -1.5])
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    cases = (([-0.2], 100, "finished not full yet"),
             ([-0.2, -0.3], 100, "full, beats the best candidate at its current length but not at max_length = 100"),
             ([-0.2, -0.3], 5, "full and beats the best candidate even at max_length = 5"),
             ([-0.2, -0.3], 100, "full; length_penalty 0: length does not matter"))
    for fin, max_len, what in cases:
        lp = 0.0 if "penalty 0" in what else 1.0
        _beam_compare(f, sums, logprobs, 3, fin, 2, 0, lp, max_len, f"beam_step(done? {what})", parts="d")


def _beam_loop(f):
    # Six steps of a bigram "model" with EOS = 0, feeding back what beam_step returns.
    V, K, L = 5, 3, 6
    with using_salt(0):  # one fixed table: salted ones can tie two running sums exactly, and then the order is arbitrary
        table = _logprobs(V, V, seed=78)  # next-token log-probs given the last token
    sums, last, fin = torch.zeros(1), [1], []
    for step in range(L):
        what = f"beam_step at step {step + 1} of a {L}-step search (num_beams={K}, EOS = 0, length_penalty=1.0), fed its own outputs"
        b, t, s, fin2, done = _beam_compare(f, sums, table[last], step, fin, K, 0, 1.0, L, what)
        sums, last, fin = s, t, fin2
        if done:
            break


register(Exercise(
    id="07.beam_step",
    points=3,
    signature="beam_step(sum_logprobs: (K,), next_logprobs: (K, V), length: int, finished: list of float scores, "
              "num_beams: int, eos_id: int or None, length_penalty: float, max_length: int) "
              "-> (beam_idx, token_idx, new_sums, finished, done)",
    hint="rank every continuation by its raw sum; an EOS among the best num_beams finishes, scored with the length "
         "penalty, the others keep running; stop once no running beam can still beat the worst finished score you keep.",
    minutes=25,
    hints=(
        "Beam search keeps the num_beams best partial sequences by total log-probability. A beam that emits EOS is "
        "finished and scored with a length penalty (sum / length ** alpha), because raw sums always prefer short "
        "outputs. The search stops when no running beam can still beat the finished ones.",
        "Candidates: sum_logprobs[:, None] + next_logprobs, flattened to K * V (beam = i // V, token = i % V). Sort "
        "descending (stably) and look at the best 2 * num_beams. An EOS candidate ranked among the first num_beams "
        "joins the finished list with score sum / (length + 1) ** length_penalty (a lower-ranked EOS is ignored); "
        "other candidates keep running until you have num_beams. Keep the best num_beams finished scores. Done when "
        "nothing runs, or when you hold num_beams finished and the worst of them is at least the best running sum over "
        "the best length still reachable (max_length if length_penalty > 0, else length + 1) to the power "
        "length_penalty.",
        "K, V = ...  # beams, vocabulary\ncand = ...  # (K*V,) flat sums\n"
        "order = ...  # flat indices of the best 2 * num_beams\nfor rank, i in ...:\n    if ...:  # an EOS\n"
        "        ...  # finishes only among the first num_beams\n    else:\n"
        "        ...  # keeps running, until num_beams are kept\n"
        "scores = ...  # the best num_beams finished, descending\ndone = ...\n"
        "return beam_idx, token_idx, new_sums, scores, done",
    ),
    checks=(
        Check("no EOS: the num_beams best sums run on (the penalty cannot reorder equal-length beams)", _beam_running),
        Check("EOS candidates: top num_beams finish with the length penalty, the finished list keeps the best", _beam_eos),
        Check("done: the exact rule (the best length a running beam can still reach)", _beam_done),
        Check("6 steps of a search feeding back its own outputs", _beam_loop),
    ),
    reference="lmlab.infer.decoding:beam_step",
))
