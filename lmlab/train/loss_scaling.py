"""Loss scaling and master weights, built from scratch (lesson 11, ``lessons/11_mixed_precision``).

- :class:`DynamicLossScaler`: multiply the loss by ``scale`` before backward so small gradients
  stay above FP16's underflow; divide the gradients by it before the update; if any gradient is
  inf/NaN, skip the step and multiply ``scale`` by ``backoff_factor``; after ``growth_interval``
  clean steps in a row multiply it by ``growth_factor``. The same rule as ``torch.amp.GradScaler``
  (defaults 65536, x2 every 2000 clean steps, x0.5 on inf) — :func:`gradscaler_trajectory` runs the
  real one on a scripted sequence so the two can be compared step by step.
- :class:`MasterWeights`: an optimizer wrapper for low-precision (FP16/BF16) weights and gradients:
  it keeps an FP32 master copy of every parameter, the inner optimizer (AdamW: FP32 moments) updates
  the master, and the result is rounded back into the model. Without the master copy, small updates
  round away (in FP16, 1 + 2**-11 == 1). :meth:`MasterWeights.bytes_per_parameter` measures the
  ZeRO paper's 2 + 2 + 12 = 16 bytes per parameter from the real tensors.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

from lmlab.argcheck import check_bool, check_int, check_number, check_positive

__all__ = ["DynamicLossScaler", "update_scale", "gradscaler_trajectory", "scaler_trajectory", "grads_finite",
           "MasterWeights", "master_weights_step"]


def _fp32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float64).to(torch.float32))  # round to FP32 (inf past its range)


def update_scale(scale: float, clean_steps: int, found_inf: bool, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> tuple[float, int]:
    """GradScaler's update rule as a pure function: ``(new scale, new clean-step count)``.

    inf/NaN found → ``(scale * backoff_factor, 0)``. Otherwise one more clean step; reaching
    ``growth_interval`` → ``(scale * growth_factor, 0)`` (the growth is kept only if finite).
    Products are rounded to FP32, as GradScaler stores its scale. Exercise 11.update_scale's reference.
    """
    where = "update_scale"
    check_number(scale, "scale", where, low=0.0)  # 0 only after a long run of overflows
    check_int(clean_steps, "clean_steps", where, minimum=0)
    check_number(growth_factor, "growth_factor", where, low=1.0, low_inclusive=False)
    check_number(backoff_factor, "backoff_factor", where, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_int(growth_interval, "growth_interval", where)
    if found_inf:
        return _fp32(scale * backoff_factor), 0
    clean_steps += 1
    if clean_steps == growth_interval:
        grown = _fp32(scale * growth_factor)
        return (grown if math.isfinite(grown) else scale), 0
    return scale, clean_steps


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every ``.grad`` of ``params`` is finite (no inf, no NaN)."""
    return all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)


class DynamicLossScaler:
    """Dynamic loss scaling (Micikevicius et al. 2018; ``torch.amp.GradScaler``'s rule).

    Usage with any optimizer::

        scaler = DynamicLossScaler()
        (scaler.scale * loss).backward()          # or scaler.scale_loss(loss).backward()
        stepped = scaler.step(optimizer, params)  # unscale, skip on inf/NaN, update the scale

    The scale is kept as an FP32 number, like GradScaler's, so the two agree bit for bit.
    """

    def __init__(self, init_scale: float = 65536.0, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        where = "DynamicLossScaler"
        check_positive(init_scale, "init_scale", where)
        check_number(growth_factor, "growth_factor", where, low=1.0, low_inclusive=False)
        check_number(backoff_factor, "backoff_factor", where, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        self.growth_interval = check_int(growth_interval, "growth_interval", where)
        self._scale = torch.tensor(float(init_scale), dtype=torch.float32)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.clean_steps = 0  # clean steps since the last change (GradScaler's "growth tracker")
        self.history: list[float] = []  # the scale after each update
        self.skipped: list[int] = []  # the steps (0-based) whose update was skipped

    @property
    def scale(self) -> float:
        return float(self._scale)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale`` (backward through it gives gradients ``scale`` times larger)."""
        return loss * self._scale.to(loss.device)

    def update(self, found_inf: bool) -> float:
        """Apply the rule once; returns the new scale.

        inf/NaN found: ``scale *= backoff_factor`` and the clean-step count restarts from 0.
        Otherwise one more clean step; at ``growth_interval`` of them: ``scale *= growth_factor``
        (kept only if still finite) and the count restarts.
        """
        check_bool(bool(found_inf) if isinstance(found_inf, torch.Tensor) else found_inf, "found_inf", "DynamicLossScaler.update")
        step = len(self.history)
        scale, self.clean_steps = update_scale(self.scale, self.clean_steps, bool(found_inf), self.growth_factor,
                                               self.backoff_factor, self.growth_interval)
        self._scale = torch.tensor(scale, dtype=torch.float32)
        if found_inf:
            self.skipped.append(step)
        self.history.append(self.scale)
        return self.scale

    def unscale_(self, params: Iterable[torch.Tensor]) -> bool:
        """Divide every ``.grad`` by the scale in place (in FP32); returns True if all are finite."""
        params = [p for p in params if p.grad is not None]
        inv = 1.0 / self._scale.double()
        for p in params:
            p.grad.copy_((p.grad.double() * inv).to(p.grad.dtype))
        return grads_finite(params)

    def step(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor] | None = None) -> bool:
        """Unscale the gradients, run ``optimizer.step()`` unless one is inf/NaN, update the scale.

        ``params`` defaults to the optimizer's parameters. Returns True if the step was taken.
        """
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        finite = self.unscale_(params)
        if finite:
            optimizer.step()
        self.update(not finite)
        return finite


def scaler_trajectory(found_infs: Sequence[bool], **scaler_kwargs) -> dict:
    """:class:`DynamicLossScaler` driven by a scripted sequence of "this step had inf/NaN gradients".

    Returns ``{"scales": scale after each step, "skipped": indices of skipped steps}``.
    """
    s = DynamicLossScaler(**scaler_kwargs)
    for bad in found_infs:
        s.update(bool(bad))
    return dict(scales=list(s.history), skipped=list(s.skipped))


def gradscaler_trajectory(found_infs: Sequence[bool], init_scale: float = 65536.0, growth_factor: float = 2.0,
                          backoff_factor: float = 0.5, growth_interval: int = 2000) -> dict:
    """The same script run through the real ``torch.amp.GradScaler("cpu")``.

    Each step backpropagates ``scaler.scale(p.sum())`` (gradient ``scale``), replaces it by ``inf`` on
    the scripted bad steps, and calls
    ``scaler.step(SGD)`` and ``scaler.update()``; a step was skipped if the parameter did not move.
    """
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=growth_factor,
                                  backoff_factor=backoff_factor, growth_interval=growth_interval)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    scales, skipped = [], []
    for i, bad in enumerate(found_infs):
        before = p.detach().clone()
        p.grad = None
        scaler.scale(p.sum()).backward()  # a gradient of exactly `scale`
        if bad:
            p.grad.fill_(float("inf"))
        scaler.step(opt)
        scaler.update()
        if torch.equal(p.detach(), before):
            skipped.append(i)
        scales.append(float(scaler.get_scale()))
    return dict(scales=scales, skipped=skipped)


class MasterWeights:
    """Mixed-precision updates: low-precision model weights, FP32 master weights and moments.

    ``params`` are the model's (FP16/BF16) parameters; ``make_optimizer(master_params)`` builds the
    inner optimizer (default AdamW) on FP32 copies. One :meth:`step`:

    1. copy each low-precision ``.grad`` into its FP32 master's ``.grad``;
    2. with a ``scaler``: divide by the scale, and on inf/NaN skip the update (the scale backs off);
    3. ``inner.step()`` on the FP32 masters (FP32 moments);
    4. round each master back into its model parameter (``param.copy_(master)``).

    ``round_fn`` (optional) replaces step 4's rounding, e.g. ``lambda t: quantize(t, "fp16")`` when
    FP16 is simulated with FP32 tensors (lesson 11).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter],
                 make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
                 scaler: DynamicLossScaler | None = None, round_fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("MasterWeights: params must contain at least one parameter that requires grad")
        if scaler is not None and not isinstance(scaler, DynamicLossScaler):
            raise ValueError(f"MasterWeights: scaler must be a DynamicLossScaler or None, got {type(scaler).__name__}")
        self.master = [p.detach().to(torch.float32).clone().requires_grad_(True) for p in self.params]
        make_optimizer = make_optimizer or (lambda ps: torch.optim.AdamW(ps, lr=1e-3))
        self.inner = make_optimizer(self.master)
        self.scaler = scaler
        self.round_fn = round_fn
        self.steps_taken = 0
        self.steps_skipped = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for m in self.master:
            m.grad = None

    @torch.no_grad()
    def step(self) -> bool:
        """One update (see the class docstring); returns True if it was taken, False if skipped."""
        for p, m in zip(self.params, self.master):
            m.grad = None if p.grad is None else p.grad.detach().to(torch.float32)  # (1) FP32 gradient
        finite = grads_finite(self.master)
        if self.scaler is not None:  # (2) unscale in FP32; skip on inf/NaN
            if finite:
                for m in self.master:
                    if m.grad is not None:
                        m.grad.div_(self.scaler._scale)
            self.scaler.update(not finite)
        if not finite:
            self.steps_skipped += 1
            return False
        self.inner.step()  # (3) FP32 master weights, FP32 moments
        for p, m in zip(self.params, self.master):  # (4) round back into the model
            p.copy_(self.round_fn(m) if self.round_fn is not None else m)
        self.steps_taken += 1
        return True

    def bytes_per_parameter(self) -> dict:
        """Bytes per parameter, measured from the tensors: model weights, model gradients, FP32
        master copy, optimizer state (per-element tensors only; Adam's scalar step counter is not
        per parameter). Run after one :meth:`step` so the optimizer state exists."""
        n = sum(p.numel() for p in self.params)
        weights = sum(p.numel() * p.element_size() for p in self.params)
        grads = sum(p.numel() * p.element_size() for p in self.params)  # a gradient has its weight's dtype
        master = sum(m.numel() * m.element_size() for m in self.master)
        state = sum(t.numel() * t.element_size() for m in self.master for t in self.inner.state.get(m, {}).values()
                    if isinstance(t, torch.Tensor) and t.numel() == m.numel() and t.dim() > 0)
        out = dict(weights=weights / n, grads=grads / n, master=master / n, optimizer_state=state / n)
        out["total"] = sum(out.values())
        return out


@torch.no_grad()
def master_weights_step(params: Sequence[torch.Tensor], masters: Sequence[torch.Tensor], lr: float, scale: float) -> bool:
    """One SGD step with FP32 master weights, in place: exercise 11.master_weights_step's reference.

    ``params``: the model's low-precision (FP16/BF16) parameters, each with a ``.grad`` of the loss
    multiplied by ``scale``; ``masters``: their FP32 copies. Unscale each gradient in FP32; if any
    is inf/NaN change nothing and return False; else ``master -= lr * grad`` in FP32, copy each
    master back into its parameter (rounding to its dtype) and return True.
    """
    check_positive(lr, "lr", "master_weights_step")
    check_positive(scale, "scale", "master_weights_step")
    if len(params) != len(masters) or any(p.shape != m.shape or m.dtype != torch.float32 for p, m in zip(params, masters)):
        raise ValueError("master_weights_step: masters must be FP32 tensors, one per parameter, of the same shapes")
    grads = [p.grad.to(torch.float32) / scale for p in params]
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        return False
    for p, m, g in zip(params, masters, grads):
        m.sub_(lr * g)
        p.copy_(m)
    return True
