"""Pretraining objectives for ONE decoder-only model (lesson 05, ``lessons/05_objectives``).

Every objective turns token ids into an :class:`Example` - ``inputs``, ``targets`` (the next-token
labels), ``attn_mask`` (``(T, T)``, True = may attend, the :mod:`lmlab.data.masks` convention) and
``loss_mask`` (which positions are trained) - so :class:`lmlab.model.gpt.GPT` trains on all of them
with ``model(inputs, attn_mask)`` and :func:`masked_lm_loss`. This is how UL2 is used with a
decoder-only model: a *prefix* (seen bidirectionally) followed by the *targets* (causal, trained).

- causal LM: no prefix, every position trained (:func:`causal_lm_example`);
- prefix LM: a prefix of the text seen bidirectionally, the loss only on the rest
  (:func:`prefix_lm_example`; the length drawn as T5's ``prefix_lm`` does, :func:`random_prefix_length`);
- span corruption (T5): prefix = ``[mode] + inputs with sentinels``, targets = the spans
  (:func:`span_corruption_example`, built on :mod:`lmlab.data.span_corruption`);
- UL2's mixture of denoisers: R-, X- and S-denoisers, each example led by its mode token ``[R]``,
  ``[X]``, ``[S]`` (:data:`UL2_DENOISERS`, :func:`ul2_example`, :func:`sample_objective_batch`).

:class:`ExtraIdTokenizer` gives a course tokenizer the extra ids (mode tokens, a pad, sentinels at
the top of the vocabulary) without touching its text ids, and decodes them readably.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lmlab.data.masks import causal_mask, prefix_lm_mask
from lmlab.data.span_corruption import noise_counts, random_spans_noise_mask, span_corruption
from lmlab.argcheck import check_choice, check_int, check_number, check_tensor

__all__ = [
    "MODES", "ExtraIdTokenizer", "Example", "decoder_only_example", "causal_lm_example", "prefix_lm_example",
    "random_prefix_length", "span_corruption_example", "Denoiser", "UL2_DENOISERS", "UL2_WEIGHTS",
    "ul2_example", "raw_length_for", "pad_example", "collate", "OBJECTIVES", "sample_objective_batch",
    "masked_lm_loss",
]

MODES = ("[R]", "[X]", "[S]")  # UL2's paradigm tokens (the released checkpoints say [NLU], [S2S], [NLG])


class ExtraIdTokenizer:
    """A course tokenizer (:class:`lmlab.data.text.CharTokenizer`, :class:`~lmlab.data.text.ByteTokenizer`)
    plus extra ids: ``base ids | mode tokens | <pad> | ... | sentinels`` with sentinel ``k`` at
    ``vocab_size - 1 - k`` (T5's ``<extra_id_k>``). ``decode`` shows them as ``[R]``, ``<pad>``, ``<X0>``.
    """

    def __init__(self, base, n_sentinels: int = 32, modes: tuple[str, ...] = MODES):
        where = "ExtraIdTokenizer"
        if not (hasattr(base, "encode") and hasattr(base, "decode") and isinstance(getattr(base, "vocab_size", None), int)):
            raise ValueError(f"{where}.base must be a tokenizer with encode, decode and an int vocab_size, got {type(base).__name__}")
        self.n_sentinels = check_int(n_sentinels, "n_sentinels", where)
        if not isinstance(modes, tuple) or len(set(modes)) != len(modes) or not all(isinstance(m, str) and m for m in modes):
            raise ValueError(f"{where}.modes must be a tuple of distinct non-empty strings, got {modes!r}")
        self.base, self.modes = base, modes
        self.text_vocab_size = base.vocab_size
        self.mode_ids = {m: self.text_vocab_size + i for i, m in enumerate(modes)}
        self.pad_id = self.text_vocab_size + len(modes)
        self.vocab_size = self.pad_id + 1 + self.n_sentinels

    def sentinel(self, k: int) -> int:
        """The id of sentinel ``<X{k}>``."""
        check_int(k, "k", "ExtraIdTokenizer.sentinel", minimum=0, maximum=self.n_sentinels - 1)
        return self.vocab_size - 1 - k

    def mode_id(self, mode: str) -> int:
        return self.mode_ids[check_choice(mode, "mode", self.modes, "ExtraIdTokenizer.mode_id")]

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)  # text only: the extra ids never come out of text

    def piece(self, i: int) -> str:
        """How one id is shown."""
        if i < self.text_vocab_size:
            return self.base.decode([i])
        if i >= self.vocab_size - self.n_sentinels:
            return f"<X{self.vocab_size - 1 - i}>"
        return self.modes[i - self.text_vocab_size] if i < self.pad_id else "<pad>"

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary: ids must be in [0, {self.vocab_size})")
        out, run = [], []
        for i in ids + [-1]:
            if 0 <= i < self.text_vocab_size:
                run.append(i)
                continue
            if run:
                out.append(self.base.decode(run))  # byte tokens decode together (UTF-8)
                run = []
            if i >= 0:
                out.append(self.piece(i))
        return "".join(out)

    def __repr__(self) -> str:
        return f"ExtraIdTokenizer({self.base!r}, modes={self.modes}, n_sentinels={self.n_sentinels}, vocab_size={self.vocab_size})"


class Example(NamedTuple):
    """One training example for a decoder-only model."""

    inputs: torch.Tensor  # (T,) long: what the model reads
    targets: torch.Tensor  # (T,) long: the next token at every position
    attn_mask: torch.Tensor  # (T, T) bool: True = query i may attend to key j
    loss_mask: torch.Tensor  # (T,) bool: positions whose prediction is trained


def _ids(tokens, name: str, where: str) -> list[int]:
    if isinstance(tokens, torch.Tensor):
        check_tensor(tokens, name, where, dim=1)
        return tokens.tolist()
    if not isinstance(tokens, (list, tuple)) or not all(type(t) is int for t in tokens):
        raise ValueError(f"{where}.{name} must be a 1-D tensor or a list of int ids, got {type(tokens).__name__}")
    return list(tokens)


def decoder_only_example(prefix, targets) -> Example:
    """``prefix`` seen bidirectionally, then ``targets`` generated causally and trained.

    The sequence ``s = prefix + targets`` gives ``inputs = s[:-1]``, ``targets = s[1:]``;
    ``attn_mask = prefix_lm_mask(T, len(prefix))``; the loss is on the positions that predict a
    target token, ``t >= len(prefix) - 1``: exactly ``len(targets)`` of them (all ``T`` without a
    prefix). No trained position can see the token it predicts.
    """
    where = "decoder_only_example"
    p, t = _ids(prefix, "prefix", where), _ids(targets, "targets", where)
    if not t:
        raise ValueError(f"{where}.targets must hold at least one token (nothing to train), got none")
    seq = p + t
    if len(seq) < 2:
        raise ValueError(f"{where}: prefix + targets must hold at least 2 tokens, got {len(seq)}")
    T = len(seq) - 1
    s = torch.tensor(seq)
    return Example(s[:-1], s[1:], prefix_lm_mask(T, min(len(p), T)), torch.arange(T) >= len(p) - 1)


def causal_lm_example(tokens) -> Example:
    """Causal LM: every position sees its past and predicts the next token; all trained."""
    return decoder_only_example([], tokens)


def prefix_lm_example(tokens, prefix_len: int) -> Example:
    """Prefix LM: the first ``prefix_len`` tokens are seen bidirectionally and never trained;
    the loss covers the ``len(tokens) - prefix_len`` suffix tokens."""
    ids = _ids(tokens, "tokens", "prefix_lm_example")
    check_int(prefix_len, "prefix_len", "prefix_lm_example", minimum=1, maximum=max(1, len(ids) - 1))
    return decoder_only_example(ids[:prefix_len], ids[prefix_len:])


def random_prefix_length(length: int, noise_density: float = 0.5, generator: torch.Generator | None = None) -> int:
    """How many tokens go to the prefix, as T5's ``random_prefix_noise_mask``: uniform in
    ``[max(1, round((1 - 2 d)(length - 1))), length - 1]``: any split at the default ``d = 0.5``."""
    length = check_int(length, "length", "random_prefix_length", minimum=2)
    d = check_number(noise_density, "noise_density", "random_prefix_length", low=0.0, high=0.5, low_inclusive=False)
    lo = min(length - 1, max(1, round((1 - 2 * d) * (length - 1))))
    return int(torch.randint(lo, length, (1,), generator=generator))


def span_corruption_example(tokens, noise_mask, vocab_size: int, mode_id: int | None = None,
                            n_sentinels: int | None = None) -> Example:
    """T5 span corruption as one decoder-only example: prefix = ``[mode_id] + inputs`` (with
    sentinels), targets = the spans after their sentinels (:func:`lmlab.data.span_corruption.span_corruption`).
    ``n_sentinels``: how many sentinel ids the vocabulary reserves (more spans raise ``ValueError``)."""
    sc = span_corruption(tokens, noise_mask, vocab_size)
    used = len(set(sc.targets) - set(_ids(tokens, "tokens", "span_corruption_example")))
    if n_sentinels is not None and used > n_sentinels:
        raise ValueError(f"span_corruption_example: this mask needs {used} sentinels (spans + a closing one) but the "
                         f"vocabulary reserves n_sentinels={n_sentinels}; reserve more or use fewer, longer spans")
    return decoder_only_example(([] if mode_id is None else [mode_id]) + sc.inputs, sc.targets)


@dataclass(frozen=True)
class Denoiser:
    """One UL2 denoiser: its mode token and, for span corruption, rate ``r`` and mean span ``mu``."""

    mode: str
    noise_density: float  # r: the share of tokens that become targets (S: the mean suffix share)
    mean_span: float | None = None  # mu; None = sequential (prefix LM)

    @property
    def sequential(self) -> bool:
        return self.mean_span is None


# UL2 (Tay et al. 2022, section 3.1): the seven denoisers of the mixture.
UL2_DENOISERS = {
    "R r=0.15 μ=3": Denoiser("[R]", 0.15, 3.0),
    "R r=0.15 μ=8": Denoiser("[R]", 0.15, 8.0),
    "X r=0.5 μ=3": Denoiser("[X]", 0.5, 3.0),
    "X r=0.5 μ=8": Denoiser("[X]", 0.5, 8.0),
    "X r=0.15 μ=64": Denoiser("[X]", 0.15, 64.0),
    "X r=0.5 μ=64": Denoiser("[X]", 0.5, 64.0),
    "S prefix LM": Denoiser("[S]", 0.5),
}
# Default mixture weights: one third per paradigm (R, X, S), split evenly inside R and X. This is
# the course's choice, not a number from the paper, which lists the denoisers but whose sampling
# rates we do not reproduce; pass your own ``weights``.
UL2_WEIGHTS = {name: (1 / 3) / sum(o.mode == d.mode for o in UL2_DENOISERS.values()) for name, d in UL2_DENOISERS.items()}


@lru_cache(maxsize=256)
def raw_length_for(denoiser: Denoiser, seq_len: int, mode_token: bool = True) -> int:
    """The most raw tokens whose example (mode token, sentinels, targets; before ``inputs[:-1]``
    drops one) fits ``seq_len`` positions whatever the random mask: a span denoiser adds two ids per
    span, at most ``noise spans + 1`` spans with ``random_roll``, plus a closing sentinel."""
    seq_len = check_int(seq_len, "seq_len", "raw_length_for", minimum=4)
    extra = 1 if mode_token else 0
    if denoiser.sequential:
        return seq_len + 1 - extra
    L = 2
    while L + 1 <= seq_len and extra + (L + 1) + 2 * (noise_counts(L + 1, denoiser.noise_density, denoiser.mean_span)[1] + 1) + 1 <= seq_len + 1:
        L += 1
    return L


def ul2_example(tokens, denoiser: Denoiser, tok: ExtraIdTokenizer, generator: torch.Generator | None = None,
                random_roll: bool = True) -> Example:
    """One UL2 example: ``[mode]`` then, for the S-denoiser, a random prefix of the text with the
    rest as targets (no sentinels); for R/X, span corruption at the denoiser's ``r`` and ``mu``.
    ``random_roll`` (default on: the course's windows are short, see lesson 05) moves the spans."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"ul2_example.denoiser must be a Denoiser (see UL2_DENOISERS), got {type(denoiser).__name__}")
    ids = _ids(tokens, "tokens", "ul2_example")
    mode = tok.mode_id(denoiser.mode)
    if denoiser.sequential:
        P = random_prefix_length(len(ids), denoiser.noise_density, generator)
        return decoder_only_example([mode] + ids[:P], ids[P:])
    mask = random_spans_noise_mask(len(ids), denoiser.noise_density, denoiser.mean_span, generator=generator,
                                   random_roll=random_roll)
    return span_corruption_example(ids, mask, tok.vocab_size, mode, tok.n_sentinels)


def pad_example(ex: Example, length: int, pad_id: int) -> Example:
    """``ex`` padded at the end to ``length`` positions: pads are never trained and no real token
    sees them (they come after it and outside the prefix); a pad row sees what a causal row would."""
    T = ex.inputs.numel()
    length = check_int(length, "length", "pad_example", minimum=T)
    if length == T:
        return ex
    attn = causal_mask(length)
    attn[:T, :T] = ex.attn_mask
    pad = torch.full((length - T,), pad_id, dtype=ex.inputs.dtype)
    return Example(torch.cat([ex.inputs, pad]), torch.cat([ex.targets, pad]), attn,
                   torch.cat([ex.loss_mask, torch.zeros(length - T, dtype=torch.bool)]))


def collate(examples: list[Example], length: int | None = None, pad_id: int = 0) -> Example:
    """Stack examples into a batch: ``inputs, targets, loss_mask (B, T)``, ``attn_mask (B, 1, T, T)``
    (the shape :meth:`lmlab.model.gpt.GPT.forward` takes), padding to ``length`` (default: the longest)."""
    if not examples:
        raise ValueError("collate: examples must not be empty")
    T = max(e.inputs.numel() for e in examples) if length is None else length
    padded = [pad_example(e, T, pad_id) for e in examples]
    return Example(*(torch.stack([getattr(e, f) for e in padded]) for f in Example._fields))._replace(
        attn_mask=torch.stack([e.attn_mask for e in padded])[:, None])


OBJECTIVES = ("causal", "prefix", "span", "ul2")


def sample_objective_batch(objective: str, ids: torch.Tensor, batch_size: int, seq_len: int, tok: ExtraIdTokenizer,
                           generator: torch.Generator | None = None, weights: dict[str, float] | None = None,
                           span: Denoiser = UL2_DENOISERS["R r=0.15 μ=3"]) -> tuple[Example, list[str]]:
    """A batch of ``seq_len`` positions for one objective, from random windows of ``ids``.

    ``causal`` and ``prefix`` read ``seq_len + 1`` raw tokens (the prefix length drawn as T5's
    ``prefix_lm``); ``span`` is T5 span corruption (``span``: r=0.15, mu=3 by default, mode
    ``[R]``, with ``random_roll`` as every span denoiser here: the windows are short); ``ul2`` draws a denoiser per row from ``weights`` (default :data:`UL2_WEIGHTS`).
    Every objective fills the same ``(B, seq_len)`` shape, so a step costs the same compute.
    Returns the batch and each row's denoiser name.
    """
    where = "sample_objective_batch"
    check_choice(objective, "objective", OBJECTIVES, where)
    check_tensor(ids, "ids", where, dim=1)
    batch_size = check_int(batch_size, "batch_size", where)
    seq_len = check_int(seq_len, "seq_len", where, minimum=4)
    if objective == "ul2":
        weights = UL2_WEIGHTS if weights is None else weights
        unknown = set(weights) - set(UL2_DENOISERS)
        if unknown or not weights or any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"{where}.weights must map names of UL2_DENOISERS {list(UL2_DENOISERS)} to weights >= 0 "
                             f"(not all 0), got {weights!r}")
        names = list(weights)
        picks = torch.multinomial(torch.tensor([float(weights[n]) for n in names]), batch_size, replacement=True,
                                  generator=generator).tolist()
        rows = [names[i] for i in picks]
    else:
        rows = [objective] * batch_size
    examples = []
    for name in rows:
        d = UL2_DENOISERS.get(name, span)
        L = seq_len + 1 if objective in ("causal", "prefix") else raw_length_for(d, seq_len)
        if len(ids) < L:
            raise ValueError(f"{where}: ids holds {len(ids)} tokens, fewer than the {L} one window needs")
        start = int(torch.randint(len(ids) - L + 1, (1,), generator=generator))
        window = ids[start:start + L].tolist()
        if objective == "causal":
            examples.append(causal_lm_example(window))
        elif objective == "prefix":
            examples.append(prefix_lm_example(window, random_prefix_length(L, 0.5, generator)))
        else:
            examples.append(ul2_example(window, d, tok, generator))
    return collate(examples, seq_len, tok.pad_id), rows


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the trained positions only: logits ``(B, T, V)``, targets and
    loss_mask ``(B, T)``."""
    check_tensor(logits, "logits", "masked_lm_loss", dim=3, floating=True)
    check_tensor(targets, "targets", "masked_lm_loss", shape=tuple(logits.shape[:2]))
    check_tensor(loss_mask, "loss_mask", "masked_lm_loss", shape=tuple(logits.shape[:2]), dtype=torch.bool)
    if not loss_mask.any():
        raise ValueError("masked_lm_loss: loss_mask selects no position")
    return F.cross_entropy(logits[loss_mask], targets[loss_mask])  # (N, V) vs (N,)
