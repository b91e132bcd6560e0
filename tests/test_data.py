"""Tests for lmlab.data.text: corpus loading, tokenizers, batches and the unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.text import (
    ByteTokenizer,
    CharTokenizer,
    Corpus,
    load_corpus,
    load_text,
    sample_batch,
    unigram_entropy,
)

PROPERTY = settings(max_examples=60, deadline=None)

# Any text that can be written to a UTF-8 file and is not "empty" for load_text: no surrogates, no NUL,
# and at least one non-whitespace character.
_file_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(st.text())
def test_byte_tokenizer_round_trips_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


@PROPERTY
@given(st.data())
def test_char_tokenizer_round_trips_text_from_its_vocabulary(data):
    vocab_text = data.draw(st.text(min_size=1), label="vocab_text")
    tok = CharTokenizer(vocab_text)
    alphabet = sorted(set(vocab_text))
    text = data.draw(st.text(alphabet=st.sampled_from(alphabet)), label="text")
    ids = tok.encode(text)
    assert tok.vocab_size == len(alphabet)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


@PROPERTY
@given(st.text(min_size=1))
def test_char_tokenizer_ids_follow_sorted_characters(vocab_text):
    tok = CharTokenizer(vocab_text)
    alphabet = sorted(set(vocab_text))
    assert tok.encode("".join(alphabet)) == list(range(len(alphabet)))


def test_char_tokenizer_distinct_characters_get_distinct_ids():
    tok = CharTokenizer("banana bread")
    ids = tok.encode("abdenr ")
    assert len(set(ids)) == 7
    assert tok.vocab_size == 7


@pytest.mark.parametrize("bad_id", [-1, 256, 1000])
def test_byte_tokenizer_decode_rejects_ids_outside_vocabulary(bad_id):
    with pytest.raises(ValueError, match=rf"token id {bad_id} is outside the vocabulary"):
        ByteTokenizer().decode([104, 105, bad_id])


@pytest.mark.parametrize("bad_id", [-1, 3, 99])
def test_char_tokenizer_decode_rejects_ids_outside_vocabulary(bad_id):
    tok = CharTokenizer("abc")  # ids 0..2
    with pytest.raises(ValueError, match=rf"token id {bad_id} is outside the vocabulary"):
        tok.decode([0, bad_id])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode(torch.tensor([0, bad_id]))


def test_char_tokenizer_encode_rejects_unseen_character():
    tok = CharTokenizer("hello")
    with pytest.raises(ValueError, match=r"character 'z' is not in this tokenizer's vocabulary"):
        tok.encode("hez")


@pytest.mark.parametrize("tok", [ByteTokenizer(), CharTokenizer("abc")], ids=["byte", "char"])
def test_tokenizers_reject_non_str_and_2d_input(tok):
    with pytest.raises(ValueError, match="encode expects a str"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="1-D sequence of ids"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("text", ["", None, ["a", "b"]])
def test_char_tokenizer_needs_non_empty_str(text):
    with pytest.raises(ValueError, match="non-empty str"):
        CharTokenizer(text)


def test_byte_tokenizer_decode_of_cut_multibyte_character_does_not_fail():
    ids = ByteTokenizer().encode("é")  # two bytes
    assert len(ids) == 2
    assert ByteTokenizer().decode(ids[:1]) == "\ufffd"


# --------------------------------------------------------------------------------------------
# load_text
# --------------------------------------------------------------------------------------------


def test_load_text_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_text(tmp_path / "does_not_exist.txt")


@pytest.mark.parametrize("content", [b"", b"   \n\t\n"], ids=["empty", "whitespace"])
def test_load_text_empty_file(tmp_path, content):
    p = tmp_path / "empty.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="is empty"):
        load_text(p)


def test_load_text_binary_file(tmp_path):
    p = tmp_path / "image.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(ValueError, match="looks binary"):
        load_text(p)


def test_load_text_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_text(tmp_path)


def test_load_text_not_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_text(p)


def test_load_text_accepts_str_path(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello\nworld\n", encoding="utf-8")
    assert load_text(str(p)) == "hello\nworld\n"


@settings(max_examples=30, deadline=None)
@given(text=st.text(alphabet=_file_chars, min_size=1).filter(lambda s: s.encode("utf-8").strip()))
def test_load_text_round_trips(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("rt") / "corpus.txt"
    p.write_bytes(text.encode("utf-8"))  # bytes: no newline translation
    assert load_text(p) == text


# --------------------------------------------------------------------------------------------
# load_corpus
# --------------------------------------------------------------------------------------------


def test_load_corpus_is_deterministic():
    a, b = load_corpus(max_chars=20_000), load_corpus(max_chars=20_000)
    assert isinstance(a, Corpus)
    assert a == b
    assert load_corpus() == load_corpus()


@pytest.mark.parametrize("val_fraction", [0.01, 0.1, 0.5, 0.9])
def test_load_corpus_split_is_contiguous_and_disjoint(val_fraction):
    full = load_corpus(max_chars=10_000, val_fraction=0.5).text
    c = load_corpus(max_chars=10_000, val_fraction=val_fraction)
    assert len(full) == 10_000
    assert c.train + c.val == full
    assert c.text == full
    assert len(c.train) >= 1 and len(c.val) >= 1
    # the validation share is taken from the end and is about val_fraction of the text
    assert abs(len(c.val) - val_fraction * len(full)) <= 1


def test_load_corpus_max_chars_is_a_prefix_of_the_whole_text():
    whole = load_corpus().text
    assert len(whole) > 100_000  # the embedded docs are a real corpus
    assert load_corpus(max_chars=5_000).text == whole[:5_000]


def test_load_corpus_tiny_texts_keep_both_parts_non_empty():
    c = load_corpus(max_chars=2, val_fraction=0.01)
    assert len(c.train) == 1 and len(c.val) == 1


@pytest.mark.parametrize("val_fraction", [0, 1, -0.1, 1.5])
def test_load_corpus_rejects_bad_val_fraction(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(val_fraction=val_fraction)


@pytest.mark.parametrize("max_chars", [0, 1, -5])
def test_load_corpus_rejects_bad_max_chars(max_chars):
    with pytest.raises(ValueError, match="max_chars"):
        load_corpus(max_chars=max_chars)


# --------------------------------------------------------------------------------------------
# sample_batch
# --------------------------------------------------------------------------------------------


def _stream(n: int = 200, seed: int = 0) -> torch.Tensor:
    """A stream of distinct ids, so each window's start can be recovered from its first token."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)) + 1000


@pytest.mark.parametrize("B,T", [(1, 1), (4, 8), (7, 31)])
def test_sample_batch_shapes_and_shift(B, T):
    ids = _stream()
    x, y = sample_batch(ids, B, T, generator=torch.Generator().manual_seed(1))
    assert x.shape == (B, T) and y.shape == (B, T)
    assert x.dtype == ids.dtype and y.dtype == ids.dtype
    position = {int(v): i for i, v in enumerate(ids)}
    for b in range(B):
        start = position[int(x[b, 0])]
        assert start + T + 1 <= len(ids)
        assert torch.equal(x[b], ids[start : start + T])
        assert torch.equal(y[b], ids[start + 1 : start + T + 1])
    # y is x shifted by one: the overlap agrees
    assert torch.equal(y[:, :-1], x[:, 1:])


def test_sample_batch_is_reproducible_with_a_seeded_generator():
    ids = _stream()
    x1, y1 = sample_batch(ids, 8, 16, generator=torch.Generator().manual_seed(7))
    x2, y2 = sample_batch(ids, 8, 16, generator=torch.Generator().manual_seed(7))
    x3, _ = sample_batch(ids, 8, 16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_sample_batch_shortest_stream_and_every_window_reachable():
    T = 5
    exact = torch.arange(T + 1)
    x, y = sample_batch(exact, 3, T, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, exact[:-1].expand(3, T)) and torch.equal(y, exact[1:].expand(3, T))
    # With two possible windows, both (including the last one) must come up.
    x, _ = sample_batch(torch.arange(T + 2), 200, T, generator=torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1}


def test_sample_batch_device_argument():
    x, y = sample_batch(torch.arange(50), 2, 4, device="cpu")
    assert x.device.type == "cpu" and y.device.type == "cpu"


@pytest.mark.parametrize(
    "ids,B,T,match",
    [
        (torch.arange(20).reshape(4, 5), 2, 3, "ids must be a 1-D tensor"),
        ([1, 2, 3, 4, 5], 2, 3, "ids must be a 1-D tensor"),
        (torch.arange(20), 0, 3, "batch_size"),
        (torch.arange(20), 2, 0, "context_length"),
        (torch.arange(8), 2, 8, r"context_length=8 needs at least 9"),
        (torch.arange(0), 1, 1, "needs at least 2"),
    ],
)
def test_sample_batch_rejects_bad_input(ids, B, T, match):
    with pytest.raises(ValueError, match=match):
        sample_batch(ids, B, T)


# --------------------------------------------------------------------------------------------
# unigram_entropy
# --------------------------------------------------------------------------------------------


def _numpy_unigram_ce(train, target, V):
    counts = np.bincount(np.asarray(train), minlength=V).astype(np.float64)
    p = (counts + 1.0) / (counts.sum() + V)  # add-one smoothing
    return float(-np.log(p[np.asarray(target)]).mean())


def test_unigram_entropy_matches_numpy_on_a_hand_made_case():
    train = [0, 0, 0, 1, 1, 2, 0, 1, 0, 3]
    val = [0, 1, 2, 3, 3, 4]
    t, v = torch.tensor(train), torch.tensor(val)
    # train only: vocabulary inferred from the ids (4 symbols)
    assert unigram_entropy(t) == pytest.approx(_numpy_unigram_ce(train, train, 4), rel=1e-12)
    # with eval ids: vocabulary inferred from both streams (5 symbols)
    assert unigram_entropy(t, v) == pytest.approx(_numpy_unigram_ce(train, val, 5), rel=1e-12)
    # explicit vocabulary size
    assert unigram_entropy(t, v, vocab_size=9) == pytest.approx(_numpy_unigram_ce(train, val, 9), rel=1e-12)


def test_unigram_entropy_small_case_by_hand():
    # counts {0: 3, 1: 1}, V = 2, add-one: p0 = 4/6, p1 = 2/6
    expected = -(3 * math.log(4 / 6) + math.log(2 / 6)) / 4
    assert unigram_entropy(torch.tensor([0, 1, 0, 0])) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("V,reps", [(2, 1), (5, 3), (256, 2)])
def test_unigram_entropy_of_uniform_stream_is_log_V(V, reps):
    ids = torch.arange(V).repeat(reps)[torch.randperm(V * reps, generator=torch.Generator().manual_seed(0))]
    assert unigram_entropy(ids) == pytest.approx(math.log(V), rel=1e-12)


def test_unigram_entropy_rejects_bad_input():
    with pytest.raises(ValueError, match="train_ids is empty"):
        unigram_entropy(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="eval_ids is empty"):
        unigram_entropy(torch.tensor([0, 1]), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_entropy(torch.tensor([0, 1]), torch.tensor([0, 5]), vocab_size=3)
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_entropy(torch.tensor([0, 7]), vocab_size=3)
    with pytest.raises(ValueError, match="train_ids"):
        unigram_entropy(torch.tensor([0, -1, 2]))


def test_char_data_is_the_corpus_through_a_char_tokenizer():
    from lmlab.data.text import CharTokenizer, char_data, load_corpus

    corpus = load_corpus(max_chars=5000)
    tok, train_ids, val_ids = char_data(max_chars=5000)
    assert tok.vocab_size == CharTokenizer(corpus.text).vocab_size
    assert tok.decode(train_ids) == corpus.train and tok.decode(val_ids) == corpus.val
    assert train_ids.dtype == torch.long and val_ids.dim() == 1
