"""Decoding strategies: turning next-token logits into text (lesson 07, ``lessons/07_decoding``).

A language model only gives a distribution over the next token; *decoding* is how we pick tokens
from it. This package holds every strategy the lesson compares:

* :mod:`lmlab.infer.decoding.logits` -- logit transforms and sampling: :func:`apply_temperature`,
  :func:`top_k_filter`, :func:`top_p_filter` (always composed in the order
  temperature -> top-k -> top-p, see :func:`filter_logits`), :func:`sample`, and the two repetition
  controls :func:`apply_repetition_penalty` and :func:`block_repeated_ngrams`.
* :mod:`lmlab.infer.decoding.generation` -- the decoding loop :func:`generate` (greedy, sampling or beam),
  :func:`next_token_logits`, and two measuring sticks for the lesson: :func:`sequence_logprob`
  and :func:`repetition_rate`.
* :mod:`lmlab.infer.decoding.beam` -- :func:`beam_search` with length penalty and Hugging Face's
  ``early_stopping`` semantics.

"model" everywhere means an lmlab :class:`~lmlab.model.gpt.GPT` *or any callable* mapping token ids
``(B, T)`` to logits ``(B, T, V)`` (an object with a ``.logits`` attribute, as Hugging Face models
return, is accepted too). See :mod:`lmlab.infer.decoding.generation` for the KV-cache protocol.
"""

from lmlab.infer.decoding.beam import BeamSearchResult, Hypothesis, beam_search, beam_step
from lmlab.infer.decoding.generation import generate, next_token_logits, repetition_rate, sequence_logprob
from lmlab.infer.decoding.logits import (
    apply_repetition_penalty,
    apply_temperature,
    block_repeated_ngrams,
    filter_logits,
    filtered_probs,
    sample,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "apply_temperature", "top_k_filter", "top_p_filter", "filter_logits", "filtered_probs", "sample",
    "apply_repetition_penalty", "block_repeated_ngrams",
    "generate", "next_token_logits", "sequence_logprob", "repetition_rate",
    "beam_search", "beam_step", "BeamSearchResult", "Hypothesis",
]
