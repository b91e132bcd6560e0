"""Normalization layers and where they go (lesson 01, ``lessons/01_normalization``).

- :func:`layer_norm` / :class:`LayerNorm`: re-centre and re-scale each token's features
  (Ba et al., 2016). Equal to ``torch.nn.functional.layer_norm`` over the last dimension.
- :func:`rms_norm` / :class:`RMSNorm`: re-scale only, by the root mean square (Zhang & Sennrich,
  2019; Gopher, Chinchilla, LLaMA). Equal to ``torch.nn.functional.rms_norm``. One statistic
  instead of two, no bias.
- :class:`DeepNorm` and :func:`deepnorm_constants`: post-LN with an up-weighted skip,
  ``x -> norm(alpha * x + f(x))``, plus a smaller init (``beta``) for the sub-layers, which lets
  very deep post-LN stacks train (Wang et al., 2022, "DeepNet").

Where the norm sits in a block: :class:`NormPlacement` and one subclass per placement (:class:`PreNorm`,
:class:`PostNorm`, :class:`SandwichNorm`, :class:`DeepNormPlacement`), each an entry of
:data:`lmlab.model.registry.NORM_PLACEMENTS` that :class:`lmlab.model.gpt.Block` calls. Which norm
(``layernorm``, ``rmsnorm``, yours) is :data:`lmlab.model.registry.NORMS`'s business. Unlike BatchNorm, every function here normalizes one token at a time, so
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
    "DEEPNORM_ARCHITECTURES", "DEFAULT_EPS",
    "layer_norm", "rms_norm", "LayerNorm", "RMSNorm",
    "DeepNorm", "DeepNormConstants", "deepnorm_constants", "pre_ln_block",
    "NormPlacement", "PreNorm", "PostNorm", "SandwichNorm", "DeepNormPlacement",
]

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


# --------------------------------------------------------------------------------------------
# Placement: pre-LN as a function (the block's wiring is below, one class per placement)
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

    ``norm``: the norm module (the model's, from :data:`lmlab.model.registry.NORMS`).
    The other half of DeepNorm, scaling the sub-layers' initial weights by ``beta``, happens where
    the weights are initialised (:func:`lmlab.model.gpt.init_weights`).
    """

    def __init__(self, norm: nn.Module, alpha: float):
        super().__init__()
        if not isinstance(norm, nn.Module):
            raise ValueError(f"DeepNorm: norm must be a norm module (e.g. LayerNorm(d_model)), got {type(norm).__name__}")
        self.alpha = check_positive(alpha, "alpha", "DeepNorm:")
        self.norm = norm

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        if not isinstance(fx, torch.Tensor) or fx.shape != x.shape:
            got = tuple(fx.shape) if isinstance(fx, torch.Tensor) else type(fx).__name__
            raise ValueError(f"DeepNorm: fx (the sub-layer output) must have the shape of x {tuple(x.shape)}, got {got}")
        return self.norm(self.alpha * x + fx)  # (..., d)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}"


# --------------------------------------------------------------------------------------------
# Placements: how a block wires its norms (entries of lmlab.model.registry.NORM_PLACEMENTS)
# --------------------------------------------------------------------------------------------


class NormPlacement:
    """Where a block's norms go: one subclass per placement, registered in
    :data:`lmlab.model.registry.NORM_PLACEMENTS` (a new placement = a subclass + one entry).

    :class:`lmlab.model.gpt.Block` builds, in this order, ``norm1 = wrap(norm)``, the attention,
    ``norm2 = wrap(norm)``, the FFN, then one plain norm per name in :attr:`extra_norms`; its forward
    is :meth:`forward`. :attr:`final_norm`: the model needs a norm before the output layer (the
    residual stream was never normalized). :attr:`scaled_residual_init`: GPT-2's ``1 / sqrt(2 L)`` on
    the weights that write into the residual stream; :meth:`init_gains`: factors on the initial
    weights by role (``qk``, ``value``, ``output``, ``ffn_in``), see :func:`lmlab.model.gpt.init_weights`.
    """

    extra_norms: tuple[str, ...] = ()
    final_norm: bool = True
    scaled_residual_init: bool = True

    def __init__(self, n_layers: int):
        self.n_layers = check_int(n_layers, "n_layers", f"{type(self).__name__}:")

    @property
    def norms_per_layer(self) -> int:
        """Norm modules in one block."""
        return 2 + len(self.extra_norms)

    def wrap(self, norm: nn.Module) -> nn.Module:
        """``norm1`` / ``norm2`` as the block holds them (DeepNorm wraps them with its alpha)."""
        return norm

    def init_gains(self) -> dict[str, float]:
        """``{role: factor}`` applied to the initial weights of that role after the base init."""
        return {}

    def forward(self, block: nn.Module, x: torch.Tensor, attn_mask=None, kv_cache=None, positions=None) -> torch.Tensor:
        """One block: ``x (B, T, C) -> (B, T, C)`` with ``block.attn``, ``block.ffn`` and its norms."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_layers={self.n_layers})"


class PreNorm(NormPlacement):
    """pre-LN: ``x = x + f(norm(x))`` (GPT-2, LLaMA: stable); :func:`pre_ln_block`."""

    def forward(self, block, x, attn_mask=None, kv_cache=None, positions=None):
        attn = block.attn if attn_mask is None and kv_cache is None and positions is None else (
            lambda h: block.attn(h, attn_mask, kv_cache, positions))
        return pre_ln_block(x, attn, block.ffn, block.norm1, block.norm2)  # (B, T, C)


class PostNorm(NormPlacement):
    """post-LN: ``x = norm(x + f(x))`` (the original Transformer); the stream ends normalized."""

    final_norm = False

    def forward(self, block, x, attn_mask=None, kv_cache=None, positions=None):
        x = block.norm1(x + block.attn(x, attn_mask, kv_cache, positions))  # (B, T, C)
        return block.norm2(x + block.ffn(x))  # (B, T, C)


class SandwichNorm(NormPlacement):
    """sandwich-LN: ``x = x + norm_out(f(norm(x)))`` (CogView: pre-LN plus a norm on each sub-layer's
    output before the add): two more norms per block, ``attn_out_norm`` and ``ffn_out_norm``."""

    extra_norms = ("attn_out_norm", "ffn_out_norm")

    def forward(self, block, x, attn_mask=None, kv_cache=None, positions=None):
        x = x + block.attn_out_norm(block.attn(block.norm1(x), attn_mask, kv_cache, positions))  # (B, T, C)
        return x + block.ffn_out_norm(block.ffn(block.norm2(x)))  # (B, T, C)


class DeepNormPlacement(NormPlacement):
    """DeepNorm: ``x = norm(alpha * x + f(x))`` (DeepNet: post-LN with an up-weighted skip), and the
    sub-layers' ``value``, ``output`` and ``ffn_in`` weights initialised ``beta`` times smaller
    (instead of GPT-2's ``1 / sqrt(2 L)``); alpha and beta from :func:`deepnorm_constants`."""

    final_norm = False
    scaled_residual_init = False
    SCALED_ROLES = ("value", "output", "ffn_in")  # DeepNet scales v, the output projections and the FFN by beta

    def wrap(self, norm: nn.Module) -> nn.Module:
        return DeepNorm(norm, deepnorm_constants(self.n_layers).alpha)

    def init_gains(self) -> dict[str, float]:
        beta = deepnorm_constants(self.n_layers).beta
        return {role: beta for role in self.SCALED_ROLES}

    def forward(self, block, x, attn_mask=None, kv_cache=None, positions=None):
        x = block.norm1(x, block.attn(x, attn_mask, kv_cache, positions))  # (B, T, C)
        return block.norm2(x, block.ffn(x))  # (B, T, C)
