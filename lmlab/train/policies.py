"""The training loop's policies, one small named piece each (lesson 09, ``lessons/09_training_recipe``).

:func:`lmlab.train.loop.train` reads like its recipe because every decision is one of these, called
at a stated point of the step (the spike remedies are :class:`lmlab.train.spikes.SpikeGuard`):

- before the run: :func:`build_optimizer`, :class:`BatchStream` (the data), :func:`embedding_shrink`,
  :meth:`RunCheckpoints.resume`;
- start of a step: :func:`batch_size_at` (the batch ramp), :func:`learning_rate` (schedule x spike
  scale x jolt) and :func:`set_lr`;
- after backward: :func:`clip_gradients`, then :func:`check_finite` (the non-finite policy);
- end of a step: :meth:`RunCheckpoints.save` when :meth:`RunCheckpoints.due`.

Each reads its options from a :class:`lmlab.train.config.TrainConfig`; the mechanics stay in their topic's
module (:mod:`lmlab.train.optim`, :mod:`lmlab.train.schedule`, :mod:`lmlab.train.spikes`,
:mod:`lmlab.train.checkpoint`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmlab.data.text import sample_batch
from lmlab.train.checkpoint import load_checkpoint, save_checkpoint
from lmlab.train.config import TrainConfig
from lmlab.train.optim import AdamW, Adafactor, clip_grad_norm, global_grad_norm, param_groups
from lmlab.train.schedule import ramp_batch_size, warmup_constant, warmup_cosine
from lmlab.train.spikes import EmbeddingGradShrink, SpikeGuard

__all__ = ["NonFiniteLossError", "check_finite", "build_optimizer", "learning_rate", "set_lr", "batch_size_at",
           "clip_gradients", "embedding_shrink", "BatchStream", "RunState", "RunCheckpoints"]


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) was inf/NaN at a step; the message names the step."""


def check_finite(on_nonfinite: str, step: int, loss: float, grad_norm: float) -> bool:
    """The non-finite policy: whether the step's loss and gradient norm are finite; with
    ``on_nonfinite="raise"`` a non-finite one raises :class:`NonFiniteLossError` instead
    (``"stop"`` and ``"skip"`` are the loop's to act on)."""
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if not finite and on_nonfinite == "raise":
        raise NonFiniteLossError(f"train: the loss is {loss} (gradient norm {grad_norm}) at step {step}; nothing was trained "
                                 "on it. Lower lr, add warm-up, or set TrainConfig(on_nonfinite='stop' / 'skip').")
    return finite


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """lmlab's AdamW or Adafactor over :func:`~lmlab.train.optim.param_groups` (decay on matrices only)."""
    groups = param_groups(model, config.weight_decay, config.decay_embeddings)
    if config.optimizer == "adamw":
        return AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    return Adafactor(groups, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int, scale: float = 1.0, position: int = 0) -> float:
    """The rate of update ``step`` (1..steps): the schedule's, times ``scale`` (the spike guard's),
    times the jolt's factor at data ``position``."""
    if config.schedule == "cosine":
        lr = warmup_cosine(step, config.lr, config.lr * config.min_lr_ratio, config.warmup, config.steps)
    else:
        lr = warmup_constant(step, config.lr, config.warmup)
    return lr * scale * (config.jolt.lr_factor(position) if config.jolt else 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def batch_size_at(config: TrainConfig, consumed: int) -> int:
    """The batch ramp: sequences in the next step once ``consumed`` sequences were trained on."""
    if config.batch_ramp is None:
        return config.batch_size
    start, ramp = config.batch_ramp
    return ramp_batch_size(consumed, start, config.batch_size, ramp)


def clip_gradients(params: list[torch.Tensor], max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (``None``: only measure it); return the norm before."""
    norm = clip_grad_norm(params, max_norm) if max_norm is not None else global_grad_norm(params)
    return norm.item()


def embedding_shrink(model: nn.Module, alpha: float | None):
    """GLM-130B's shrink on ``model.tok_emb``'s gradient for the ``with`` block (``None``: nothing)."""
    return EmbeddingGradShrink(model.tok_emb, alpha) if alpha is not None else nullcontext()


class BatchStream:
    """The training data as a stream of random micro-batches of ``batch_size`` windows.

    ``position`` counts the batches drawn (or skipped): the data clock that a
    :class:`~lmlab.train.spikes.Jolt` and a checkpoint use. ``skip(n)`` draws ``n`` batches and drops them
    (a rollback skipping data), so the stream afterwards is the one a run that used them would see.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, context_length: int, generator: torch.Generator,
                 device: torch.device | str | None = None):
        self.ids, self.batch_size, self.context_length = ids, batch_size, context_length
        self.generator, self.device = generator, device
        self.position = 0

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``x, y``, each ``(batch_size, context_length)``."""
        batch = sample_batch(self.ids, self.batch_size, self.context_length, generator=self.generator, device=self.device)
        self.position += 1
        return batch

    def skip(self, n: int) -> None:
        for _ in range(n):
            sample_batch(self.ids, self.batch_size, self.context_length, generator=self.generator)
        self.position += n


@dataclass
class RunState:
    """Where the run is: ``step`` (updates done) and ``consumed`` (sequences trained on, the ramp's clock)."""

    step: int = 0
    consumed: int = 0


class RunCheckpoints:
    """Checkpoint save and resume (:mod:`lmlab.train.checkpoint`): model, optimizer, every RNG, the step and
    the data position, plus the loop's own state (history, consumed sequences, the spike guard's)."""

    def __init__(self, config: TrainConfig):
        self.path, self.every, self.resume_from = config.checkpoint_path, config.checkpoint_every, config.resume

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: RunState,
               data: BatchStream, history, guard: SpikeGuard) -> None:
        """With ``resume=True`` and a file at ``checkpoint_path``, continue from it (bit for bit)."""
        if not (self.resume_from and Path(self.path).exists()):
            return
        saved = load_checkpoint(self.path, model, optimizer, generator=generator)
        state.step, data.position, extra = saved["step"], saved["data_position"], saved["extra"]
        history.load_dict(extra["history"])
        state.consumed = extra["consumed"]
        guard.load_state_dict(extra)

    def due(self, step: int) -> bool:
        return self.every is not None and step % self.every == 0

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: RunState,
             data: BatchStream, history, guard: SpikeGuard) -> None:
        extra = dict(history=history.to_dict(), consumed=state.consumed, **guard.state_dict())
        save_checkpoint(self.path, model, optimizer, step=state.step, data_position=data.position, generator=generator,
                        extra=extra)
