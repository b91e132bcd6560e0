"""Talking to "a model" while decoding: the step protocol shared by :func:`lmlab.infer.decoding.generation`
and :func:`lmlab.infer.decoding.beam_search` (lesson 07; the KV cache is lesson 08's, see
:mod:`lmlab.infer.decoding.generation` for the protocol).

"model" is an lmlab :class:`~lmlab.model.gpt.GPT` or any callable ``ids (B, T) -> logits (B, T, V)``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn

from lmlab.argcheck import check_int
from lmlab.infer.kv_cache import KVCache
from lmlab.model import ModelConfig
from lmlab.infer.decoding.logits import apply_repetition_penalty, block_repeated_ngrams, check_no_repeat_ngram_size, check_repetition_penalty

__all__ = ["Model", "context_length", "as_logits", "prepare_ids", "inference", "new_cache", "Stepper", "process_history", "check_common"]

Model = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Talking to "a model": any callable ids -> logits
# --------------------------------------------------------------------------------------------


def context_length(model: Model) -> int | None:
    """``model.config.context_length`` if present, else None (no cropping)."""
    return getattr(getattr(model, "config", None), "context_length", None)


def as_logits(out, ids: torch.Tensor) -> torch.Tensor:
    """Unwrap a model output into a float ``(B, T, V)`` tensor and check its shape."""
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != tuple(ids.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must map ids (B, T) = {tuple(ids.shape)} to logits (B, T, V), got {got}")
    return out


def prepare_ids(model: Model, ids, name: str = "prompt_ids") -> tuple[torch.Tensor, bool]:
    """(T,) or (B, T) integer ids -> (B, T) long on the model's device, and whether to squeeze back."""
    ids = torch.as_tensor(ids)
    squeeze = ids.dim() == 1
    ids = ids[None] if squeeze else ids  # (B, T)
    if ids.dim() != 2 or ids.size(1) < 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be integer ids of shape (T,) or (B, T) with T >= 1, got {ids.dtype} {tuple(ids.shape)}")
    device = None
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        device = p.device if p is not None else None
    return ids.long().to(device) if device is not None else ids.long(), squeeze


@contextlib.contextmanager
def inference(model: Model) -> Iterator[None]:
    """eval mode (no dropout) and inference mode (no autograd) while decoding; the training flag is restored after."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():  # like no_grad, with less per-op bookkeeping
            yield
    finally:
        if was_training:
            model.train(True)


def new_cache(model: Model, batch: int):
    """The KV cache the loop starts a prefill with: for an lmlab GPT (a model whose ``config`` is a
    :class:`lmlab.model.config.ModelConfig`) an empty :class:`lmlab.infer.kv_cache.KVCache` in its weights'
    dtype and device; ``None`` for any other model with ``forward_with_cache`` (it starts its own)."""
    if not isinstance(getattr(model, "config", None), ModelConfig):
        return None
    p = next(model.parameters())
    return KVCache.for_model(model, batch=batch, dtype=p.dtype, device=p.device)


class Stepper:
    """Next-token logits for a growing sequence, using the model's KV cache when it has one.

    Call it with the *whole* sequence so far, ``(B, T)``; it sends the model only what the cache
    has not seen yet. After beam search reorders its rows, call :meth:`reorder`.
    """

    def __init__(self, model: Model, use_cache: bool = True):
        self.model = model
        self.ctx = context_length(model)
        self.use_cache = use_cache and callable(getattr(model, "forward_with_cache", None))
        self.cache, self.cached_len = None, 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, V)
        T = idx.size(1)
        if self.use_cache and (self.ctx is None or T <= self.ctx):
            new = idx[:, self.cached_len:]  # (B, T_new): the whole prompt first, then 1 token
            if self.cache is None:  # prefill: the loop, not the model, makes the cache
                self.cache = new_cache(self.model, idx.size(0))
            out, self.cache = self.model.forward_with_cache(new, self.cache)
            self.cached_len = T
            return as_logits(out, new)[:, -1, :]
        self.cache, self.cached_len = None, 0  # no cache, or the window slides: recompute
        window = idx if self.ctx is None else idx[:, -self.ctx:]  # (B, <=ctx)
        return as_logits(self.model(window), window)[:, -1, :]

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Row ``i`` of the cache becomes old row ``beam_idx[i]``."""
        if self.cache is None:
            return
        if callable(getattr(self.cache, "reorder", None)):
            self.cache = self.cache.reorder(beam_idx)
        else:
            self.cache, self.cached_len = None, 0  # rebuilt by the next call


def process_history(logits: torch.Tensor, ids: torch.Tensor, repetition_penalty: float, no_repeat_ngram_size: int) -> torch.Tensor:
    """The repetition controls, applied to raw logits before any sampling transform."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, ids, repetition_penalty)
    if no_repeat_ngram_size > 0:
        logits = block_repeated_ngrams(logits, ids, no_repeat_ngram_size)
    return logits


def check_common(max_new_tokens: int, eos_id: int | None, repetition_penalty: float, no_repeat_ngram_size: int) -> None:
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    check_int(eos_id, "eos_id", minimum=0, allow_none=True, note="a token id")
    check_repetition_penalty(repetition_penalty)
    check_no_repeat_ngram_size(no_repeat_ngram_size)
