"""Byte-level BPE: the tokenizer of GPT-2, LLaMA 3 and SmolLM2 (lesson 13, ``lessons/13_capstone``).

Byte-level BPE starts from the 256 byte values, so *every* string has an encoding (no unknown
token), and learns merges: "the pair of tokens seen most often becomes one new token", repeated
until the vocabulary is big enough (Sennrich et al. 2016; Radford et al. 2019, GPT-2).

1. **Pre-tokenize**: a regex cuts the text into chunks (words with their leading space, runs of
   digits, punctuation, whitespace); merges never cross a chunk boundary, so " the" and "the." do
   not learn merges across the space or the dot. :data:`GPT2_SPLIT` is GPT-2's pattern (used by
   SmolLM2's GGUF), :data:`LLAMA3_SPLIT` LLaMA 3's.
2. **Train** (:func:`train_bpe`): count adjacent pairs in every chunk (weighted by how often the
   chunk occurs), merge the most frequent pair everywhere; **ties go to the smallest pair**
   ``(a, b)`` by token id (then the order is the same on every machine).
3. **Encode** (:meth:`BPETokenizer.encode`): inside each chunk, start from bytes and apply the
   learned merge with the *lowest rank* (earliest learned) among the adjacent pairs, until none
   applies. Special tokens (``<|im_start|>``) are matched whole before pre-tokenizing.
4. **Decode**: concatenate each token's bytes and decode UTF-8. Token boundaries can split a
   multi-byte character, so a *slice* of ids may not be valid UTF-8: invalid bytes become
   U+FFFD (the replacement character), as in Hugging Face (``errors="replace"``).

:meth:`BPETokenizer.from_gguf_fields` reads the vocabulary and merges a GGUF file stores (the
GPT-2 "byte-to-unicode" spelling, ``Ġ`` for a space) and encodes exactly as Hugging Face's
tokenizer built from the same file (tests check it on the whole corpus).

Needs the ``regex`` package (for ``\\p{L}``: letters of every script), a dependency of lmlab.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from functools import lru_cache

from lmlab.argcheck import check_bool, check_int

__all__ = ["GPT2_SPLIT", "LLAMA3_SPLIT", "bytes_to_unicode", "pair_counts", "merge_pair", "bpe_merge_step",
           "apply_merges", "train_bpe", "BPETokenizer"]

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _regex():
    try:
        import regex
    except ImportError as err:  # pragma: no cover - regex is a dependency
        raise ImportError("lmlab.data.bpe needs the 'regex' package (\\p{L} classes): pip install regex") from err
    return regex


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 bytes: printable Latin-1 bytes stand for themselves,
    the others (space, newline, control bytes...) are moved to U+0100 and up (space -> ``Ġ``)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# --------------------------------------------------------------------------------------------
# The two operations BPE is made of (the exercises of lesson 13)
# --------------------------------------------------------------------------------------------


def pair_counts(ids: list[int], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in ``ids`` (added to ``counts`` ``weight`` times)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right, non-overlapping
    (``merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]``)."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_merge_step(chunks: list[list[int]], new_id: int) -> tuple[tuple[int, int] | None, list[list[int]]]:
    """One training step: count pairs over every chunk, merge the most frequent pair in every chunk.

    Ties: the smallest pair ``(a, b)`` wins (compare ``a`` first, then ``b``). Returns
    ``(pair, new_chunks)``; ``(None, chunks)`` when no chunk has two tokens left.
    """
    check_int(new_id, "new_id", "bpe_merge_step", minimum=0)
    counts: dict = {}
    for ids in chunks:
        pair_counts(ids, counts)
    if not counts:
        return None, [list(c) for c in chunks]
    best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest pair
    return best, [merge_pair(ids, best, new_id) for ids in chunks]


def apply_merges(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """Encode one chunk: repeatedly merge the adjacent pair learned *earliest* (``merges`` maps a
    pair to its new id, in learning order: the first key is rank 0)."""
    rank = {pair: r for r, pair in enumerate(merges)}
    ids = list(ids)
    while len(ids) >= 2:
        candidates = [p for p in zip(ids, ids[1:]) if p in rank]
        if not candidates:
            break
        pair = min(candidates, key=rank.__getitem__)  # the earliest learned merge
        ids = merge_pair(ids, pair, merges[pair])
    return ids


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_bpe(text: str, vocab_size: int, pattern: str = GPT2_SPLIT, special_tokens: list[str] | tuple = ()) -> "BPETokenizer":
    """Learn ``vocab_size - 256 - len(special_tokens)`` merges on ``text`` (byte-level, ``pattern`` pre-tokenizer).

    Same result as repeating :func:`bpe_merge_step` on the chunks (tests check it), but fast:
    chunks are counted once (``Counter``), and each step only revisits the chunks that contain
    the merged pair, with a heap of pair counts (stale entries are skipped when popped).
    """
    if not isinstance(text, str):
        raise ValueError(f"train_bpe: text must be a str, got {type(text).__name__}")
    check_int(vocab_size, "vocab_size", "train_bpe", minimum=256 + len(special_tokens))
    chunk_freq = Counter(_regex().findall(pattern, text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_freq]
    freqs = list(chunk_freq.values())
    counts: dict = defaultdict(int)
    where: dict = defaultdict(set)  # pair -> indices of the words that contain it
    for w, ids in enumerate(words):
        for pair in zip(ids, ids[1:]):
            counts[pair] += freqs[w]
            where[pair].add(w)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges: dict[tuple[int, int], int] = {}
    n_merges = vocab_size - 256 - len(special_tokens)
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale heap entry
        new_id = 256 + len(merges)
        merges[pair] = new_id
        for w in list(where[pair]):
            ids, f = words[w], freqs[w]
            for p in zip(ids, ids[1:]):  # remove this word's old pairs
                counts[p] -= f
            new = merge_pair(ids, pair, new_id)
            words[w] = new
            changed = set()
            for p in zip(new, new[1:]):
                counts[p] += f
                where[p].add(w)
                changed.add(p)
            for p in set(zip(ids, ids[1:])) | changed:
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
        del counts[pair], where[pair]
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), i in merges.items():
        vocab[i] = vocab[a] + vocab[b]
    return BPETokenizer(vocab, merges, pattern, {s: len(vocab) + k for k, s in enumerate(special_tokens)})


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------


class BPETokenizer:
    """A byte-level BPE tokenizer: ``vocab`` (id -> bytes), ``merges`` ((a, b) -> new id, a dict
    in learning order: a merge's position is its *rank*), a pre-tokenizer ``pattern`` and
    ``special`` tokens (text -> id) matched whole.

    ``byte_ids[b]`` is the id of the single-byte token ``b`` (``b`` itself for a tokenizer trained
    here, something else in SmolLM2's vocabulary; ``None`` for a byte the vocabulary lacks: such
    bytes are dropped when encoding, as Hugging Face does, so only a vocabulary with all 256 bytes
    round-trips every string).
    """

    def __init__(self, vocab: dict[int, bytes], merges: dict[tuple[int, int], int], pattern: str = GPT2_SPLIT,
                 special: dict[str, int] | None = None):
        self.vocab = dict(vocab)
        self.merges = dict(merges)
        self.pattern = pattern
        self.special = dict(special or {})
        self.rank = {pair: r for r, pair in enumerate(self.merges)}
        by_bytes = {}
        for i, b in self.vocab.items():
            by_bytes.setdefault(b, i)
        # A byte the vocabulary lacks (SmolLM2 has no token for 8 control / never-valid bytes) is
        # dropped when encoding, as Hugging Face's BPE does without an unknown token.
        self.missing_bytes = [b for b in range(256) if bytes([b]) not in by_bytes]
        self.byte_ids = [by_bytes.get(bytes([b])) for b in range(256)]
        for (a, b), new in self.merges.items():
            if a not in self.vocab or b not in self.vocab or new not in self.vocab:
                raise ValueError(f"BPETokenizer: merge ({a}, {b}) -> {new} names a token that is not in the vocab")
        for s, i in self.special.items():
            self.vocab.setdefault(i, s.encode("utf-8"))
        self._split = _regex().compile(pattern)
        specials = sorted(self.special, key=len, reverse=True)  # longest first: "<|a|b|>" before "<|a|>"
        self._special_split = _regex().compile("(" + "|".join(_regex().escape(s) for s in specials) + ")") if specials else None
        self._cache: dict[str, list[int]] = {}

    def clear_cache(self) -> None:
        """Forget the encodings of chunks seen so far (each chunk is encoded once, then looked up)."""
        self._cache.clear()

    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1

    def __len__(self) -> int:
        return self.vocab_size

    # ---- encode ------------------------------------------------------------------------------

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        if self.missing_bytes:
            ids = [i for i in ids if i is not None]
        rank, merges = self.rank, self.merges
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, 1 << 62))  # lowest rank = learned earliest
            if best not in rank:
                break
            ids = merge_pair(ids, best, merges[best])
        if len(self._cache) < 200_000:
            self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ignoring special tokens (``"<|im_end|>"`` is then just text)."""
        out: list[int] = []
        for chunk in self._split.findall(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Text -> token ids. With ``allow_special``, special tokens in the text become their id."""
        if not isinstance(text, str):
            raise ValueError(f"encode: text must be a str, got {type(text).__name__}")
        check_bool(allow_special, "allow_special", "encode")
        if not allow_special or self._special_split is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(self._special_split.split(text)):
            if k % 2:  # the captured separators are the special tokens
                out.append(self.special[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    # ---- decode ------------------------------------------------------------------------------

    def token_bytes(self, i: int) -> bytes:
        return self.vocab[i]

    def decode_bytes(self, ids, skip_special: bool = False) -> bytes:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if i not in self.vocab]
        if bad:
            raise ValueError(f"decode: ids must be in [0, vocab_size={self.vocab_size}), got {bad[:5]}")
        specials = set(self.special.values()) if skip_special else ()
        return b"".join(self.vocab[i] for i in ids if i not in specials)

    def decode(self, ids, skip_special: bool = False) -> str:
        """Token ids -> text. Bytes that are not valid UTF-8 (a slice that cuts a character in two)
        become U+FFFD, the replacement character, never an exception."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    # ---- loading a GGUF vocabulary -------------------------------------------------------------

    @classmethod
    def from_gguf_fields(cls, tokens: list[str], merges: list[str], token_types: list[int] | None = None,
                         pattern: str = GPT2_SPLIT) -> "BPETokenizer":
        """A tokenizer from a GGUF's ``tokenizer.ggml.tokens`` / ``.merges`` / ``.token_type``.

        Tokens are spelled with :func:`bytes_to_unicode` (``"Ġthe"`` = b" the"); merges are
        ``"Ġ t"`` strings in rank order; token type 3 (control) marks the special tokens.
        """
        alphabet = {c: b for b, c in bytes_to_unicode().items()}
        vocab: dict[int, bytes] = {}
        index: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            index.setdefault(tok, i)
            vocab[i] = bytes(alphabet[c] for c in tok) if all(c in alphabet for c in tok) else tok.encode("utf-8")
        merge_ids: dict[tuple[int, int], int] = {}
        for r, m in enumerate(merges):
            a, sep, b = m.partition(" ")
            if not sep or a not in index or b not in index or a + b not in index:
                raise ValueError(f"tokenizer/vocab mismatch: merge {r} ({m!r}) names a token that is not in the vocabulary")
            merge_ids.setdefault((index[a], index[b]), index[a + b])
        special = {}
        for i, t in enumerate(token_types or ()):
            if t == 3:
                special[tokens[i]] = i
        return cls(vocab, merge_ids, pattern, special)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special={len(self.special)})"
