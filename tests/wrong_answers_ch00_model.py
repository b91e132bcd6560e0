"""Plausible wrong answers to chapter 00's model exercises (attention head, GPT forward)."""

import torch
import torch.nn.functional as F


def _head(x, wq, wk, wv, mistake):
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    scores = q @ k.transpose(-2, -1)
    if mistake != "no 1/sqrt(d) scale":
        scores = scores / (x.size(-1) if mistake == "scaled by 1/d_model" else q.size(-1)) ** 0.5
    T = x.size(1)
    if mistake == "mask shifted (cannot see itself)":
        mask = torch.ones(T, T, dtype=torch.bool).tril(-1)
        mask[0, 0] = True
    else:
        mask = torch.ones(T, T, dtype=torch.bool).tril()
    if mistake != "no causal mask":
        scores = scores.masked_fill(~mask, float("-inf"))
    dim = -2 if mistake == "softmax over the queries" else -1
    return torch.nan_to_num(torch.softmax(scores, dim=dim)) @ v


def _gpt(state, idx, n_heads, mistake):
    C = state["tok_emb.weight"].shape[1]
    n_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    B, T = idx.shape

    def norm(x, name):
        return F.layer_norm(x, (C,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    x = state["tok_emb.weight"][idx]
    if mistake != "forgets the position embedding":
        x = x + state["pos_emb.weight"][:T]
    for i in range(n_layers):
        p = f"blocks.{i}."

        def attn(h):
            q, k, v = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"]).split(C, dim=2)
            q, k, v = (t.view(B, T, n_heads, C // n_heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=mistake != "no causal mask",
                                               scale=1.0 if mistake == "no 1/sqrt(d) scale" else None)
            return F.linear(y.transpose(1, 2).reshape(B, T, C), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])

        def ffn(h):
            act = F.gelu(F.linear(h, state[p + "ffn.up.weight"], state[p + "ffn.up.bias"]), approximate="tanh" if mistake == "tanh GELU" else "none")
            return F.linear(act, state[p + "ffn.down.weight"], state[p + "ffn.down.bias"])

        if mistake == "norm after instead of before (post-LN)":
            x = norm(x + attn(x), p + "norm1")
            x = norm(x + ffn(x), p + "norm2")
        else:
            x = x + attn(norm(x, p + "norm1"))
            x = x + ffn(norm(x, p + "norm2"))
    if mistake != "no final norm":
        x = norm(x, "final_norm")
    return F.linear(x, state["lm_head.weight"])


WRONG = {
    "00.attention_head": {m: (lambda x, a, b, c, m=m: _head(x, a, b, c, m)) for m in (
        "no causal mask", "no 1/sqrt(d) scale", "scaled by 1/d_model", "softmax over the queries", "mask shifted (cannot see itself)")},
    "00.gpt_forward": {m: (lambda s, i, h, m=m: _gpt(s, i, h, m)) for m in (
        "no causal mask", "no 1/sqrt(d) scale", "norm after instead of before (post-LN)", "no final norm",
        "forgets the position embedding", "tanh GELU")},
}
