"""A GPT-style causal decoder built from small swappable parts (lesson 00, ``lessons/00_tour``).

One model, many parts: :class:`lmlab.model.config.ModelConfig` names each choice (norm, where it goes,
activation, position scheme, attention) and :mod:`lmlab.model.registry` turns a name into a module. The
config's validation and the builders below read the same tables; :func:`lmlab.scaling.counting.param_counts`
counts what they build. The model imports no inference code: :meth:`GPT.forward_with_cache` is *given* its KV cache
(:meth:`lmlab.infer.kv_cache.KVCache.for_model` makes one).

**Adding a variant, or your own part, in one place** (``NORM_PLACEMENTS``, ``FFNS``, ``POSITIONS``,
``ATTENTIONS`` alike)::

    from lmlab.model.registry import NORMS, register_norm
    NORMS.register("scalenorm", lambda cfg: ScaleNorm(cfg.d_model))  # validated, built, counted
    register_norm("my_rmsnorm", RMSNorm)     # your class RMSNorm(d_model, eps=...), probed: bad shape -> ValueError
    GPT(ModelConfig(norm="my_rmsnorm", norm_eps=1e-5))

Shapes: B = batch, T = tokens, C = d_model, nh = heads, hs = head_dim, V = vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from lmlab.model.config import ModelConfig
from lmlab.model.positions.encodings import LearnedPositionEmbedding
from lmlab.model.registry import FFNS, NORM_PLACEMENTS, NORMS, POSITIONS, build_attention

__all__ = ["GPT", "Block", "build_norm", "build_ffn", "build_position", "init_weights", "placement_gains"]


# --------------------------------------------------------------------------------------------
# Builders: a name in the config -> a module
# --------------------------------------------------------------------------------------------


def build_norm(cfg: ModelConfig) -> nn.Module:
    """``cfg.norm`` -> its :data:`lmlab.model.registry.NORMS` entry, over ``d_model`` with ``cfg.norm_eps`` (lesson 01)."""
    return NORMS[cfg.norm].build(cfg)


def build_ffn(cfg: ModelConfig) -> nn.Module:
    """``cfg.activation`` and ``cfg.d_ff`` -> its :data:`lmlab.model.registry.FFNS` entry (lesson 02)."""
    return FFNS[cfg.activation].build(cfg)


def build_position(cfg: ModelConfig):
    """``cfg.position`` -> the module GPT keeps as ``.position`` (sinusoidal / RoPE / ALiBi / T5 / yours),
    or ``None`` for ``learned`` (its table is ``GPT.pos_emb``) and ``none`` (lesson 03)."""
    return POSITIONS[cfg.position].build(cfg)


class Block(nn.Module):
    """One transformer layer: attention then feed-forward, each in a residual branch (lesson 01).

    Where the norms go is ``cfg.norm_position``'s :data:`lmlab.model.registry.NORM_PLACEMENTS` entry, a
    :class:`lmlab.model.norms.NormPlacement` (``self.placement``); the forward pass is its ``forward``:

    pre-LN:      x = x + f(norm(x))                  (GPT-2, LLaMA: stable)
    post-LN:     x = norm(x + f(x))                  (the original Transformer)
    sandwich-LN: x = x + norm_out(f(norm(x)))        (CogView: pre-LN + a norm before the add)
    DeepNorm:    x = norm(alpha * x + f(x))          (DeepNet: post-LN with an up-weighted skip,
                                                      and f's initial weights scaled by beta, see init_weights)

    ``layer`` is the block's index: :func:`lmlab.model.registry.build_attention` gives the kNN-memory layer
    (lesson 06) its own attention.
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.norm_position = cfg.norm_position
        self.placement = NORM_PLACEMENTS[cfg.norm_position].build(cfg)  # how the norms are wired (no weights)
        # Creation order norm1, attn, norm2, ffn, extra norms: the random stream (and state-dict order).
        self.norm1 = self.placement.wrap(build_norm(cfg))
        self.attn = build_attention(cfg, layer)
        self.norm2 = self.placement.wrap(build_norm(cfg))
        self.ffn = build_ffn(cfg)
        for name in self.placement.extra_norms:  # sandwich-LN: attn_out_norm, ffn_out_norm
            self.add_module(name, build_norm(cfg))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv_cache=None, positions=None) -> torch.Tensor:
        return self.placement.forward(self, x, attn_mask, kv_cache, positions)  # (B, T, C)


# --------------------------------------------------------------------------------------------
# Initialisation: one function, driven by what each weight does
# --------------------------------------------------------------------------------------------


def _weight_roles(model: nn.Module) -> dict[nn.Module, list[tuple[slice, str]]]:
    """Each part's ``init_roles()`` (``qk``, ``value``, ``output``, ``ffn_in``) by linear layer.
    A part without ``init_roles`` (one you wrote) gets plain N(0, 0.02) linears."""
    roles: dict[nn.Module, list[tuple[slice, str]]] = {}
    for block in model.blocks:
        for part in (block.attn, block.ffn):
            for linear, rows, role in (part.init_roles() if callable(getattr(part, "init_roles", None)) else ()):
                roles.setdefault(linear, []).append((rows, role))
    return roles


def _placement(model: nn.Module):
    return NORM_PLACEMENTS[model.config.norm_position].build(model.config)


def placement_gains(model: nn.Module) -> dict[nn.Module, list[tuple[slice, float]]]:
    """The rows the norm placement scales after any base init: ``{linear: [(rows, gain)]}`` from its
    ``init_gains()`` by weight role; DeepNorm's ``beta`` on ``value``, ``output`` and ``ffn_in``, empty for
    the other built-in placements (used by :func:`init_weights` and lesson 01's Xavier init)."""
    by_role = _placement(model).init_gains()
    gains: dict[nn.Module, list[tuple[slice, float]]] = {}
    for linear, roles in _weight_roles(model).items():
        scaled = [(rows, by_role[role]) for rows, role in roles if role in by_role]
        if scaled:
            gains[linear] = scaled
    return gains


def init_weights(model: nn.Module) -> None:
    """GPT-2's init: every linear and embedding N(0, 0.02), biases 0; weights whose role is
    ``output`` (they write into the residual stream) scaled by ``1 / sqrt(2 n_layers)`` if the norm
    placement says so (``scaled_residual_init``), then its gains by role (:func:`placement_gains`;
    under DeepNorm, DeepNet's ``beta`` on the ``value``, ``output`` and ``ffn_in`` weights instead)."""
    cfg = model.config
    roles, gains = _weight_roles(model), placement_gains(model)
    scaled = _placement(model).scaled_residual_init

    def init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if scaled and any(role == "output" for _, role in roles.get(module, ())):
                std /= math.sqrt(2 * cfg.n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            with torch.no_grad():
                for rows, gain in gains.get(module, ()):
                    module.weight[rows] *= gain
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    model.apply(init)  # children first, in registration order: the random stream every lesson's numbers come from


class GPT(nn.Module):
    """A causal decoder: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"GPT expects a ModelConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        n_positions = cfg.n_positions or cfg.context_length
        self.pos_emb = LearnedPositionEmbedding(n_positions, cfg.d_model) if POSITIONS[cfg.position].info.get("learned") else None
        self.position = build_position(cfg)  # lesson 03: sinusoidal / RoPE / ALiBi / T5 (None: learned, none)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()  # Identity: no per-call cost
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.final_norm = build_norm(cfg) if NORM_PLACEMENTS[cfg.norm_position].build(cfg).final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        init_weights(self)

    def with_config(self, **changes) -> "GPT":
        """A new model with ``changes`` applied to the config and this model's weights (lessons 03, 06).

        Used to evaluate a model trained at a short context at a longer one
        (``model.with_config(context_length=4 * L)``) or with RoPE scaling switched on
        (``rope_scaling={"type": "yarn", "factor": 4}``). Only options that add no weights can change.
        """
        cfg = dataclasses.replace(self.config, **changes)  # validates the new config
        if cfg.position == "learned" and self.config.n_positions is None and "n_positions" not in changes:
            cfg = dataclasses.replace(cfg, n_positions=self.config.context_length)  # the table keeps its trained size
        other = GPT(cfg).to(self.tok_emb.weight.device)
        try:
            other.load_state_dict(self.state_dict())
        except RuntimeError as err:
            raise ValueError(f"with_config can only change options that keep the weights' shapes; {sorted(changes)} changed them: {err}") from None
        return other.train(self.training)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, attn_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position. ``attn_mask`` (True = may attend, ``(T, T)`` or
        ``(B, 1, T, T)``) replaces the default causal mask, e.g. with a prefix-LM mask.
        ``position_ids (T,)`` replaces ``0..T-1`` (parallel context windows, lesson 06)."""
        cfg = self.config
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be an integer tensor of shape (B, T), got {got}")
        B, T = idx.shape
        if not 1 <= T <= cfg.context_length:
            raise ValueError(f"sequence length T={T} must be in [1, context_length={cfg.context_length}]")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={cfg.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")
        if attn_mask is not None and (attn_mask.dtype != torch.bool or attn_mask.shape[-2:] != (T, T)):
            raise ValueError(f"attn_mask must be a bool tensor whose last two dims are (T, T) = ({T}, {T}), got {attn_mask.dtype} {tuple(attn_mask.shape)}")

        if position_ids is not None and (not isinstance(position_ids, torch.Tensor) or position_ids.shape != (T,) or position_ids.is_floating_point()):
            raise ValueError(f"position_ids must be an integer tensor of shape (T,) = ({T},), got {getattr(position_ids, 'shape', position_ids)!r}")
        pos = torch.arange(T, device=idx.device) if position_ids is None else position_ids  # (T,)
        x, positions = self.embed(idx, pos, pos)  # (B, T, C), shared by every layer
        for block in self.blocks:
            x = block(x, attn_mask, positions=positions)  # (B, T, C)
        return self.lm_head(self.final_norm(x))  # (B, T, V)

    def embed(self, idx: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor):
        """The one way into the blocks (lessons 00, 03): token embedding, plus the learned position table
        and the position scheme's absolute embedding at ``q_positions (T,)`` (the new tokens'), then
        dropout. Returns ``(x (B, T, C), attention_positions)``: what every attention layer gets for keys
        at ``k_positions (T_k,)`` (``None`` without a position scheme). Used by :meth:`forward`,
        :meth:`forward_with_cache` and :mod:`lmlab.parallel.pipeline`'s first stage."""
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(q_positions)  # (B, T, C) + (T, C)
        positions = None
        if self.position is not None:  # lesson 03
            x = self.position.embed(x, q_positions)  # sinusoidal: + (T, C); others unchanged
            positions = self.position.for_attention(q_positions, k_positions)
        return self.drop(x), positions  # no norm right after the embedding (the seed's advice)

    def forward_with_cache(self, idx: torch.Tensor, cache):
        """Logits for the *new* tokens ``idx (B, T_new)`` given a KV cache holding the keys/values of every
        earlier token (lesson 08); returns ``(logits (B, T_new, V), cache)``. The caller makes the cache
        (:meth:`lmlab.infer.kv_cache.KVCache.for_model`, or a paged / sink cache with the same protocol):
        pass the whole prompt first (prefill), then one token per step (decode). Same logits as
        :meth:`forward` on the whole sequence. This is the protocol :mod:`lmlab.infer.decoding` uses.
        The cache is updated in place."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError(f"idx must be an integer tensor of shape (B, T_new), got {getattr(idx, 'shape', type(idx).__name__)}")
        B, T = idx.shape
        if idx.dtype not in (torch.long, torch.int32) or T < 1 or (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"idx must hold T_new >= 1 token ids in [0, vocab_size={self.config.vocab_size}), got {idx.dtype} {tuple(idx.shape)}")
        if not callable(getattr(cache, "layer", None)) or getattr(cache, "batch", None) != B:
            raise ValueError(f"cache must be a KVCache for batch {B} (make one with lmlab.infer.kv_cache.KVCache.for_model(model, batch={B})), "
                             f"got {type(cache).__name__} (batch {getattr(cache, 'batch', None)})")
        start = cache.length
        if start + T > self.config.context_length:
            raise ValueError(f"cached tokens ({start}) + new tokens ({T}) exceed context_length={self.config.context_length}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,): positions continue after the cache
        x, positions = self.embed(idx, pos, torch.arange(start + T, device=idx.device))  # queries at start.., keys at 0..
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache=cache.layer(i), positions=positions)  # (B, T, C)
        return self.lm_head(self.final_norm(x)), cache  # (B, T, V)
