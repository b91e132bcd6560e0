"""Hugging Face interop: lmlab's LLaMA-style ``GPT`` <-> ``transformers.LlamaForCausalLM`` (lesson 13).

A LLaMA is lmlab's ``GPT`` with the choices of :data:`lmlab.model.llama.LLAMA_CHOICES` (RMSNorm, pre-LN,
SwiGLU, RoPE, no biases): :func:`from_hf_config` is :func:`lmlab.model.llama.llama_config` with the Hugging
Face config's numbers, and :func:`to_hf_config` refuses any other config
(:func:`lmlab.model.llama.check_llama_config`). Both sides rotate RoPE pairs in the *half-split* layout, so converting
is renaming, splitting lmlab's fused matrices, and nothing else (no q/k permute, unlike a GGUF):

=====================================  ==============================================
lmlab                                  Hugging Face ``LlamaForCausalLM``
=====================================  ==============================================
tok_emb.weight                         model.embed_tokens.weight
blocks.i.norm1.weight                  model.layers.i.input_layernorm.weight
blocks.i.attn.qkv.weight  [q; k; v]    model.layers.i.self_attn.{q,k,v}_proj.weight
blocks.i.attn.proj.weight              model.layers.i.self_attn.o_proj.weight
blocks.i.norm2.weight                  model.layers.i.post_attention_layernorm.weight
blocks.i.ffn.up.weight  [up; gate]     model.layers.i.mlp.{up,gate}_proj.weight
blocks.i.ffn.down.weight               model.layers.i.mlp.down_proj.weight
final_norm.weight                      model.norm.weight
lm_head.weight                         lm_head.weight (tied: the embedding)
=====================================  ==============================================

Needs ``transformers`` (the ``parity`` extra). Nothing is downloaded.
"""

from __future__ import annotations

import torch

from lmlab.interop.gguf import load_state_dict_checked
from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import check_llama_config, llama_config
from lmlab.model.norms import DEFAULT_EPS

__all__ = ["to_hf_config", "from_hf_config", "lmlab_to_hf_state_dict", "hf_to_lmlab_state_dict", "to_hf", "from_hf"]


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("lmlab.interop.hf needs transformers: pip install 'lmlab[parity]'") from err
    return transformers


def to_hf_config(cfg: ModelConfig):
    """``ModelConfig`` -> ``transformers.LlamaConfig`` (same sizes, RoPE base, RMSNorm eps, tying)."""
    check_llama_config(cfg)
    tf = _transformers()
    return tf.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context_length, rms_norm_eps=cfg.norm_eps or DEFAULT_EPS["rmsnorm"],
        rope_theta=float(cfg.rope_base), tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu",
        attention_bias=False, mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def from_hf_config(hf_cfg, context_length: int | None = None) -> ModelConfig:
    """``LlamaConfig`` -> ``ModelConfig`` (the LLaMA preset with its numbers); refuses what lmlab's GPT
    does not implement."""
    problems = []
    if getattr(hf_cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf_cfg.hidden_act!r} (lmlab's swiglu uses silu)")
    if getattr(hf_cfg, "attention_bias", False) or getattr(hf_cfg, "mlp_bias", False):
        problems.append("attention_bias/mlp_bias=True (a LLaMA has no biases)")
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    if head_dim * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
        problems.append(f"head_dim={head_dim} with {hf_cfg.num_attention_heads} heads != hidden_size={hf_cfg.hidden_size}")
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope.get('rope_type')!r} (only plain RoPE converts)")
    if problems:
        raise ValueError("this LlamaConfig does not fit lmlab's GPT: " + "; ".join(problems))
    theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
    return llama_config(
        vocab_size=hf_cfg.vocab_size, context_length=context_length or hf_cfg.max_position_embeddings,
        d_model=hf_cfg.hidden_size, n_layers=hf_cfg.num_hidden_layers, n_heads=hf_cfg.num_attention_heads,
        n_kv_heads=hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads, d_ff=hf_cfg.intermediate_size,
        norm_eps=float(hf_cfg.rms_norm_eps), rope_base=float(theta), tie_embeddings=bool(hf_cfg.tie_word_embeddings),
    )


def lmlab_to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, copy: bool = True) -> dict[str, torch.Tensor]:
    """An lmlab ``GPT`` state dict -> ``LlamaForCausalLM`` names (see the module's table). ``copy=False`` returns
    views of ``sd``'s tensors (lesson 13 shares SmolLM2's weights with the HF model instead of copying them)."""
    C, kv, F = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["final_norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(cfg.n_layers):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[o + "attn.qkv.weight"].split([C, kv, kv], dim=0)  # (C, C), (kv, C), (kv, C)
        up, gate = sd[o + "ffn.up.weight"].split([F, F], dim=0)  # value half first, gate second
        out.update({h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": v,
                    h + "self_attn.o_proj.weight": sd[o + "attn.proj.weight"],
                    h + "input_layernorm.weight": sd[o + "norm1.weight"],
                    h + "post_attention_layernorm.weight": sd[o + "norm2.weight"],
                    h + "mlp.up_proj.weight": up, h + "mlp.gate_proj.weight": gate,
                    h + "mlp.down_proj.weight": sd[o + "ffn.down.weight"]})
    return {k: v.clone() for k, v in out.items()} if copy else out


def hf_to_lmlab_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM`` state dict -> lmlab ``GPT`` names (the inverse of :func:`lmlab_to_hf_state_dict`)."""
    def take(name):
        if name not in sd:
            raise ValueError(f"Hugging Face state dict: tensor {name!r} is missing")
        return sd[name]

    out = {"tok_emb.weight": take("model.embed_tokens.weight"), "final_norm.weight": take("model.norm.weight"),
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(cfg.n_layers):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        out[o + "attn.qkv.weight"] = torch.cat([take(h + f"self_attn.{p}_proj.weight") for p in "qkv"], dim=0)
        out[o + "attn.proj.weight"] = take(h + "self_attn.o_proj.weight")
        out[o + "norm1.weight"] = take(h + "input_layernorm.weight")
        out[o + "norm2.weight"] = take(h + "post_attention_layernorm.weight")
        out[o + "ffn.up.weight"] = torch.cat([take(h + "mlp.up_proj.weight"), take(h + "mlp.gate_proj.weight")], dim=0)
        out[o + "ffn.down.weight"] = take(h + "mlp.down_proj.weight")
    return {k: v.detach().clone() for k, v in out.items()}


def to_hf(model: GPT):
    """lmlab ``GPT`` (LLaMA-style config) -> ``transformers.LlamaForCausalLM`` with the same weights."""
    if not isinstance(model, GPT):
        raise ValueError(f"to_hf expects an lmlab GPT, got {type(model).__name__}")
    tf = _transformers()
    cfg = model.config
    hf = tf.LlamaForCausalLM(to_hf_config(cfg)).to(model.tok_emb.weight.dtype)
    sd = lmlab_to_hf_state_dict(model.state_dict(), cfg)
    own = hf.state_dict()
    if cfg.tie_embeddings and "lm_head.weight" not in own:  # pragma: no cover - depends on the transformers version
        sd.pop("lm_head.weight")
    load_state_dict_checked(hf, sd, source="lmlab model")
    return hf.eval()


def from_hf(hf_model, context_length: int | None = None) -> GPT:
    """``transformers.LlamaForCausalLM`` -> lmlab ``GPT`` with the same weights and logits."""
    tf = _transformers()
    if not isinstance(hf_model, tf.LlamaForCausalLM):
        raise ValueError(f"from_hf expects a transformers LlamaForCausalLM, got {type(hf_model).__name__}")
    cfg = from_hf_config(hf_model.config, context_length)
    model = GPT(cfg).to(hf_model.model.embed_tokens.weight.dtype)
    load_state_dict_checked(model, hf_to_lmlab_state_dict(hf_model.state_dict(), cfg), source="Hugging Face model")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()
