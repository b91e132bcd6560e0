"""Optimizers from scratch: AdamW and Adafactor, global-norm clipping, weight-decay groups (lesson 09).

Both optimizers are ordinary :class:`torch.optim.Optimizer` subclasses, written op for op like
torch's single-tensor code path so that they agree with ``torch.optim.AdamW`` / ``torch.optim.Adafactor``
to float precision (``tests/test_optim.py``; lesson ``lessons/09_training_recipe``).

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), per parameter ``p`` with
gradient ``g`` at step ``t``::

    p  <- p * (1 - lr * wd)                 # decoupled decay: not added to g
    m  <- b1 * m + (1 - b1) * g             # first moment
    v  <- b2 * v + (1 - b2) * g^2           # second moment
    p  <- p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

Defaults differ from torch's on purpose: ``betas=(0.9, 0.95)`` and ``weight_decay=0.1`` as GPT-3,
BLOOM and the survey report for large-model pretraining (torch: ``(0.9, 0.999)`` and ``0.01``);
``eps=1e-8`` as both.

Adafactor (Shazeer & Stern 2018) keeps, for a matrix, only a row and a column average of ``g^2``
and rebuilds the second moment as their outer product: ``n + m`` numbers instead of ``n * m``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from lmlab.argcheck import check_bool, check_choice, check_number, check_positive

__all__ = [
    "adamw_update_", "AdamW", "Adafactor", "clip_grad_norm", "global_grad_norm", "param_groups", "is_embedding_parameter",
    "state_bytes", "state_bytes_for", "check_betas", "OPTIMIZERS",
]

OPTIMIZERS = ("adamw", "adafactor")  # the optimizers lmlab.train.config.TrainConfig.optimizer names


def check_betas(betas, where: str) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``: a pair of numbers, each in [0, 1); returned as floats."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}.betas must be a pair (beta1, beta2), each in [0, 1), got {betas!r}")
    b1 = check_number(betas[0], "betas[0]", where, low=0.0, high=1.0, high_inclusive=False)
    b2 = check_number(betas[1], "betas[1]", where, low=0.0, high=1.0, high_inclusive=False)
    return b1, b2


@torch.no_grad()
def adamw_update_(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, *,
                  lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """One AdamW update of ``p`` in place, with its moments ``exp_avg`` / ``exp_avg_sq`` (same shape,
    updated in place too); ``step`` counts from 1. The one copy of the formula in the module docstring:
    :class:`AdamW` runs it per parameter, and :func:`lmlab.parallel.zero.zero1_adamw_step` on one rank's
    shard (lesson 12)."""
    beta1, beta2 = betas
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)  # decoupled: shrink the weights, leave the gradient alone
    exp_avg.lerp_(grad, 1 - beta1)  # m = b1 m + (1 - b1) g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v = b2 v + (1 - b2) g^2
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)  # sqrt(v_hat) + eps
    p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # p -= lr * m_hat / denom


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay; equal to ``torch.optim.AdamW`` (``amsgrad=False``).

    Args:
        params: parameters or parameter groups (see :func:`param_groups`).
        lr: learning rate (> 0).
        betas: ``(beta1, beta2)``, each in [0, 1). Default ``(0.9, 0.95)`` (GPT-3).
        eps: added to the denominator (> 0). Default ``1e-8``.
        weight_decay: decoupled decay coefficient (>= 0). Default ``0.1``.

    State per parameter: ``step`` (a float tensor, like torch's), ``exp_avg`` and ``exp_avg_sq``,
    so a state dict saved from one loads into the other.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1):
        lr = check_positive(lr, "lr", "AdamW")
        betas = check_betas(betas, "AdamW")
        eps = check_positive(eps, "eps", "AdamW")
        weight_decay = check_number(weight_decay, "weight_decay", "AdamW", low=0.0)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, betas, eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # lazy init, as torch does
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = state["step"] + 1  # a new tensor: a loaded state dict may share it
                adamw_update_(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"].item(), lr=lr,
                              betas=betas, eps=eps, weight_decay=wd)
        return loss


class Adafactor(torch.optim.Optimizer):
    """Adafactor with a factored second moment; equal to ``torch.optim.Adafactor`` when ``beta1=None``.

    For a parameter of 2 or more dims the second moment is stored as a row mean ``R`` (shape
    ``(..., n, 1)``) and a column mean ``C`` (``(..., 1, m)``) of ``g^2`` and rebuilt as
    ``R C / mean(R)``; a vector keeps its full second moment. Per step ``t``:

    - decay ``beta2_t = 1 - t^beta2_decay`` (``beta2_decay=-0.8``: the moving average lengthens as
      training goes on);
    - relative step: ``rho_t = min(lr, 1 / sqrt(t))``, scaled by the parameter's RMS
      (``alpha = max(eps2, RMS(p)) * rho_t``), so the step is a fraction of the weight's size;
    - update clipping: the update ``u = g / sqrt(v_hat)`` is divided by ``max(1, RMS(u) / d)``;
    - optional first moment (``beta1``, not in torch's version): ``u`` is averaged over steps.

    Args:
        lr: the largest relative step (``rho_t``'s cap), > 0.
        beta1: ``None`` (no momentum, the memory-saving default) or a number in [0, 1).
        beta2_decay: <= 0. eps: ``(eps1 or None, eps2)``. d: clipping threshold >= 1.
        weight_decay: decoupled decay coefficient >= 0.
    """

    def __init__(self, params, lr: float = 1e-2, beta1: float | None = None, beta2_decay: float = -0.8,
                 eps=(None, 1e-3), d: float = 1.0, weight_decay: float = 0.0):
        lr = check_positive(lr, "lr", "Adafactor")
        if beta1 is not None:
            beta1 = check_number(beta1, "beta1", "Adafactor", low=0.0, high=1.0, high_inclusive=False)
        beta2_decay = check_number(beta2_decay, "beta2_decay", "Adafactor", high=0.0)
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Adafactor.eps must be a pair (eps1 or None, eps2), got {eps!r}")
        if eps[0] is not None:
            check_number(eps[0], "eps[0]", "Adafactor", low=0.0)
        check_number(eps[1], "eps[1]", "Adafactor", low=0.0)
        d = check_number(d, "d", "Adafactor", low=1.0)
        weight_decay = check_number(weight_decay, "weight_decay", "Adafactor", low=0.0)
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta1, d, wd = group["lr"], group["beta1"], group["d"], group["weight_decay"]
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                e1 = torch.finfo(p.dtype).eps if eps1 is None else eps1
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    if grad.dim() > 1:
                        state["row_var"] = grad.new_zeros(*grad.shape[:-1], 1)  # (..., n, 1)
                        state["col_var"] = grad.new_zeros(*grad.shape[:-2], 1, grad.shape[-1])  # (..., 1, m)
                    else:
                        state["variance"] = torch.zeros_like(grad)
                    if beta1 is not None:
                        state["exp_avg"] = torch.zeros_like(grad)
                state["step"] = state["step"] + 1  # a new tensor: a loaded state dict may share it
                t = state["step"].item()
                one_minus_beta2 = t ** group["beta2_decay"]
                rho = min(lr, 1 / t ** 0.5)  # relative step size
                alpha = max(eps2, p.norm(2).item() / p.numel() ** 0.5) * rho  # scaled by RMS(p)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                if grad.dim() > 1:
                    row, col = state["row_var"], state["col_var"]
                    row.lerp_(torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)), one_minus_beta2)
                    col.lerp_(torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)), one_minus_beta2)
                    v_hat = row @ col  # (..., n, m): the rank-1 rebuild of the second moment
                    v_hat.div_(row.mean(dim=-2, keepdim=True).clamp_(min=e1))
                else:
                    state["variance"].lerp_(grad * grad, one_minus_beta2)
                    v_hat = state["variance"].clone()
                update = v_hat.clamp_(min=e1 * e1).rsqrt_().mul_(grad)  # g / sqrt(v_hat)
                denom = max(1.0, update.norm(2).item() / (update.numel() ** 0.5 * d))  # update clipping
                if beta1 is None:
                    p.add_(update, alpha=-alpha / denom)
                else:
                    state["exp_avg"].lerp_(update.mul_(alpha / denom), 1 - beta1)
                    p.sub_(state["exp_avg"])
        return loss


# ---------------------------------------------------------------------------------------------
# Gradient clipping by global norm
# ---------------------------------------------------------------------------------------------


def _grads(parameters) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


@torch.no_grad()
def global_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The L2 norm of all gradients together, as one long vector (parameters without a grad skipped)."""
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g, 2.0) for g in grads]  # one norm per tensor ...
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)  # ... then the norm of the norms


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float,
                   error_if_nonfinite: bool = False) -> torch.Tensor:
    """Scale all gradients by ``min(1, max_norm / (norm + 1e-6))``; return the pre-clip global norm.

    Equal to ``torch.nn.utils.clip_grad_norm_``: one coefficient for every gradient, so the update's
    direction is kept. A non-finite norm is returned as it is (inf or nan: the caller sees it; the
    training loop reports it); with ``error_if_nonfinite=True`` it raises a ``ValueError`` instead.
    """
    max_norm = check_positive(max_norm, "max_norm", "clip_grad_norm")
    check_bool(error_if_nonfinite, "error_if_nonfinite", "clip_grad_norm")
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    total = global_grad_norm(parameters)
    if error_if_nonfinite and not math.isfinite(total.item()):
        raise ValueError(f"clip_grad_norm: the gradient norm is {total.item()}; it cannot be clipped")
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in _grads(parameters):
        g.mul_(coef)
    return total


# ---------------------------------------------------------------------------------------------
# Weight-decay groups and state memory
# ---------------------------------------------------------------------------------------------


def is_embedding_parameter(model: nn.Module, name: str) -> bool:
    """Whether the parameter called ``name`` belongs to an ``nn.Embedding`` (tokens or positions)."""
    module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(module, nn.Embedding)


def param_groups(model: nn.Module, weight_decay: float = 0.1, decay_embeddings: bool = True) -> list[dict]:
    """Two optimizer groups: decay on matrices, none on vectors (norm gains, biases).

    The choice for embeddings: ``decay_embeddings=True`` (default, as nanoGPT and lmlab's loop
    before lesson 09) decays the token and position tables like any matrix — in a tied model the
    token table is also the output layer's matrix. ``False`` (as minGPT) leaves them undecayed:
    a rare token's row gets few gradient updates, so decay pulls it toward zero between them.
    """
    weight_decay = check_number(weight_decay, "weight_decay", "param_groups", low=0.0)
    check_bool(decay_embeddings, "decay_embeddings", "param_groups")
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) tensors appear once
        if not p.requires_grad:
            continue
        matrix = p.dim() >= 2 and (decay_embeddings or not is_embedding_parameter(model, name))
        (decay if matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by an optimizer's per-parameter state tensors (``step`` counters included)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def state_bytes_for(shape, optimizer: str = "adamw", bytes_per_value: int = 4, beta1: bool = False) -> int:
    """State bytes for one parameter of ``shape`` (without the 4-byte step counter).

    ``adamw``: two full copies (m and v). ``adafactor``: a row and a column vector for a matrix
    (the full v for a vector), plus a full ``m`` if ``beta1`` is used.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"state_bytes_for: shape must be a non-empty tuple of sizes >= 1, got {shape!r}")
    check_choice(optimizer, "optimizer", OPTIMIZERS, "state_bytes_for:")
    n = math.prod(shape)
    if optimizer == "adamw":
        return 2 * n * bytes_per_value
    lead = math.prod(shape[:-2]) if len(shape) > 2 else 1
    v = lead * (shape[-2] + shape[-1]) if len(shape) > 1 else n
    return (v + (n if beta1 else 0)) * bytes_per_value
