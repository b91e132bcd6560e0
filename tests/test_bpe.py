"""lmlab.data.bpe: byte-level BPE training, encoding and decoding (SmolLM2's vocabulary: tests/test_checkpoints.py)."""

from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.bpe import (GPT2_SPLIT, LLAMA3_SPLIT, BPETokenizer, apply_merges, bpe_merge_step, bytes_to_unicode,
                       merge_pair, pair_counts, train_bpe)
from lmlab.data.text import load_corpus


@lru_cache(maxsize=None)
def trained(vocab_size=400):
    return train_bpe(load_corpus().train[:60_000], vocab_size, special_tokens=("<|endoftext|>",))


def test_bytes_to_unicode_is_gpt2s():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"


def test_merge_pair_is_left_to_right_non_overlapping():
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 7) == [7, 3, 7]
    assert pair_counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}


def test_merge_step_tie_goes_to_smallest_pair():
    # (3, 4) and (1, 2) both occur twice: the smaller pair (1, 2) wins
    pair, chunks = bpe_merge_step([[3, 4, 1, 2], [3, 4, 1, 2]], 256)
    assert pair == (1, 2) and chunks == [[3, 4, 256], [3, 4, 256]]
    assert bpe_merge_step([[1], [2]], 256)[0] is None


def test_fast_training_equals_repeated_merge_steps():
    import regex

    text = load_corpus().train[:15_000]
    chunks = [list(c.encode()) for c in regex.findall(GPT2_SPLIT, text)]
    merges = []
    for k in range(60):
        pair, chunks = bpe_merge_step(chunks, 256 + k)
        merges.append(pair)
    assert list(train_bpe(text, 256 + 60).merges) == merges


def test_trained_tokenizer_compresses_and_merges_are_frequent_pairs():
    tok = trained()
    assert tok.vocab_size == 400 and len(tok.merges) == 400 - 256 - 1  # 256 bytes + merges + 1 special
    assert all(len(tok.vocab[i]) >= 2 for i in range(256, 399))
    val = load_corpus().val[:20_000]
    ids = tok.encode(val)
    assert len(val.encode()) / len(ids) > 1.5  # bytes per token (1.66 measured with 143 merges)
    assert tok.decode(ids) == val


def test_encode_applies_earliest_merge_first():
    # merges learned as (a, b) -> 256 then (b, c) -> 257: "abc" = [256, c]; reversed order gives [a, 257]
    a, b, c = 97, 98, 99
    assert apply_merges([a, b, c], {(a, b): 256, (b, c): 257}) == [256, c]
    assert apply_merges([a, b, c], {(b, c): 257, (a, b): 256}) == [a, 257]
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"bc"}
    tok = BPETokenizer(vocab, {(a, b): 256, (b, c): 257})
    assert tok.encode("abc") == [256, c]


def test_apply_merges_matches_tokenizer_on_chunks():
    tok = trained()
    import regex

    for chunk in regex.findall(GPT2_SPLIT, load_corpus().val[:3000]):
        assert apply_merges(list(chunk.encode()), tok.merges) == tok.encode_ordinary(chunk)


def test_special_tokens_are_matched_whole():
    tok = trained()
    eot = tok.special["<|endoftext|>"]
    ids = tok.encode("one<|endoftext|>two")
    assert ids.count(eot) == 1 and tok.decode(ids) == "one<|endoftext|>two"
    assert eot not in tok.encode("one<|endoftext|>two", allow_special=False)
    assert tok.decode(ids, skip_special=True) == "onetwo"


def test_invalid_utf8_decodes_to_replacement_character():
    tok = trained()
    ids = tok.encode("é")  # two bytes, maybe one token: decode a single byte token instead
    assert tok.decode([0xC3]) == "\ufffd"
    assert tok.decode(ids) == "é"
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode([10_000])


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(text):
    tok = trained()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_round_trip_any_bytes(data):
    tok = trained()
    text = data.decode("utf-8", errors="surrogateescape").encode("utf-8", errors="surrogateescape").decode(
        "utf-8", errors="replace")
    assert tok.decode(tok.encode(text)) == text
    ids = [tok.byte_ids[b] for b in data]  # raw bytes as tokens: decode_bytes gives them back exactly
    assert tok.decode_bytes(ids) == data


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_llama3_pattern_round_trips(text):
    tok = train_bpe("hello world 12345 " * 20, 270, pattern=LLAMA3_SPLIT)
    assert tok.decode(tok.encode(text)) == text


def test_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe("abc", 100)
    with pytest.raises(ValueError, match="text must be a str"):
        train_bpe(b"abc", 300)
    with pytest.raises(ValueError, match="text must be a str"):
        trained().encode(b"abc")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        BPETokenizer.from_gguf_fields(["a", "b"], ["a c"])
