"""Normalization layers and where they go (lesson 01, ``lessons/01_normalization``).

- :func:`layer_norm` / :class:`LayerNorm`: re-centre and re-scale each token's features
  (Ba et al., 2016). Equal to ``torch.nn.functional.layer_norm`` over the last dimension.
- :func:`rms_norm` / :class:`RMSNorm`: re-scale only, by the root mean square (Zhang & Sennrich,
  2019; Gopher, Chinchilla, LLaMA). Equal to ``torch.nn.functional.rms_norm``. One statistic
  instead of two, no bias.
- :class:`DeepNorm` and :func:`deepnorm_constants`: post-LN with an up-weighted skip,
  ``x -> norm(alpha * x + f(x))``, plus a smaller init (``beta``) for the sub-layers, which lets
  very deep post-LN stacks train (Wang et al., 2022, "DeepNet").

Where the norm sits in a block (post / pre / sandwich / deepnorm) is the model's business: see
``lmlab.model.gpt.Block``. Unlike BatchNorm, every function here normalizes one token at a time, so
the batch size and the padding of other sequences never change a token's output.

Shapes: ``x`` is ``(..., d)``; the statistics are taken over the last dimension ``d`` only.
Half-precision inputs (bf16/fp16) are normalized in fp32 and the result cast back to the input's
dtype, as torch's own kernels do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.argcheck import check_choice, check_int, check_positive

__all__ = [
    "NORM_KINDS", "DEEPNORM_ARCHITECTURES",
    "layer_norm", "rms_norm", "LayerNorm", "RMSNorm", "make_norm",
    "DeepNorm", "DeepNormConstants", "deepnorm_constants", "pre_ln_block",
]

NORM_KINDS = ("layernorm", "rmsnorm")
DEEPNORM_ARCHITECTURES = ("decoder-only", "encoder-only")
DEFAULT_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}  # torch's LayerNorm default; LLaMA/T5's RMSNorm


# --------------------------------------------------------------------------------------------
# Validation helpers (every public function says which parameter is wrong and what is allowed)
# --------------------------------------------------------------------------------------------


def _check_input(x, where: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[-1] < 1:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{where}: x must be a floating-point tensor of shape (..., d) with d >= 1, got {got}")


def _check_affine(x: torch.Tensor, t, name: str, where: str) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != (x.shape[-1],):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(
            f"{where}: {name} must be None or a tensor of shape (d,) = ({x.shape[-1]},) "
            f"matching the last dimension of x, got {got}"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 -> fp32 for the statistics; fp32 and fp64 stay as they are.
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    ``var`` is the biased variance (divide by ``d``), as in the paper and in torch. Equal to
    ``F.layer_norm(x, (d,), weight, bias, eps)``.
    """
    _check_input(x, "layer_norm")
    _check_affine(x, weight, "weight", "layer_norm")
    _check_affine(x, bias, "bias", "layer_norm")
    eps = check_positive(eps, "eps", "layer_norm:")
    xf = x.to(_compute_dtype(x.dtype))  # (..., d), a no-op for fp32
    xc = xf - xf.mean(dim=-1, keepdim=True)  # (..., d): centred, mean 0 per token
    var = xc.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): biased variance
    y = xc * torch.rsqrt(var + eps)  # (..., d): variance 1 per token
    if weight is not None:
        y = y * weight.to(y.dtype)  # (..., d) * (d,)
    if bias is not None:
        y = y + bias.to(y.dtype)  # (..., d) + (d,)
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``.

    No mean is subtracted and there is no bias: one reduction instead of two. Equal to
    ``F.rms_norm(x, (d,), weight, eps)`` (note torch's default eps differs; pass it explicitly).
    """
    _check_input(x, "rms_norm")
    _check_affine(x, weight, "weight", "rms_norm")
    eps = check_positive(eps, "eps", "rms_norm:")
    xf = x.to(_compute_dtype(x.dtype))  # (..., d)
    y = xf * torch.rsqrt((xf * xf).mean(dim=-1, keepdim=True) + eps)  # (..., d) * (..., 1)
    if weight is not None:
        y = y * weight.to(y.dtype)  # (..., d) * (d,)
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """:func:`layer_norm` with a learned gain ``weight`` (ones) and, if ``bias``, a shift (zeros).

    The module runs torch's fused kernel (``F.layer_norm``): the same numbers as :func:`layer_norm`
    (tested), without the per-call Python overhead that dominates a decode step of a tiny model
    (lesson 08). The from-scratch function is the one to read.
    """

    def __init__(self, d_model: int, eps: float = DEFAULT_EPS["layernorm"], bias: bool = True):
        super().__init__()
        self.d_model = check_int(d_model, "d_model", "LayerNorm:")
        self.eps = check_positive(eps, "eps", "LayerNorm:")
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[-1] != self.d_model:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"LayerNorm: x must be a floating-point tensor of shape (..., d_model={self.d_model}), got {got}")
        if x.dtype != self.weight.dtype:  # e.g. bf16 activations, fp32 weights: compute in fp32 here
            return layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)  # (..., d), fast path

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """:func:`rms_norm` with a learned gain ``weight`` (ones); no bias.

    Runs torch's kernel (``F.rms_norm``, same numbers as :func:`rms_norm`) as :class:`LayerNorm` does.
    """

    def __init__(self, d_model: int, eps: float = DEFAULT_EPS["rmsnorm"]):
        super().__init__()
        self.d_model = check_int(d_model, "d_model", "RMSNorm:")
        self.eps = check_positive(eps, "eps", "RMSNorm:")
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[-1] != self.d_model:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"RMSNorm: x must be a floating-point tensor of shape (..., d_model={self.d_model}), got {got}")
        if x.dtype != self.weight.dtype:  # e.g. bf16 activations, fp32 weights: compute in fp32 here
            return rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (self.d_model,), self.weight, self.eps)  # (..., d), fast path

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


def make_norm(kind: str, d_model: int, eps: float | None = None, bias: bool = True) -> nn.Module:
    """A norm by name: ``"layernorm"`` or ``"rmsnorm"`` (which has no bias; ``bias`` is ignored).

    ``eps=None`` takes the kind's default: 1e-5 for LayerNorm (torch), 1e-6 for RMSNorm (LLaMA).
    """
    check_choice(kind, "kind", NORM_KINDS, "make_norm:")
    eps = DEFAULT_EPS[kind] if eps is None else eps
    if kind == "layernorm":
        return LayerNorm(d_model, eps=eps, bias=bias)
    return RMSNorm(d_model, eps=eps)


# --------------------------------------------------------------------------------------------
# Placement: pre-LN (the others are in lmlab.model.gpt.Block)
# --------------------------------------------------------------------------------------------


def pre_ln_block(x: torch.Tensor, attn, ffn, norm1, norm2) -> torch.Tensor:
    """One pre-LN transformer layer from its parts (lesson 01's exercise; ``lmlab.model.gpt.Block`` runs it for ``pre``)::

        h   = x + attn(norm1(x))     # (B, T, C): only the sub-layer's input is normalized
        out = h + ffn(norm2(h))      # (B, T, C): the residual stream itself never is
    """
    h = x + attn(norm1(x))  # (B, T, C)
    return h + ffn(norm2(h))  # (B, T, C)


# --------------------------------------------------------------------------------------------
# DeepNorm
# --------------------------------------------------------------------------------------------


class DeepNormConstants(NamedTuple):
    alpha: float  # multiplies the skip connection: x -> norm(alpha * x + f(x))
    beta: float  # multiplies the init of the FFN weights and the attention value/output projections


def deepnorm_constants(num_layers: int, architecture: str = "decoder-only") -> DeepNormConstants:
    """DeepNet's ``alpha`` and ``beta`` for a stack of ``num_layers`` blocks (Wang et al. 2022, Table 1).

    Decoder-only with M layers (and, by the same formula, encoder-only with N layers):
    ``alpha = (2M)**(1/4)``, ``beta = (8M)**(-1/4)``. For 12 layers: alpha ~ 2.21, beta ~ 0.32.
    (Encoder-decoder models use different constants per side; they are not needed here.)
    """
    num_layers = check_int(num_layers, "num_layers", "deepnorm_constants:")
    check_choice(architecture, "architecture", DEEPNORM_ARCHITECTURES, "deepnorm_constants:")
    return DeepNormConstants(alpha=(2 * num_layers) ** 0.25, beta=(8 * num_layers) ** -0.25)


class DeepNorm(nn.Module):
    """The DeepNorm residual connection: ``x, f(x) -> norm(alpha * x + f(x))``.

    Post-LN is the special case ``alpha = 1``. A block uses one per sub-layer::

        x = deepnorm1(x, attn(x))   # (B, T, C)
        x = deepnorm2(x, ffn(x))    # (B, T, C)

    ``norm``: a kind (``"layernorm"``, ``"rmsnorm"``) or an already built norm module.
    The other half of DeepNorm, scaling the sub-layers' initial weights by ``beta``, happens where
    the weights are initialised (:func:`lmlab.model.gpt.init_weights`).
    """

    def __init__(self, d_model: int, alpha: float, norm: str | nn.Module = "layernorm", eps: float | None = None,
                 bias: bool = True):
        super().__init__()
        self.alpha = check_positive(alpha, "alpha", "DeepNorm:")
        if isinstance(norm, nn.Module):  # a norm built elsewhere (the model's, from lmlab.model.registry.NORMS)
            self.norm = norm
        else:
            check_choice(norm, "norm", NORM_KINDS, "DeepNorm:")
            self.norm = make_norm(norm, d_model, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        if not isinstance(fx, torch.Tensor) or fx.shape != x.shape:
            got = tuple(fx.shape) if isinstance(fx, torch.Tensor) else type(fx).__name__
            raise ValueError(f"DeepNorm: fx (the sub-layer output) must have the shape of x {tuple(x.shape)}, got {got}")
        return self.norm(self.alpha * x + fx)  # (..., d)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}"
