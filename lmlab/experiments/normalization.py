"""Lesson 01's experiments (``lessons/01_normalization``), importable so tests run the same code.

- :func:`grad_norms_per_layer`: the gradient norm of every block's weights at initialisation, the
  measurement behind "post-LN has large gradients near the output, pre-LN does not"
  (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture", Fig. 3).
"""

from __future__ import annotations

import torch

from ..model import GPT, ModelConfig
from ..train import lm_loss

__all__ = ["grad_norms_per_layer"]


def grad_norms_per_layer(cfg: ModelConfig, batch: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
                         seed: int = 0) -> dict[str, list[float]]:
    """Per-layer L2 gradient norms of a freshly initialised ``GPT(cfg)`` on one batch.

    ``batch``: ``(x, y)`` token ids of shape ``(B, T)`` (as from ``lmlab.data.sample_batch``), or
    one ``(B, T + 1)`` tensor that is split into ``x = ids[:, :-1]``, ``y = ids[:, 1:]``.
    The model is built under ``torch.manual_seed(seed)``, in eval mode (no dropout).

    Returns lists of length ``n_layers``, layer 0 nearest the input:
    ``attn`` and ``ffn`` (the norm over that sub-layer's weight matrices, biases left out, as in
    Xiong et al.), ``block`` (over all of the block's parameters), plus ``loss`` (one float, in a list).
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"grad_norms_per_layer: cfg must be a ModelConfig, got {type(cfg).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"grad_norms_per_layer: seed must be an int, got {seed!r}")
    if isinstance(batch, torch.Tensor):
        if batch.dim() != 2 or batch.shape[1] < 2:
            raise ValueError(f"grad_norms_per_layer: batch must be (x, y) or one (B, T + 1) tensor with T >= 1, "
                             f"got shape {tuple(batch.shape)}")
        x, y = batch[:, :-1], batch[:, 1:]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        if not all(isinstance(t, torch.Tensor) for t in (x, y)) or x.shape != y.shape or x.dim() != 2:
            raise ValueError("grad_norms_per_layer: batch (x, y) must be two token-id tensors of the same shape (B, T)")
    else:
        raise ValueError(f"grad_norms_per_layer: batch must be (x, y) or one (B, T + 1) tensor, got {type(batch).__name__}")

    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    loss = lm_loss(model(x), y)
    loss.backward()

    def norm(params) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

    def matrices(module: torch.nn.Module):
        return [p for p in module.parameters() if p.dim() >= 2]

    return {
        "attn": [norm(matrices(b.attn)) for b in model.blocks],
        "ffn": [norm(matrices(b.ffn)) for b in model.blocks],
        "block": [norm(b.parameters()) for b in model.blocks],
        "loss": [float(loss.detach())],
    }
