"""Logit transforms, sampling and repetition control (lesson 07, ``lessons/07_decoding``).

Every function here works on next-token logits ``(B, V)`` (or a single row ``(V,)``) and returns
new logits of the same shape; a token that is filtered out gets the logit ``-inf`` (probability 0).

The sampling transforms are always composed in one fixed order, the one Hugging Face uses::

    temperature  ->  top-k  ->  top-p

so top-p measures its mass p on the distribution that temperature and top-k have already
reshaped (and renormalised). The repetition controls act on the raw logits, before temperature.

Ties are broken deterministically: among equal logits the *lower token id* ranks first, exactly
as ``torch.argmax`` picks the first maximum. That is why ``top_k=1`` and a tiny ``top_p`` are
exactly greedy decoding, ties included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.argcheck import check_int, check_number

__all__ = [
    "apply_temperature", "top_k_filter", "top_p_filter", "filter_logits", "filtered_probs", "sample",
    "apply_repetition_penalty", "block_repeated_ngrams",
]


# --------------------------------------------------------------------------------------------
# Input checks (shared with generate.py and beam.py)
# --------------------------------------------------------------------------------------------


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Raise ``ValueError`` for logits one cannot sample from: NaN, +inf, or a row that is all -inf."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() not in (1, 2):
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a float tensor of shape (V,) or (B, V), got {got}")
    if logits.size(-1) < 1:
        raise ValueError(f"{name} must have at least one vocabulary entry, got shape {tuple(logits.shape)}")
    rows = logits if logits.dim() == 2 else logits[None]  # (B, V)
    nan_rows = torch.isnan(rows).any(dim=-1)  # (B,)
    if nan_rows.any():
        raise ValueError(
            f"{name} contain NaN in batch row(s) {nan_rows.nonzero().flatten().tolist()}; refusing to sample "
            "from them (a NaN usually means the model diverged: check the training loss)"
        )
    if torch.isposinf(rows).any():
        raise ValueError(f"{name} contain +inf; logits must be finite or -inf (-inf = token filtered out)")
    dead = torch.isneginf(rows).all(dim=-1)  # (B,)
    if dead.any():
        raise ValueError(
            f"every token is filtered out (all logits -inf) in batch row(s) {dead.nonzero().flatten().tolist()}; "
            "loosen the filters (e.g. a larger no_repeat_ngram_size)"
        )


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy, inf = uniform), got {temperature!r}")
    return float(temperature)


def check_top_k(top_k: int | None) -> int | None:
    return check_int(top_k, "top_k", allow_none=True, note="None = off")


def check_top_p(top_p: float | None) -> float | None:
    return check_number(top_p, "top_p", low=0.0, high=1.0, low_inclusive=False, allow_none=True, note="None = off")


def check_repetition_penalty(penalty: float) -> float:
    return check_number(penalty, "repetition_penalty", low=0.0, low_inclusive=False, note="1 = off, > 1 penalises repeats")


def check_no_repeat_ngram_size(n: int) -> int:
    return check_int(n, "no_repeat_ngram_size", minimum=0, note="0 = off")


def _as_rows(logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(V,) -> (1, V) and remember to squeeze back."""
    check_logits(logits)
    return (logits[None], True) if logits.dim() == 1 else (logits, False)


def _descending_order(logits: torch.Tensor) -> torch.Tensor:
    """Token ids sorted by logit, largest first; equal logits keep ascending token id (stable sort)."""
    return torch.sort(logits, dim=-1, descending=True, stable=True).indices  # (B, V)


# --------------------------------------------------------------------------------------------
# Temperature, top-k, top-p
# --------------------------------------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Divide the logits by the temperature ``t``: softmax(logits / t).

    * ``t = 1`` leaves the distribution unchanged; ``t < 1`` sharpens it, ``t > 1`` flattens it.
    * ``t = 0`` means greedy: the first argmax keeps logit 0, every other token gets -inf.
    * ``t -> inf`` approaches the uniform distribution; ``t = math.inf`` *is* uniform over the
      tokens that are not already filtered out (-inf).

    The row maximum is subtracted first, ``(logits - max) / t``: the softmax is the same (it is
    shift-invariant) but a tiny ``t`` cannot overflow to +inf.
    """
    t = check_temperature(t)
    x, squeeze = _as_rows(logits)  # (B, V)
    if t == 0:
        keep = F.one_hot(x.argmax(dim=-1), x.size(-1)).bool()  # (B, V), the first maximum only
        out = torch.where(keep, 0.0, -math.inf).to(x.dtype)
    elif math.isinf(t):
        out = torch.where(torch.isneginf(x), -math.inf, 0.0).to(x.dtype)
    else:
        out = (x - x.max(dim=-1, keepdim=True).values) / t  # (B, V); -inf stays -inf
    return out[0] if squeeze else out


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits, set the rest to -inf.

    Exactly ``k`` tokens survive (fewer only if fewer are finite): on a tie at the k-th place the
    lower token ids win. ``k >= V`` keeps everything. (Hugging Face keeps *all* tokens tied with
    the k-th one; we keep exactly k, so that ``k=1`` is exactly greedy.)
    """
    k = check_top_k(k)
    x, squeeze = _as_rows(logits)  # (B, V)
    if k < x.size(-1):
        order = _descending_order(x)  # (B, V)
        keep = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order[:, :k], True)  # (B, V)
        x = x.masked_fill(~keep, -math.inf)
    return x[0] if squeeze else x


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose total probability reaches ``p``; set the rest to -inf.

    Walking down the tokens by probability (ties: lower id first), a token is kept when the
    mass of the tokens *before* it is still below ``p``. So the token that crosses ``p`` is kept,
    the most likely token is always kept, and when a prefix reaches ``p`` exactly the next token is
    dropped. "Exactly" allows for rounding: a prefix within ``8 * eps`` of ``p`` (``eps`` of the
    logits' float type, at least float32) counts as reaching it. ``p = 1`` keeps everything.
    """
    p = check_top_p(p)
    x, squeeze = _as_rows(logits)  # (B, V)
    if p < 1.0:
        work = x.double() if x.dtype == torch.float64 else x.float()
        tol = 8 * torch.finfo(work.dtype).eps
        order = _descending_order(work)  # (B, V)
        sorted_probs = F.softmax(work, dim=-1).gather(-1, order)  # (B, V), descending
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V): mass of the better tokens
        keep_sorted = mass_before < p - tol  # (B, V); position 0 always kept (0 < p - tol)
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to token order
        x = x.masked_fill(~keep, -math.inf)
    return x[0] if squeeze else x


def filter_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """temperature -> top-k -> top-p, in that fixed order. ``None`` switches a filter off."""
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    check_logits(logits)
    x = logits if temperature == 1.0 else apply_temperature(logits, temperature)
    if top_k is not None:
        x = top_k_filter(x, top_k)
    if top_p is not None:
        x = top_p_filter(x, top_p)
    return x


def filtered_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution :func:`sample` draws from: softmax of :func:`filter_logits` (renormalised)."""
    return F.softmax(filter_logits(logits, temperature, top_k, top_p).float(), dim=-1)


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row from the filtered distribution: ``(B, V) -> (B,)``, ``(V,) -> ()``.

    ``temperature=0`` returns the argmax (first one on ties) without drawing any random number.
    Pass a seeded ``torch.Generator`` for reproducible draws. NaN logits raise ``ValueError``.
    """
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    x, squeeze = _as_rows(logits)  # (B, V)
    if temperature == 0:
        ids = x.argmax(dim=-1)  # (B,): top-k / top-p never remove the argmax
    else:
        probs = filtered_probs(x, temperature, top_k, top_p)  # (B, V)
        ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    return ids[0] if squeeze else ids


# --------------------------------------------------------------------------------------------
# Repetition control: why greedy loops, and two standard fixes
# --------------------------------------------------------------------------------------------


def _check_history(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    x, squeeze = (logits[None], True) if logits.dim() == 1 else (logits, False)  # (B, V)
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids, dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids  # (B, T)
    if ids.dim() != 2 or ids.size(0) != x.size(0):
        raise ValueError(f"ids must have shape (T,) or (B, T) with B = {x.size(0)}, got {tuple(ids.shape)}")
    return x, ids.to(x.device).long(), squeeze


def apply_repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty in Hugging Face's form: every token that already occurs in ``ids`` gets its
    logit divided by ``penalty`` if positive, multiplied if negative. (CTRL, Keskar et al. 2019, divides
    every seen token's logit by θ whatever its sign, which *raises* a negative logit; the sign rule is
    Hugging Face's implementation choice.)

    ``penalty > 1`` discourages repeats, ``1`` is a no-op, ``< 1`` encourages them.
    ``logits``: ``(B, V)``; ``ids``: the tokens so far, ``(B, T)`` (prompt included).
    """
    check_repetition_penalty(penalty)
    x, ids, squeeze = _check_history(logits, ids)
    if penalty != 1 and ids.size(1) > 0:
        seen = x.gather(-1, ids)  # (B, T): the logits of the tokens already used
        seen = torch.where(seen > 0, seen / penalty, seen * penalty)
        x = x.scatter(-1, ids, seen)  # repeated ids write the same value: fine
    return x[0] if squeeze else x


def banned_ngram_tokens(ids: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in ``ids`` (one sequence)."""
    if n < 1 or len(ids) < n - 1:
        return set()
    prefix = ids[len(ids) - (n - 1):] if n > 1 else []  # the last n-1 tokens
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == prefix}


def block_repeated_ngrams(logits: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """No-repeat n-gram blocking (Paulus et al. 2017; Hugging Face's ``no_repeat_ngram_size``):
    a token gets -inf if choosing it would repeat an n-gram that already occurs in ``ids``.

    ``n = 0`` is off; ``n = 1`` forbids every token seen before. Cost: a Python scan of the
    history per row and step, fine for lesson-sized texts.
    """
    check_no_repeat_ngram_size(n)
    x, ids, squeeze = _check_history(logits, ids)
    if n > 0:
        x = x.clone()
        for b, row in enumerate(ids.tolist()):
            banned = list(banned_ngram_tokens(row, n))
            if banned:
                x[b, banned] = -math.inf
    return x[0] if squeeze else x
