"""A compact training loop and text generation (lesson 00, ``lessons/00_tour``).

What is here is the minimum that trains a tiny GPT: AdamW, a fixed learning rate, gradient-norm
clipping. Decoding beyond greedy and plain sampling (beam search, top-k, top-p) is
:mod:`lmlab.decoding` (lesson 07).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import sample_batch

__all__ = ["seed_everything", "lm_loss", "evaluate", "evaluate_lengths", "History", "train"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats: logits ``(B, T, V)``, targets ``(B, T)``."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, V) and targets (B, T), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))  # (B*T, V) vs (B*T,)


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, batch_size: int = 32, n_batches: int = 20, seed: int = 1234,
             context_length: int | None = None) -> float:
    """Mean loss over ``n_batches`` random windows of ``ids`` (same windows every call).

    Windows are ``context_length`` tokens long (default: the model's own context length).
    """
    T = model.config.context_length if context_length is None else context_length
    if not isinstance(T, int) or not 1 <= T <= model.config.context_length:
        raise ValueError(f"context_length must be an int in [1, model context_length={model.config.context_length}], got {T!r}")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    for _ in range(n_batches):
        x, y = sample_batch(ids, batch_size, T, generator=gen, device=device)
        losses.append(lm_loss(model(x), y).item())
    model.train(was_training)
    return float(np.mean(losses))


def evaluate_lengths(model: nn.Module, ids: torch.Tensor, lengths, *, batch_size: int = 16, n_batches: int = 10,
                     seed: int = 1234, **changes) -> dict[int, float]:
    """Mean loss of ``model`` on windows of every length in ``lengths`` (lessons 03 and 06).

    A model trained at context ``L`` is copied with ``context_length=max(lengths)`` (and any config
    ``changes``, e.g. ``rope_scaling``) via :meth:`lmlab.model.GPT.with_config`, so lengths past ``L``
    test extrapolation. A scheme that cannot run at a length (learned positions past their table)
    gives ``nan`` for it instead of raising.
    """
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be a non-empty list of ints >= 1, got {lengths!r}")
    longer = model.with_config(context_length=max(max(lengths), model.config.context_length), **changes)
    out = {}
    for n in lengths:
        try:
            out[n] = evaluate(longer, ids, batch_size, n_batches, seed, context_length=n)
        except ValueError:
            out[n] = float("nan")
    return out


@dataclass
class History:
    """What :func:`train` measured, ready to plot: ``go.Scatter(x=h.steps, y=h.train_loss)``."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(steps=self.steps, train_loss=self.train_loss, val_steps=self.val_steps, val_loss=self.val_loss, seconds=self.seconds)


def train(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor | None = None,
    *,
    steps: int = 500,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float | None = 1.0,
    eval_every: int | None = 100,
    eval_batches: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> History:
    """Train with AdamW on random windows of ``train_ids``; evaluate on ``val_ids`` every ``eval_every`` steps.

    Weight decay applies to every parameter with 2 or more dimensions (the weight matrices and the
    embedding tables) and not to 1-D parameters (biases and the norms' gains).
    """
    import time

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")
    gen = seed_everything(seed)
    device = next(model.parameters()).device
    T = model.config.context_length
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas,
    )
    hist = History()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), disable=not progress, desc="training", leave=False)
    for step in bar:
        x, y = sample_batch(train_ids, batch_size, T, generator=gen, device=device)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        hist.steps.append(step)
        hist.train_loss.append(loss.item())
        if val_ids is not None and eval_every and (step % eval_every == 0 or step == steps):
            hist.val_steps.append(step)
            hist.val_loss.append(evaluate(model, val_ids, batch_size, eval_batches))
            bar.set_postfix(val_loss=f"{hist.val_loss[-1]:.3f}")
    hist.seconds = time.perf_counter() - start
    model.eval()
    return hist
