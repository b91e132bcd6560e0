"""Plausible wrong answers to chapter 04's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math

import torch


def _sdpa(q, k, v, mask=None, how=""):
    scale = 1.0 if how == "no scale" else q.size(-1) if how == "divides by d" else math.sqrt(q.size(-1))
    s = q @ k.transpose(-2, -1) / scale
    if mask is not None and how != "mask ignored":
        s = s.masked_fill(mask if how == "mask inverted" else ~mask, float("-inf"))
    if how == "softmax over queries":
        return torch.softmax(s, dim=-2) @ v
    if how == "naive exp":
        e = torch.exp(s)
        return e / e.sum(-1, keepdim=True) @ v
    return torch.softmax(s, dim=-1) @ v


def _window(T, w, how):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if how == "<= window (one too many)":
        return (j <= i) & (i - j <= w)
    if how == "not causal":
        return (i - j).abs() < w
    if how == "excludes itself":
        return (j < i) & (i - j <= w)
    if how == "window - 1 keys":
        return (j <= i) & (i - j < w - 1)
    raise ValueError(how)


def _merge(m1, l1, a1, m2, l2, a2, how):
    m = torch.maximum(m1, m2)
    f1, f2 = torch.exp(m1 - m), torch.exp(m2 - m)
    if how == "old sum not rescaled":
        return m, l1 + f2 * l2, a1 + f2[:, None] * a2
    if how == "only the sum rescaled":
        return m, f1 * l1 + f2 * l2, a1 + a2
    if how == "adds without rescaling":
        return m, l1 + l2, a1 + a2
    if how == "no empty guard":  # right whenever one part holds a key; NaN where both are empty
        return m, f1 * l1 + f2 * l2, f1[:, None] * a1 + f2[:, None] * a2
    if how == "rescale factor inverted":
        return m, torch.exp(m - m1) * l1 + torch.exp(m - m2) * l2, torch.exp(m - m1)[:, None] * a1 + torch.exp(m - m2)[:, None] * a2
    raise ValueError(how)


def _gqa_class(how):
    import torch.nn as nn

    class GQAttention(nn.Module):
        def __init__(self, d_model, n_heads, n_kv_heads):
            super().__init__()
            self.nh, self.nkv, self.hs = n_heads, n_kv_heads, d_model // n_heads
            self.q_proj = nn.Linear(d_model, d_model, bias=False)
            self.k_proj = nn.Linear(d_model, n_kv_heads * self.hs, bias=False)
            self.v_proj = nn.Linear(d_model, n_kv_heads * self.hs, bias=False)
            self.o_proj = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x):
            B, T, C = x.shape
            q = self.q_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)
            k = self.k_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)
            v = self.v_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)
            r = self.nh // self.nkv
            if how == "repeat":
                k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)
            else:
                k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
            mask = None if how == "not causal" else torch.ones(T, T, dtype=torch.bool).tril()
            y = _sdpa(q, k, v, mask, "no scale" if how == "no scale" else "")
            return self.o_proj(y.transpose(1, 2).reshape(B, T, C))

    return GQAttention


WRONG = {
    "04.scaled_dot_product_attention": {
        "no 1/sqrt(d) scaling": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, "no scale"),
        "divides by d, not sqrt(d)": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, "divides by d"),
        "mask ignored": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, "mask ignored"),
        "mask inverted (True = blocked)": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, "mask inverted"),
        "softmax over the query axis": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, "softmax over queries"),
        "naive exp overflows": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, "naive exp"),
    },
    "04.sliding_window_mask": {
        "off by one: i - j <= window": lambda T, w: _window(T, w, "<= window (one too many)"),
        "not causal (sees the future)": lambda T, w: _window(T, w, "not causal"),
        "excludes the token itself": lambda T, w: _window(T, w, "excludes itself"),
        "off by one: window - 1 keys": lambda T, w: _window(T, w, "window - 1 keys"),
    },
    "04.repeat_kv": {
        "x.repeat interleaves the heads (0, 1, 0, 1, ...)": lambda x, n: x.repeat(1, n, 1, 1),
        "repeats along the token axis": lambda x, n: x.repeat_interleave(n, dim=2),
        "returns x unchanged": lambda x, n: x,
        "expand then reshape in the wrong order": lambda x, n: x[:, None].expand(x.size(0), n, *x.shape[1:]).reshape(x.size(0), -1, *x.shape[2:]),
    },
    "04.online_softmax_merge": {
        "old sum not rescaled": lambda *a: _merge(*a, "old sum not rescaled"),
        "only the sum rescaled, not acc": lambda *a: _merge(*a, "only the sum rescaled"),
        "adds without rescaling": lambda *a: _merge(*a, "adds without rescaling"),
        "rescale factor inverted": lambda *a: _merge(*a, "rescale factor inverted"),
        "no guard for two empty parts (NaN)": lambda *a: _merge(*a, "no empty guard"),
    },
    "04.GQAttention": {
        "K/V heads tiled with .repeat (heads 0, 1, 0, 1) instead of repeat_interleave": _gqa_class("repeat"),
        "not causal (every token sees the future)": _gqa_class("not causal"),
        "no 1/sqrt(head_dim) scaling": _gqa_class("no scale"),
    },
}
