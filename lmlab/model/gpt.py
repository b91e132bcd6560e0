"""A GPT-style causal decoder built from small swappable parts (lesson 00, ``lessons/00_tour``).

One model, many parts: :class:`ModelConfig` names each choice (norm, where it goes, activation,
position scheme, attention) and :mod:`lmlab.model.registry` turns a name into a module. The config's
validation and the builders below read the same tables; :func:`lmlab.scaling.counting.param_counts` counts what they build.

**Adding a variant, or your own part, in one place** (``FFNS``, ``POSITIONS``, ``ATTENTIONS`` alike)::

    from lmlab.model.registry import NORMS, register_norm
    NORMS.register("scalenorm", lambda cfg: ScaleNorm(cfg.d_model))  # validated, built, counted
    register_norm("my_rmsnorm", RMSNorm)     # your class RMSNorm(d_model, eps=...), probed: bad shape -> ValueError
    GPT(ModelConfig(norm="my_rmsnorm", norm_eps=1e-5))

Shapes: B = batch, T = tokens, C = d_model, nh = heads, hs = head_dim, V = vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from lmlab.model.ffn import glu_hidden_size
from lmlab.infer.kv_cache import KVCache
from lmlab.model.memory import check_knn_memory
from lmlab.model.positions.rope_scaling import check_rope_scaling
from lmlab.model.norms import DeepNorm, deepnorm_constants, pre_ln_block
from lmlab.model.registry import ATTENTIONS, FFNS, NORMS, POSITIONS, build_attention
from lmlab.model.positions.encodings import LearnedPositionEmbedding
from lmlab.argcheck import check_choice, check_int, check_kv_heads, check_number

__all__ = ["ModelConfig", "GPT", "Block", "NORMS", "NORM_POSITIONS", "ACTIVATIONS", "POSITIONS", "ATTENTIONS",
           "norms_per_layer", "has_final_norm", "build_norm", "build_ffn", "build_position", "init_weights",
           "deepnorm_gains"]

# The option tables live in lmlab.model.registry (one per kind of part); these are the same objects.
ACTIVATIONS = FFNS  # lesson 02: ModelConfig.activation names the FFN
NORM_POSITIONS = ("pre", "post", "sandwich", "deepnorm")  # lesson 01: how Block wires its norms
GLU_MULTIPLE_OF = 8  # default gated hidden size is rounded up to a multiple of this


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
    (relative bias), ``rope`` or ``alibi`` (see :mod:`lmlab.model.positions.encodings`).
    ``n_positions``: rows of the learned table (``position="learned"`` only); ``None`` means
    ``context_length``. To run a trained model at a longer ``context_length`` keep
    ``n_positions`` at the trained length: asking for a position past the table raises a
    ``ValueError`` (learned positions cannot extrapolate) instead of using untrained rows.
    ``rope_base``, ``rope_scaling`` (lesson 06, ``position="rope"`` only): RoPE's base and an
    optional context-extension dict (``linear``, ``ntk``, ``dynamic_ntk``, ``yarn``, ``truncate``;
    see :mod:`lmlab.infer.long_context`).
    ``n_sink`` (lesson 06): with ``sliding_window``, the first ``n_sink`` tokens stay visible to
    every query (Λ-shaped attention). ``knn_memory`` (lesson 06): ``{"layer": i, "top_k": k,
    "size": M}`` makes layer ``i`` a :class:`lmlab.model.memory.KNNMemoryAttention`.
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
    rope_scaling: dict | None = None  # lesson 06: RoPE context extension, see lmlab.infer.long_context
    n_sink: int = 0  # lesson 06: sink tokens kept visible with attention="sliding_window"
    knn_memory: dict | None = None  # lesson 06: {"layer": i, "top_k": k, "size": M}

    norm_eps: float | None = None  # lesson 01/13: the norm's eps; None = the norm's own default (LayerNorm 1e-5, RMSNorm 1e-6)

    def __post_init__(self):
        where = "ModelConfig"
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            check_int(getattr(self, name), name, where)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"try n_heads in {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]}"
            )
        check_int(self.d_ff, "d_ff", where, allow_none=True)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        check_number(self.norm_eps, "norm_eps", where, low=0.0, low_inclusive=False, allow_none=True)
        check_choice(self.norm_position, "norm_position", NORM_POSITIONS, where)
        for name, table in (("norm", NORMS), ("activation", FFNS), ("position", POSITIONS), ("attention", ATTENTIONS)):
            check_choice(getattr(self, name), name, table.names(), where)
        self.n_kv_heads = check_kv_heads(self.n_kv_heads, self.n_heads, where)
        if ATTENTIONS[self.attention].info.get("needs_window"):
            if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
                raise ValueError(f"ModelConfig.window must be an int >= 1 with attention={self.attention!r}, got {self.window!r}")
        elif self.window is not None:
            raise ValueError(f"ModelConfig.window only applies to attention='sliding_window', got window={self.window!r} with attention={self.attention!r}")
        self._check_long_context()
        if self.d_ff is None:
            plain = 4 * self.d_model
            self.d_ff = glu_hidden_size(plain, GLU_MULTIPLE_OF) if FFNS[self.activation].info.get("gated") else plain

    def _check_long_context(self) -> None:
        """Lessons 03 and 06: the position and long-context options."""
        where = "ModelConfig"
        if self.n_positions is not None:
            check_int(self.n_positions, "n_positions", where, allow_none=True)
            if not POSITIONS[self.position].info.get("learned"):
                raise ValueError(f"ModelConfig.n_positions only applies to position='learned', got position={self.position!r}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not self.rope_base > 1:
            raise ValueError(f"ModelConfig.rope_base must be a number > 1, got {self.rope_base!r}")
        if POSITIONS[self.position].info.get("rope") and self.head_dim % 2:
            raise ValueError(f"ModelConfig: position={self.position!r} needs an even head_dim = d_model / n_heads, got {self.head_dim}")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"ModelConfig: position='sinusoidal' needs an even d_model, got {self.d_model}")
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(f"ModelConfig.rope_scaling only applies to position='rope', got position={self.position!r}")
        check_rope_scaling(self.rope_scaling)
        check_int(self.n_sink, "n_sink", where, minimum=0)
        if self.n_sink and not ATTENTIONS[self.attention].info.get("needs_window"):
            raise ValueError(f"ModelConfig.n_sink only applies to attention='sliding_window', got attention={self.attention!r}")
        check_knn_memory(self.knn_memory, self.n_layers)

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``d_model // n_heads`` (HF and CS336's name)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


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


def norms_per_layer(cfg: ModelConfig) -> int:
    """Norm modules in one block: 4 for sandwich-LN (two more on the sub-layer outputs), else 2."""
    return 4 if cfg.norm_position == "sandwich" else 2


def has_final_norm(cfg: ModelConfig) -> bool:
    """pre- and sandwich-LN need a norm before the output layer (their residual stream is never
    normalized); post-LN and DeepNorm already end on one."""
    return cfg.norm_position in ("pre", "sandwich")


class Block(nn.Module):
    """One transformer layer: attention then feed-forward, each in a residual branch (lesson 01).

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
        deep = cfg.norm_position == "deepnorm"
        alpha = deepnorm_constants(cfg.n_layers).alpha
        self.norm1 = DeepNorm(cfg.d_model, alpha, norm=build_norm(cfg)) if deep else build_norm(cfg)
        self.attn = build_attention(cfg, layer)
        self.norm2 = DeepNorm(cfg.d_model, alpha, norm=build_norm(cfg)) if deep else build_norm(cfg)
        self.ffn = build_ffn(cfg)
        if cfg.norm_position == "sandwich":
            self.attn_out_norm = build_norm(cfg)
            self.ffn_out_norm = build_norm(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv_cache=None, positions=None) -> torch.Tensor:
        if self.norm_position == "pre":
            attn = self.attn if attn_mask is None and kv_cache is None and positions is None else (
                lambda h: self.attn(h, attn_mask, kv_cache, positions))
            x = pre_ln_block(x, attn, self.ffn, self.norm1, self.norm2)
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


# --------------------------------------------------------------------------------------------
# Initialisation: one function, driven by what each weight does
# --------------------------------------------------------------------------------------------

DEEPNORM_SCALED = ("value", "output", "ffn_in")  # DeepNet scales v, the output projections and the FFN by beta


def _weight_roles(model: nn.Module) -> dict[nn.Module, list[tuple[slice, str]]]:
    """Each part's ``init_roles()`` (``qk``, ``value``, ``output``, ``ffn_in``) by linear layer.
    A part without ``init_roles`` (one you wrote) gets plain N(0, 0.02) linears."""
    roles: dict[nn.Module, list[tuple[slice, str]]] = {}
    for block in model.blocks:
        for part in (block.attn, block.ffn):
            for linear, rows, role in (part.init_roles() if callable(getattr(part, "init_roles", None)) else ()):
                roles.setdefault(linear, []).append((rows, role))
    return roles


def deepnorm_gains(model: nn.Module) -> dict[nn.Module, list[tuple[slice, float]]]:
    """The rows DeepNorm scales by ``beta`` after any base init: ``{linear: [(rows, beta)]}``; empty
    unless ``norm_position == "deepnorm"`` (used by :func:`init_weights` and lesson 01's Xavier init)."""
    cfg = model.config
    if cfg.norm_position != "deepnorm":
        return {}
    beta = deepnorm_constants(cfg.n_layers).beta
    gains: dict[nn.Module, list[tuple[slice, float]]] = {}
    for linear, roles in _weight_roles(model).items():
        scaled = [(rows, beta) for rows, role in roles if role in DEEPNORM_SCALED]
        if scaled:
            gains[linear] = scaled
    return gains


def init_weights(model: nn.Module) -> None:
    """GPT-2's init: every linear and embedding N(0, 0.02), biases 0; weights whose role is
    ``output`` (they write into the residual stream) scaled by ``1 / sqrt(2 n_layers)``. Under
    DeepNorm that scaling is replaced by DeepNet's ``beta`` on the ``value``, ``output`` and
    ``ffn_in`` weights (:func:`deepnorm_gains`)."""
    cfg = model.config
    roles, gains = _weight_roles(model), deepnorm_gains(model)
    deep = cfg.norm_position == "deepnorm"

    def init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if not deep and any(role == "output" for _, role in roles.get(module, ())):
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
        self.final_norm = build_norm(cfg) if has_final_norm(cfg) else nn.Identity()
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
        """Logits for the *new* tokens ``idx (B, T_new)`` given a :class:`lmlab.infer.kv_cache.KVCache`
        holding the keys/values of every earlier token; returns ``(logits (B, T_new, V), cache)``
        (lesson 08). ``cache=None`` starts a cache (prefill: the whole prompt in one pass); then
        pass one token per step (decode). Same logits as :meth:`forward` on the whole sequence.
        This is the protocol :func:`lmlab.infer.decoding.generation` uses. The cache is updated in place."""
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
