"""Your own LLaMA: the parts of chapters 01-08 assembled into one model (lesson 13).

A LLaMA (Touvron et al. 2023) is lmlab's ``GPT`` with one choice per kind of part:

* RMSNorm, pre-LN (chapter 01), SwiGLU feed-forward (chapter 02), RoPE positions (chapter 03),
  grouped-query causal attention (chapter 04), no biases, optionally tied embeddings;
* sampled with chapter 07's samplers and chapter 08's KV cache.

**The LLaMA preset lives here, once.** :data:`LLAMA_CHOICES` holds the architecture choices,
:data:`LLAMA_FLAVORS` the numbers of each named size (torchtitan's habit: ``tiny`` is the
capstone's model, ``smollm2_135m`` the GGUF of lesson 13, ``llama_7b`` ... ``llama2_70b`` the
published ones), and :func:`llama_config` (``llama_config("llama2_70b")``,
``llama_config("tiny", d_model=32)``) writes the :class:`ModelConfig`. Hugging Face and GGUF
conversion (:mod:`lmlab.interop`), the scaling lessons and the graders all start from it;
:func:`check_llama_config` says whether a config is one.

:func:`build_llama` builds the model and is **the one place where a part is swapped** for a
learner's own (``parts={"norm": MyRMSNorm}``): each goes through :func:`lmlab.model.registry.register`
(the plug-in of every other lesson), so the config names it and GPT builds it everywhere;
:func:`parts_table` reads whose part is where from the config's part names.
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
from lmlab.model.attention import MultiHeadAttention, decode_mask, repeat_kv
from lmlab.model.positions.encodings import apply_rope, rope_cos_sin, rope_frequencies
from lmlab.argcheck import check_int, check_positive

__all__ = ["LLAMA_CHOICES", "LLAMA_FLAVORS", "LLAMA_PARTS", "llama_config", "check_llama_config", "build_llama",
           "parts_table", "llama_block", "PluggedAttention", "plugged_state_dict"]

# What makes a ModelConfig a LLaMA (option -> value): the one copy of these choices. Every flavor has
# them; llama_config refuses to override them; Hugging Face conversion requires them.
LLAMA_CHOICES = {"norm": "rmsnorm", "norm_position": "pre", "activation": "swiglu", "position": "rope",
                 "attention": "full", "bias": False, "dropout": 0.0, "rope_scaling": None, "knn_memory": None}

# flavor -> its numbers (every flavor sets the same fields). d_ff=None: the gated default, 2/3 of 4 d_model
# rounded up to a multiple of 8 (ModelConfig's rule).
LLAMA_FLAVORS = {
    # lesson 13's capstone model (vocab_size: the lesson's BPE tokenizer of 512 tokens)
    "tiny": dict(vocab_size=512, context_length=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=None,
                 norm_eps=1e-5, rope_base=10000.0, tie_embeddings=True),
    # HuggingFaceTB/SmolLM2-135M (lesson 13's GGUF): 134,515,008 parameters
    "smollm2_135m": dict(vocab_size=49152, context_length=8192, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         d_ff=1536, norm_eps=1e-5, rope_base=100000.0, tie_embeddings=True),
    # Touvron et al. 2023 (LLaMA): 6,738,415,616 parameters
    "llama_7b": dict(vocab_size=32000, context_length=2048, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                     d_ff=11008, norm_eps=1e-6, rope_base=10000.0, tie_embeddings=False),
    # Touvron et al. 2023 (Llama 2): 6,738,415,616 / 13,015,864,320 / 68,976,648,192 parameters
    "llama2_7b": dict(vocab_size=32000, context_length=4096, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                      d_ff=11008, norm_eps=1e-5, rope_base=10000.0, tie_embeddings=False),
    "llama2_13b": dict(vocab_size=32000, context_length=4096, d_model=5120, n_layers=40, n_heads=40, n_kv_heads=40,
                       d_ff=13824, norm_eps=1e-5, rope_base=10000.0, tie_embeddings=False),
    "llama2_70b": dict(vocab_size=32000, context_length=4096, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                       d_ff=28672, norm_eps=1e-5, rope_base=10000.0, tie_embeddings=False),
}

_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def llama_config(flavor: str = "tiny", **overrides) -> ModelConfig:
    """The LLaMA :class:`ModelConfig` of ``flavor`` (a key of :data:`LLAMA_FLAVORS`), with ``overrides``
    (keyword-only, any ModelConfig number: ``vocab_size``, ``d_model``, ``n_kv_heads``...) replacing its numbers.

    ``llama_config("llama_7b")`` has 6,738,415,616 parameters; ``llama_config("tiny", vocab_size=tok.vocab_size)``
    is lesson 13's model. The choices of :data:`LLAMA_CHOICES` cannot be overridden (it would not be a LLaMA).
    """
    if not isinstance(flavor, str) or flavor not in LLAMA_FLAVORS:
        raise ValueError(f"flavor: unknown LLaMA flavor {flavor!r}; flavors: {tuple(LLAMA_FLAVORS)}")
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f"llama_config: unknown option(s) {unknown}; ModelConfig's options are {_FIELDS}")
    fixed = sorted(set(overrides) & set(LLAMA_CHOICES))
    if fixed:
        raise ValueError(f"llama_config: {fixed} are the LLaMA's own choices ({ {k: LLAMA_CHOICES[k] for k in fixed} }) "
                         f"and cannot be overridden; build a ModelConfig for another architecture")
    return ModelConfig(**{**LLAMA_CHOICES, **LLAMA_FLAVORS[flavor], **overrides})


def check_llama_config(cfg: ModelConfig) -> None:
    """``ValueError`` naming the first option of ``cfg`` that is not :data:`LLAMA_CHOICES`' (what
    ``LlamaForCausalLM`` and a GGUF ``llama`` file can express)."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    for name, want in LLAMA_CHOICES.items():
        if getattr(cfg, name) != want:
            raise ValueError(f"ModelConfig.{name} must be {want!r} for a LLaMA (LlamaForCausalLM), got {getattr(cfg, name)!r}")


# kind of part -> (chapter, the ModelConfig field / lmlab.model.registry kind that names it (None: not a
# config part), the lmlab reference, where it sits in GPT)
LLAMA_PARTS = {
    "norm": ("01", "norm", "lmlab.model.norms.RMSNorm", "blocks.i.norm1, blocks.i.norm2, final_norm"),
    "ffn": ("02", "activation", "lmlab.model.ffn.FeedForward(kind='swiglu')", "blocks.i.ffn"),
    "position": ("03", "position", "lmlab.model.positions.encodings.apply_rope (half-split pairs)",
                 "position (shared by every attention layer)"),
    "attention": ("04", "attention", "lmlab.model.attention.MultiHeadAttention(n_kv_heads=...)", "blocks.i.attn"),
    "kv_cache": ("08", None, "lmlab.infer.kv_cache.KVCache", "GPT.forward_with_cache"),
    "sampling": ("07", None, "lmlab.infer.decoding.generation", "outside the model"),
}

# kind of part build_llama plugs -> its options for lmlab.model.registry.register. Attention is not among
# them: register("attention", ...) takes plain causal attention (B, T, C) -> (B, T, C), and a LLaMA's
# layers also take RoPE positions and a KV cache.
_PLUGGED = {"norm": {}, "ffn": {"gated": True}, "position": {}}  # LLaMA's FFN is gated


def _plug(kind: str, cls) -> str:
    """Register the learner's ``cls`` for ``kind`` under a name of its own and return the name. It
    stays registered (the model's config names it); a class of the same name (a re-run cell) replaces it."""
    name = f"llama_{kind}_" + re.sub(r"\W", "_", getattr(cls, "__qualname__", type(cls).__name__))
    register(LLAMA_PARTS[kind][1], name, cls, replace=True, **_PLUGGED[kind])
    return name


def _norms(model: GPT) -> list[nn.Module]:
    """A (pre-LN) LLaMA's norm modules: each block's ``norm1`` and ``norm2``, then ``final_norm``."""
    return [norm for block in model.blocks for norm in (block.norm1, block.norm2)] + [model.final_norm]


class PluggedAttention(MultiHeadAttention):
    """A LLaMA layer's attention (lmlab's projections, RoPE and KV cache) with the learner's functions inside:
    ``attention(q, k, v, mask)`` (chapter 04's ``scaled_dot_product_attention``, ``mask`` bool ``(Tq, Tk)``,
    True = may attend), ``repeat_kv(x, n_rep)`` (chapter 04: K/V heads shared by groups of query heads) and
    ``decode_step(k_cache, v_cache, q, k_new, v_new)`` (chapter 08: one new token over the cache). Any of
    them None: lmlab's."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, attention=None, repeat_kv=None, decode_step=None):
        super().__init__(d_model, n_heads, n_kv_heads, bias=False)
        self.learner_attention, self.learner_repeat_kv, self.learner_decode_step = attention, repeat_kv, decode_step

    def attend(self, q, k, v, attn_mask=None, positions=None):
        T, T_k = q.size(2), k.size(2)  # q (B, nh, T, hs), k, v (B, nkv, T_k, hs)
        if attn_mask is not None or (positions is not None and positions.changes_scores):
            return super().attend(q, k, v, attn_mask, positions)
        rep = self.learner_repeat_kv or repeat_kv
        if T == 1 and T_k > 1 and self.learner_decode_step is not None:  # one new token: chapter 08's decode step
            kv = [rep(t, self.n_rep) for t in (k[:, :, :-1], v[:, :, :-1], k[:, :, -1:], v[:, :, -1:])]  # (B, nh, ., hs)
            out, _, _ = self.learner_decode_step(kv[0], kv[1], q, kv[2], kv[3])
            return out  # (B, nh, 1, hs)
        if self.learner_attention is None and self.learner_repeat_kv is None:
            return super().attend(q, k, v, attn_mask, positions)
        mask = decode_mask(T, T_k, self.window, device=q.device)  # (T, T_k): causal, True = may attend
        k, v = rep(k, self.n_rep), rep(v, self.n_rep)  # (B, nh, T_k, hs)
        if self.learner_attention is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.learner_attention(q, k, v, mask)  # (B, nh, T, hs)


_ATTENTION_PARTS = ("attention", "repeat_kv", "decode_step")
_ATTENTION_SIGNATURES = {"attention": "chapter 04's scaled_dot_product_attention(q, k, v, mask)",
                         "repeat_kv": "chapter 04's repeat_kv(x, n_rep)",
                         "decode_step": "chapter 08's decode_step(k_cache, v_cache, q, k_new, v_new)"}


def build_llama(cfg: ModelConfig, parts: dict | None = None, seed: int = 0) -> GPT:
    """The LLaMA of ``cfg`` (a :func:`llama_config`) with the reference parts, or with the learner's where
    ``parts`` says (``lmlab.course.my_parts.my_parts().model_parts()`` gives the ones that passed grading).

    ``parts``: ``{"norm": cls}``, ``{"ffn": cls}`` and/or ``{"position": cls}``. Each is registered
    with :func:`lmlab.model.registry.register` exactly like ``register_norm`` / ``register_ffn`` /
    ``register_rope`` (``cls(d_model, eps=...)``, ``cls(d_model, hidden)``, ``cls(head_dim, base)``: the
    learner's graded chapter-01 RMSNorm, chapter-02 SwiGLU, chapter-03 RoPE), so the config names it and
    GPT builds it wherever that kind goes. ``{"attention": fn, "repeat_kv": fn, "decode_step": fn}``
    (chapter 04's ``scaled_dot_product_attention`` and ``repeat_kv``, chapter 08's ``decode_step``) go inside
    every layer's attention (:class:`PluggedAttention`). With any part the weights are re-initialised from
    ``seed`` (whatever random numbers the learner's constructors drew) and every norm starts at gain 1.
    ``model.plugged`` names the learner's parts in the model.
    """
    check_llama_config(cfg)
    parts = dict(parts or {})
    unknown = set(parts) - set(_PLUGGED) - set(_ATTENTION_PARTS)
    if unknown:
        raise ValueError(f"parts: kinds must be among {tuple(_PLUGGED) + _ATTENTION_PARTS}, got {sorted(unknown)}")
    for kind in _ATTENTION_PARTS:
        if kind in parts and (isinstance(parts[kind], type) or not callable(parts[kind])):
            raise ValueError(f"parts[{kind!r}] must be a function ({_ATTENTION_SIGNATURES[kind]}), got {parts[kind]!r}")
    names = {LLAMA_PARTS[kind][1]: _plug(kind, parts[kind]) for kind in _PLUGGED if kind in parts}
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(cfg, **names) if names else cfg)
    fns = {kind: parts[kind] for kind in _ATTENTION_PARTS if kind in parts}
    if fns:
        for block in model.blocks:
            block.attn = PluggedAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, **fns)
    if parts:
        torch.manual_seed(seed)
        init_weights(model)  # roles of the learner's modules come from their init_roles(), if any
        for norm in _norms(model):  # norms start at gain 1 whoever wrote them
            if getattr(norm, "weight", None) is not None:
                nn.init.ones_(norm.weight)
    model.plugged = {kind: getattr(obj, "__qualname__", type(obj).__name__) for kind, obj in parts.items()}
    return model


def plugged_state_dict(model: GPT, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference LLaMA's ``state_dict`` (e.g. :func:`lmlab.interop.gguf.gguf_to_lmlab`'s) renamed for ``model``
    (from :func:`build_llama`): a learner's SwiGLU in Hugging Face's layout (``gate_proj``, ``up_proj``,
    ``down_proj``) gets lmlab's fused ``up`` (value rows, then gate rows) split, and ``down`` renamed."""
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a GPT (from build_llama), got {type(model).__name__}")
    own = model.state_dict()
    out = {}
    for name, t in state_dict.items():
        head, _, leaf = name.rpartition(".ffn.")
        if leaf == "up.weight" and name not in own and f"{head}.ffn.gate_proj.weight" in own:
            value, gate = t.chunk(2, dim=0)  # (d_ff, C) each
            out[f"{head}.ffn.up_proj.weight"], out[f"{head}.ffn.gate_proj.weight"] = value, gate
        elif leaf == "down.weight" and name not in own and f"{head}.ffn.down_proj.weight" in own:
            out[f"{head}.ffn.down_proj.weight"] = t
        else:
            out[name] = t
    return out


def parts_table(model: GPT) -> list[tuple[str, str, str, str]]:
    """``(kind, chapter, whose part, where)`` rows for the lesson's table: whose is lmlab's reference
    where the config names the LLaMA's own part, else the name the config gives the plugged part."""
    if not isinstance(model, GPT):
        raise ValueError(f"model must be a GPT (from build_llama), got {type(model).__name__}")
    rows = []
    for kind, (chapter, field, reference, where) in LLAMA_PARTS.items():
        name = None if field is None else getattr(model.config, field)
        plugged = getattr(model, "plugged", {})
        learner = {"attention": ("attention", "repeat_kv"), "kv_cache": ("decode_step",)}.get(kind, ())
        if any(k in plugged for k in learner):  # functions inside PluggedAttention
            name = " + ".join(plugged[k] for k in learner if k in plugged)
        rows.append((kind, chapter, reference if name in (None, LLAMA_CHOICES.get(field)) else name, where))
    return rows


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
