"""Lesson 00's ladder: from a bigram table to the GPT, one idea per rung (``lessons/00_tour``).

Each rung is a complete next-token model ``idx (B, T) -> logits (B, T, V)`` that takes a
:class:`lmlab.model.config.ModelConfig` (only ``vocab_size``, ``context_length``, ``d_model``, ``n_heads``,
``n_layers`` are read), so ``lmlab.train.loop`` trains every one of them:

1. :class:`Bigram`: the next token from the current one only (a V x V table).
2. :class:`AveragePast`: every position averages the embeddings of the tokens up to it, with one
   matrix product by a row-normalised lower-triangular matrix (attention with equal weights).
3. :class:`OneHead`: the weights become data-dependent: softmax(q k^T / sqrt(hs)), masked causally.
4. :class:`MultiHead`: several heads in parallel, concatenated and projected.
5. :class:`MiniGPT` with one layer: the block (pre-LN residual attention + pre-LN residual MLP).
6. :class:`MiniGPT`: the GPT (stacked blocks, a final norm, the head tied to the embedding).

:class:`MiniGPT`'s parameter names are :class:`lmlab.GPT`'s, so ``MiniGPT(cfg).load_state_dict(
GPT(cfg).state_dict())`` gives the same logits (the default config: learned positions, pre-LN
LayerNorm, GELU, biases, tied embeddings). :func:`attention_head` and :func:`gpt_forward` are the
graded references of ``exercises/00_tour`` (``00.attention_head``, ``00.gpt_forward``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.argcheck import check_int, check_tensor

__all__ = ["Bigram", "AveragePast", "OneHead", "MultiHead", "MiniGPT", "LADDER", "attention_head", "gpt_forward"]


class Bigram(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config, self.table = cfg, nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.zeros_(self.table.weight)  # start from the uniform distribution (loss log V)

    def forward(self, idx):
        return self.table(idx)  # (B, T, V): row idx of the table


class _Embedded(nn.Module):
    """Token + position embedding, something that mixes positions, then a linear head."""

    def __init__(self, cfg, mixer: nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.mixer, self.lm_head = mixer, nn.Linear(cfg.d_model, cfg.vocab_size)

    def mix(self, x):
        return self.mixer(x)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.size(1), device=idx.device))  # (B, T, C)
        return self.lm_head(self.mix(x))  # (B, T, V)


class AveragePast(_Embedded):
    def mix(self, x):
        T = x.size(1)
        w = torch.ones(T, T, device=x.device).tril()
        return (w / w.sum(1, keepdim=True)) @ x  # (T, T) @ (B, T, C): row t = mean of x_0..x_t


def attention_head(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """One causal self-attention head: ``x (B, T, C)``, weights ``(hs, C)`` (as in ``nn.Linear``) -> ``(B, T, hs)``."""
    check_tensor(x, "x", "attention_head", dim=3, floating=True)
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        check_tensor(w, name, "attention_head", shape=(w_q.shape[0], x.shape[-1]))
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T  # (B, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, T, T)
    T = x.size(1)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, T, hs)


class OneHead(_Embedded):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, cfg.d_model, bias=False) for _ in range(3))

    def mix(self, x):
        return attention_head(x, self.q.weight, self.k.weight, self.v.weight)


class MultiHead(_Embedded):
    def __init__(self, cfg):
        super().__init__(cfg, CausalSelfAttention(cfg.d_model, cfg.n_heads))


# --- the minimal GPT: the lesson shows everything below ------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # q, k, v of every head in one matmul
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (B, nh, T, T)
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        y = torch.softmax(att, dim=-1) @ v  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # heads side by side, then mixed


class MLP(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.up, self.down = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class MiniBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d_model), CausalSelfAttention(d_model, n_heads)
        self.norm2, self.ffn = nn.LayerNorm(d_model), MLP(d_model)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))  # pre-LN: normalise the branch's input, add to the stream
        return x + self.ffn(self.norm2(x))


class _Table(nn.Module):  # named like lmlab's LearnedPositionEmbedding: its parameter is pos_emb.weight
    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, d))


class MiniGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = _Table(cfg.context_length, cfg.d_model)
        self.blocks = nn.ModuleList(MiniBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: the output layer is the embedding
        for p in self.parameters():  # GPT-2's small init
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb.weight[: idx.size(1)]  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))  # (B, T, V)


# --- end of the minimal GPT ----------------------------------------------------------------------

LADDER = {  # rung name -> (model class, layers used)
    "bigram": (Bigram, 0),
    "average the past": (AveragePast, 0),
    "one attention head": (OneHead, 0),
    "multi-head attention": (MultiHead, 0),
    "one block": (MiniGPT, 1),
    "GPT (2 blocks)": (MiniGPT, 2),
}


def gpt_forward(state: dict, idx: torch.Tensor, n_heads: int) -> torch.Tensor:
    """:class:`lmlab.GPT`'s forward (default config) as one function of its state dict: ``idx (B, T)``
    -> logits ``(B, T, V)``. Layers are read from the keys ``blocks.<i>.*``."""
    if not isinstance(state, dict) or "tok_emb.weight" not in state:
        raise ValueError("gpt_forward: state must be an lmlab.GPT state dict (with 'tok_emb.weight')")
    check_tensor(idx, "idx", "gpt_forward", dim=2)
    n_heads = check_int(n_heads, "n_heads", "gpt_forward")
    n_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    C = state["tok_emb.weight"].shape[1]

    def ln(x, name):
        return F.layer_norm(x, (C,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)

    x = state["tok_emb.weight"][idx] + state["pos_emb.weight"][: idx.size(1)]  # (B, T, C)
    for i in range(n_layers):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1")
        qkv = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        B, T, _ = qkv.shape
        q, k, v = (t.view(B, T, n_heads, C // n_heads).transpose(1, 2) for t in qkv.split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, p + "norm2"), state[p + "ffn.up.weight"], state[p + "ffn.up.bias"]))
        x = x + F.linear(h, state[p + "ffn.down.weight"], state[p + "ffn.down.bias"])
    return F.linear(ln(x, "final_norm"), state["lm_head.weight"])  # (B, T, V)
