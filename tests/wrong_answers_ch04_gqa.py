"""Plausible wrong answers to 04.gqa_rope_attention."""

import torch
import torch.nn.functional as F

from lmlab.model.positions.encodings import apply_rope


def _gqa(x, w_qkv, w_o, nh, nkv, base, mistake):
    B, T, C = x.shape
    hs = C // nh
    q, k, v = F.linear(x, w_qkv).split([C, nkv * hs, nkv * hs], dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k, v = (t.view(B, T, nkv, hs).transpose(1, 2) for t in (k, v))
    if mistake != "no RoPE":
        q = apply_rope(q, T, base=10000.0 if mistake == "ignores base" else base)
        k = apply_rope(k, T, base=10000.0 if mistake == "ignores base" else base) if mistake != "rotates only q" else k
    if mistake == "also rotates v":
        v = apply_rope(v, T, base=base)
    r = nh // nkv
    if mistake == "KV heads repeated with repeat, not repeat_interleave":
        k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)
    else:
        k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=mistake != "not causal")
    return F.linear(y.transpose(1, 2).reshape(B, T, C), w_o)


WRONG = {
    "04.gqa_rope_attention": {m: (lambda x, a, b, h, kv, base=10000.0, m=m: _gqa(x, a, b, h, kv, base, m)) for m in (
        "KV heads repeated with repeat, not repeat_interleave", "no RoPE", "rotates only q", "also rotates v",
        "not causal", "ignores base")},
}
