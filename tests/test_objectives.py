"""lmlab.data.span_corruption and lmlab.data.objectives: T5's bookkeeping, sentinels, masks, UL2 examples."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.text import ByteTokenizer, CharTokenizer
from lmlab.data.masks import causal_mask, prefix_lm_mask
from lmlab.model import GPT, ModelConfig
from lmlab.data.objectives import (UL2_DENOISERS, UL2_WEIGHTS, Denoiser, ExtraIdTokenizer, causal_lm_example, collate,
                              decoder_only_example, masked_lm_loss, pad_example, prefix_lm_example, random_prefix_length,
                              raw_length_for, sample_objective_batch, span_corruption_example, ul2_example)
from lmlab.data.span_corruption import (fill_sentinels, mask_spans, noise_counts, random_segmentation, random_spans_helper,
                                   random_spans_noise_mask, sentinel_fusion, sentinel_id, span_corruption)

FAST = settings(max_examples=60, deadline=None)
densities = st.floats(0.01, 0.99)
spans = st.floats(1.0, 20.0)


def _runs(mask):
    out = []
    for v in mask.tolist():
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return out


# ----------------------------------------------------------------------------- the noise mask


@FAST
@given(st.integers(2, 600), densities, spans, st.integers(0, 10_000))
def test_noise_mask_counts_and_alternation(L, d, mu, seed):
    m = random_spans_noise_mask(L, d, mu, generator=torch.Generator().manual_seed(seed))
    n = min(max(round(L * d), 1), L - 1)
    k = min(max(1, round(n / mu)), L - n)
    assert m.dtype == torch.bool and m.shape == (L,)
    assert int(m.sum()) == n
    runs = _runs(m)
    assert len(runs) == 2 * k and not runs[0][0] and runs[-1][0]  # text, noise, text, noise, ..., noise
    assert [v for v, _ in runs] == [False, True] * k
    assert noise_counts(L, d, mu) == (n, k)


@FAST
@given(st.integers(2, 300), densities, spans, st.integers(0, 10_000))
def test_random_roll_keeps_the_count_and_is_a_rotation(L, d, mu, seed):
    plain = random_spans_noise_mask(L, d, mu, generator=torch.Generator().manual_seed(seed))
    rolled = random_spans_noise_mask(L, d, mu, generator=torch.Generator().manual_seed(seed), random_roll=True)
    assert int(rolled.sum()) == int(plain.sum())
    assert any(torch.equal(torch.roll(plain, k), rolled) for k in range(L))
    n_spans = len(mask_spans(rolled))
    assert n_spans in (noise_counts(L, d, mu)[1], noise_counts(L, d, mu)[1] + 1)  # a wrapped span counts twice


@FAST
@given(st.integers(1, 200), st.data())
def test_random_segmentation(n, data):
    k = data.draw(st.integers(1, n))
    parts = random_segmentation(n, k, torch.Generator().manual_seed(n * 31 + k))
    assert len(parts) == k and sum(parts) == n and min(parts) >= 1


def test_short_text_degeneracy_and_the_roll_fix():
    """L <= 30 at density 0.15: one span, always the last round(0.15 L) tokens; random_roll moves it."""
    for L in range(2, 31):
        n, k = noise_counts(L)
        assert k == 1
        masks = {tuple(random_spans_noise_mask(L, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
        assert masks == {tuple([False] * (L - n) + [True] * n)}
    assert noise_counts(30) == (4, 1)  # 4.5 rounds half to even, as tf.round: 4, not ceil's 5
    assert noise_counts(31)[1] == 2  # the first length with two spans
    L = 20
    last = [bool(random_spans_noise_mask(L, generator=torch.Generator().manual_seed(s), random_roll=True)[-1]) for s in range(400)]
    assert 0.05 < sum(last) / 400 < 0.3  # about 3/20 = 0.15 instead of always
    freq = torch.stack([random_spans_noise_mask(L, generator=torch.Generator().manual_seed(s), random_roll=True)
                        for s in range(400)]).float().mean(0)
    assert freq.min() > 0.05 and freq.max() < 0.3


def test_every_split_is_equally_likely():
    from collections import Counter

    g = torch.Generator().manual_seed(0)
    c = Counter(tuple(random_segmentation(5, 3, g)) for _ in range(3000))
    assert len(c) == 6  # C(4, 2) compositions of 5 into 3 positive parts
    assert max(c.values()) / min(c.values()) < 1.35


def test_length_table():
    assert random_spans_helper(512) == (568, 114)  # T5: 512 inputs need 568 raw tokens, give 114 targets
    raw, targets = random_spans_helper(512)
    n, k = round(raw * 0.15), round(round(raw * 0.15) / 3)
    assert raw - n + k + 1 == 512 and n + k + 1 == targets  # +1: EOS on each side
    assert random_spans_helper(513 - 1, 0.15, 3.0)[0] == 568
    raw, targets = random_spans_helper(512, 0.5, 3.0)
    assert targets <= 512  # T5's hack at density 0.5: targets no longer than the inputs
    r2, _ = random_spans_helper(1024)
    assert r2 > 2 * 568 - 10


# ----------------------------------------------------------------------------- sentinels


def _figure2():
    words = "Thank you for inviting me to your party last week .".split()
    vocab = sorted(set(words))
    V = len(vocab) + 3
    ids = [vocab.index(w) for w in words]
    mask = [w in ("for", "inviting", "last") for w in words]
    name = {**dict(enumerate(vocab)), V - 1: "<X>", V - 2: "<Y>", V - 3: "<Z>"}
    return ids, mask, V, lambda xs: " ".join(name[i] for i in xs)


def test_t5_figure_2():
    ids, mask, V, show = _figure2()
    sc = span_corruption(ids, mask, V)
    assert show(sc.inputs) == "Thank you <X> me to your party <Y> week ."
    assert show(sc.targets) == "<X> for inviting <Y> last <Z>"
    assert sc.n_spans == 2
    assert show(sentinel_fusion(ids, mask, V)) == show(sc.inputs)
    assert fill_sentinels(sc.inputs, sc.targets, V) == ids
    with_eos = span_corruption(ids, mask, V, eos_id=0)
    assert with_eos.inputs[-1] == with_eos.targets[-1] == 0 and fill_sentinels(*with_eos[:2], V, eos_id=0) == ids


@FAST
@given(st.lists(st.integers(0, 40), min_size=2, max_size=80), st.data())
def test_sentinels_and_round_trip(tokens, data):
    mask = data.draw(st.lists(st.booleans(), min_size=len(tokens), max_size=len(tokens)))
    V = 41 + len(tokens) + 1
    sc = span_corruption(tokens, mask, V)
    k = len(mask_spans(mask))
    sentinels_in = [t for t in sc.inputs if t > 40]
    assert sentinels_in == [V - 1 - i for i in range(k)]  # one per span, counting down from the top
    assert len(sc.inputs) == len(tokens) - sum(mask) + k
    assert [t for t in sc.targets if t > 40][:k] == sentinels_in
    assert len(sc.targets) == sum(mask) + k + (0 if mask[-1] else 1)
    assert fill_sentinels(sc.inputs, sc.targets, V) == tokens
    if not mask[0]:  # T5's own targets: fuse the non-noise spans
        assert sc.targets == sentinel_fusion(tokens, [not m for m in mask], V)


def test_sentinel_ids_and_vocabulary_room():
    assert sentinel_id(0, 32100) == 32099 and sentinel_id(99, 32100) == 32000
    with pytest.raises(ValueError, match="vocab_size"):
        sentinel_fusion([0, 1, 9], [True, False, True], 10)  # sentinels 9, 8 would collide with id 9
    with pytest.raises(ValueError, match="vocab_size"):
        span_corruption([0, 1, 7], [True, False, False], 9)  # no room for the closing sentinel


@pytest.mark.parametrize("call, name", [
    (lambda: random_spans_noise_mask(10, 0.0), "noise_density"),
    (lambda: random_spans_noise_mask(10, 1.0), "noise_density"),
    (lambda: random_spans_noise_mask(10, -0.1), "noise_density"),
    (lambda: random_spans_noise_mask(10, 0.15, 0.5), "mean_noise_span_length"),
    (lambda: random_spans_noise_mask(1), "length"),
    (lambda: random_spans_noise_mask(10, random_roll="yes"), "random_roll"),
    (lambda: random_spans_helper(2), "inputs_length"),
    (lambda: random_spans_helper(512, 1.5), "noise_density"),
    (lambda: sentinel_fusion([1, 2], [True], 10), "noise_mask"),
    (lambda: prefix_lm_example([1, 2, 3], 0), "prefix_len"),
    (lambda: prefix_lm_example([1, 2, 3], 3), "prefix_len"),
    (lambda: ExtraIdTokenizer(CharTokenizer("ab"), n_sentinels=0), "n_sentinels"),
    (lambda: random_prefix_length(1), "length"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_too_many_spans_for_the_reserved_sentinels():
    tok = ExtraIdTokenizer(CharTokenizer("abc"), n_sentinels=2)
    with pytest.raises(ValueError, match="n_sentinels"):
        span_corruption_example([0, 1] * 5, [False, True] * 5, tok.vocab_size, n_sentinels=tok.n_sentinels)


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("base", [CharTokenizer("hello world"), ByteTokenizer()])
def test_extra_ids_do_not_collide_and_decode_readably(base):
    tok = ExtraIdTokenizer(base, n_sentinels=8)
    text_ids = set(range(base.vocab_size))
    extra = {tok.pad_id, *tok.mode_ids.values(), *(tok.sentinel(k) for k in range(8))}
    assert len(extra) == 3 + 1 + 8 and not extra & text_ids and max(extra) == tok.vocab_size - 1
    assert tok.sentinel(0) == tok.vocab_size - 1
    ids = [tok.mode_id("[S]")] + tok.encode("hello") + [tok.sentinel(0)] + tok.encode(" world") + [tok.sentinel(1), tok.pad_id]
    assert tok.decode(ids) == "[S]hello<X0> world<X1><pad>"
    assert tok.decode(tok.encode("hello")) == "hello"
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])


# ----------------------------------------------------------------------------- examples


@FAST
@given(st.lists(st.integers(0, 50), min_size=3, max_size=60), st.data())
def test_prefix_lm_example_matches_masks_and_trains_only_the_suffix(tokens, data):
    P = data.draw(st.integers(1, len(tokens) - 1))
    ex = prefix_lm_example(tokens, P)
    T = len(tokens) - 1
    assert torch.equal(ex.attn_mask, prefix_lm_mask(T, P))
    assert ex.inputs.tolist() == tokens[:-1] and ex.targets.tolist() == tokens[1:]
    assert int(ex.loss_mask.sum()) == len(tokens) - P
    assert ex.targets[ex.loss_mask].tolist() == tokens[P:]  # exactly the suffix, once each
    for t in torch.nonzero(ex.loss_mask).flatten().tolist():
        assert not ex.attn_mask[t, t + 1:].any()  # no trained position sees its answer


def test_causal_example_is_the_causal_mask():
    ex = causal_lm_example([5, 6, 7, 8])
    assert torch.equal(ex.attn_mask, causal_mask(3)) and ex.loss_mask.all()


@FAST
@given(st.integers(0, 10_000), st.sampled_from(list(UL2_DENOISERS)))
def test_ul2_examples_have_their_mode_and_no_leak(seed, name):
    tok = ExtraIdTokenizer(CharTokenizer("abcdefghij"), n_sentinels=32)
    g = torch.Generator().manual_seed(seed)
    d = UL2_DENOISERS[name]
    L = raw_length_for(d, 48)
    tokens = torch.randint(10, (L,), generator=g).tolist()
    ex = ul2_example(tokens, d, tok, g)
    assert ex.inputs[0] == tok.mode_id(d.mode)
    assert ex.inputs.numel() <= 48
    trained = torch.nonzero(ex.loss_mask).flatten()
    assert all(not ex.attn_mask[t, t + 1:].any() for t in trained.tolist())
    P = int(ex.attn_mask[0].sum())  # the bidirectional prefix
    assert torch.equal(ex.attn_mask, prefix_lm_mask(ex.inputs.numel(), P))
    assert trained[0] == P - 1 and trained[-1] == ex.inputs.numel() - 1
    seq = torch.cat([ex.inputs, ex.targets[-1:]]).tolist()
    if d.sequential:
        assert seq[1:] == tokens and not any(t >= tok.text_vocab_size for t in seq[1:])
    else:
        assert fill_sentinels(seq[1:P], seq[P:], tok.vocab_size) == tokens


def test_pad_collate_and_masked_loss():
    ex = decoder_only_example([1, 2], [3, 4])
    p = pad_example(ex, 6, pad_id=0)
    assert p.inputs.tolist() == [1, 2, 3, 0, 0, 0] and p.loss_mask.tolist() == [False, True, True, False, False, False]
    assert not p.attn_mask[:3, 3:].any() and p.attn_mask[5].all()  # real rows never see pads; pad rows are causal
    b = collate([ex, causal_lm_example([1, 2, 3, 4, 5, 6, 7])], pad_id=0)
    assert b.inputs.shape == (2, 6) and b.attn_mask.shape == (2, 1, 6, 6)
    logits = torch.randn(2, 6, 9)
    want = torch.nn.functional.cross_entropy(logits[b.loss_mask], b.targets[b.loss_mask])
    torch.testing.assert_close(masked_lm_loss(logits, b.targets, b.loss_mask), want)
    logits2 = logits.clone()
    logits2[~b.loss_mask] = 100.0  # untrained positions do not count
    torch.testing.assert_close(masked_lm_loss(logits2, b.targets, b.loss_mask), want)


def test_gpt_takes_a_per_example_mask():
    """GPT.forward's attn_mask (B, 1, T, T): row b uses its own mask; equal to running rows alone."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, context_length=8, d_model=16, n_layers=1, n_heads=2)).eval()
    b = collate([prefix_lm_example(list(range(1, 9)), 5), causal_lm_example(list(range(2, 10)))])
    both = model(b.inputs, b.attn_mask)
    torch.testing.assert_close(both[0], model(b.inputs[:1], b.attn_mask[0, 0])[0])
    torch.testing.assert_close(both[1], model(b.inputs[1:])[0], atol=1e-5, rtol=1e-5)  # the causal row = no mask
    assert not torch.allclose(both[0], model(b.inputs[:1])[0])  # the prefix row really is bidirectional


@pytest.mark.parametrize("objective", ["causal", "prefix", "span", "ul2"])
def test_objective_batches_fill_the_same_shape(objective):
    tok = ExtraIdTokenizer(CharTokenizer("abcdefghijklmnop"), n_sentinels=32)
    ids = torch.randint(16, (5000,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    batch, rows = sample_objective_batch(objective, ids, 8, 40, tok, g)
    assert batch.inputs.shape == (8, 40) and batch.attn_mask.shape == (8, 1, 40, 40) and len(rows) == 8
    assert int(batch.inputs.max()) < tok.vocab_size
    share = batch.loss_mask.float().mean().item()
    assert {"causal": share == 1.0, "prefix": 0.2 < share < 0.8, "span": 0.05 < share < 0.4, "ul2": 0.1 < share < 0.9}[objective]
    again, _ = sample_objective_batch(objective, ids, 8, 40, tok, torch.Generator().manual_seed(2))
    assert torch.equal(again.inputs, batch.inputs)  # seeded


def test_ul2_weights_pick_the_denoisers():
    tok = ExtraIdTokenizer(CharTokenizer("abcdefghijklmnop"), n_sentinels=32)
    ids = torch.randint(16, (5000,), generator=torch.Generator().manual_seed(1))
    _, rows = sample_objective_batch("ul2", ids, 300, 40, tok, torch.Generator().manual_seed(0), weights={"S prefix LM": 1.0, "R r=0.15 μ=3": 3.0})
    assert set(rows) == {"S prefix LM", "R r=0.15 μ=3"} and 0.65 < rows.count("R r=0.15 μ=3") / 300 < 0.85
    assert abs(sum(UL2_WEIGHTS.values()) - 1) < 1e-9 and len(UL2_DENOISERS) == 7
    assert {d.mode for d in UL2_DENOISERS.values()} == {"[R]", "[X]", "[S]"}
    with pytest.raises(ValueError, match="weights"):
        sample_objective_batch("ul2", ids, 4, 40, tok, weights={"nope": 1.0})
    assert Denoiser("[S]", 0.5).sequential and not UL2_DENOISERS["X r=0.5 μ=64"].sequential


def test_random_prefix_length_is_t5s():
    g = torch.Generator().manual_seed(0)
    draws = [random_prefix_length(10, 0.5, g) for _ in range(900)]
    assert set(draws) == set(range(1, 10))  # density 0.5: any split
    draws = [random_prefix_length(11, 0.25, g) for _ in range(300)]
    assert min(draws) == 5 and max(draws) == 10  # round((1 - 0.5) * 10) = 5 .. 10
