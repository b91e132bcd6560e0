"""A GPT-style causal decoder built from small swappable parts (lesson 00, ``lessons/00_tour``).

One model, many parts: :class:`ModelConfig` names each choice (norm, where it goes, activation,
position scheme, attention) and the builders below turn a name into a module. Later chapters add
names to the option tables (``NORMS``, ``ACTIVATIONS``, ...) instead of writing new models.

Shapes: B = batch, T = tokens, C = d_model, nh = heads, hs = head size, V = vocabulary.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .activations import GLU_KINDS, FeedForward, glu_hidden_size
from .attention import MultiHeadAttention
from .norms import DeepNorm, deepnorm_constants, make_norm
from .position_scheme import build_position
from .positions import POSITIONS, LearnedPositionEmbedding

__all__ = ["ModelConfig", "GPT", "NORMS", "NORM_POSITIONS", "ACTIVATIONS", "POSITIONS", "ATTENTIONS"]

# The option tables. A chapter that adds a choice adds it here and to the matching builder.
NORMS = ("layernorm", "rmsnorm")  # lesson 01
NORM_POSITIONS = ("pre", "post", "sandwich", "deepnorm")  # lesson 01
ACTIVATIONS = ("gelu", "relu", "swiglu", "geglu")  # lesson 02
GLU_MULTIPLE_OF = 8  # default gated hidden size is rounded up to a multiple of this
# POSITIONS (lesson 03) = ("learned", "none", "sinusoidal", "t5", "rope", "alibi"), from lmlab.positions
ATTENTIONS = ("full", "sliding_window")  # lesson 04


@dataclass
class ModelConfig:
    """Every architectural choice of the model, validated on creation.

    ``norm``: ``layernorm`` (with a bias if ``bias``) or ``rmsnorm`` (never a bias).
    ``norm_position``: ``pre``, ``post``, ``sandwich`` (pre-LN plus a norm on each sub-layer's
    output before the residual add) or ``deepnorm`` (post-LN with DeepNet's alpha and beta).
    ``activation``: ``gelu``, ``relu``, or the gated ``swiglu`` / ``geglu``.
    ``d_ff``: the FFN hidden size (for gated kinds, the size after gating, so the first projection
    has ``2 * d_ff`` outputs). ``None`` means ``4 * d_model`` for plain FFNs and, for gated ones,
    the parameter-matched ``glu_hidden_size(4 * d_model, 8)`` (2/3 of that, rounded up to a
    multiple of 8: 344 for ``d_model=128``).
    ``n_kv_heads``: key/value heads shared by the query heads (lesson 04): ``None`` = ``n_heads``
    (multi-head), 1 = multi-query, a divisor in between = grouped-query attention.
    ``attention``: ``full`` (causal) or ``sliding_window`` (causal, each token sees its ``window``
    most recent tokens; ``window`` is required then and meaningless otherwise).
    ``position`` (lesson 03): ``learned`` (GPT-2 table), ``none``, ``sinusoidal``, ``t5``
    (relative bias), ``rope`` or ``alibi`` (see :mod:`lmlab.positions`).
    ``n_positions``: rows of the learned table (``position="learned"`` only); ``None`` means
    ``context_length``. To run a trained model at a longer ``context_length`` keep
    ``n_positions`` at the trained length: asking for a position past the table raises a
    ``ValueError`` (learned positions cannot extrapolate) instead of using untrained rows.
    ``rope_base``, ``rope_scaling`` (lesson 06, ``position="rope"`` only): RoPE's base and an
    optional context-extension dict (``linear``, ``ntk``, ``dynamic_ntk``, ``yarn``, ``truncate``;
    see :mod:`lmlab.longctx`).
    ``n_sink`` (lesson 06): with ``sliding_window``, the first ``n_sink`` tokens stay visible to
    every query (Λ-shaped attention). ``knn_memory`` (lesson 06): ``{"layer": i, "top_k": k,
    "size": M}`` makes layer ``i`` a :class:`lmlab.longctx.KNNMemoryAttention`.
    """

    vocab_size: int = 256
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # hidden size of the feed-forward block; None means 4 * d_model
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    norm_position: str = "pre"
    activation: str = "gelu"
    position: str = "learned"
    attention: str = "full"
    tie_embeddings: bool = True  # share the token embedding with the output layer (GPT-2)
    n_kv_heads: int | None = None  # lesson 04: None means n_heads (MHA); 1 is MQA; else GQA
    window: int | None = None  # lesson 04: tokens each query sees with attention="sliding_window"
    n_positions: int | None = None  # lesson 03: learned table size; None means context_length
    rope_base: float = 10000.0  # lesson 03: RoPE's base
    rope_scaling: dict | None = None  # lesson 06: RoPE context extension, see lmlab.longctx
    n_sink: int = 0  # lesson 06: sink tokens kept visible with attention="sliding_window"
    knn_memory: dict | None = None  # lesson 06: {"layer": i, "top_k": k, "size": M}
    norm_eps: float | None = None  # the norm's epsilon; None = the norm's own default (lmlab.norms.DEFAULT_EPS)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"try n_heads in {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]}"
            )
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or isinstance(self.d_ff, bool) or self.d_ff < 1):
            raise ValueError(f"ModelConfig.d_ff must be an int >= 1 or None, got {self.d_ff!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (
            ("norm", NORMS),
            ("norm_position", NORM_POSITIONS),
            ("activation", ACTIVATIONS),
            ("position", POSITIONS),
            ("attention", ATTENTIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if not isinstance(self.n_kv_heads, int) or isinstance(self.n_kv_heads, bool) or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads must divide n_heads ({self.n_heads}): one of "
                f"{[h for h in range(1, self.n_heads + 1) if self.n_heads % h == 0]} (or None), got {self.n_kv_heads!r}"
            )
        if self.attention == "sliding_window":
            if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
                raise ValueError(f"ModelConfig.window must be an int >= 1 with attention='sliding_window', got {self.window!r}")
        elif self.window is not None:
            raise ValueError(f"ModelConfig.window only applies to attention='sliding_window', got window={self.window!r} with attention={self.attention!r}")
        self._check_long_context()
        if self.norm_eps is not None:
            from .validation import check_positive

            self.norm_eps = check_positive(self.norm_eps, "norm_eps", "ModelConfig")
        if self.d_ff is None:
            plain = 4 * self.d_model
            self.d_ff = glu_hidden_size(plain, GLU_MULTIPLE_OF) if self.activation in GLU_KINDS else plain

    def _check_long_context(self) -> None:
        """Lessons 03 and 06: the position and long-context options."""
        from .longctx import check_knn_memory, check_rope_scaling

        if self.n_positions is not None:
            if not isinstance(self.n_positions, int) or isinstance(self.n_positions, bool) or self.n_positions < 1:
                raise ValueError(f"ModelConfig.n_positions must be an int >= 1 or None, got {self.n_positions!r}")
            if self.position != "learned":
                raise ValueError(f"ModelConfig.n_positions only applies to position='learned', got position={self.position!r}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not self.rope_base > 1:
            raise ValueError(f"ModelConfig.rope_base must be a number > 1, got {self.rope_base!r}")
        if self.position == "rope" and self.head_size % 2:
            raise ValueError(f"ModelConfig: position='rope' needs an even head_dim = d_model / n_heads, got {self.head_size}")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"ModelConfig: position='sinusoidal' needs an even d_model, got {self.d_model}")
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(f"ModelConfig.rope_scaling only applies to position='rope', got position={self.position!r}")
        check_rope_scaling(self.rope_scaling)
        if not isinstance(self.n_sink, int) or isinstance(self.n_sink, bool) or self.n_sink < 0:
            raise ValueError(f"ModelConfig.n_sink must be an int >= 0, got {self.n_sink!r}")
        if self.n_sink and self.attention != "sliding_window":
            raise ValueError(f"ModelConfig.n_sink only applies to attention='sliding_window', got attention={self.attention!r}")
        check_knn_memory(self.knn_memory, self.n_layers)

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Builders: a name in the config -> a module
# --------------------------------------------------------------------------------------------


def build_norm(cfg: ModelConfig) -> nn.Module:
    """``cfg.norm`` -> a :mod:`lmlab.norms` module over ``d_model`` (lesson 01)."""
    if cfg.norm not in NORMS:
        raise ValueError(f"ModelConfig.norm must be one of {NORMS}, got {cfg.norm!r}")
    return make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def build_ffn(cfg: ModelConfig) -> FeedForward:
    """``cfg.activation`` and ``cfg.d_ff`` -> a :class:`lmlab.activations.FeedForward` (lesson 02)."""
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"ModelConfig.activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
    ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, bias=cfg.bias, dropout=cfg.dropout)
    ffn.down.is_residual_projection = True
    return ffn


class SelfAttention(MultiHeadAttention):
    """Causal multi-head self-attention unless a mask is given (True = may attend); with
    ``cfg.n_kv_heads`` K/V heads (MQA/GQA) and an optional sliding window (lesson 04, see
    :class:`lmlab.attention.MultiHeadAttention`). ``kv_cache`` is for lesson 08's decoding."""

    def __init__(self, cfg: ModelConfig):
        window = cfg.window if cfg.attention == "sliding_window" else None
        super().__init__(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias, dropout=cfg.dropout, window=window,
                         n_sink=cfg.n_sink)


class Block(nn.Module):
    """One transformer layer: attention then feed-forward, each in a residual branch (lesson 01).

    pre-LN:      x = x + f(norm(x))                  (GPT-2, LLaMA: stable)
    post-LN:     x = norm(x + f(x))                  (the original Transformer)
    sandwich-LN: x = x + norm_out(f(norm(x)))        (CogView: pre-LN + a norm before the add)
    DeepNorm:    x = norm(alpha * x + f(x))          (DeepNet: post-LN with an up-weighted skip,
                                                      and f's initial weights scaled by beta)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_position = cfg.norm_position
        deep = cfg.norm_position == "deepnorm"
        alpha, beta = deepnorm_constants(cfg.n_layers)
        self.norm1 = DeepNorm(cfg.d_model, alpha, norm=cfg.norm, eps=cfg.norm_eps, bias=cfg.bias) if deep else build_norm(cfg)
        self.attn = SelfAttention(cfg)
        self.norm2 = DeepNorm(cfg.d_model, alpha, norm=cfg.norm, eps=cfg.norm_eps, bias=cfg.bias) if deep else build_norm(cfg)
        self.ffn = build_ffn(cfg)
        if deep:  # DeepNet: init scaled by beta (in GPT._init_weights) for the FFN, v and the output projection
            C, kv = cfg.d_model, self.attn.kv_dim
            self.attn.qkv.init_gain, self.attn.qkv.init_gain_rows = beta, slice(C + kv, C + 2 * kv)  # v only, not q, k
            self.attn.proj.init_gain = beta
            self.ffn.up.init_gain = self.ffn.down.init_gain = beta
        if cfg.norm_position == "sandwich":
            self.attn_out_norm = build_norm(cfg)
            self.ffn_out_norm = build_norm(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv_cache=None, positions=None) -> torch.Tensor:
        if self.norm_position == "pre":
            x = x + self.attn(self.norm1(x), attn_mask, kv_cache, positions)
            x = x + self.ffn(self.norm2(x))
        elif self.norm_position == "post":
            x = self.norm1(x + self.attn(x, attn_mask, kv_cache, positions))
            x = self.norm2(x + self.ffn(x))
        elif self.norm_position == "sandwich":
            x = x + self.attn_out_norm(self.attn(self.norm1(x), attn_mask, kv_cache, positions))
            x = x + self.ffn_out_norm(self.ffn(self.norm2(x)))
        else:  # deepnorm: norm(alpha * x + f(x))
            x = self.norm1(x, self.attn(x, attn_mask, kv_cache, positions))
            x = self.norm2(x, self.ffn(x))
        return x  # (B, T, C)


class GPT(nn.Module):
    """A causal decoder: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"GPT expects a ModelConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        n_positions = cfg.n_positions or cfg.context_length
        self.pos_emb = LearnedPositionEmbedding(n_positions, cfg.d_model) if cfg.position == "learned" else None
        self.position = build_position(cfg)  # lesson 03: sinusoidal / RoPE / ALiBi / T5 (None: learned, none)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()  # Identity: no per-call cost
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # pre- and sandwich-LN need a final norm before the output layer (their residual stream is
        # never normalized); post-LN and DeepNorm already end on a norm.
        self.final_norm = build_norm(cfg) if cfg.norm_position in ("pre", "sandwich") else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.knn_memory is not None:  # lesson 06: one layer also retrieves from a kNN memory
            from .longctx import KNNMemoryAttention

            old = self.blocks[cfg.knn_memory["layer"]].attn
            self.blocks[cfg.knn_memory["layer"]].attn = KNNMemoryAttention(
                cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias, dropout=cfg.dropout, window=old.window,
                n_sink=cfg.n_sink, top_k=cfg.knn_memory["top_k"], memory_size=cfg.knn_memory["size"])
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2: N(0, 0.02), and residual projections scaled down by sqrt(2 * n_layers).
        # DeepNorm replaces that scaling by its beta (``init_gain``, on some rows only for qkv).
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_projection", False) and self.config.norm_position != "deepnorm":
                std /= math.sqrt(2 * self.config.n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if hasattr(module, "init_gain"):
                with torch.no_grad():
                    module.weight[getattr(module, "init_gain_rows", slice(None))] *= module.init_gain
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

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

        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)  # (B, T, C) + (T, C)
        positions = None
        if self.position is not None:  # lesson 03
            x = self.position.embed(x, pos)  # sinusoidal: + (T, C); others unchanged
            positions = self.position.for_attention(pos, pos)  # shared by every layer
        x = self.drop(x)  # no norm right after the embedding (the seed's advice)
        for block in self.blocks:
            x = block(x, attn_mask, positions=positions)  # (B, T, C)
        return self.lm_head(self.final_norm(x))  # (B, T, V)

    def forward_with_cache(self, idx: torch.Tensor, cache=None):
        """Logits for the *new* tokens ``idx (B, T_new)`` given a :class:`lmlab.kvcache.KVCache`
        holding the keys/values of every earlier token; returns ``(logits (B, T_new, V), cache)``
        (lesson 08). ``cache=None`` starts a cache (prefill: the whole prompt in one pass); then
        pass one token per step (decode). Same logits as :meth:`forward` on the whole sequence.
        This is the protocol :func:`lmlab.decoding.generate` uses. The cache is updated in place."""
        from .kvcache import KVCache

        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError(f"idx must be an integer tensor of shape (B, T_new), got {getattr(idx, 'shape', type(idx).__name__)}")
        B, T = idx.shape
        if idx.dtype not in (torch.long, torch.int32) or T < 1 or (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"idx must hold T_new >= 1 token ids in [0, vocab_size={self.config.vocab_size}), got {idx.dtype} {tuple(idx.shape)}")
        if cache is None:
            p = self.tok_emb.weight
            cache = KVCache.for_model(self, batch=B, dtype=p.dtype, device=p.device)
        if not callable(getattr(cache, "layer", None)) or cache.batch != B:
            raise ValueError(f"cache must be a KVCache for batch {B}, got {type(cache).__name__} (batch {getattr(cache, 'batch', None)})")
        start = cache.length
        if start + T > self.config.context_length:
            raise ValueError(f"cached tokens ({start}) + new tokens ({T}) exceed context_length={self.config.context_length}")
        x = self.tok_emb(idx)  # (B, T, C)
        pos = torch.arange(start, start + T, device=idx.device)  # (T,): positions continue after the cache
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        positions = None
        if self.position is not None:  # lesson 03: queries at start.., keys at 0..start+T-1
            x = self.position.embed(x, pos)
            positions = self.position.for_attention(pos, torch.arange(start + T, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache=cache.layer(i), positions=positions)  # (B, T, C)
        return self.lm_head(self.final_norm(x)), cache  # (B, T, V)
