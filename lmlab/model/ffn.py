"""Activation functions and the feed-forward block (lesson 02, ``lessons/02_activations``).

- :func:`gelu`: ``x * Phi(x)`` (Hendrycks & Gimpel, 2016), exact or the tanh approximation (GPT-2).
- :func:`swish`: ``x * sigmoid(beta * x)`` (Ramachandran et al., 2017). ``beta = 1`` is
  :func:`silu`; ``beta = 0`` gives the line ``x / 2``; ``beta -> inf`` gives ReLU.
- :func:`glu`, :func:`swiglu`, :func:`geglu`: gated linear units (Dauphin et al., 2017;
  Shazeer, 2020): one projection is multiplied by an activation of another.
- :data:`FFN_ACTIVATIONS`: the one table of FFN kinds (name -> activation function + gated flag, like
  Hugging Face's ``ACT2FN``); :class:`FeedForward` and :data:`lmlab.model.registry.FFNS` both read it, so a
  new built-in kind is one entry.
- :class:`FeedForward`: the position-wise MLP, plain (``relu``, ``gelu``) or gated (``swiglu``,
  ``geglu``), and :func:`glu_hidden_size`, the "2/3 rule" that gives a gated FFN the parameter
  count of a plain one (PaLM, LLaMA).

Gated functions take the two projections concatenated on ``dim`` (like ``F.glu``): for
``x = [a, b]`` they return ``a * act(b)``, half the size of ``x`` along ``dim``.
Half-precision inputs (bf16/fp16) are computed in fp32 and cast back, as torch's kernels do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.argcheck import check_choice, check_int

__all__ = [
    "FFNActivation", "FFN_ACTIVATIONS", "GELU_APPROXIMATIONS",
    "gelu", "swish", "silu", "glu", "swiglu", "geglu",
    "glu_hidden_size", "FeedForward", "SwiGLU",
]

GELU_APPROXIMATIONS = ("none", "tanh")


def _check_input(x, where: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{where}: x must be a floating-point tensor, got {got}")


def _fp32_if_half(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _split_halves(x: torch.Tensor, dim: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_input(x, where)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{where}: dim must be an int in [{-x.dim()}, {x.dim() - 1}], got {dim!r}")
    if x.shape[dim] % 2:
        raise ValueError(f"{where}: x.shape[dim] must be even (two halves, value and gate), got {x.shape[dim]}")
    return x.chunk(2, dim=dim)  # a (value), b (gate): each half the size along dim


# --------------------------------------------------------------------------------------------
# Element-wise activations
# --------------------------------------------------------------------------------------------


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU: ``x * Phi(x)`` with ``Phi`` the standard normal CDF.

    ``approximate="tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, as in GPT-2.
    Equal to ``F.gelu(x, approximate=...)``.
    """
    _check_input(x, "gelu")
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
    xf = _fp32_if_half(x)
    if approximate == "tanh":
        y = 0.5 * xf * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (xf + 0.044715 * xf * xf * xf)))
    else:
        y = 0.5 * xf * (1.0 + torch.erf(xf * (1.0 / math.sqrt(2.0))))
    return y.to(x.dtype)


def swish(x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Swish: ``x * sigmoid(beta * x)``.

    ``beta = 0``: ``x / 2`` (a line); ``beta = 1``: SiLU; ``beta -> inf``: ReLU, and in fact
    ``|swish(x, beta) - relu(x)| <= 0.2785 / beta`` for every ``x``. ``beta`` may be a tensor
    (e.g. a learned parameter) that broadcasts against ``x``.
    """
    _check_input(x, "swish")
    if isinstance(beta, torch.Tensor):
        if not beta.is_floating_point():
            raise ValueError(f"swish: beta must be a finite number or a floating-point tensor, got {beta.dtype} tensor")
    elif isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"swish: beta must be a finite number or a floating-point tensor, got {beta!r}")
    xf = _fp32_if_half(x)
    return (xf * torch.sigmoid(beta * xf)).to(x.dtype)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU = ``swish(x, 1) = x * sigmoid(x)``. Equal to ``F.silu``."""
    _check_input(x, "silu")
    xf = _fp32_if_half(x)
    return (xf * torch.sigmoid(xf)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Gated linear units: x = [a, b] along dim -> a * act(b)
# --------------------------------------------------------------------------------------------


def glu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """GLU: ``a * sigmoid(b)`` for ``x = [a, b]`` split in halves along ``dim``. Equal to ``F.glu``."""
    a, b = _split_halves(x, dim, "glu")
    return (_fp32_if_half(a) * torch.sigmoid(_fp32_if_half(b))).to(x.dtype)


def swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """SwiGLU: ``a * silu(b)`` (Swish with ``beta = 1``, as in PaLM and LLaMA) for ``x = [a, b]``."""
    a, b = _split_halves(x, dim, "swiglu")
    return (_fp32_if_half(a) * silu(_fp32_if_half(b))).to(x.dtype)


def geglu(x: torch.Tensor, dim: int = -1, approximate: str = "none") -> torch.Tensor:
    """GeGLU: ``a * gelu(b)`` for ``x = [a, b]`` split in halves along ``dim``."""
    a, b = _split_halves(x, dim, "geglu")
    return (_fp32_if_half(a) * gelu(_fp32_if_half(b), approximate)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# The table of FFN kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FFNActivation:
    """One FFN kind. ``fn``: the element-wise activation as torch's kernel (for a gated kind, the
    activation of the gate half ``b`` in ``a * fn(b)``); ``gated``: the first projection has
    ``2 * hidden`` outputs, value and gate; ``reference``: a gated kind's from-scratch
    ``x = [a, b] -> a * act(b)`` (fp32 inside), used for half-precision inputs."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    gated: bool = False
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None


# ModelConfig.activation -> its FFN (lesson 02). FeedForward and lmlab.model.registry.FFNS read this table:
# a new built-in kind is one entry here. The order is FFNS's (and ModelConfig's error messages').
FFN_ACTIVATIONS: dict[str, FFNActivation] = {
    "gelu": FFNActivation(F.gelu),
    "relu": FFNActivation(torch.relu),
    "swiglu": FFNActivation(F.silu, gated=True, reference=swiglu),
    "geglu": FFNActivation(F.gelu, gated=True, reference=geglu),
}


# --------------------------------------------------------------------------------------------
# The feed-forward block
# --------------------------------------------------------------------------------------------


def glu_hidden_size(plain_hidden: int, multiple_of: int = 8) -> int:
    """Hidden size of a gated FFN with (about) the parameters of a plain FFN of ``plain_hidden``.

    A plain FFN has two ``d x h`` matrices, a gated one three, so ``h_glu = 2/3 * h``, rounded
    *up* to a multiple of ``multiple_of`` (hardware-friendly), exactly as LLaMA does:
    ``glu_hidden_size(4 * 4096, 256) == 11008`` (LLaMA-7B).
    """
    plain_hidden = check_int(plain_hidden, "plain_hidden", "glu_hidden_size:")
    multiple_of = check_int(multiple_of, "multiple_of", "glu_hidden_size:")
    hidden = int(2 * plain_hidden / 3)
    return max(multiple_of, multiple_of * math.ceil(hidden / multiple_of))


class FeedForward(nn.Module):
    """Position-wise MLP: ``(..., C) -> (..., C)`` through a hidden layer of size ``hidden``.

    plain (relu, gelu):   down(act(up(x)))          up: C -> hidden
    gated (swiglu, geglu): down(a * act(b)), [a, b] = up(x)    up: C -> 2 * hidden

    ``kind`` is a key of :data:`FFN_ACTIVATIONS` (which says ``act`` and whether it is gated).

    The gated kinds keep both projections in one matrix ``up``; ``up.weight[:hidden]`` is the value
    projection (LLaMA's ``w3``/``up_proj``), ``up.weight[hidden:]`` the gate (``w1``/``gate_proj``),
    and ``down`` is ``w2``/``down_proj``. In fp32 :meth:`gated` multiplies by the two halves
    separately (faster, see there); ``activation(up(x))`` is the same function in one matmul.
    """

    def __init__(self, d_model: int, hidden: int, kind: str = "gelu", *, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        check_int(d_model, "d_model", "FeedForward:")
        check_int(hidden, "hidden", "FeedForward:")
        check_choice(kind, "kind", FFN_ACTIVATIONS, "FeedForward:")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"FeedForward: dropout must be in [0, 1), got {dropout!r}")
        self.kind = kind
        self.act = FFN_ACTIVATIONS[kind]  # activation fn + gated flag
        self.hidden = hidden
        self.up = nn.Linear(d_model, 2 * hidden if self.act.gated else hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_roles(self) -> list[tuple[nn.Linear, slice, str]]:
        """What each weight does, for :func:`lmlab.model.gpt.init_weights`: ``up`` feeds the hidden
        layer, ``down`` writes into the residual stream."""
        return [(self.up, slice(None), "ffn_in"), (self.down, slice(None), "output")]

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        """The non-linearity between ``up`` and ``down``: ``(..., up.out_features) -> (..., hidden)``."""
        # Fast path: torch's kernels give the same numbers as this module's from-scratch functions
        # (tested) with less per-call Python, which dominates a tiny model's decode step (lesson 08).
        if not self.act.gated:
            return self.act.fn(h)
        if h.dtype != torch.float32 and self.act.reference is not None:  # half precision: from scratch, fp32 inside
            return self.act.reference(h)
        a, b = _fp32_if_half(h).chunk(2, dim=-1)  # value, gate: (..., hidden) each
        return (a * self.act.fn(b)).to(h.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act.gated and x.dtype == torch.float32:
            h = self.gated(x)  # (B, T, hidden)
        else:
            h = self.activation(self.up(x))  # (B, T, hidden): up gives hidden, or 2 * hidden for gated kinds
        return self.drop(self.down(h))  # (B, T, C)

    def gated(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., C) -> a * act(b) (..., hidden)`` with ``a``, ``b`` from the two halves of ``up`` as two
        matmuls: ``activation(up(x))`` up to float rounding (and Hugging Face's ``LlamaMLP`` bit for bit).
        Each half comes out contiguous, so the activation runs on dense memory and the backward needs
        no ``cat`` of the two halves' gradients: about 5 % faster per FFN forward + backward on CPU
        than slicing one ``(..., 2 * hidden)`` output (``benchmarks/vs_hf.py``'s train step)."""
        w_a, w_b = self.up.weight.chunk(2, dim=0)  # (hidden, C) each: value rows, gate rows
        b_a, b_b = self.up.bias.chunk(2) if self.up.bias is not None else (None, None)
        a, b = F.linear(x, w_a, b_a), F.linear(x, w_b, b_b)  # (..., hidden) each
        return a * self.act.fn(b)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, hidden={self.hidden}"


class SwiGLU(nn.Module):
    """LLaMA's MLP in Hugging Face's layout: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases
    (lesson 02's plug-in exercise; :class:`FeedForward` ``"swiglu"`` is the same function with
    ``gate_proj`` and ``up_proj`` fused into one matrix ``up = [up_proj; gate_proj]``)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        check_int(d_model, "d_model", "SwiGLU:")
        check_int(hidden, "hidden", "SwiGLU:")
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (..., d_model)
