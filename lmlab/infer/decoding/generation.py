"""The decoding loop, plus measuring sticks for the lesson (lesson 07, ``lessons/07_decoding``).

"model" is an lmlab :class:`~lmlab.model.gpt.GPT` or *any callable* mapping token ids ``(B, T)`` to
logits ``(B, T, V)``; an output with a ``.logits`` attribute (Hugging Face) or a tuple whose first
item is the logits also works.

Context window: if ``model.config.context_length`` exists, the model is only ever shown the last
``context_length`` tokens (the prompt may be longer). A callable without ``.config`` (or whose
config has no ``context_length``, like Hugging Face's) sees the whole sequence, uncropped.

KV cache protocol (chapter 08 implements it for lmlab's GPT). If the model has a method
``forward_with_cache(new_ids, cache) -> (logits, cache)``, the loop calls it with the whole prompt
and a new cache first (prefill: :func:`lmlab.infer.decoding.steps.new_cache`, a
:class:`lmlab.infer.kv_cache.KVCache` for an lmlab GPT, ``None`` for another model, which starts its own), then with just the one new token per step (decode), passing back
the cache it returned. Beam search also needs ``cache.reorder(beam_idx) -> cache`` (select cache
rows, ``beam_idx`` is a ``(B*K,)`` long tensor); a cache without ``reorder`` is dropped and rebuilt
by the next prefill. Once the sequence outgrows ``context_length`` the window slides, which cached
keys cannot follow (positions shift), so from then on every step recomputes the cropped window
without a cache. A model without ``forward_with_cache`` is always run on the (cropped) full
sequence at every step: same tokens, quadratic cost. ``use_cache=False`` forces that path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.argcheck import check_choice, check_int
from lmlab.infer.decoding.beam import beam_search
from lmlab.infer.decoding.logits import (
    check_logits,
    check_temperature,
    check_top_k,
    check_top_p,
    sample,
)
from lmlab.infer.decoding.steps import Model, Stepper, as_logits, check_common, context_length, inference, prepare_ids, process_history

__all__ = ["generate", "next_token_logits", "sequence_logprob", "repetition_rate", "STRATEGIES"]

STRATEGIES = ("greedy", "sample", "beam")


# --------------------------------------------------------------------------------------------
# Next-token logits
# --------------------------------------------------------------------------------------------


def next_token_logits(model: Model, ids: torch.Tensor) -> torch.Tensor:
    """The model's next-token logits for each row: ``(B, T) -> (B, V)`` (``(T,) -> (V,)``), cropped
    to the context window as described in the module docstring."""
    idx, squeeze = prepare_ids(model, ids, "ids")
    ctx = context_length(model)
    window = idx if ctx is None else idx[:, -ctx:]  # (B, <=ctx)
    with inference(model):
        logits = as_logits(model(window), window)[:, -1, :]  # (B, V)
    return logits[0] if squeeze else logits


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


def generate(
    model: Model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    strategy: str = "greedy",
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    eos_id: int | None = None,
    num_beams: int = 4,  # the three beam options are used by strategy="beam" only
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend ``prompt_ids`` (``(T,)`` or ``(B, T)``) by up to ``max_new_tokens`` tokens.

    ``strategy``:

    * ``"greedy"``: the most likely token each step (first one on ties).
    * ``"sample"``: draw from softmax after temperature -> top-k -> top-p (see
      :func:`~lmlab.infer.decoding.logits.filter_logits`); ``temperature=0`` is greedy again.
    * ``"beam"``: :func:`~lmlab.infer.decoding.beam.beam_search` with ``num_beams``,
      ``length_penalty`` and ``early_stopping``; returns the best hypothesis per row.

    ``repetition_penalty`` and ``no_repeat_ngram_size`` apply to every strategy, on the raw
    logits, looking at prompt and generated tokens alike. With ``eos_id``, a row that produced
    EOS is finished: it keeps EOS as padding, and the loop stops early once every row is finished.
    Returns prompt + new tokens, ``(T + n,)`` or ``(B, T + n)`` with ``n <= max_new_tokens``.
    Passing sampling options with ``strategy="greedy"`` / ``"beam"`` is an error, not ignored.
    """
    check_choice(strategy, "strategy", STRATEGIES)
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    check_common(max_new_tokens, eos_id, repetition_penalty, no_repeat_ngram_size)
    if strategy != "sample" and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError(
            f"temperature / top_k / top_p only apply to strategy='sample', got strategy={strategy!r} with "
            f"temperature={temperature}, top_k={top_k}, top_p={top_p}"
        )

    if strategy == "beam":
        result = beam_search(
            model, prompt_ids, num_beams, max_new_tokens, length_penalty=length_penalty, eos_id=eos_id,
            early_stopping=early_stopping, repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, use_cache=use_cache,
        )
        return result.padded(pad_id=eos_id if eos_id is not None else 0, squeeze=torch.as_tensor(prompt_ids).dim() == 1)

    idx, squeeze = prepare_ids(model, prompt_ids)  # (B, T)
    B = idx.size(0)
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)  # (B,)
    stepper = Stepper(model, use_cache)
    with inference(model):
        for _ in range(max_new_tokens):
            logits = stepper(idx).float()  # (B, V)
            check_logits(logits, "the model's logits")
            if eos_id is not None and eos_id >= logits.size(-1):
                raise ValueError(f"eos_id must be a token id in [0, V={logits.size(-1)}), got {eos_id}")
            if repetition_penalty != 1.0 or no_repeat_ngram_size > 0:
                logits = process_history(logits, idx, repetition_penalty, no_repeat_ngram_size)  # (B, V)
                check_logits(logits)  # the n-gram block can rule out every token
            if eos_id is not None:
                logits = logits.masked_fill(finished[:, None], 0.0)  # finished rows: anything valid
            if strategy == "greedy":
                nxt = logits.argmax(dim=-1)  # (B,)
            else:
                nxt = sample(logits, temperature, top_k, top_p, generator=generator)  # (B,)
            if eos_id is not None:
                nxt = nxt.masked_fill(finished, eos_id)
                finished |= nxt == eos_id
            idx = torch.cat([idx, nxt[:, None]], dim=1)  # (B, T + 1)
            if eos_id is not None and bool(finished.all()):
                break
    return idx[0] if squeeze else idx


# --------------------------------------------------------------------------------------------
# Measuring sticks
# --------------------------------------------------------------------------------------------


def sequence_logprob(model: Model, ids: torch.Tensor, prompt_len: int = 1, reduction: str = "sum") -> torch.Tensor:
    """log p(ids[prompt_len:] | ids[:prompt_len]) = sum over t >= prompt_len of log p(ids[t] | ids[<t]).

    ``ids``: ``(T,)`` or ``(B, T)``; returns ``()`` or ``(B,)`` for ``reduction="sum"`` or
    ``"mean"`` (per scored token), and ``(T - prompt_len,)`` / ``(B, T - prompt_len)`` for ``"none"``.
    Each token is scored with the model's context window (the last ``context_length`` tokens before it).
    Use it to compare whole continuations, e.g. greedy's against beam search's.
    """
    check_choice(reduction, "reduction", ("sum", "mean", "none"))
    idx, squeeze = prepare_ids(model, ids, "ids")  # (B, T)
    T = idx.size(1)
    check_int(prompt_len, "prompt_len", maximum=T, note=f"T = {T}; the first token has no prediction")
    ctx = context_length(model) or T
    with inference(model):
        if T <= ctx:  # one forward pass scores every position
            logp = F.log_softmax(as_logits(model(idx), idx).float(), dim=-1)  # (B, T, V)
            logp = logp[:, prompt_len - 1:-1]  # (B, T - prompt_len, V): position t-1 predicts token t
        else:  # longer than the window: one cropped forward per scored token
            rows = []
            for t in range(prompt_len, T):
                window = idx[:, max(0, t - ctx):t]  # (B, <=ctx)
                rows.append(F.log_softmax(as_logits(model(window), window)[:, -1].float(), dim=-1))
            logp = torch.stack(rows, dim=1)  # (B, T - prompt_len, V)
    token_logp = logp.gather(-1, idx[:, prompt_len:, None]).squeeze(-1)  # (B, T - prompt_len)
    out = {"sum": lambda x: x.sum(-1), "mean": lambda x: x.mean(-1), "none": lambda x: x}[reduction](token_logp)
    return out[0] if squeeze else out


def repetition_rate(ids, n: int = 4) -> float:
    """Fraction of repeated n-grams: ``(number of n-grams - number of distinct n-grams) / number of n-grams``.

    0 means no n-gram occurs twice; greedy decoding stuck in a loop approaches 1. A sequence
    shorter than ``n`` has no n-grams and rate 0. ``ids``: a list or a 1-D tensor (one sequence).
    """
    check_int(n, "n")
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be one sequence (a list or a 1-D tensor), got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    ids = list(ids)
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 0.0 if not grams else (len(grams) - len(set(grams))) / len(grams)
