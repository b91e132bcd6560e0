"""Plausible wrong answers to chapter 06's YaRN and sink-eviction exercises."""

import math

import torch


def _yarn(d, base, s, L, bf=32.0, bs=1.0, mistake=None):
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)

    def dim(n):
        return d * math.log(L / (n * 2 * math.pi)) / (2 * math.log(base))

    if mistake == "no floor / ceil":
        lo, hi = max(dim(bf), 0), min(dim(bs), d - 1)
    else:
        lo, hi = max(math.floor(dim(bf)), 0), min(math.ceil(dim(bs)), d - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    if mistake == "ramp reversed (interpolates the fast pairs)":
        ramp = 1 - ramp
    scaled = inv * s if mistake == "multiplies by the factor" else inv / s
    af = 1.0 if mistake == "no attention factor" else 0.1 * math.log(s) + 1.0
    if mistake == "attention factor squared":
        af = af ** 2
    return inv * (1 - ramp) + scaled * ramp, af


def _evict(k, v, pos, n_sink, window, mistake):
    L = k.size(2)
    if mistake == "keeps one token too many":
        window = window + 1
    if mistake != "evicts even under capacity" and L <= n_sink + window:
        return k, v, pos
    if mistake == "drops the sinks (plain window)":
        keep = torch.arange(max(L - window, 0), L)
    elif mistake == "keeps the oldest window, not the newest":
        keep = torch.cat((torch.arange(n_sink), torch.arange(n_sink, n_sink + window)))
    else:
        keep = torch.cat((torch.arange(n_sink), torch.arange(max(L - window, 0), L)))
    if mistake == "positions not evicted":
        return k[:, :, keep], v[:, :, keep], pos
    return k[:, :, keep], v[:, :, keep], pos[keep]


WRONG = {
    "06.yarn_frequencies": {m: (lambda *a, m=m: _yarn(*a, mistake=m)) for m in (
        "no floor / ceil", "ramp reversed (interpolates the fast pairs)", "multiplies by the factor", "no attention factor",
        "attention factor squared")},
    "06.sink_evict": {m: (lambda k, v, p, n, w, m=m: _evict(k, v, p, n, w, m)) for m in (
        "keeps one token too many", "evicts even under capacity", "drops the sinks (plain window)",
        "keeps the oldest window, not the newest", "positions not evicted")},
}
