"""T5's span corruption, with T5's own bookkeeping (lesson 05, ``lessons/05_objectives``).

Span corruption (Raffel et al. 2020, "T5") picks random *spans* of a text as noise, replaces each
span in the inputs by one **sentinel** token and asks the model for the spans, each after its
sentinel. Figure 2 of the paper, word by word::

    original: Thank you for inviting me to your party last week .
    inputs:   Thank you <X> me to your party <Y> week .
    targets:  <X> for inviting <Y> last <Z>

The functions here follow ``t5.data.preprocessors`` step by step:

- :func:`random_spans_noise_mask`: how many noise tokens (``round(length * density)``, clipped to
  ``[1, length - 1]``) and spans (``max(1, round(noise / mean_span))``), a uniformly random split of
  the noise and of the non-noise tokens into that many spans each, interleaved non-noise first;
  optionally ``random_roll`` (without it a short text, ``length <= 30`` at density 0.15, always has
  its *last* tokens masked).
- :func:`random_spans_helper`: which raw length fills an input of a given length (512 -> 568 raw
  tokens and 114 targets, counting one EOS on each side).
- :func:`sentinel_fusion` (T5's ``noise_span_to_unique_sentinel``), :func:`span_corruption`,
  :func:`fill_sentinels` (the round trip back to the text).

Sentinels count *down* from the top of the vocabulary, as T5's ``<extra_id_0>`` is id 32099 of
32100: sentinel ``k`` is ``vocab_size - 1 - k``. Rounding is Python's ``round`` (half to even), the
same as ``tf.round`` in T5: at ``length = 30``, ``30 * 0.15 = 4.5`` rounds to 4.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from lmlab.argcheck import check_bool, check_int, check_number

__all__ = [
    "noise_counts", "random_segmentation", "random_spans_noise_mask", "random_spans_helper",
    "mask_spans", "sentinel_id", "sentinel_fusion", "SpanCorruption", "span_corruption", "fill_sentinels",
]


def _check_density(noise_density, mean_noise_span_length, where):
    d = check_number(noise_density, "noise_density", where, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    mu = check_number(mean_noise_span_length, "mean_noise_span_length", where, low=1.0)
    return d, mu


def noise_counts(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` of :func:`random_spans_noise_mask`, T5's rules:
    ``round(length * density)`` clipped to ``[1, length - 1]``, and ``max(1, round(noise / mean_span))``
    - kept at most the number of non-noise tokens (``length=3, density=0.5, mean_span=1``: T5's
    segmentation would give an empty non-noise span there, so its mask would not alternate)."""
    where = "noise_counts"
    length = check_int(length, "length", where, minimum=2)
    d, mu = _check_density(noise_density, mean_noise_span_length, where)
    n_noise = min(max(round(length * d), 1), length - 1)
    return n_noise, min(max(1, round(n_noise / mu)), length - n_noise)


def random_segmentation(num_items: int, num_segments: int, generator: torch.Generator | None = None) -> list[int]:
    """Split ``num_items`` into ``num_segments`` positive lengths, every split equally likely
    (T5's ``_random_segmentation``: ``num_segments - 1`` distinct cut points among the
    ``num_items - 1`` gaps)."""
    num_items = check_int(num_items, "num_items", "random_segmentation")
    num_segments = check_int(num_segments, "num_segments", "random_segmentation", maximum=num_items)
    cuts = sorted((torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1).tolist())
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def random_spans_noise_mask(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0, *,
                            generator: torch.Generator | None = None, random_roll: bool = False) -> torch.Tensor:
    """A ``(length,)`` bool mask, True = noise, made of random spans (T5's algorithm).

    Exactly ``num_noise_tokens`` True entries in ``num_noise_spans`` runs (see :func:`noise_counts`),
    alternating with as many non-noise runs, starting with non-noise and so ending with noise.
    ``random_roll=True`` rolls the mask by a uniform offset in ``[0, length)`` (T5's fix for short
    texts, where a single span always sits at the end); the noise count stays exact, a span may
    then wrap around and count twice.
    """
    where = "random_spans_noise_mask"
    check_bool(random_roll, "random_roll", where)
    if isinstance(length, int) and not isinstance(length, bool) and length < 2:
        raise ValueError(f"{where}.length must be an int >= 2 (a sequence too short for one noise span and one "
                         f"non-noise span), got {length!r}")
    check_int(length, "length", where, minimum=2)
    _check_density(noise_density, mean_noise_span_length, where)
    n_noise, n_spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(n_noise, n_spans, generator)
    nonnoise_lengths = random_segmentation(length - n_noise, n_spans, generator)
    mask = torch.zeros(length, dtype=torch.bool)
    pos = 0
    for keep, drop in zip(nonnoise_lengths, noise_lengths):  # non-noise span, then noise span
        pos += keep
        mask[pos:pos + drop] = True
        pos += drop
    if random_roll:
        offset = int(torch.randint(length, (1,), generator=generator))
        mask = torch.roll(mask, offset)
    return mask


def random_spans_helper(inputs_length: int = 512, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                        extra_tokens_per_span_inputs: int = 1, extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
    """``(raw tokens, targets length)`` such that span corruption of the raw tokens gives inputs of
    at most ``inputs_length`` (T5's helper: one sentinel per span and one EOS on each side).
    ``random_spans_helper(512)`` is ``(568, 114)``."""
    where = "random_spans_helper"
    inputs_length = check_int(inputs_length, "inputs_length", where, minimum=3)
    d, mu = _check_density(noise_density, mean_noise_span_length, where)
    ei = check_int(extra_tokens_per_span_inputs, "extra_tokens_per_span_inputs", where, minimum=0)
    et = check_int(extra_tokens_per_span_targets, "extra_tokens_per_span_targets", where, minimum=0)

    def lengths(tokens_length):
        n_noise = round(tokens_length * d)
        n_spans = round(n_noise / mu)
        return tokens_length - n_noise + n_spans * ei + 1, n_noise + n_spans * et + 1  # (+1: EOS)

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if d == 0.5 and targets_length > inputs_length:  # T5: keep targets at the (round) inputs length
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def mask_spans(noise_mask) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the noise runs of a 1-D mask (``end`` exclusive)."""
    m = [bool(v) for v in (noise_mask.tolist() if isinstance(noise_mask, torch.Tensor) else noise_mask)]
    spans, start = [], None
    for i, v in enumerate(m + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            spans.append((start, i))
            start = None
    return spans


def sentinel_id(k: int, vocab_size: int) -> int:
    """The id of sentinel ``k`` (``<X{k}>``, T5's ``<extra_id_{k}>``): ``vocab_size - 1 - k``."""
    k = check_int(k, "k", "sentinel_id", minimum=0)
    vocab_size = check_int(vocab_size, "vocab_size", "sentinel_id", minimum=k + 1)
    return vocab_size - 1 - k


def _as_list(values, name: str, where: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{where}.{name} must be 1-D, got shape {tuple(values.shape)}")
        return values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{where}.{name} must be a 1-D tensor or a list, got {type(values).__name__}")
    return list(values)


def sentinel_fusion(tokens, noise_mask, vocab_size: int) -> list[int]:
    """T5's ``noise_span_to_unique_sentinel``: each run of noise tokens becomes ONE sentinel,
    counting down from ``vocab_size - 1``; other tokens are kept. Lists (or 1-D tensors) in, a
    list out. Raises ``ValueError`` if a sentinel would collide with a token id of the text."""
    where = "sentinel_fusion"
    toks = _as_list(tokens, "tokens", where)
    mask = [bool(v) for v in _as_list(noise_mask, "noise_mask", where)]
    if len(mask) != len(toks):
        raise ValueError(f"{where}: noise_mask must have one entry per token ({len(toks)}), got {len(mask)}")
    vocab_size = check_int(vocab_size, "vocab_size", where)
    n_spans = len(mask_spans(mask))
    top_text = max(toks, default=-1)
    if vocab_size - n_spans <= top_text:
        raise ValueError(f"{where}.vocab_size={vocab_size} has no room for {n_spans} sentinels above the text's "
                         f"largest id {top_text}: need vocab_size >= {top_text + 1 + n_spans}")
    out, k, prev = [], 0, False
    for t, noisy in zip(toks, mask):
        if noisy and not prev:
            out.append(vocab_size - 1 - k)  # the first token of a span: its sentinel
            k += 1
        elif not noisy:
            out.append(t)
        prev = noisy  # later tokens of the span are dropped
    return out


class SpanCorruption(NamedTuple):
    """One span-corruption example, T5 style (for an encoder-decoder or, concatenated, a decoder)."""

    inputs: list[int]  # the text, each noise span replaced by its sentinel
    targets: list[int]  # each noise span after its sentinel (+ a closing sentinel if the text ends clean)
    n_spans: int


def span_corruption(tokens, noise_mask, vocab_size: int, eos_id: int | None = None) -> SpanCorruption:
    """Inputs and targets of span corruption (T5 Figure 2).

    ``inputs = sentinel_fusion(tokens, noise_mask)``; ``targets`` = sentinel ``k`` followed by noise
    span ``k``, for each span, and one more sentinel when the text ends with non-noise tokens (the
    vocabulary must have room for that closing sentinel too, so the round trip is unambiguous). For a
    mask that starts with non-noise (no ``random_roll``) this is exactly T5's
    ``sentinel_fusion(tokens, ~noise_mask)``; for a rolled mask that starts with noise, T5's own
    targets would put every sentinel one span late, so the targets here keep the pairing (as if a
    non-noise token preceded the text). ``eos_id``: appended to both, as T5 does.
    """
    toks = _as_list(tokens, "tokens", "span_corruption")
    mask = [bool(v) for v in _as_list(noise_mask, "noise_mask", "span_corruption")]
    inputs = sentinel_fusion(toks, mask, vocab_size)
    n_spans = len(mask_spans(mask))
    if vocab_size - n_spans - 1 <= max(toks, default=-1):
        raise ValueError(f"span_corruption.vocab_size={vocab_size} has no room for {n_spans} sentinels and a closing "
                         f"one above the text's largest id {max(toks)}: need vocab_size >= {max(toks) + n_spans + 2}")
    # a virtual non-noise token in front makes the first target sentinel precede the first span
    targets = sentinel_fusion([0] + toks, [True] + [not m for m in mask], vocab_size)
    if eos_id is not None:
        eos_id = check_int(eos_id, "eos_id", "span_corruption", minimum=0)
        inputs, targets = inputs + [eos_id], targets + [eos_id]
    return SpanCorruption(inputs, targets, n_spans)


def fill_sentinels(inputs, targets, vocab_size: int, eos_id: int | None = None) -> list[int]:
    """The round trip: put each span of ``targets`` back in place of its sentinel in ``inputs``.

    The sentinels are the top ids ``vocab_size - 1, vocab_size - 2, ...`` found in ``inputs``; the next
    one down, if it ends ``targets``, is the closing sentinel. ``eos_id``: a trailing EOS is dropped
    from both first. ``fill_sentinels(*span_corruption(t, m, V)[:2], V) == t``.
    """
    where = "fill_sentinels"
    inp, tgt = _as_list(inputs, "inputs", where), _as_list(targets, "targets", where)
    vocab_size = check_int(vocab_size, "vocab_size", where)
    if eos_id is not None:
        inp = inp[:-1] if inp[-1:] == [eos_id] else inp
        tgt = tgt[:-1] if tgt[-1:] == [eos_id] else tgt
    present, n = set(inp), 0
    while vocab_size - 1 - n in present:
        n += 1
    closing = vocab_size - 1 - n
    spans, current = {}, None
    for t in tgt:
        if t == closing:
            break  # the closing sentinel: every span is read
        if t > closing:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out = []
    for t in inp:
        if t > closing:
            if t not in spans:
                raise ValueError(f"{where}: sentinel {t} of the inputs has no span in the targets")
            out.extend(spans[t])
        else:
            out.append(t)
    return out
