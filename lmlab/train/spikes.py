"""Loss spikes: detect them, and the three published remedies (lesson 09, ``lessons/09_training_recipe``).

- :class:`SpikeDetector`: a step is a spike when its loss or its gradient norm is more than
  ``threshold`` standard deviations above the mean of the last ``window`` good steps (OLMo's
  skip-step optimizer: window 128, 6 sigma). Spikes are not added to the window, so one spike does
  not hide the next.
- :class:`SpikePolicy` tells :func:`lmlab.train.loop.train` what to do on a spike: ``"skip"`` the update
  (OLMo), ``"rollback"`` to the last good snapshot and skip the next ``skip_batches`` batches of data
  (PaLM restarted ~100 steps before a spike and skipped 200–500 batches), or ``"lower_lr"``: continue
  at ``lr_factor`` times the learning rate (OPT lowered the LR and went on; once per run of
  consecutive spikes, and the update is applied at the lowered rate).
- :class:`SpikeGuard`: a policy at work inside the loop: it holds the detector, the snapshots a
  rollback returns to and the rate's scale, and the loop calls it at stated points of each step.
- :func:`shrink_embedding_gradient`: GLM-130B's ``emb * alpha + emb.detach() * (1 - alpha)`` — the
  forward value is unchanged, the gradient into the embedding is exactly ``alpha`` times.
- :class:`Jolt`: a spike injected on purpose (the lesson's experiment): the learning rate is
  multiplied by ``factor`` on the batches at data positions ``[position, position + length)``.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn as nn

from lmlab.argcheck import check_choice, check_int, check_number, check_positive, check_probability

__all__ = ["SpikeDetector", "SpikePolicy", "SpikeGuard", "Jolt", "shrink_embedding_gradient", "EmbeddingGradShrink",
           "ACTIONS"]

ACTIONS = ("skip", "rollback", "lower_lr")


def _z(x: float, values) -> float:
    mean = statistics.fmean(values)
    std = statistics.stdev(values)
    if std == 0:
        return math.inf if x > mean else 0.0
    return (x - mean) / std


class SpikeDetector:
    """Rolling z-score of the loss and the gradient norm (one-sided: only jumps *up* are spikes).

    ``check(loss, grad_norm)`` returns True for a spike; a non-spike is appended to the window.
    Nothing is a spike until ``min_history`` good steps have been seen; a non-finite value always is.
    """

    def __init__(self, window: int = 128, threshold: float = 6.0, min_history: int = 32):
        self.window = check_int(window, "window", "SpikeDetector", minimum=2)
        self.threshold = check_positive(threshold, "threshold", "SpikeDetector")
        self.min_history = check_int(min_history, "min_history", "SpikeDetector", minimum=2, maximum=self.window)
        self.losses: deque[float] = deque(maxlen=self.window)
        self.grad_norms: deque[float] = deque(maxlen=self.window)
        self.last_z: tuple[float, float] = (0.0, 0.0)

    def zscores(self, loss: float, grad_norm: float) -> tuple[float, float]:
        """``(z of the loss, z of the grad norm)`` against the window (0 while it is too short)."""
        if len(self.losses) < self.min_history:
            return 0.0, 0.0
        return _z(loss, self.losses), _z(grad_norm, self.grad_norms)

    def check(self, loss: float, grad_norm: float) -> bool:
        loss, grad_norm = float(loss), float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.last_z = (math.inf, math.inf)
            return True
        self.last_z = self.zscores(loss, grad_norm)
        spike = max(self.last_z) > self.threshold
        if not spike:
            self.accept(loss, grad_norm)
        return spike

    def accept(self, loss: float, grad_norm: float) -> None:
        """Add a step to the window (a good step, or the new normal after a long run of spikes)."""
        self.losses.append(float(loss))
        self.grad_norms.append(float(grad_norm))

    def state_dict(self) -> dict:
        return dict(losses=list(self.losses), grad_norms=list(self.grad_norms))

    def load_state_dict(self, state: dict) -> None:
        self.losses = deque(state["losses"], maxlen=self.window)
        self.grad_norms = deque(state["grad_norms"], maxlen=self.window)


@dataclass(frozen=True)
class SpikePolicy:
    """What :func:`lmlab.train.loop.train` does about spikes (see the module docstring).

    ``snapshot_every``: steps between the in-memory "last good checkpoints" a rollback returns to.
    ``max_rollbacks``: after this many, further spikes are only skipped (no endless loop).
    ``max_consecutive``: after this many spikes in a row the level is taken as the new normal (the
    update is applied and the values enter the window) — otherwise damage that the detector did not
    catch in time would make every later step a "spike" and training would stop.
    """

    action: str = "rollback"
    window: int = 128
    threshold: float = 6.0
    min_history: int = 32
    skip_batches: int = 10
    snapshot_every: int = 10
    lr_factor: float = 0.5
    max_rollbacks: int = 5
    max_consecutive: int = 10

    def __post_init__(self):
        check_choice(self.action, "action", ACTIONS, "SpikePolicy")
        check_int(self.skip_batches, "skip_batches", "SpikePolicy", minimum=0)
        check_int(self.snapshot_every, "snapshot_every", "SpikePolicy")
        check_number(self.lr_factor, "lr_factor", "SpikePolicy", low=0.0, high=1.0, low_inclusive=False)
        check_int(self.max_rollbacks, "max_rollbacks", "SpikePolicy", minimum=0)
        check_int(self.max_consecutive, "max_consecutive", "SpikePolicy")
        self.detector()  # validates window, threshold, min_history

    def detector(self) -> SpikeDetector:
        return SpikeDetector(self.window, self.threshold, self.min_history)


class SpikeGuard:
    """A :class:`SpikePolicy` at work in :func:`lmlab.train.loop.train` (lesson 09); ``policy=None`` never sees a spike.

    The loop calls it once the step's loss and gradient norm are known, in this order:

    1. :meth:`check`: is this step a spike? (recorded in ``history.spikes``; after ``max_consecutive``
       in a row a finite level is taken as the new normal);
    2. :meth:`rollback_due` -> :meth:`roll_back` (PaLM): restore the older of the last two snapshots,
       skip the next ``skip_batches`` batches of data, rewind the history; the step is not recorded;
    3. :meth:`lower_lr` (OPT, once per run of spikes) and :meth:`skips` (OLMo, and a rollback past
       ``max_rollbacks``): whether the update is applied;
    4. :meth:`after_step`: a snapshot every ``snapshot_every`` steps that were not spikes.

    ``history`` is a :class:`lmlab.train.loop.History`; ``data`` anything with ``skip(n)`` (the
    loop's :class:`lmlab.train.policies.BatchStream`). ``lr_scale`` multiplies the scheduled rate.
    """

    def __init__(self, policy: SpikePolicy | None = None):
        if policy is not None and not isinstance(policy, SpikePolicy):
            raise ValueError(f"SpikeGuard: policy must be a SpikePolicy or None, got {type(policy).__name__}")
        self.policy = policy
        self.detector = policy.detector() if policy else None
        self.lr_scale = 1.0  # lowered by lower_lr, restored by a rollback
        self.n_rollbacks = 0
        self.in_a_row = 0  # consecutive spikes so far
        self.snapshots: deque | None = None

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """The first snapshot (``action="rollback"`` only): the state training starts, or resumes, from."""
        if self.policy is not None and self.policy.action == "rollback":
            self.snapshots = deque([self._snapshot(model, optimizer, step)], maxlen=2)

    def check(self, step: int, loss: float, grad_norm: float, history) -> bool:
        """Whether ``step`` is a spike (a non-finite value always is); a spike goes into ``history.spikes``."""
        if self.detector is None:
            return False
        if not self.detector.check(loss, grad_norm):
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        if math.isfinite(loss) and math.isfinite(grad_norm) and self.in_a_row > self.policy.max_consecutive:
            self.detector.accept(loss, grad_norm)  # a long plateau of "spikes" is the new normal
            return False
        history.spikes.append(step)
        return True

    def rollback_due(self, is_spike: bool) -> bool:
        return is_spike and self.policy.action == "rollback" and self.n_rollbacks < self.policy.max_rollbacks

    def roll_back(self, step: int, loss: float, model: nn.Module, optimizer: torch.optim.Optimizer, data, history) -> int:
        """Return to the older of the last two snapshots (a little before the trouble began, as PaLM) and
        skip the next ``skip_batches`` batches of data; return the step training goes on from."""
        snap = self.snapshots[0]
        model.load_state_dict(snap["model"])
        optimizer.load_state_dict(copy.deepcopy(snap["opt"]))  # load_state_dict shares tensors
        self.detector.load_state_dict(snap["detector"])
        self.lr_scale, self.n_rollbacks = snap["lr_scale"], self.n_rollbacks + 1
        data.skip(self.policy.skip_batches)
        history.rolled_back.append((step, loss))
        history.rewind(snap["step"])
        history.rollbacks.append(dict(step=step, to_step=snap["step"], skipped_batches=self.policy.skip_batches))
        self.snapshots = deque([snap], maxlen=2)
        return snap["step"]

    def lower_lr(self, optimizer: torch.optim.Optimizer, lr: float, is_spike: bool, finite: bool) -> float:
        """OPT: on the first step of a run of finite spikes, scale the rate by ``lr_factor`` from now on,
        this step's update included; return the step's rate."""
        if is_spike and finite and self.policy.action == "lower_lr" and self.in_a_row == 1:
            self.lr_scale, lr = self.lr_scale * self.policy.lr_factor, lr * self.policy.lr_factor
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def skips(self, is_spike: bool) -> bool:
        """Whether a spike's update is left out (every action but ``lower_lr``)."""
        return is_spike and self.policy.action != "lower_lr"

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, is_spike: bool) -> None:
        """Keep a snapshot every ``snapshot_every`` steps (not at a spike) for a later rollback."""
        if self.snapshots is not None and not is_spike and step % self.policy.snapshot_every == 0:
            self.snapshots.append(self._snapshot(model, optimizer, step))

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the snapshots stay in memory)."""
        return dict(lr_scale=self.lr_scale, n_rollbacks=self.n_rollbacks,
                    detector=self.detector.state_dict() if self.detector else None)

    def load_state_dict(self, state: dict) -> None:
        self.lr_scale, self.n_rollbacks = state["lr_scale"], state["n_rollbacks"]
        if self.detector and state["detector"]:
            self.detector.load_state_dict(state["detector"])

    def _snapshot(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict:
        return dict(step=step, model={k: v.detach().clone() for k, v in model.state_dict().items()},
                    opt=copy.deepcopy(optimizer.state_dict()),
                    detector=self.detector.state_dict() if self.detector else None, lr_scale=self.lr_scale)


@dataclass(frozen=True)
class Jolt:
    """An injected spike: the learning rate times ``factor`` on data positions ``[position, position + length)``.

    Tied to the data (the batch's position in the stream), not to the step: a rollback that skips
    those batches does not meet it again — like a bad stretch of data.
    """

    position: int
    factor: float = 30.0
    length: int = 1

    def __post_init__(self):
        check_int(self.position, "position", "Jolt")
        check_positive(self.factor, "factor", "Jolt")
        check_int(self.length, "length", "Jolt")

    def lr_factor(self, position: int) -> float:
        return self.factor if self.position <= position < self.position + self.length else 1.0


def shrink_embedding_gradient(emb: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """GLM-130B: ``emb * alpha + emb.detach() * (1 - alpha)``: same value, ``alpha`` times the gradient."""
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"shrink_embedding_gradient: emb must be a torch.Tensor, got {type(emb).__name__}")
    alpha = check_probability(alpha, "alpha", "shrink_embedding_gradient")
    return emb * alpha + emb.detach() * (1 - alpha)


class EmbeddingGradShrink:
    """Apply :func:`shrink_embedding_gradient` to a module's output with a forward hook (no model edit).

    ``with EmbeddingGradShrink(model.tok_emb, 0.1): ...`` — removed on exit.
    """

    def __init__(self, module: nn.Module, alpha: float = 0.1):
        if not isinstance(module, nn.Module):
            raise ValueError(f"EmbeddingGradShrink: module must be an nn.Module, got {type(module).__name__}")
        self.module, self.alpha = module, check_probability(alpha, "alpha", "EmbeddingGradShrink")
        self.handle = None

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda m, args, out: shrink_embedding_gradient(out, self.alpha))
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return False
