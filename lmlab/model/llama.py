"""Your own LLaMA: the parts of chapters 01-08 assembled into one model (lesson 13).

A LLaMA (Touvron et al. 2023) is lmlab's ``GPT`` with one choice per kind of part:

* RMSNorm, pre-LN (chapter 01), SwiGLU feed-forward (chapter 02), RoPE positions (chapter 03),
  grouped-query causal attention (chapter 04), no biases, optionally tied embeddings;
* sampled with chapter 07's samplers and chapter 08's KV cache.

:func:`llama_config` writes that config; :func:`build_llama` builds the model and is **the one
place where a part is swapped** for a learner's own (``parts={"norm": MyRMSNorm}``): the norm and
the FFN go through the parts registry (:func:`lmlab.model.registry.register_norm` / ``register_ffn``, the
same plug-in as every other lesson), so each entry becomes every module of that kind, and
:data:`LLAMA_PARTS` says whose part is where.
:func:`llama_block` is one block written as plain tensor code (exercise 13.4's reference).
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT, init_weights
from lmlab.model.registry import register
from lmlab.model.positions.encodings import apply_rope, rope_cos_sin, rope_frequencies
from lmlab.argcheck import check_int, check_positive

__all__ = ["LLAMA_PARTS", "llama_config", "build_llama", "parts_table", "llama_block"]

# kind of part -> (chapter, the lmlab reference, where it sits in GPT)
LLAMA_PARTS = {
    "norm": ("01", "lmlab.model.norms.RMSNorm", "blocks.i.norm1, blocks.i.norm2, final_norm"),
    "ffn": ("02", "lmlab.model.ffn.FeedForward(kind='swiglu')", "blocks.i.ffn"),
    "position": ("03", "lmlab.model.positions.encodings.apply_rope (half-split pairs)", "position (shared by every attention layer)"),
    "attention": ("04", "lmlab.model.attention.MultiHeadAttention(n_kv_heads=...)", "blocks.i.attn"),
    "kv_cache": ("08", "lmlab.infer.kv_cache.KVCache", "GPT.forward_with_cache"),
    "sampling": ("07", "lmlab.infer.decoding.generation", "outside the model"),
}


def llama_config(vocab_size: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2,
                 context_length: int = 128, d_ff: int | None = None, tie_embeddings: bool = True,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0) -> ModelConfig:
    """A LLaMA-style :class:`ModelConfig` (RMSNorm, SwiGLU, RoPE, GQA, no biases)."""
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, context_length=context_length, d_ff=d_ff, tie_embeddings=tie_embeddings,
                       norm_eps=norm_eps, rope_base=rope_base, bias=False, norm="rmsnorm", norm_position="pre",
                       activation="swiglu", position="rope")


# kind of part in build_llama -> (the lmlab.model.registry kind / ModelConfig field it fills, its registration options)
_PLUGGED = {"norm": ("norm", {}), "ffn": ("activation", {"gated": True})}  # LLaMA's FFN is gated


def _plug(kind: str, cls) -> str:
    """Register the learner's ``cls`` for ``kind`` under a name of its own and return the name. It
    stays registered (the model's config names it); a class of the same name (a re-run cell) replaces it."""
    field, options = _PLUGGED[kind]
    name = f"llama_{kind}_" + re.sub(r"\W", "_", getattr(cls, "__qualname__", type(cls).__name__))
    register(field, name, cls, replace=True, **options)
    return name


def build_llama(cfg: ModelConfig, parts: dict | None = None, seed: int = 0) -> GPT:
    """The LLaMA of ``cfg`` with the reference parts, or with the learner's where ``parts`` says.

    ``parts``: ``{"norm": cls}`` and/or ``{"ffn": cls}``, ``{"attention": cls}``. The norm and the
    FFN plug in through :mod:`lmlab.model.registry` exactly like ``register_norm`` / ``register_ffn``
    (``cls(d_model, eps=...)``, ``cls(d_model, hidden)``: the learner's graded chapter-01 RMSNorm and
    chapter-02 SwiGLU), so the config names them and GPT builds them. Attention is the exception:
    ``register_attention`` takes only plain causal attention ``(B, T, C) -> (B, T, C)``, while a
    LLaMA's layer also takes RoPE positions and a KV cache, so ``cls(cfg)`` must have the model's
    interface (:class:`lmlab.model.attention.MultiHeadAttention`'s ``forward``) and replaces each block's
    attention after the build. With any part, the weights are re-initialised (norm gains 1).
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    parts = dict(parts or {})
    unknown = set(parts) - {"norm", "ffn", "attention"}
    if unknown:
        raise ValueError(f"parts: kinds must be among ('norm', 'ffn', 'attention'), got {sorted(unknown)}")
    names = {_PLUGGED[kind][0]: _plug(kind, parts[kind]) for kind in _PLUGGED if kind in parts}
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(cfg, **names) if names else cfg)
    if "attention" in parts:
        for block in model.blocks:
            block.attn = parts["attention"](cfg)
    if parts:
        torch.manual_seed(seed)
        init_weights(model)  # roles of the learner's modules come from their init_roles(), if any
        for m in model.modules():  # norms start at gain 1 whoever wrote them
            if m.__class__.__name__.lower().endswith("norm") and getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
    model.parts_used = {kind: (parts[kind].__module__ + "." + parts[kind].__qualname__ if kind in parts else LLAMA_PARTS[kind][1])
                        for kind in LLAMA_PARTS}
    return model


def parts_table(model: GPT) -> list[tuple[str, str, str, str]]:
    """``(kind, chapter, whose part, where)`` rows for the lesson's table."""
    used = getattr(model, "parts_used", {k: v[1] for k, v in LLAMA_PARTS.items()})
    return [(kind, ch, used[kind], where) for kind, (ch, ref, where) in LLAMA_PARTS.items()]


def llama_block(x: torch.Tensor, w: dict, n_heads: int, n_kv_heads: int, eps: float = 1e-5,
                rope_base: float = 10000.0) -> torch.Tensor:
    """One LLaMA block as plain tensor code, ``x (B, T, C) -> (B, T, C)``:

    ``h = x + W_o · attn(rope(W_q n1(x)), rope(W_k n1(x)), W_v n1(x))``, causal, each K/V head
    shared by ``n_heads / n_kv_heads`` consecutive query heads; then
    ``y = h + W_down (W_up n2(h) * silu(W_gate n2(h)))`` with ``n = RMSNorm(eps)``.
    ``w``: ``norm1, norm2 (C,)``, ``wq (C, C)``, ``wk, wv (nkv*hs, C)``, ``wo (C, C)``,
    ``w_up, w_gate (F, C)``, ``w_down (C, F)`` (torch ``Linear`` layout: ``(out, in)``).
    """
    check_int(n_heads, "n_heads", "llama_block")
    check_int(n_kv_heads, "n_kv_heads", "llama_block")
    check_positive(eps, "eps", "llama_block")
    B, T, C = x.shape
    hs = C // n_heads

    def rms(t, g):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * g  # (B, T, C)

    h = rms(x, w["norm1"])
    q = (h @ w["wq"].T).view(B, T, n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = (h @ w["wk"].T).view(B, T, n_kv_heads, hs).transpose(1, 2)  # (B, nkv, T, hs)
    v = (h @ w["wv"].T).view(B, T, n_kv_heads, hs).transpose(1, 2)
    cos, sin = rope_cos_sin(T, rope_frequencies(hs, rope_base))  # (T, hs), half-split layout
    q, k = apply_rope(q, cos=cos.to(x.dtype), sin=sin.to(x.dtype)), apply_rope(k, cos=cos.to(x.dtype), sin=sin.to(x.dtype))
    rep = n_heads // n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, nh, T, hs): head h uses K/V head h // rep
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    att = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (B, nh, T, hs)
    x = x + att.transpose(1, 2).reshape(B, T, C) @ w["wo"].T
    h = rms(x, w["norm2"])
    return x + (h @ w["w_up"].T * F.silu(h @ w["w_gate"].T)) @ w["w_down"].T  # (B, T, C)
