"""Chapter 05 graders (``exercises/05_objectives.ipynb``): T5's noise mask, sentinel fusion, the
prefix-LM example, one UL2 example.

Every check compares with T5's counting rules written out here, T5 paper Figure 2, constructions
written with plain loops over the spans, or properties (no trained position sees its own target,
each target token is predicted exactly once, positions are uniform after ``random_roll``).
lmlab's own implementation (:mod:`lmlab.data.span_corruption`, :mod:`lmlab.data.objectives`) is only the
``reference`` that the tests feed through the same checks.
"""

from __future__ import annotations

from collections import Counter

import torch

from lmlab.data.masks import prefix_lm_mask
from lmlab.data.objectives import decoder_only_example, prefix_lm_example, span_corruption_example
from lmlab.data.span_corruption import random_spans_noise_mask, span_corruption
from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import py_random

# The notebook's order (05_objectives.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "05.random_spans_noise_mask",
    "05.sentinel_fusion",
    "05.prefix_lm_example",
    "05.ul2_example",
)


def _runs(mask: list[bool]) -> list[tuple[bool, int]]:
    """``[(is_noise, length), ...]``: the runs of a mask, in order."""
    out = []
    for v in mask:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


def _t5_counts(L: int, d: float, mu: float) -> tuple[int, int]:
    n = min(max(round(L * d), 1), L - 1)  # Python's round is half-to-even, as tf.round
    return n, min(max(1, round(n / mu)), L - n)  # (never more spans than non-noise tokens)


# ---------------------------------------------------------------------------------------------
# 05.random_spans_noise_mask
# ---------------------------------------------------------------------------------------------


def _mask_call(f, L, d, mu, seed, roll=False):
    what = f"random_spans_noise_mask({L}, {d}, {mu}, seed={seed}{', random_roll=True' if roll else ''})"
    got = f(L, d, mu, seed, random_roll=roll)
    got = expect_tensor(got, what, shape=(L,), dtype=torch.bool)
    return got.tolist(), what


def _mask_counts(f):
    for L, d, mu in ((2, 0.15, 3.0), (10, 0.15, 3.0), (30, 0.15, 3.0), (31, 0.15, 3.0), (64, 0.15, 3.0),
                     (100, 0.5, 3.0), (128, 0.5, 8.0), (200, 0.15, 64.0), (568, 0.15, 3.0), (57, 0.33, 2.5)):
        n, spans = _t5_counts(L, d, mu)
        for seed in range(3):
            m, what = _mask_call(f, L, d, mu, seed)
            expect_equal(sum(m), n, f"{what}: noise tokens (round({L} × {d}) = {round(L * d)}, kept in [1, {L - 1}])")
            runs = _runs(m)
            noise_runs = [k for v, k in runs if v]
            expect_equal(len(noise_runs), spans, f"{what}: number of noise spans (max(1, round({n} / {mu})))")
            expect_true(not runs[0][0] and runs[-1][0] and len(runs) == 2 * spans,
                        f"{what}: spans must alternate non-noise / noise, starting with non-noise "
                        f"({spans} of each), got runs {[('noise' if v else 'text', k) for v, k in runs][:8]}")


def _mask_random(f):
    masks = [tuple(_mask_call(f, 64, 0.15, 3.0, s)[0]) for s in range(20)]
    expect_true(len(set(masks)) > 10, f"random_spans_noise_mask(64, 0.15, 3.0, seed) gave only {len(set(masks))} "
                "different masks over 20 seeds: draw the span lengths at random (with the seed's generator)")
    again, what = _mask_call(f, 64, 0.15, 3.0, 7)
    expect_equal(tuple(again), masks[7], f"{what} called twice: the same seed must give the same mask")
    # 6 noise tokens in 3 spans: the 10 compositions of 6 are equally likely, so the first span is
    # 1, 2, 3, 4 tokens long with probability 4/10, 3/10, 2/10, 1/10.
    firsts = Counter()
    for s in range(400):
        m, _ = _mask_call(f, 20, 0.3, 2.0, 1000 + s)
        firsts[next(k for v, k in _runs(m) if v)] += 1
    for k, p in ((1, 0.4), (2, 0.3), (3, 0.2), (4, 0.1)):
        got = firsts[k] / 400
        expect_true(abs(got - p) < 0.08, f"random_spans_noise_mask(20, 0.3, 2.0): over 400 seeds the first noise span "
                    f"had length {k} in {got:.0%} of masks, expected about {p:.0%} (every split of the 6 noise tokens "
                    f"into 3 spans equally likely: choose 2 distinct cut points among the 5 gaps)")


def _mask_roll(f):
    L, d, mu = 20, 0.15, 3.0  # 3 noise tokens in ONE span: without the roll always the last three
    for s in range(5):
        m, what = _mask_call(f, L, d, mu, s)
        expect_equal(m, [False] * 17 + [True] * 3, f"{what} (without random_roll a single span sits at the end)")
    counts = [0] * L
    for s in range(300):
        m, what = _mask_call(f, L, d, mu, s, roll=True)
        expect_equal(sum(m), 3, f"{what}: noise tokens")
        k = m.index(True) if not (m[0] and m[-1]) else next(i for i in range(L) if m[i] and not m[i - 1])
        expect_equal(m, [((i - k) % L) < 3 for i in range(L)], f"{what}: the rolled mask is the unrolled one moved "
                     "circularly (torch.roll) by a random offset")
        counts = [c + v for c, v in zip(counts, m)]
    expect_true(min(counts) > 0.05 * 300 and counts[-1] < 0.3 * 300,
                f"random_spans_noise_mask(20, 0.15, 3.0, seed, random_roll=True): over 300 seeds position 19 was noise "
                f"{counts[-1]} times and the rarest position {min(counts)} times; a uniform roll makes each about 45")


def reference_random_spans_noise_mask(length, noise_density, mean_noise_span_length, seed, random_roll=False):
    """lmlab's :func:`lmlab.data.span_corruption.random_spans_noise_mask` with a generator seeded by ``seed``."""
    return random_spans_noise_mask(length, noise_density, mean_noise_span_length,
                                   generator=torch.Generator().manual_seed(seed), random_roll=random_roll)


register(Exercise(
    id="05.random_spans_noise_mask",
    points=3,
    signature="random_spans_noise_mask(length, noise_density, mean_noise_span_length, seed, random_roll=False) -> bool tensor (length,)",
    hint="noise = round(L·d) kept in [1, L-1]; spans = max(1, round(noise/μ)); split noise and non-noise tokens into that many positive parts at random; non-noise first; roll at the end.",
    minutes=20,
    hints=(
        "T5's span corruption hides about noise_density of the tokens in spans of average length "
        "mean_noise_span_length. The mask alternates kept text and noise, the same number of runs of each, text first.",
        "n_noise = round(L * density), kept in [1, L - 1]; n_spans = round(n_noise / mean span length), at least 1 "
        "(and at most the number of kept tokens). Split n_noise into n_spans positive lengths at random, then the "
        "non-noise tokens the same way (noise first: the checks follow that order of random draws). Lay the runs out "
        "as text, noise, text, noise, ... With random_roll, roll the finished mask by a random offset.",
        "g = ...  # a torch.Generator seeded with seed\nn_noise = ...\nn_spans = ...\n\n"
        "def segment(n, k):  # k positive parts that sum to n\n"
        "    cuts = ...  # k - 1 sorted cut points, from torch.randperm(n - 1, generator=g)\n"
        "    ...  # differences between consecutive bounds 0, cuts..., n\n\nnoise, text = ..., ...  # noise first\n"
        "mask = ...  # all False, (length,)\n...  # walk the (text, noise) pairs, set each noise run True\nreturn mask",
    ),
    checks=(
        Check("T5's counts: noise tokens, spans, alternating from non-noise to noise", _mask_counts),
        Check("seeded, varied, every split of the noise into spans equally likely", _mask_random),
        Check("a short text: last tokens without random_roll, a uniform circular roll with it", _mask_roll),
    ),
    reference="lmlab.grading.chapters.ch05:reference_random_spans_noise_mask",
))

# ---------------------------------------------------------------------------------------------
# 05.sentinel_fusion
# ---------------------------------------------------------------------------------------------

FIGURE2 = "Thank you for inviting me to your party last week .".split()


def _fusion_expected(tokens, mask, V):
    """Inputs and targets written from the runs of the mask."""
    inputs, targets, k, pos = [], [], 0, 0
    for noisy, n in _runs(mask):
        if noisy:
            inputs.append(V - 1 - k)
            targets += [V - 1 - k] + tokens[pos:pos + n]
            k += 1
        else:
            inputs += tokens[pos:pos + n]
        pos += n
    if not mask[-1]:
        targets.append(V - 1 - k)  # T5's closing sentinel (Figure 2's <Z>)
    return inputs, targets


def _fusion_call(f, tokens, mask, V, what):
    got = f(list(tokens), list(mask), V)
    expect_true(isinstance(got, tuple) and len(got) == 2, f"{what} should return a tuple (inputs, targets), got {type(got).__name__}")
    inputs, targets = ([int(t) for t in x] if isinstance(x, (list, tuple, torch.Tensor)) else x for x in got)
    expect_true(isinstance(inputs, list) and isinstance(targets, list), f"{what} should return two lists of ids")
    return inputs, targets


def _fusion_figure2(f):
    vocab = sorted(set(FIGURE2))
    V = len(vocab) + 3
    ids = [vocab.index(w) for w in FIGURE2]
    mask = [w in ("for", "inviting", "last") for w in FIGURE2]
    what = "sentinel_fusion(T5 Figure 2: 'Thank you for inviting me to your party last week .')"
    inputs, targets = _fusion_call(f, ids, mask, V, what)
    name = {**{i: w for i, w in enumerate(vocab)}, V - 1: "<X>", V - 2: "<Y>", V - 3: "<Z>"}
    show = lambda xs: " ".join(name.get(i, f"#{i}") for i in xs)  # noqa: E731
    expect_equal(show(inputs), "Thank you <X> me to your party <Y> week .", f"{what}: inputs (sentinel <X> is id vocab_size-1, <Y> is vocab_size-2)")
    expect_equal(show(targets), "<X> for inviting <Y> last <Z>", f"{what}: targets")


def _fusion_random(f):
    rng = py_random(5)
    for case in range(12):
        L = rng.randint(8, 60)
        tokens = [rng.randrange(50) for _ in range(L)]
        mask = [rng.random() < 0.3 for _ in range(L)]
        mask[rng.randrange(L)] = True
        if case == 0:
            mask = [True, True] + [False] * (L - 2)  # starts with noise: the first target is still <X0> + span 0
        V = 50 + 40
        want = _fusion_expected(tokens, mask, V)
        what = f"sentinel_fusion(tokens of {L}, a mask with {len([1 for v, _ in _runs(mask) if v])} spans, vocab_size={V})"
        got = _fusion_call(f, tokens, mask, V, what)
        expect_equal(got[0], want[0], f"{what}: inputs (one sentinel per span, counting DOWN from vocab_size - 1)")
        expect_equal(got[1], want[1], f"{what}: targets (each span after its sentinel; a closing sentinel if the text ends with non-noise)")


def _fusion_round_trip(f):
    rng = py_random(9)
    for _ in range(8):
        L = rng.randint(5, 40)
        tokens = [rng.randrange(30) for _ in range(L)]
        mask = [rng.random() < 0.4 for _ in range(L)]
        mask[-1] = rng.random() < 0.5
        mask[0] = False
        if not any(mask):
            mask[L // 2] = True
        V = 64
        inputs, targets = _fusion_call(f, tokens, mask, V, "sentinel_fusion")
        spans, cur = {}, None
        for t in targets:
            if t >= 30:
                cur = t
                spans[t] = []
            else:
                spans[cur].append(t)
        back = [x for t in inputs for x in (spans.get(t, []) if t >= 30 else [t])]
        expect_equal(back, tokens, f"filling each sentinel of the inputs with its span from the targets (tokens {tokens[:6]}..., "
                     "a random mask) should give the original tokens back")


register(Exercise(
    id="05.sentinel_fusion",
    points=2,
    signature="sentinel_fusion(tokens: list[int], noise_mask: list[bool], vocab_size: int) -> (inputs: list[int], targets: list[int])",
    hint="Walk the mask run by run: a noise run becomes one sentinel in the inputs and 'sentinel + its tokens' in the targets; sentinel k is vocab_size-1-k.",
    minutes=15,
    hints=(
        "Span corruption replaces each noise span in the inputs by one sentinel token; the targets list each sentinel "
        "followed by the tokens it hid. T5 takes sentinels from the top of the vocabulary: the first span gets "
        "vocab_size - 1, the next vocab_size - 2, ...",
        "Walk the tokens together with their mask values. When a noise run starts (noisy, and the previous token was "
        "not), the next sentinel goes into both inputs and targets. Noisy tokens go to the targets, the others to the "
        "inputs. If the text ends outside a noise run, the targets end with one more sentinel (T5's closing sentinel).",
        "inputs, targets = [], []\nk = 0  # the next sentinel's number\n"
        "for i, (t, noisy) in ...:  # each token with its mask value\n    if ...:  # a noise run starts here\n"
        "        ...  # its sentinel goes into both lists\n        k += 1\n"
        "    ...  # noisy -> targets, otherwise -> inputs\nif ...:\n    ...  # the closing sentinel\n"
        "return inputs, targets",
    ),
    checks=(
        Check("T5 paper Figure 2, word by word", _fusion_figure2),
        Check("random masks (one starting with noise), written out span by span", _fusion_random),
        Check("the round trip gives the text back", _fusion_round_trip),
    ),
    reference="lmlab.grading.chapters.ch05:reference_sentinel_fusion",
))


def reference_sentinel_fusion(tokens, noise_mask, vocab_size):
    """``(inputs, targets)`` of lmlab's :func:`lmlab.data.span_corruption.span_corruption` (no EOS)."""
    return tuple(span_corruption(tokens, noise_mask, vocab_size)[:2])

# ---------------------------------------------------------------------------------------------
# 05.prefix_lm_example and 05.ul2_example: dicts of tensors
# ---------------------------------------------------------------------------------------------

KEYS = ("inputs", "targets", "attn_mask", "loss_mask")


def _example_call(f, args, what):
    got = f(*args)
    expect_true(isinstance(got, dict) and all(k in got for k in KEYS), f"{what} should return a dict with keys {KEYS}, got {type(got).__name__} "
                f"{sorted(got) if isinstance(got, dict) else ''}")
    return got


def _check_example(got, seq: list[int], prefix: int, what: str):
    """``seq`` = prefix tokens then target tokens; the model reads ``seq[:-1]``."""
    T = len(seq) - 1
    expect_close(expect_tensor(got["inputs"], f"{what}['inputs']", shape=(T,)).long(), torch.tensor(seq[:-1]), f"{what}['inputs'] (the sequence without its last token)")
    expect_close(expect_tensor(got["targets"], f"{what}['targets']", shape=(T,)).long(), torch.tensor(seq[1:]), f"{what}['targets'] (the next token at every position)")
    attn = torch.ones(T, T, dtype=torch.bool).tril()
    attn[:prefix, :prefix] = True
    expect_close(got["attn_mask"], attn, f"{what}['attn_mask'] (bidirectional over the first {prefix} positions, causal after)")
    loss = expect_tensor(got["loss_mask"], f"{what}['loss_mask']", shape=(T,), dtype=torch.bool)
    trained = torch.nonzero(loss).flatten().tolist()
    for t in trained:
        expect_true(not bool(got["attn_mask"][t, t + 1:].any()), f"{what}: position {t} is trained to predict token {t + 1} but may attend to it "
                    "(or a later token): the loss would be a copy task")
    expect_equal(len(trained), len(seq) - prefix, f"{what}: trained positions (one per target token: {len(seq) - prefix}; the prefix is never a target)")
    expect_close(loss, torch.arange(T) >= prefix - 1, f"{what}['loss_mask'] (position t predicts token t+1: the first target is predicted at position {prefix - 1})")


def _prefix_cases(f):
    rng = py_random(3)
    for N, P in ((10, 4), (12, 1), (9, 8), (33, 16), (6, 3)):
        tokens = [rng.randrange(100) for _ in range(N)]
        what = f"prefix_lm_example(tokens of {N}, prefix_len={P})"
        _check_example(_example_call(f, (tokens, P), what), tokens, P, what)


def _prefix_masks_module(f):
    tokens = list(range(20, 40))
    for P in (2, 7, 19):
        what = f"prefix_lm_example(20 tokens, prefix_len={P})"
        got = _example_call(f, (tokens, P), what)
        expect_close(got["attn_mask"], prefix_lm_mask(19, P), f"{what}['attn_mask'] vs lmlab.data.masks.prefix_lm_mask(19, {P}) (lesson 00)")


def reference_prefix_lm_example(tokens, prefix_len):
    """lmlab's :func:`lmlab.data.objectives.prefix_lm_example` as a dict."""
    return prefix_lm_example(tokens, prefix_len)._asdict()


register(Exercise(
    id="05.prefix_lm_example",
    points=2,
    signature="prefix_lm_example(tokens: list[int], prefix_len: int) -> dict(inputs (T,), targets (T,), attn_mask (T, T) bool, loss_mask (T,) bool), T = len(tokens) - 1",
    hint="inputs and targets are the sequence shifted by one; the attention mask is chapter 00's prefix-LM mask; the loss "
         "counts only the positions whose target is in the suffix.",
    minutes=10,
    hints=(
        "A prefix LM reads its prefix in both directions and is trained only to generate what follows: the loss skips "
        "the positions that predict prefix tokens, so it learns from fewer tokens than a causal LM on the same text.",
        "T = len(tokens) - 1. inputs = every token but the last, targets = every token but the first: both (T,). "
        "attn_mask (T, T): causal, with the top-left prefix_len block all True. loss_mask (T,): position t predicts "
        "tokens[t + 1], so it is True when that token is in the suffix.",
        "T = len(tokens) - 1\nattn = ...  # causal (T, T), then open the prefix block\n"
        "loss_mask = ...  # (T,) bool: the target is a suffix token\n"
        "return {\"inputs\": ..., \"targets\": ..., \"attn_mask\": attn, \"loss_mask\": loss_mask}",
    ),
    checks=(
        Check("inputs, targets, masks; no trained position sees its target; one loss per suffix token", _prefix_cases),
        Check("the attention mask equals lmlab.data.masks.prefix_lm_mask", _prefix_masks_module),
    ),
    reference="lmlab.grading.chapters.ch05:reference_prefix_lm_example",
))

MODE_IDS = {"[R]": 60, "[X]": 61, "[S]": 62}


def _ul2_expected(tokens, mask, mode, V):
    if mode == "[S]":
        P = mask.index(True)
        return [MODE_IDS[mode]] + tokens[:P], tokens[P:]
    inputs, targets = _fusion_expected(tokens, mask, V)
    return [MODE_IDS[mode]] + inputs, targets


def _ul2_cases(f):
    rng = py_random(11)
    V = 100
    for mode, L, spans in (("[R]", 24, "short"), ("[X]", 30, "long"), ("[S]", 20, "suffix"), ("[R]", 12, "short"), ("[X]", 16, "suffix")):
        tokens = [rng.randrange(60) for _ in range(L)]
        if spans == "suffix":
            P = rng.randint(3, L - 3)
            mask = [i >= P for i in range(L)]
        else:
            mask = [False] * L
            for s in range(2, L - 2, 6 if spans == "short" else 10):
                for i in range(s, min(L, s + (2 if spans == "short" else 5))):
                    mask[i] = True
        what = f"ul2_example(tokens of {L}, a {spans} mask, {mode!r}, MODE_IDS, vocab_size={V})"
        got = _example_call(f, (tokens, mask, mode, dict(MODE_IDS), V), what)
        prefix, targets = _ul2_expected(tokens, mask, mode, V)
        _check_example(got, prefix + targets, len(prefix), what + (" (S: prefix = [S] + the text before the suffix, no sentinels)"
                                                                    if mode == "[S]" else " (prefix = mode token + inputs with sentinels)"))


def _ul2_mode_first(f):
    tokens, mask = list(range(10, 30)), [False] * 6 + [True] * 3 + [False] * 8 + [True] * 3
    outs = {}
    for mode in ("[R]", "[X]"):
        got = _example_call(f, (tokens, mask, mode, dict(MODE_IDS), 100), f"ul2_example(..., {mode!r})")
        expect_equal(int(got["inputs"][0]), MODE_IDS[mode], f"ul2_example(..., {mode!r}): the first input token is the mode token")
        outs[mode] = got["inputs"][1:]
    expect_close(outs["[R]"], outs["[X]"], "ul2_example: [R] and [X] on the same mask differ only in the mode token")


def reference_ul2_example(tokens, noise_mask, mode, mode_ids, vocab_size):
    """UL2 from lmlab's :mod:`lmlab.data.objectives`: [S] is a prefix LM up to the first noise token, [R]/[X] span corruption."""
    if mode == "[S]":
        P = list(noise_mask).index(True)
        return decoder_only_example([mode_ids[mode]] + tokens[:P], tokens[P:])._asdict()
    return span_corruption_example(tokens, noise_mask, vocab_size, mode_ids[mode])._asdict()


register(Exercise(
    id="05.ul2_example",
    points=3,
    signature="ul2_example(tokens, noise_mask, mode: '[R]'|'[X]'|'[S]', mode_ids: dict, vocab_size) -> dict(inputs, targets, attn_mask, loss_mask)",
    hint="prefix = [mode id] + (sentinel inputs, or for [S] the text before the suffix); then the targets; bidirectional over the prefix; train the target positions only.",
    minutes=15,
    hints=(
        "UL2 mixes denoisers: R (short spans, little noise), X (long spans or much noise) and S (prefix LM: continue "
        "the text). A mode token in front tells the model which task it is doing; everything before the targets is a "
        "bidirectional prefix.",
        "[R] and [X]: inputs and targets come from your sentinel_fusion, and the prefix is the mode id followed by "
        "those inputs. [S]: the suffix starts at the first True of the mask; the prefix is the mode id followed by the "
        "tokens before it, the targets are the rest. Then prefix + targets goes through your prefix_lm_example with "
        "prefix_len = len(prefix).",
        "if mode == \"[S]\":\n    P = ...  # where the suffix starts\n    prefix, targets = ..., ...\nelse:\n"
        "    inputs, targets = ...\n    prefix = ...\nreturn prefix_lm_example(..., ...)",
    ),
    checks=(
        Check("R, X and S examples: the sequence, the prefix mask, the loss on the targets only", _ul2_cases),
        Check("the mode token comes first and is the only difference between [R] and [X]", _ul2_mode_first),
    ),
    reference="lmlab.grading.chapters.ch05:reference_ul2_example",
))
