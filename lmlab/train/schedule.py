"""Learning-rate schedule and batch-size ramp (lesson 09, ``lessons/09_training_recipe``).

:func:`warmup_cosine` is the survey's recipe: a linear warm-up to ``max_lr``, then a cosine decay to
``min_lr`` (10 % of the peak by default) at ``total``, and **flat after that**. torch's
``SequentialLR(LinearLR, CosineAnnealingLR)`` and transformers'
``get_cosine_with_min_lr_schedule_with_warmup`` agree with it up to ``total`` but keep following the
cosine afterwards, so the learning rate *rises again* if training runs past the planned end
(:func:`torch_warmup_cosine`, :func:`transformers_warmup_cosine` compute their curves).
:func:`warmup_constant` is the same warm-up followed by a constant rate (lessons 00–08's loop).

:func:`ramp_batch_size` grows the batch (in sequences) from a start size to the full size over a
budget of consumed sequences, like Megatron's ``--rampup-batch-size start increment samples``
(GPT-3 ramped from 32k tokens to its full batch over the first 4–12 billion tokens). The training
loop realises it with gradient accumulation over fixed micro-batches, so memory stays flat.
"""

from __future__ import annotations

import math

import torch

from lmlab.argcheck import check_int, check_number

__all__ = ["SCHEDULES", "warmup_constant", "warmup_cosine", "torch_warmup_cosine", "transformers_warmup_cosine",
           "ramp_batch_size", "accumulation_steps", "steps_for_samples"]

SCHEDULES = ("constant", "cosine")  # lmlab.train.config.TrainConfig.schedule: warmup_constant, warmup_cosine


def warmup_constant(step: int, max_lr: float, warmup: int = 0) -> float:
    """The learning rate of optimizer update number ``step`` (from 1): linear warm-up from 0 over ``warmup`` steps
    (``max_lr * step / warmup``, as :func:`warmup_cosine`), then ``max_lr`` for good."""
    check_int(step, "step", "warmup_constant", minimum=0)
    check_number(max_lr, "max_lr", "warmup_constant", low=0.0, low_inclusive=False)
    check_int(warmup, "warmup", "warmup_constant", minimum=0)
    return max_lr * step / warmup if step < warmup else max_lr


def warmup_cosine(step: int, max_lr: float, min_lr: float | None = None, warmup: int = 0, total: int = 1) -> float:
    """The learning rate of optimizer update number ``step`` (updates count from 1; ``step = 0`` is the value before
    training starts, 0 during warm-up).

    - ``step < warmup``: ``max_lr * step / warmup`` (linear from 0);
    - ``warmup <= step <= total``: ``min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - warmup) / (total - warmup)``;
    - ``step > total``: ``min_lr`` (clamped: it never rises again).

    ``min_lr`` defaults to ``0.1 * max_lr``. The training loop uses ``warmup_cosine(t, ...)`` for its
    ``t``-th update (``t = 1..total``), so the last update runs at ``min_lr``.
    """
    step = check_int(step, "step", "warmup_cosine", minimum=0)
    max_lr = check_number(max_lr, "max_lr", "warmup_cosine", low=0.0, low_inclusive=False)
    min_lr = 0.1 * max_lr if min_lr is None else check_number(min_lr, "min_lr", "warmup_cosine", low=0.0, high=max_lr)
    warmup = check_int(warmup, "warmup", "warmup_cosine", minimum=0)
    total = check_int(total, "total", "warmup_cosine", minimum=1)
    if warmup > total:
        raise ValueError(f"warmup_cosine.warmup ({warmup}) must be <= total ({total})")
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def torch_warmup_cosine(steps: int, max_lr: float, min_lr: float, warmup: int, total: int) -> list[float]:
    """The learning rate torch's ``SequentialLR(LinearLR, CosineAnnealingLR)`` sets for steps ``0..steps-1``.

    Built the usual way (``LinearLR`` from ``1e-8`` of the peak over ``warmup`` steps, then
    ``CosineAnnealingLR(T_max=total - warmup, eta_min=min_lr)``). Past ``total`` the cosine goes on:
    the rate climbs back toward ``max_lr``.
    """
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=max_lr)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-8, end_factor=1.0, total_iters=max(warmup, 1))
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warmup, 1), eta_min=min_lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[warmup])
    return _lr_trace(opt, sched, steps)


def transformers_warmup_cosine(steps: int, max_lr: float, min_lr: float, warmup: int, total: int) -> list[float]:
    """The learning rate of transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` for steps ``0..steps-1``."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup  # heavy, optional: only here

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=max_lr)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr=min_lr)
    return _lr_trace(opt, sched, steps)


def ramp_batch_size(consumed: int, start: int, full: int, ramp: int, increment: int | None = None) -> int:
    """The batch size (sequences) once ``consumed`` sequences have been trained on.

    Starts at ``start`` and grows by ``increment`` (default: ``start``) in equal slices of the
    ``ramp`` budget until it reaches ``full`` (Megatron's ``rampup_batch_size``); from ``ramp`` on it
    is ``full``. ``full - start`` must be a multiple of ``increment``.
    """
    consumed = check_int(consumed, "consumed", "ramp_batch_size", minimum=0)
    start = check_int(start, "start", "ramp_batch_size")
    full = check_int(full, "full", "ramp_batch_size", minimum=start)
    ramp = check_int(ramp, "ramp", "ramp_batch_size", minimum=0)
    increment = start if increment is None else check_int(increment, "increment", "ramp_batch_size")
    if (full - start) % increment:
        raise ValueError(f"ramp_batch_size: full - start ({full - start}) must be a multiple of increment ({increment})")
    n_increments = (full - start) // increment
    if n_increments == 0 or consumed >= ramp:
        return full
    per_increment = ramp / n_increments  # sequences consumed per batch-size increase
    return min(full, start + increment * int(consumed // per_increment))


def accumulation_steps(batch_size: int, micro_batch_size: int) -> int:
    """Micro-batches per optimizer step (``batch_size`` must be a multiple of ``micro_batch_size``)."""
    batch_size = check_int(batch_size, "batch_size", "accumulation_steps")
    micro_batch_size = check_int(micro_batch_size, "micro_batch_size", "accumulation_steps")
    if batch_size % micro_batch_size:
        raise ValueError(f"accumulation_steps: batch_size ({batch_size}) must be a multiple of micro_batch_size "
                         f"({micro_batch_size})")
    return batch_size // micro_batch_size


def steps_for_samples(samples: int, start: int, full: int, ramp: int, increment: int | None = None) -> int:
    """Optimizer steps a ramped run needs to consume ``samples`` sequences (the last step may overshoot)."""
    samples = check_int(samples, "samples", "steps_for_samples", minimum=0)
    consumed = steps = 0
    while consumed < samples:
        consumed += ramp_batch_size(consumed, start, full, ramp, increment)
        steps += 1
    return steps


def _lr_trace(opt, sched, steps: int) -> list[float]:
    """The learning rate a torch scheduler gives at steps ``0..steps-1`` (one SGD step between reads)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out
