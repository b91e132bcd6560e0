"""The course's one training loop and evaluation (lessons 00 and 09).

:func:`train` takes every option in one :class:`lmlab.train.config.TrainConfig` and is built from lmlab's
own parts (lesson 09): the optimizers, clipping and weight-decay groups of :mod:`lmlab.train.optim`, the
warm-up + cosine schedule and batch ramp of :mod:`lmlab.train.schedule`, the spike detector and remedies
of :mod:`lmlab.train.spikes` and the checkpoints of :mod:`lmlab.train.checkpoint`, each policy a small named
piece of :mod:`lmlab.train.policies` called at its point of the step. With ``TrainConfig()``'s defaults it
is the plain loop lessons 00–08 use. Text generation (greedy, sampling, beam search, top-k, top-p) is
:func:`lmlab.infer.decoding.generation` (lesson 07).
"""

from __future__ import annotations

import bisect
import copy
import random
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmlab.argcheck import check_tensor
from lmlab.data.text import sample_batch
from lmlab.train.config import TrainConfig
from lmlab.train.policies import (BatchStream, RunCheckpoints, RunState, batch_size_at, build_optimizer, check_finite,
                                  clip_gradients, embedding_shrink, learning_rate, set_lr)
from lmlab.train.spikes import SpikeGuard

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
    ``changes``, e.g. ``rope_scaling``) via :meth:`lmlab.model.gpt.GPT.with_config`, so lengths past ``L``
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
    """What :func:`train` measured, ready to plot: ``go.Scatter(x=h.steps, y=h.train_loss)``.

    One entry per optimizer step ``1..steps`` in ``steps``, ``train_loss`` (the batch's loss before
    the update), ``lr`` (the rate the step used), ``grad_norm`` (global norm before clipping) and
    ``batch_size`` (sequences). Spike handling adds: ``spikes`` (steps where the detector fired),
    ``skipped_steps`` (steps whose update was not applied), ``rollbacks`` (``{"step", "to_step",
    "skipped_batches"}`` each) and ``rolled_back`` (``(step, loss)`` of the steps a rollback undid;
    they are removed from the main curve, which a rollback rewinds).
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    batch_size: list[int] = field(default_factory=list)
    spikes: list[int] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    rollbacks: list[dict] = field(default_factory=list)
    rolled_back: list[tuple[int, float]] = field(default_factory=list)
    stopped_at: int | None = None  # the step whose loss was not finite, with TrainConfig(on_nonfinite="stop")

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def load_dict(self, state: dict) -> None:
        """Take the values of :meth:`to_dict` (a resumed checkpoint's history)."""
        for f in fields(self):
            setattr(self, f.name, state[f.name])

    def record(self, step: int, loss: float, lr: float, grad_norm: float, batch_size: int) -> None:
        """One optimizer step's measurements."""
        self.steps.append(step)
        self.train_loss.append(loss)
        self.lr.append(lr)
        self.grad_norm.append(grad_norm)
        self.batch_size.append(batch_size)

    def rewind(self, step: int) -> None:
        """Forget every step after ``step`` (a rollback); their losses go to ``rolled_back``."""
        keep = bisect.bisect_right(self.steps, step)
        self.rolled_back += list(zip(self.steps[keep:], self.train_loss[keep:]))
        for name in ("steps", "train_loss", "lr", "grad_norm", "batch_size"):
            del getattr(self, name)[keep:]
        keep_val = bisect.bisect_right(self.val_steps, step)
        del self.val_steps[keep_val:], self.val_loss[keep_val:]


def train(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor | None = None, *,
          config: TrainConfig) -> History:
    """Train on random windows of ``train_ids``; evaluate on ``val_ids``; every option is in ``config``.

    ``TrainConfig()``'s defaults are lmlab's plain recipe (lessons 00–08): AdamW on decay groups,
    clipping at 1.0, a constant rate. Lesson 09's options (:class:`~lmlab.train.config.TrainConfig`)
    are the policies of :mod:`lmlab.train.policies` and :class:`~lmlab.train.spikes.SpikeGuard`, each
    called at its point of the step below. Returns the :class:`History`.
    """
    _check_train_args(model, train_ids, val_ids, config)
    gen = seed_everything(config.seed)
    opt = build_optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    data = BatchStream(train_ids, config.micro_batch, model.config.context_length, gen, next(model.parameters()).device)
    guard, checkpoints = SpikeGuard(config.spike), RunCheckpoints(config)
    hist, state = History(), RunState()
    checkpoints.resume(model, opt, gen, state, data, hist, guard)
    guard.start(model, opt, state.step)  # the first snapshot a rollback can return to
    model.train()
    start = time.perf_counter() - hist.seconds
    bar = tqdm(total=config.steps, initial=state.step, disable=not config.progress, desc="training", leave=False)
    with embedding_shrink(model, config.embedding_grad_shrink):
        while state.step < config.steps:
            t = state.step + 1
            B = batch_size_at(config, state.consumed)  # the batch ramp
            lr = learning_rate(config, t, guard.lr_scale, data.position)  # schedule x spike scale x jolt
            set_lr(opt, lr)
            loss = _accumulate_gradients(model, opt, data, B // config.micro_batch)
            norm = clip_gradients(params, config.grad_clip)
            finite = check_finite(config.on_nonfinite, t, loss, norm)  # "raise" raises here
            if not finite and config.on_nonfinite == "stop":
                hist.stopped_at = t
                break
            is_spike = guard.check(t, loss, norm, hist)
            if guard.rollback_due(is_spike):
                state.step = guard.roll_back(t, loss, model, opt, data, hist)
                bar.n = state.step
                bar.refresh()
                continue
            lr = guard.lower_lr(opt, lr, is_spike, finite)
            if finite and not guard.skips(is_spike):
                opt.step()
            else:
                hist.skipped_steps.append(t)  # no update from this batch
            state.step, state.consumed = t, state.consumed + B
            hist.record(t, loss, lr, norm, B)
            _evaluate_if_due(model, val_ids, config, t, hist, bar)
            guard.after_step(model, opt, t, is_spike)
            if checkpoints.due(t):
                hist.seconds = time.perf_counter() - start
                checkpoints.save(model, opt, gen, state, data, hist, guard)
            bar.update(1)
            if config.callback is not None:
                config.callback(t, loss)
    bar.close()
    hist.seconds = time.perf_counter() - start
    model.eval()
    return hist


def _check_train_args(model, train_ids, val_ids, config) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ValueError(f"train: model must be an nn.Module with a .config (a GPT), got {type(model).__name__}")
    check_tensor(train_ids, "train_ids", "train", dim=1)
    if val_ids is not None:
        check_tensor(val_ids, "val_ids", "train", dim=1)
    if not isinstance(config, TrainConfig):
        raise ValueError(f"train: config must be a lmlab.train.config.TrainConfig, got {type(config).__name__}")


def _accumulate_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, data: BatchStream, n_micro: int) -> float:
    """Zero the gradients, then forward and backward ``n_micro`` micro-batches (gradient accumulation:
    the memory of one); return the mean loss."""
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for _ in range(n_micro):
        x, y = data.draw()  # (b, T) each
        loss = lm_loss(model(x), y)
        (loss if n_micro == 1 else loss / n_micro).backward()
        loss_sum += loss.item()
    return loss_sum / n_micro


def _evaluate_if_due(model: nn.Module, val_ids, config: TrainConfig, step: int, hist: History, bar) -> None:
    """Evaluate every ``eval_every`` steps and at the last one (if there is validation data)."""
    if val_ids is None or config.eval_every is None or (step % config.eval_every and step != config.steps):
        return
    hist.val_steps.append(step)
    hist.val_loss.append(evaluate(model, val_ids, config.batch_size, config.eval_batches))
    bar.set_postfix(val_loss=f"{hist.val_loss[-1]:.3f}")
