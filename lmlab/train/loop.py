"""The course's one training loop and evaluation (lessons 00 and 09).

:func:`train` is built from lmlab's own parts (lesson 09): :class:`lmlab.train.optim.AdamW` /
:class:`~lmlab.train.optim.Adafactor`, :func:`lmlab.train.optim.clip_grad_norm`, the weight-decay groups, the
warm-up + cosine schedule and batch ramp of :mod:`lmlab.train.schedule`, the spike detector and remedies
of :mod:`lmlab.train.spikes` and the checkpoints of :mod:`lmlab.train.checkpoint`. With its defaults it is the
plain loop lessons 00–08 use. Text generation (greedy, sampling, beam search, top-k, top-p) is
:func:`lmlab.infer.decoding.generation` (lesson 07).
"""

from __future__ import annotations

import bisect
import copy
import math
import random
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmlab.train.checkpoint import load_checkpoint, save_checkpoint
from lmlab.data.text import sample_batch
from lmlab.train.optim import AdamW, Adafactor, clip_grad_norm, global_grad_norm, param_groups
from lmlab.train.schedule import accumulation_steps, ramp_batch_size, warmup_cosine
from lmlab.train.spikes import EmbeddingGradShrink, Jolt, SpikePolicy
from lmlab.argcheck import check_choice, check_int, check_number, check_probability

__all__ = ["seed_everything", "lm_loss", "evaluate", "evaluate_lengths", "History", "NonFiniteLossError", "train"]


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
    stopped_at: int | None = None  # the step whose loss was not finite, with on_nonfinite="stop"

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def rewind(self, step: int) -> None:
        """Forget every step after ``step`` (a rollback); their losses go to ``rolled_back``."""
        keep = bisect.bisect_right(self.steps, step)
        self.rolled_back += list(zip(self.steps[keep:], self.train_loss[keep:]))
        for name in ("steps", "train_loss", "lr", "grad_norm", "batch_size"):
            del getattr(self, name)[keep:]
        keep_val = bisect.bisect_right(self.val_steps, step)
        del self.val_steps[keep_val:], self.val_loss[keep_val:]


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) was inf/NaN at a step; the message names the step."""


def _snapshot(model, opt, step, detector, lr_scale) -> dict:
    return dict(step=step, model={k: v.detach().clone() for k, v in model.state_dict().items()},
                opt=copy.deepcopy(opt.state_dict()), detector=detector.state_dict() if detector else None, lr_scale=lr_scale)


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
    optimizer: str = "adamw",
    eps: float = 1e-8,
    decay_embeddings: bool = True,
    schedule: str = "constant",
    warmup: int = 0,
    min_lr_ratio: float = 0.1,
    micro_batch_size: int | None = None,
    batch_ramp: tuple[int, int] | None = None,
    spike: SpikePolicy | None = None,
    jolt: Jolt | None = None,
    embedding_grad_shrink: float | None = None,
    on_nonfinite: str = "raise",
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> History:
    """Train on random windows of ``train_ids``; evaluate on ``val_ids`` every ``eval_every`` steps.

    The defaults are lmlab's plain recipe (lessons 00–08): lmlab's :class:`~lmlab.train.optim.AdamW`
    (``betas``, ``eps``), decay on matrices only (:func:`~lmlab.train.optim.param_groups`; embeddings are
    decayed unless ``decay_embeddings=False``), global-norm clipping at ``grad_clip`` (None: off), a
    constant ``lr``. Lesson 09's options, each off by default:

    - ``optimizer="adafactor"`` (:class:`~lmlab.train.optim.Adafactor`, ``lr`` is its relative-step cap);
    - ``schedule="cosine"``: :func:`~lmlab.train.schedule.warmup_cosine` to ``min_lr_ratio * lr`` at ``steps``;
      ``warmup`` steps of linear warm-up (also with ``"constant"``);
    - ``micro_batch_size``: gradient accumulation over micro-batches of this size; ``batch_ramp=(start,
      ramp)``: the batch grows from ``start`` to ``batch_size`` sequences over ``ramp`` sequences
      (:func:`~lmlab.train.schedule.ramp_batch_size`, increments of ``start``; micro-batches default to ``start``);
    - ``spike``: a :class:`~lmlab.train.spikes.SpikePolicy` (detect, then skip / roll back / lower the LR);
      ``jolt``: a :class:`~lmlab.train.spikes.Jolt` injected on purpose;
    - ``embedding_grad_shrink=alpha``: GLM-130B's shrink on the token embedding's output;
    - ``on_nonfinite``: an inf/NaN loss or gradient norm ``"raise"``s :class:`NonFiniteLossError`
      naming the step, ``"stop"``s training there (``History.stopped_at``), or is ``"skip"``ped — it
      is never trained on;
    - ``checkpoint_path`` + ``checkpoint_every``: atomic checkpoints (:mod:`lmlab.train.checkpoint`);
      ``resume=True`` continues from the file if it exists, bit-identically. (Rollback snapshots
      live in memory: a resumed run restarts them from the checkpoint.)
    - ``callback(step, loss)`` after every recorded step.
    """
    import time

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")
    check_choice(optimizer, "optimizer", ("adamw", "adafactor"), "train")
    check_choice(schedule, "schedule", ("constant", "cosine"), "train")
    check_choice(on_nonfinite, "on_nonfinite", ("raise", "stop", "skip"), "train")
    warmup = check_int(warmup, "warmup", "train", minimum=0)
    if warmup > steps:
        raise ValueError(f"train.warmup ({warmup}) must be <= steps ({steps})")
    min_lr_ratio = check_probability(min_lr_ratio, "min_lr_ratio", "train")
    check_number(grad_clip, "grad_clip", "train", low=0.0, low_inclusive=False, allow_none=True)
    if embedding_grad_shrink is not None:
        check_probability(embedding_grad_shrink, "embedding_grad_shrink", "train")
    if spike is not None and not isinstance(spike, SpikePolicy):
        raise ValueError(f"train.spike must be a lmlab.train.spikes.SpikePolicy or None, got {type(spike).__name__}")
    if jolt is not None and not isinstance(jolt, Jolt):
        raise ValueError(f"train.jolt must be a lmlab.train.spikes.Jolt or None, got {type(jolt).__name__}")
    check_int(checkpoint_every, "checkpoint_every", "train", allow_none=True)
    if (checkpoint_every is None) != (checkpoint_path is None) or (resume and checkpoint_path is None):
        raise ValueError("train: checkpoint_path and checkpoint_every go together (and resume=True needs them)")
    if batch_ramp is not None:
        if not isinstance(batch_ramp, (tuple, list)) or len(batch_ramp) != 2:
            raise ValueError(f"train.batch_ramp must be (start, ramp_sequences), got {batch_ramp!r}")
        ramp_batch_size(0, batch_ramp[0], batch_size, batch_ramp[1])  # validates start, ramp
    micro = micro_batch_size or (batch_ramp[0] if batch_ramp else batch_size)
    accumulation_steps(batch_size, micro)  # validates the sizes
    if batch_ramp is not None:
        accumulation_steps(batch_ramp[0], micro)

    gen = seed_everything(seed)
    device = next(model.parameters()).device
    T = model.config.context_length
    groups = param_groups(model, weight_decay, decay_embeddings)
    if optimizer == "adamw":
        opt = AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    else:
        opt = Adafactor(groups, lr=lr, weight_decay=weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    detector = spike.detector() if spike else None
    hist = History()
    step = position = consumed = n_rollbacks = in_a_row = 0
    lr_scale = 1.0
    if resume and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, model, opt, generator=gen)
        step, position, extra = state["step"], state["data_position"], state["extra"]
        hist = History(**extra["history"])
        consumed, lr_scale, n_rollbacks = extra["consumed"], extra["lr_scale"], extra["n_rollbacks"]
        if detector and extra["detector"]:
            detector.load_state_dict(extra["detector"])
    snapshots = deque([_snapshot(model, opt, step, detector, lr_scale)], maxlen=2) if spike and spike.action == "rollback" else None
    shrink = EmbeddingGradShrink(model.tok_emb, embedding_grad_shrink) if embedding_grad_shrink is not None else nullcontext()
    model.train()
    start = time.perf_counter() - hist.seconds
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="training", leave=False)
    with shrink:
        while step < steps:
            t = step + 1
            B = batch_size if batch_ramp is None else ramp_batch_size(consumed, batch_ramp[0], batch_size, batch_ramp[1])
            n_micro = B // micro
            if schedule == "cosine":
                lr_t = warmup_cosine(t, lr, lr * min_lr_ratio, warmup, steps)
            else:
                lr_t = lr * t / warmup if t < warmup else lr
            lr_t = lr_t * lr_scale * (jolt.lr_factor(position) if jolt else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr_t
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _ in range(n_micro):  # gradient accumulation: memory of one micro-batch
                x, y = sample_batch(train_ids, micro, T, generator=gen, device=device)
                position += 1
                loss = lm_loss(model(x), y)
                (loss if n_micro == 1 else loss / n_micro).backward()
                loss_sum += loss.item()
            loss_value = loss_sum / n_micro
            norm = clip_grad_norm(params, grad_clip) if grad_clip is not None else global_grad_norm(params)
            norm_value = norm.item()
            finite = math.isfinite(loss_value) and math.isfinite(norm_value)
            if not finite and on_nonfinite == "raise":
                raise NonFiniteLossError(f"train: the loss is {loss_value} (gradient norm {norm_value}) at step {t}; nothing was "
                                         "trained on it. Lower lr, add warm-up, or pass on_nonfinite='stop' / 'skip'.")
            if not finite and on_nonfinite == "stop":
                hist.stopped_at = t
                break
            is_spike = detector.check(loss_value, norm_value) if detector else False
            if is_spike:
                in_a_row += 1
                if finite and in_a_row > spike.max_consecutive:  # a long plateau of "spikes" is the new normal
                    detector.accept(loss_value, norm_value)
                    is_spike = False
                else:
                    hist.spikes.append(t)
            else:
                in_a_row = 0
            if is_spike and spike.action == "rollback" and n_rollbacks < spike.max_rollbacks:
                snap = snapshots[0]  # the older of the last two: a little before the trouble began (PaLM)
                model.load_state_dict(snap["model"])
                opt.load_state_dict(copy.deepcopy(snap["opt"]))  # load_state_dict shares tensors
                if detector:
                    detector.load_state_dict(snap["detector"])
                lr_scale, n_rollbacks = snap["lr_scale"], n_rollbacks + 1
                for _ in range(spike.skip_batches):  # skip the next batches of data
                    sample_batch(train_ids, micro, T, generator=gen)
                position += spike.skip_batches
                hist.rolled_back.append((t, loss_value))
                hist.rewind(snap["step"])
                hist.rollbacks.append(dict(step=t, to_step=snap["step"], skipped_batches=spike.skip_batches))
                snapshots = deque([snap], maxlen=2)
                step = snap["step"]
                bar.n = step
                bar.refresh()
                continue
            if is_spike and finite and spike.action == "lower_lr":
                if in_a_row == 1:  # once per run of spikes (OPT), and this update already at the lower rate
                    lr_scale, lr_t = lr_scale * spike.lr_factor, lr_t * spike.lr_factor
                    for group in opt.param_groups:
                        group["lr"] = lr_t
                opt.step()
            elif is_spike or not finite:
                hist.skipped_steps.append(t)  # no update from this batch
            else:
                opt.step()
            step = t
            hist.steps.append(t)
            hist.train_loss.append(loss_value)
            hist.lr.append(lr_t)
            hist.grad_norm.append(norm_value)
            hist.batch_size.append(B)
            consumed += B
            if val_ids is not None and eval_every and (t % eval_every == 0 or t == steps):
                hist.val_steps.append(t)
                hist.val_loss.append(evaluate(model, val_ids, batch_size, eval_batches))
                bar.set_postfix(val_loss=f"{hist.val_loss[-1]:.3f}")
            if snapshots is not None and not is_spike and t % spike.snapshot_every == 0:
                snapshots.append(_snapshot(model, opt, t, detector, lr_scale))
            if checkpoint_every and t % checkpoint_every == 0:
                hist.seconds = time.perf_counter() - start
                extra = dict(history=hist.to_dict(), consumed=consumed, lr_scale=lr_scale, n_rollbacks=n_rollbacks,
                             detector=detector.state_dict() if detector else None)
                save_checkpoint(checkpoint_path, model, opt, step=t, data_position=position, generator=gen, extra=extra)
            bar.update(1)
            if callback is not None:
                callback(t, loss_value)
    bar.close()
    hist.seconds = time.perf_counter() - start
    model.eval()
    return hist
