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
- :func:`shrink_embedding_gradient`: GLM-130B's ``emb * alpha + emb.detach() * (1 - alpha)`` — the
  forward value is unchanged, the gradient into the embedding is exactly ``alpha`` times.
- :class:`Jolt`: a spike injected on purpose (the lesson's experiment): the learning rate is
  multiplied by ``factor`` on the batches at data positions ``[position, position + length)``.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn as nn

from lmlab.argcheck import check_choice, check_int, check_number, check_positive, check_probability

__all__ = ["SpikeDetector", "SpikePolicy", "Jolt", "shrink_embedding_gradient", "EmbeddingGradShrink", "ACTIONS"]

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
