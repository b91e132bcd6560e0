"""Every option of the training loop in one validated object (lessons 00 and 09, ``lessons/09_training_recipe``).

:class:`TrainConfig` is to :func:`lmlab.train.loop.train` what :class:`lmlab.model.gpt.ModelConfig` is to
:class:`lmlab.model.gpt.GPT`: each field is checked on creation, and a bad one raises a ``ValueError``
naming the field and the allowed values. Change a copy with ``dataclasses.replace(config, lr=1e-2)``.

With its defaults it is the plain loop of lessons 00–08 (AdamW, constant rate, clipping at 1.0,
an evaluation every 100 steps); lesson 09 turns on the rest, one group at a time:

- run: ``steps``, ``batch_size``, ``seed``;
- optimizer: ``optimizer``, ``lr``, ``weight_decay``, ``betas``, ``eps``, ``decay_embeddings``;
- schedule: ``schedule``, ``warmup``, ``min_lr_ratio``;
- clipping: ``grad_clip``;
- batch: ``micro_batch_size`` (gradient accumulation), ``batch_ramp``;
- spikes: ``spike`` (detect, then skip / roll back / lower the rate), ``jolt`` (a spike on purpose),
  ``embedding_grad_shrink``;
- non-finite losses: ``on_nonfinite``;
- checkpoints: ``checkpoint_path``, ``checkpoint_every``, ``resume``;
- evaluation: ``eval_every``, ``eval_batches``;
- logging: ``progress``, ``callback``.

The loop's policies that read these fields are in :mod:`lmlab.train.policies` and
:class:`lmlab.train.spikes.SpikeGuard`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmlab.argcheck import (check_bool, check_choice, check_divides, check_int, check_number, check_positive,
                            check_probability)
from lmlab.train.optim import OPTIMIZERS, check_betas
from lmlab.train.schedule import SCHEDULES
from lmlab.train.spikes import Jolt, SpikePolicy

__all__ = ["TrainConfig", "ON_NONFINITE"]

ON_NONFINITE = ("raise", "stop", "skip")  # what an inf/NaN loss or gradient norm does (lesson 09)


@dataclass(frozen=True)
class TrainConfig:
    """The options of :func:`lmlab.train.loop.train`, validated on creation (see the module docstring).

    **Run** (lesson 00). ``steps``: optimizer steps (>= 1). ``batch_size``: sequences per step (the
    full size when the batch ramps). ``seed``: seeds Python, NumPy, torch and the batch generator.

    **Optimizer** (lesson 09). ``optimizer``: ``"adamw"`` (:class:`lmlab.train.optim.AdamW`) or
    ``"adafactor"`` (:class:`lmlab.train.optim.Adafactor`; ``lr`` is then its relative-step cap and
    ``betas`` / ``eps`` are unused). ``lr``: the peak learning rate (> 0). ``weight_decay`` (>= 0) on
    matrices only (:func:`lmlab.train.optim.param_groups`); ``decay_embeddings=False`` leaves the
    embedding tables undecayed too (minGPT). ``betas``: AdamW's ``(beta1, beta2)``, each in [0, 1)
    (GPT-3's ``(0.9, 0.95)``). ``eps``: AdamW's denominator term (> 0).

    **Schedule** (lesson 09). ``schedule``: ``"constant"`` or ``"cosine"``
    (:func:`lmlab.train.schedule.warmup_cosine` to ``min_lr_ratio * lr`` at ``steps``). ``warmup``:
    steps of linear warm-up, with either schedule (0..``steps``). ``min_lr_ratio`` in [0, 1].

    **Clipping** (lessons 00, 09). ``grad_clip``: the global gradient norm is clipped to this (> 0);
    ``None`` only measures it.

    **Batch** (lesson 09). ``micro_batch_size``: gradient accumulation over micro-batches of this
    many sequences (it must divide ``batch_size``; ``None``: one micro-batch, or the ramp's start).
    ``batch_ramp=(start, ramp)``: the batch grows from ``start`` to ``batch_size`` sequences in steps
    of ``start`` over the first ``ramp`` sequences (:func:`lmlab.train.schedule.ramp_batch_size`).

    **Spikes** (lesson 09). ``spike``: a :class:`lmlab.train.spikes.SpikePolicy` (detect, then skip /
    roll back and skip data / lower the rate) or ``None``. ``jolt``: a
    :class:`lmlab.train.spikes.Jolt`, the learning rate multiplied on given data positions (the
    lesson's injected spike). ``embedding_grad_shrink``: GLM-130B's ``alpha`` in [0, 1] on the token
    embedding's gradient, or ``None``.

    **Non-finite losses** (lesson 09). ``on_nonfinite``: an inf/NaN loss or gradient norm
    ``"raise"``s :class:`lmlab.train.policies.NonFiniteLossError` naming the step, ``"stop"``s
    training there (``History.stopped_at``), or is ``"skip"``ped; it is never trained on.

    **Checkpoints** (lesson 09). ``checkpoint_path`` and ``checkpoint_every`` (steps) go together:
    atomic checkpoints (:mod:`lmlab.train.checkpoint`). ``resume=True`` continues from the file if it
    exists, bit for bit (rollback snapshots live in memory: a resumed run restarts them there).

    **Evaluation** (lessons 00–09). ``eval_every``: steps between evaluations on ``val_ids`` (and at
    the last step; ``None``: never). ``eval_batches``: batches of ``batch_size`` windows per evaluation.

    **Logging**. ``progress``: a tqdm bar. ``callback(step, loss)``: called after every recorded step.
    """

    # run
    steps: int = 500
    batch_size: int = 32
    seed: int = 0
    # optimizer
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    decay_embeddings: bool = True
    # schedule
    schedule: str = "constant"
    warmup: int = 0
    min_lr_ratio: float = 0.1
    # clipping
    grad_clip: float | None = 1.0
    # batch
    micro_batch_size: int | None = None
    batch_ramp: tuple[int, int] | None = None
    # spikes
    spike: SpikePolicy | None = None
    jolt: Jolt | None = None
    embedding_grad_shrink: float | None = None
    # non-finite losses
    on_nonfinite: str = "raise"
    # checkpoints
    checkpoint_path: str | Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    # evaluation
    eval_every: int | None = 100
    eval_batches: int = 10
    # logging
    progress: bool = True
    callback: Callable[[int, float], None] | None = None

    def __post_init__(self):
        where = "TrainConfig"
        check_int(self.steps, "steps", where)
        check_int(self.batch_size, "batch_size", where)
        check_int(self.seed, "seed", where, minimum=0)
        check_choice(self.optimizer, "optimizer", OPTIMIZERS, where)
        check_positive(self.lr, "lr", where)
        check_number(self.weight_decay, "weight_decay", where, low=0.0)
        check_betas(self.betas, where)
        check_positive(self.eps, "eps", where)
        check_bool(self.decay_embeddings, "decay_embeddings", where)
        self._check_schedule()
        check_number(self.grad_clip, "grad_clip", where, low=0.0, low_inclusive=False, allow_none=True)
        self._check_batch()
        if self.spike is not None and not isinstance(self.spike, SpikePolicy):
            raise ValueError(f"TrainConfig.spike must be a lmlab.train.spikes.SpikePolicy or None, got {type(self.spike).__name__}")
        if self.jolt is not None and not isinstance(self.jolt, Jolt):
            raise ValueError(f"TrainConfig.jolt must be a lmlab.train.spikes.Jolt or None, got {type(self.jolt).__name__}")
        if self.embedding_grad_shrink is not None:
            check_probability(self.embedding_grad_shrink, "embedding_grad_shrink", where)
        check_choice(self.on_nonfinite, "on_nonfinite", ON_NONFINITE, where)
        self._check_checkpoints()
        check_int(self.eval_every, "eval_every", where, allow_none=True)
        check_int(self.eval_batches, "eval_batches", where)
        check_bool(self.progress, "progress", where)
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"TrainConfig.callback must be a function (step, loss) or None, got {type(self.callback).__name__}")

    def _check_schedule(self) -> None:
        where = "TrainConfig"
        check_choice(self.schedule, "schedule", SCHEDULES, where)
        check_int(self.warmup, "warmup", where, minimum=0, maximum=self.steps, note="steps of warm-up, at most steps")
        check_probability(self.min_lr_ratio, "min_lr_ratio", where)

    def _check_batch(self) -> None:
        where = "TrainConfig"
        if self.batch_ramp is not None:
            ramp = self.batch_ramp
            ok = isinstance(ramp, (tuple, list)) and len(ramp) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in ramp)
            if not ok or not 1 <= ramp[0] <= self.batch_size or ramp[1] < 0 or (self.batch_size - ramp[0]) % ramp[0]:
                raise ValueError(f"TrainConfig.batch_ramp must be (start, ramp) or None: start an int in [1, batch_size="
                                 f"{self.batch_size}] whose multiples reach batch_size, ramp an int >= 0 (sequences), "
                                 f"got {ramp!r}")
        check_int(self.micro_batch_size, "micro_batch_size", where, allow_none=True)
        for size, name in ((self.batch_size, "batch_size"), (self.batch_ramp and self.batch_ramp[0], "batch_ramp's start")):
            if size:
                check_divides(self.micro_batch, size, "micro_batch_size", name, where)

    def _check_checkpoints(self) -> None:
        where = "TrainConfig"
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path, (str, os.PathLike)):
            raise ValueError(f"TrainConfig.checkpoint_path must be a path (str or Path) or None, got "
                             f"{type(self.checkpoint_path).__name__}")
        check_int(self.checkpoint_every, "checkpoint_every", where, allow_none=True)
        check_bool(self.resume, "resume", where)
        if (self.checkpoint_every is None) != (self.checkpoint_path is None) or (self.resume and self.checkpoint_path is None):
            raise ValueError(f"TrainConfig.checkpoint_path and checkpoint_every go together (and resume=True needs them), "
                             f"got checkpoint_path={self.checkpoint_path!r}, checkpoint_every={self.checkpoint_every!r}, "
                             f"resume={self.resume!r}")

    @property
    def micro_batch(self) -> int:
        """Sequences per forward/backward pass: ``micro_batch_size``, else the ramp's start, else ``batch_size``."""
        return self.micro_batch_size or (self.batch_ramp[0] if self.batch_ramp else self.batch_size)
