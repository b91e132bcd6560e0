"""Plausible wrong answers to chapter 13's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math
from collections import Counter

import torch
import torch.nn.functional as F

from lmlab.data.bpe import merge_pair
from lmlab.interop.gguf import gguf_to_lmlab, permute_qk, unpermute_qk


# ---- 13.bpe_merge_step

def _step(chunks, new_id, mistake):
    if mistake == "across chunks":
        flat = [t for c in chunks for t in c]
        counts = Counter(zip(flat, flat[1:]))
    else:
        counts = Counter(p for c in chunks for p in zip(c, c[1:]))
    if mistake == "largest pair on ties":
        best = max(counts, key=lambda p: (counts[p], p))
    elif mistake == "first seen on ties":
        best = max(counts, key=counts.get)  # Counter keeps insertion order: the first pair seen wins a tie
    else:
        best = min(counts, key=lambda p: (-counts[p], p))
    if mistake == "overlapping":
        out = []
        for c in chunks:
            merged = [new_id if (a, b) == best else a for a, b in zip(c, c[1:])]
            out.append(merged if merged else list(c))
        return best, out
    return best, [merge_pair(c, best, new_id) for c in chunks]


# ---- 13.bpe_encode

def _encode(ids, merges, mistake):
    ids = list(ids)
    order = list(merges.items())
    if mistake == "reverse order":
        order = order[::-1]
    if mistake == "text order":  # merge the leftmost pair that has any merge, whatever its rank
        while True:
            for i, p in enumerate(zip(ids, ids[1:])):
                if p in merges:
                    ids = ids[:i] + [merges[p]] + ids[i + 2:]
                    break
            else:
                return ids
    if mistake == "one pass only":  # each merge once, in order, but stops after one occurrence
        for p, new in order:
            for i, q in enumerate(zip(ids, ids[1:])):
                if q == p:
                    ids = ids[:i] + [new] + ids[i + 2:]
                    break
        return ids
    for p, new in order:
        ids = merge_pair(ids, p, new)
    return ids


# ---- 13.gguf_to_lmlab

def _mapping(tensors, cfg, mistake):
    t = dict(tensors)
    for i in range(cfg.n_layers):
        q, k = t[f"blk.{i}.attn_q.weight"], t[f"blk.{i}.attn_k.weight"]
        if mistake == "permute missing":  # pre-undo so that the reference's unpermute cancels out: net effect none
            t[f"blk.{i}.attn_q.weight"], t[f"blk.{i}.attn_k.weight"] = permute_qk(q, cfg.n_heads), permute_qk(k, cfg.n_kv_heads)
        elif mistake == "permute applied twice":
            t[f"blk.{i}.attn_q.weight"] = unpermute_qk(q, cfg.n_heads)
            t[f"blk.{i}.attn_k.weight"] = unpermute_qk(k, cfg.n_kv_heads)
        elif mistake == "k permuted with n_heads":
            t[f"blk.{i}.attn_k.weight"] = permute_qk(unpermute_qk(k, cfg.n_heads), cfg.n_kv_heads)
        elif mistake == "up and gate swapped":
            t[f"blk.{i}.ffn_up.weight"], t[f"blk.{i}.ffn_gate.weight"] = t[f"blk.{i}.ffn_gate.weight"], t[f"blk.{i}.ffn_up.weight"]
    return gguf_to_lmlab(t, cfg)


# ---- 13.llama_block

def _block(x, w, n_heads, n_kv_heads, eps=1e-5, base=10000.0, mistake=""):
    from lmlab.model.positions.encodings import apply_rope

    if mistake == "eps ignored":
        eps = 1e-12
    B, T, C = x.shape
    hs = C // n_heads
    rep = n_heads // n_kv_heads

    def rms(t, g):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * g

    h = rms(x, w["norm1"])
    q = (h @ w["wq"].T).view(B, T, n_heads, hs).transpose(1, 2)
    k = (h @ w["wk"].T).view(B, T, n_kv_heads, hs).transpose(1, 2)
    v = (h @ w["wv"].T).view(B, T, n_kv_heads, hs).transpose(1, 2)
    pos = torch.arange(T)
    if mistake != "no rope":
        layout = "interleaved" if mistake == "interleaved rope" else "half"
        q, k = apply_rope(q, pos, base=base, layout=layout), apply_rope(k, pos, base=base, layout=layout)
    if mistake == "repeat":
        k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)  # head h uses K/V head h % n_kv: wrong grouping
    else:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = hs if mistake == "scale by hs" else math.sqrt(hs)
    s = (q @ k.transpose(-2, -1) / scale).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    x = x + (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C) @ w["wo"].T
    h = rms(x, w["norm2"])
    return x + (h @ w["w_up"].T * F.silu(h @ w["w_gate"].T)) @ w["w_down"].T


WRONG = {
    "13.bpe_merge_step": {
        "ties go to the largest pair": lambda c, n: _step(c, n, "largest pair on ties"),
        "ties go to the first pair seen": lambda c, n: _step(c, n, "first seen on ties"),
        "counts pairs across chunk boundaries": lambda c, n: _step(c, n, "across chunks"),
        "merges overlapping occurrences": lambda c, n: _step(c, n, "overlapping"),
    },
    "13.bpe_encode": {
        "merges in the wrong (reverse) order": lambda ids, m: _encode(ids, m, "reverse order"),
        "leftmost pair first, ignoring ranks": lambda ids, m: _encode(ids, m, "text order"),
        "each merge only at its first occurrence": lambda ids, m: _encode(ids, m, "one pass only"),
    },
    "13.gguf_to_lmlab": {
        "q/k permute missing": lambda t, cfg: _mapping(t, cfg, "permute missing"),
        "q/k permute applied twice": lambda t, cfg: _mapping(t, cfg, "permute applied twice"),
        "W_k un-permuted with n_heads instead of n_kv_heads": lambda t, cfg: _mapping(t, cfg, "k permuted with n_heads"),
        "up and gate swapped": lambda t, cfg: _mapping(t, cfg, "up and gate swapped"),
    },
    "13.llama_block": {
        "KV heads repeated with repeat, not repeat_interleave": lambda *a: _block(*a, mistake="repeat"),
        "RMSNorm eps ignored": lambda *a: _block(*a, mistake="eps ignored"),
        "RoPE forgotten": lambda *a: _block(*a, mistake="no rope"),
        "RoPE in the interleaved layout": lambda *a: _block(*a, mistake="interleaved rope"),
        "scores divided by hs instead of sqrt(hs)": lambda *a: _block(*a, mistake="scale by hs"),
    },
}
