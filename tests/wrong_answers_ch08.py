"""Plausible wrong answers to chapter 08's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math

import torch


def _step(k_cache, v_cache, q, k_new, v_new, mistake):
    k = torch.cat([k_cache, k_new], dim=2)
    v = torch.cat([v_cache, v_new], dim=2)
    scale = math.sqrt(q.size(-1))
    if mistake == "no scale":
        scale = 1.0
    if mistake == "old keys only":  # attends before appending: the new token does not see itself
        if k_cache.size(2) == 0:
            return torch.zeros_like(q), k, v
        s = q @ k_cache.transpose(-2, -1) / scale
        return s.softmax(-1) @ v_cache, k, v
    if mistake == "value not appended":
        v_used = torch.cat([v_cache, k_new], dim=2)  # appends the key to the value cache
        return (q @ k.transpose(-2, -1) / scale).softmax(-1) @ v_used, k, v_used
    if mistake == "new token prepended":
        k, v = torch.cat([k_new, k_cache], dim=2), torch.cat([v_new, v_cache], dim=2)
    s = q @ k.transpose(-2, -1) / scale
    dim = -2 if mistake == "softmax over the query axis" else -1
    return s.softmax(dim) @ v, k, v


WRONG = {
    "08.kv_cache_bytes": {
        "forgets the factor 2 (K only)": lambda L, nh, nkv, hs, T, b, batch=1: int(L * nkv * hs * T * batch * b),
        "uses n_heads instead of n_kv_heads": lambda L, nh, nkv, hs, T, b, batch=1: int(2 * L * nh * hs * T * batch * b),
        "ignores the batch": lambda L, nh, nkv, hs, T, b, batch=1: int(2 * L * nkv * hs * T * b),
        "counts bits, not bytes": lambda L, nh, nkv, hs, T, b, batch=1: int(2 * L * nkv * hs * T * batch * b * 8),
        "returns a float": lambda L, nh, nkv, hs, T, b, batch=1: 2.0 * L * nkv * hs * T * batch * b,
    },
    "08.decode_step": {
        "forgets the 1/sqrt(hs) scale": lambda *a: _step(*a, "no scale"),
        "attends over the old cache only (before appending)": lambda *a: _step(*a, "old keys only"),
        "appends the key to the value cache": lambda *a: _step(*a, "value not appended"),
        "puts the new token first": lambda *a: _step(*a, "new token prepended"),
        "softmax over the query axis": lambda *a: _step(*a, "softmax over the query axis"),
    },
    "08.blocks_needed": {
        "floor instead of ceil": lambda n, bs: n // bs,
        "floor + 1 (an extra block on exact multiples)": lambda n, bs: n // bs + 1,
        "rounds to nearest": lambda n, bs: round(n / bs),
    },
    "08.locate_token": {
        "offset off by one (counts from 1)": lambda table, p, bs: (table[p // bs], p % bs + 1),
        "returns the logical block, not the physical one": lambda table, p, bs: (p // bs, p % bs),
        "block from (p - 1) // bs": lambda table, p, bs: (table[max(p - 1, 0) // bs], p % bs),
        "offset and block swapped": lambda table, p, bs: (p % bs, table[p // bs]),
    },
}
