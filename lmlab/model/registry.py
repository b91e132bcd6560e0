"""The model's parts: one table per kind of part, and how your own part plugs in (lessons 00-04, 13).

:class:`lmlab.model.config.ModelConfig` names each choice by a string; the tables here turn the name into a
module. Config validation and :class:`lmlab.model.gpt.GPT` read them (and :func:`lmlab.scaling.counting.param_counts`
counts the GPT they build, never a formula here), so a new variant is *one entry* (plus its module)::

    NORMS.register("scalenorm", lambda cfg: ScaleNorm(cfg.d_model))       # cfg -> nn.Module
    ModelConfig(norm="scalenorm")                                          # now valid everywhere

=======================  ============================  =============================================
table                    entry builds                   built-in names
=======================  ============================  =============================================
:data:`NORMS`            ``build(cfg)`` (..., C)->      ``layernorm``, ``rmsnorm``
:data:`NORM_PLACEMENTS`  ``build(cfg)`` NormPlacement   ``pre``, ``post``, ``sandwich``, ``deepnorm``
:data:`FFNS`             ``build(cfg)`` (B,T,C)->       ``gelu``, ``relu``, ``swiglu``, ``geglu`` (from
                                                        :data:`lmlab.model.ffn.FFN_ACTIVATIONS`)
:data:`POSITIONS`        ``build(cfg)`` scheme|None     ``learned``, ``none``, ``sinusoidal``, ``t5``,
                                                        ``rope``, ``alibi``
:data:`ATTENTIONS`       ``build(cfg, layer)``          ``full``, ``sliding_window``
:data:`LAYER_ATTENTIONS` ``build(cfg, layer)``          ``knn_memory`` (the layer ``knn_memory["layer"]``)
=======================  ============================  =============================================

RoPE's context extensions (``ModelConfig.rope_scaling``) have their own table,
:data:`lmlab.model.positions.rope_scaling.ROPE_SCALINGS`.

**Your part** (the last exercise of chapters 01-04): register the class you wrote under a name and
use the name in a config. Each ``register_*`` builds the part once on a small probe input and
checks the output's shape, so a wrong signature fails *here*, with a message, not deep in a
forward pass::

    register_norm("my_rmsnorm", RMSNorm)                   # RMSNorm(d_model, eps=...) -> (..., d) -> (..., d)
    register_ffn("my_swiglu", SwiGLU, gated=True)          # SwiGLU(d_model, hidden)
    register_rope("my_rope", RotaryEmbedding)              # RotaryEmbedding(head_dim, base)(x, positions)
    register_attention("my_gqa", GQAttention)              # GQAttention(d_model, n_heads, n_kv_heads)(x)
    model = GPT(ModelConfig(norm="my_rmsnorm", ...))

:func:`lmlab.grading.plug_and_train.train_with_part` is the graders' harness: the same model with lmlab's
part and with yours, from the same weights, trained for a few steps (see ``lmlab.grading.harness``).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from typing import Callable, Iterator

import torch
import torch.nn as nn

from lmlab.argcheck import check_choice
from lmlab.model.attention import MultiHeadAttention
from lmlab.model.ffn import FFN_ACTIVATIONS, FeedForward
from lmlab.model.memory import KNNMemoryAttention
from lmlab.model.norms import DEFAULT_EPS, DeepNormPlacement, LayerNorm, NormPlacement, PostNorm, PreNorm, RMSNorm, SandwichNorm
from lmlab.model.parts import Part, PartRegistry
from lmlab.model.positions.scheme import PositionScheme, RotaryPositions

__all__ = [
    "NORMS", "NORM_PLACEMENTS", "FFNS", "POSITIONS", "ATTENTIONS", "LAYER_ATTENTIONS", "KINDS", "TABLES",
    "register_norm", "register_norm_placement", "register_ffn", "register_rope", "register_attention", "register",
    "unregister", "plugged", "layer_attention", "build_attention",
]


NORMS = PartRegistry("norm", "NORMS")  # ModelConfig.norm (lesson 01)
NORM_PLACEMENTS = PartRegistry("norm_position", "NORM_PLACEMENTS")  # ModelConfig.norm_position (lesson 01)
FFNS = PartRegistry("activation", "FFNS")  # ModelConfig.activation: the FFN it names (lesson 02)
POSITIONS = PartRegistry("position", "POSITIONS")  # ModelConfig.position (lessons 03, 06)
ATTENTIONS = PartRegistry("attention", "ATTENTIONS")  # ModelConfig.attention (lessons 04, 06)
LAYER_ATTENTIONS = PartRegistry("layer attention", "LAYER_ATTENTIONS")  # one layer's own attention (lesson 06: kNN memory)
KINDS = {"norm": NORMS, "activation": FFNS, "position": POSITIONS, "attention": ATTENTIONS}  # a learner's part plugs in here
TABLES = {"norm": NORMS, "norm_position": NORM_PLACEMENTS, "activation": FFNS, "position": POSITIONS,
          "attention": ATTENTIONS}  # every ModelConfig option a table names


# --------------------------------------------------------------------------------------------
# The built-in entries
# --------------------------------------------------------------------------------------------


def _eps(cfg, kind: str) -> float:
    return DEFAULT_EPS[kind] if cfg.norm_eps is None else cfg.norm_eps


NORMS.register("layernorm", lambda cfg: LayerNorm(cfg.d_model, eps=_eps(cfg, "layernorm"), bias=cfg.bias))
NORMS.register("rmsnorm", lambda cfg: RMSNorm(cfg.d_model, eps=_eps(cfg, "rmsnorm")))  # never a bias



def register_norm_placement(name: str, placement: type[NormPlacement]) -> Part:
    """``ModelConfig(norm_position=name)``: ``placement``, a :class:`lmlab.model.norms.NormPlacement`
    subclass, says how a block wires its norms; its entry builds ``placement(n_layers)``."""
    if not (isinstance(placement, type) and issubclass(placement, NormPlacement)):
        raise ValueError(f"norm_position part {name!r} must be a NormPlacement subclass, got {placement!r}")
    return NORM_PLACEMENTS.register(name, lambda cfg: placement(cfg.n_layers))


register_norm_placement("pre", PreNorm)
register_norm_placement("post", PostNorm)
register_norm_placement("sandwich", SandwichNorm)
register_norm_placement("deepnorm", DeepNormPlacement)

for _kind, _act in FFN_ACTIVATIONS.items():  # one entry per row of lmlab.model.ffn's table
    FFNS.register(
        _kind,
        lambda cfg, _k=_kind: FeedForward(cfg.d_model, cfg.d_ff, _k, bias=cfg.bias, dropout=cfg.dropout),
        gated=_act.gated,
    )

POSITIONS.register("learned", lambda cfg: None, learned=True)  # the table is GPT.pos_emb (a LearnedPositionEmbedding)
POSITIONS.register("none", lambda cfg: None)
for _kind in ("sinusoidal", "t5", "rope", "alibi"):
    POSITIONS.register(_kind, lambda cfg, _k=_kind: PositionScheme(_k, cfg.d_model, cfg.n_heads, cfg.rope_base, cfg.rope_scaling),
                       rope=_kind == "rope")


def _mha(cfg, layer: int) -> MultiHeadAttention:
    window = cfg.window if ATTENTIONS[cfg.attention].info.get("needs_window") else None
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias, dropout=cfg.dropout,
                              window=window, n_sink=cfg.n_sink)


ATTENTIONS.register("full", _mha)
ATTENTIONS.register("sliding_window", _mha, needs_window=True)


def _knn_attention(cfg, layer: int) -> KNNMemoryAttention:
    window = cfg.window if ATTENTIONS[cfg.attention].info.get("needs_window") else None
    return KNNMemoryAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias, dropout=cfg.dropout,
                              window=window, n_sink=cfg.n_sink, top_k=cfg.knn_memory["top_k"],
                              memory_size=cfg.knn_memory["size"])


# A layer's own attention, chosen by a per-layer option of the config instead of ModelConfig.attention:
# ``applies(cfg, layer)`` says which layer. kNN memory (lesson 06): ModelConfig.knn_memory["layer"].
LAYER_ATTENTIONS.register("knn_memory", _knn_attention,
                          applies=lambda cfg, layer: cfg.knn_memory is not None and layer == cfg.knn_memory["layer"])


def layer_attention(cfg, layer: int) -> Part:
    """The entry layer ``layer`` is built from: the first :data:`LAYER_ATTENTIONS` entry that applies to
    it, else ``cfg.attention``'s :data:`ATTENTIONS` entry. The one place that knows which layer gets what."""
    for name in LAYER_ATTENTIONS:
        if LAYER_ATTENTIONS[name].info["applies"](cfg, layer):
            return LAYER_ATTENTIONS[name]
    return ATTENTIONS[cfg.attention]


def build_attention(cfg, layer: int) -> nn.Module:
    """Layer ``layer``'s attention module (see :func:`layer_attention`)."""
    return layer_attention(cfg, layer).build(cfg, layer)


# --------------------------------------------------------------------------------------------
# Your own part
# --------------------------------------------------------------------------------------------


def _call(factory, name: str, kind: str, signature: str, *args, **optional):
    """``factory(*args, **those optional kwargs its signature accepts)``; a TypeError says what was expected."""
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in optional.items() if v is not None and (takes_all or k in params)}
    except (TypeError, ValueError):  # builtins without a signature
        kwargs = {}
    try:
        return factory(*args, **kwargs)
    except TypeError as err:
        raise ValueError(f"{kind} part {name!r} must be built as {signature}; calling it with {args} {kwargs} failed: {err}") from None


def _probe(kind: str, name: str, fn: Callable, x: torch.Tensor, want: tuple, call: str) -> None:
    try:
        with torch.no_grad():
            y = fn(x)
    except NotImplementedError:
        raise  # an exercise stub: the grader reports "not implemented"
    except Exception as err:  # noqa: BLE001 - any failure of the learner's part is reported the same way
        raise ValueError(f"{kind} part {name!r}: {call} on a probe input of shape {tuple(x.shape)} raised "
                         f"{type(err).__name__}: {err}") from None
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != want:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{kind} part {name!r}: {call} must return a tensor of shape {want} for an input of shape "
                         f"{tuple(x.shape)}, got {got}")


def _as_module(obj, kind: str, name: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{kind} part {name!r} must build an nn.Module (so its weights train), got {type(obj).__name__}")
    return obj


def register_norm(name: str, factory: Callable) -> Part:
    """Your norm as ``ModelConfig(norm=name)``: ``factory(d_model, eps=...)`` (``eps`` only when
    ``ModelConfig.norm_eps`` is set and the factory takes it) -> a module ``(..., d_model) -> same``."""
    sig = "factory(d_model: int, eps: float = ...) -> nn.Module"
    module = _as_module(_call(factory, name, "norm", sig, 8, eps=1e-5), "norm", name)
    _probe("norm", name, module, torch.randn(2, 3, 8), (2, 3, 8), "norm(x)")
    return NORMS.register(name, lambda cfg: _as_module(_call(factory, name, "norm", sig, cfg.d_model, eps=cfg.norm_eps), "norm", name))


def register_ffn(name: str, factory: Callable, *, gated: bool = False) -> Part:
    """Your feed-forward block as ``ModelConfig(activation=name)``: ``factory(d_model, hidden)``
    (plus ``bias`` / ``dropout`` if it takes them) -> a module ``(B, T, d_model) -> (B, T, d_model)``.
    ``gated=True`` gives it the gated default hidden size (2/3 of ``4 d_model``, as SwiGLU)."""
    sig = "factory(d_model: int, hidden: int) -> nn.Module"
    module = _as_module(_call(factory, name, "activation", sig, 8, 16, bias=True, dropout=0.0), "activation", name)
    _probe("activation", name, module, torch.randn(2, 3, 8), (2, 3, 8), "ffn(x)")
    return FFNS.register(name, lambda cfg: _as_module(_call(factory, name, "activation", sig, cfg.d_model, cfg.d_ff,
                                                            bias=cfg.bias, dropout=cfg.dropout), "activation", name),
                         gated=bool(gated))


def register_rope(name: str, factory: Callable) -> Part:
    """Your rotary embedding as ``ModelConfig(position=name)``: ``factory(head_dim, base)`` -> a
    module (or function) called as ``rope(x (B, heads, T, head_dim), positions (T,))`` that returns
    ``x`` rotated. The model rotates every layer's new queries and keys with it."""
    sig = "factory(head_dim: int, base: float) -> rope(x, positions)"
    rope = _call(factory, name, "position", sig, 8, 10000.0)
    if not callable(rope):
        raise ValueError(f"position part {name!r} must build a callable rope(x, positions), got {type(rope).__name__}")
    _probe("position", name, lambda x: rope(x, torch.arange(5)), torch.randn(1, 2, 5, 8), (1, 2, 5, 8), "rope(x, positions)")

    def build(cfg):
        return RotaryPositions(_call(factory, name, "position", sig, cfg.head_dim, float(cfg.rope_base)))

    return POSITIONS.register(name, build, rope=True)


class _PlainAttention(nn.Module):
    """A learner's attention ``(B, T, C) -> (B, T, C)`` (causal by itself) inside a block: the model
    also passes a mask, a KV cache and positions, which such a module cannot take."""

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        self.part_name, self.module = name, module

    def forward(self, x, attn_mask=None, kv_cache=None, positions=None):
        if attn_mask is not None or kv_cache is not None or positions is not None:
            raise ValueError(f"attention part {self.part_name!r} takes only x (causal attention): use it with "
                             f"position='learned'/'none'/'sinusoidal', no attn_mask and no KV cache")
        return self.module(x)  # (B, T, C)


def register_attention(name: str, factory: Callable) -> Part:
    """Your causal self-attention as ``ModelConfig(attention=name)``: ``factory(d_model, n_heads,
    n_kv_heads)`` -> a module ``(B, T, d_model) -> (B, T, d_model)`` (causal mask inside)."""
    sig = "factory(d_model: int, n_heads: int, n_kv_heads: int) -> nn.Module"
    module = _as_module(_call(factory, name, "attention", sig, 8, 4, 2), "attention", name)
    _probe("attention", name, module, torch.randn(2, 3, 8), (2, 3, 8), "attn(x)")

    def build(cfg, layer):
        return _PlainAttention(name, _as_module(_call(factory, name, "attention", sig, cfg.d_model, cfg.n_heads, cfg.n_kv_heads),
                                                "attention", name))

    return ATTENTIONS.register(name, build, plain=True)


_REGISTER = {"norm": register_norm, "activation": register_ffn, "position": register_rope, "attention": register_attention}
_BUILTINS = {kind: reg.names() for kind, reg in KINDS.items()}
_fresh = itertools.count()


def unregister(kind: str, name: str) -> None:
    """Remove a part you registered (the built-ins stay)."""
    check_choice(kind, "kind", KINDS, where="unregister")
    if name in _BUILTINS[kind]:
        raise ValueError(f"{name!r} is a built-in {kind}; only parts you registered can be removed")
    KINDS[kind].unregister(name)


def register(kind: str, name: str, factory: Callable, *, replace: bool = False, **options) -> Part:
    """``register_norm`` / ``register_ffn`` / ``register_rope`` / ``register_attention`` by ``kind``
    (a key of :data:`KINDS`). ``replace=True`` first removes a part you registered under ``name`` (a
    re-run notebook cell); a built-in is never replaced."""
    check_choice(kind, "kind", KINDS, where="register")
    if replace and name in KINDS[kind] and name not in _BUILTINS[kind]:
        KINDS[kind].unregister(name)
    return _REGISTER[kind](name, factory, **options)


@contextlib.contextmanager
def plugged(kind: str, factory: Callable, **options) -> Iterator[str]:
    """Register ``factory`` under a fresh name for the ``with`` block; yields the name."""
    name = f"_plugged_{kind}_{next(_fresh)}"
    register(kind, name, factory, **options)
    try:
        yield name
    finally:
        KINDS[kind].unregister(name)
