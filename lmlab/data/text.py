"""Text, tokenizers and batches: the data side of lesson 00 (``lessons/00_tour``).

The default corpus needs no download: it is the English reference documentation that ships inside
every CPython (``pydoc_data.topics``, the text behind ``help("for")``). Everything here is
deterministic, so a lesson's printed numbers are the same on every machine.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple
from pathlib import Path

import torch

__all__ = [
    "Corpus",
    "load_corpus",
    "load_text",
    "CharTokenizer",
    "ByteTokenizer",
    "CharData",
    "char_data",
    "sample_batch",
    "unigram_entropy",
]


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """A text split into a training part and a validation part (contiguous, train first)."""

    train: str
    val: str

    @property
    def text(self) -> str:
        return self.train + self.val


def _python_docs_text() -> str:
    from pydoc_data.topics import topics  # ships with CPython: no network, no extra package

    # Sorted keys make the text identical on every machine with the same Python minor version.
    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def load_corpus(val_fraction: float = 0.1, max_chars: int | None = None) -> Corpus:
    """The embedded default corpus (Python's own documentation), split deterministically.

    Args:
        val_fraction: share of the text (taken from the end) kept for validation, in (0, 1).
        max_chars: keep only the first ``max_chars`` characters (for quick experiments).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    text = _python_docs_text()
    if max_chars is not None:
        if max_chars < 2:
            raise ValueError(f"max_chars must be >= 2 (or None for the whole text), got {max_chars!r}")
        text = text[:max_chars]
    n_val = max(1, int(len(text) * val_fraction))
    return Corpus(train=text[:-n_val], val=text[-n_val:])


def load_text(path: str | Path) -> str:
    """Read your own UTF-8 text file to train on.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, is a directory, or is not UTF-8 text.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"load_text: no file at {str(p)!r}; pass the path to a UTF-8 text file")
    if p.is_dir():
        raise ValueError(f"load_text: {str(p)!r} is a directory; pass the path to a UTF-8 text file")
    raw = p.read_bytes()
    if not raw.strip():
        raise ValueError(f"load_text: {str(p)!r} is empty; a corpus needs at least a few characters")
    if b"\x00" in raw:
        raise ValueError(f"load_text: {str(p)!r} looks binary (it contains NUL bytes); use a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"load_text: {str(p)!r} is not valid UTF-8 (byte {err.start}); save it as UTF-8 text"
        ) from None


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character seen in the training text; ids follow the sorted characters.

    >>> tok = CharTokenizer("hello")
    >>> tok.decode(tok.encode("hello"))
    'hello'
    """

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("CharTokenizer needs a non-empty str to build its vocabulary from")
        self.chars: list[str] = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in this tokenizer's vocabulary of "
                f"{self.vocab_size} characters; build the tokenizer from text that contains it"
            ) from None

    def decode(self, ids) -> str:
        ids = _as_id_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary: ids must be in [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """UTF-8 bytes as tokens: a fixed vocabulary of 256 that can encode any string."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = _as_id_list(ids)
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary: byte ids must be in [0, 256)")
        # A cut in the middle of a multi-byte character decodes to U+FFFD rather than failing.
        return bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class CharData(NamedTuple):
    """The embedded corpus as character ids: ``tok, train_ids, val_ids = char_data()``."""

    tok: CharTokenizer
    train_ids: torch.Tensor  # (N_train,) long
    val_ids: torch.Tensor  # (N_val,) long


@lru_cache(maxsize=4)
def char_data(val_fraction: float = 0.1, max_chars: int | None = None) -> CharData:
    """:func:`load_corpus` through a :class:`CharTokenizer` built on the whole text: what every
    lesson's tiny-model experiment trains and evaluates on. Cached (the encoding is done once per
    process): read the tensors, do not modify them in place."""
    corpus = load_corpus(val_fraction, max_chars)
    tok = CharTokenizer(corpus.text)
    return CharData(tok, torch.tensor(tok.encode(corpus.train)), torch.tensor(tok.encode(corpus.val)))


def _as_id_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


# --------------------------------------------------------------------------------------------
# Batches and a baseline
# --------------------------------------------------------------------------------------------


def sample_batch(
    ids: torch.Tensor,
    batch_size: int,
    context_length: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the token stream as next-token pairs.

    Returns ``x, y`` of shape ``(batch_size, context_length)`` where ``y[:, t] == ids[start + t + 1]``,
    i.e. ``y`` is ``x`` shifted left by one token: position ``t`` learns to predict the next token.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-D tensor of token ids")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if len(ids) < context_length + 1:
        raise ValueError(
            f"the token stream has {len(ids)} tokens; context_length={context_length} needs at least "
            f"{context_length + 1}"
        )
    starts = torch.randint(len(ids) - context_length, (batch_size,), generator=generator)
    offsets = torch.arange(context_length)
    x = ids[starts[:, None] + offsets]  # (B, T)
    y = ids[starts[:, None] + offsets + 1]  # (B, T), shifted by one
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def unigram_entropy(train_ids: torch.Tensor, eval_ids: torch.Tensor | None = None, vocab_size: int | None = None) -> float:
    """Loss (nats/token) of the best model that ignores context: token frequencies only.

    With ``eval_ids`` it is the cross-entropy of ``eval_ids`` under the (add-one smoothed) unigram
    distribution of ``train_ids`` — the number a real language model has to beat on validation.
    """
    if train_ids.numel() == 0:
        raise ValueError("train_ids is empty")
    if eval_ids is not None and eval_ids.numel() == 0:
        raise ValueError("eval_ids is empty; pass None to score train_ids")
    for name, t in (("train_ids", train_ids), ("eval_ids", eval_ids)):
        if t is not None and int(t.min()) < 0:
            raise ValueError(f"{name} must be non-negative token ids, got {int(t.min())}")
    vocab_size = vocab_size or int(max(train_ids.max(), -1 if eval_ids is None else eval_ids.max())) + 1
    for name, t in (("train_ids", train_ids), ("eval_ids", eval_ids)):
        if t is not None and int(t.max()) >= vocab_size:
            raise ValueError(f"{name} has id {int(t.max())} but vocab_size is {vocab_size}; ids must be in [0, vocab_size)")
    counts = Counter(train_ids.tolist())
    total = train_ids.numel() + vocab_size  # add-one smoothing
    logp = {i: math.log((counts.get(i, 0) + 1) / total) for i in range(vocab_size)}
    target = train_ids if eval_ids is None else eval_ids
    target_counts = Counter(target.tolist())
    return -sum(c * logp[i] for i, c in target_counts.items()) / target.numel()
