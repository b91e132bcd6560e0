"""Plausible wrong answers to chapter 03's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math

import torch


def _sinusoidal(n, d, how):
    pe = torch.zeros(n, d)
    p = torch.arange(n, dtype=torch.float32)[:, None]  # (T, 1)
    i = torch.arange(d // 2, dtype=torch.float32)[None, :]  # (1, d/2): pair index
    exponent = i / d if how == "exponent i/d" else 2 * (2 * i) / d if how == "exponent uses the column 2i twice" else 2 * i / d
    angles = p / 10000 ** exponent  # (T, d/2)
    if how == "sin and cos as two halves":
        return torch.cat((angles.sin(), angles.cos()), dim=-1)
    if how == "sin and cos swapped":
        pe[:, 0::2], pe[:, 1::2] = angles.cos(), angles.sin()
        return pe
    if how == "positions start at 1":
        angles = (p + 1) / 10000 ** exponent
    pe[:, 0::2], pe[:, 1::2] = angles.sin(), angles.cos()
    return pe


def _rope(x, positions, base, how):
    d = x.size(-1)
    exponent = torch.arange(0, d, 2, dtype=torch.float32) / d
    if how == "exponent i/d":
        exponent = exponent / 2  # base ** (i / d) with i the pair index
    theta = base ** -exponent  # (d/2,)
    pos = torch.arange(x.size(-2)) if how == "ignores positions (arange)" else positions
    angles = pos.float()[:, None] * theta[None, :]  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    if how == "interleaved layout":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    if how == "angles interleaved, pairs half-split":
        emb = angles.repeat_interleave(2, dim=-1)  # (T, d): [θ0, θ0, θ1, θ1, ...] with rotate_half
        rot = torch.cat((-x[..., d // 2:], x[..., : d // 2]), dim=-1)
        return x * emb.cos() + rot * emb.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    if how == "rotates the wrong way":
        return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # the right rotation (with a wrong theta or positions)


def _geometric(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]


def _alibi(n, how):
    if how == "geometric sequence for any n":
        return torch.tensor(_geometric(n))
    p = 2 ** math.floor(math.log2(n))
    if how == "the wrong interleave [1::2]":
        extra = _geometric(2 * p)[1::2][: n - p]
    elif how == "the first slopes of 2p, not every other":
        extra = _geometric(2 * p)[: n - p]
    elif how == "extra slopes first":
        return torch.tensor(_geometric(2 * p)[0::2][: n - p] + _geometric(p))
    elif how == "uses the next power of two's first n":
        return torch.tensor(_geometric(p if p == n else 2 * p)[:n])
    else:
        raise ValueError(how)
    return torch.tensor(_geometric(p) + extra)


def _bucket(rel, bidirectional=True, num_buckets=32, max_distance=128, how=""):
    ret = torch.zeros_like(rel, dtype=torch.long)
    n = num_buckets
    if bidirectional:
        n //= 2
        after = rel < 0 if how == "bidirectional sign flipped" else rel > 0
        ret += after.long() * n
        dist = rel.abs()
    else:
        dist = rel.abs() if how == "causal uses |rel|" else torch.clamp(-rel, min=0)
    max_exact = n // 2 + (1 if how == "max_exact off by one" else 0)
    large = max_exact + (torch.log(dist.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (n - max_exact))
    large = large.round().long() if how == "rounds instead of flooring" else large.long()
    if how != "not capped at n - 1":
        large = torch.clamp(large, max=n - 1)
    return ret + torch.where(dist < max_exact, dist.long(), large)


def _rope_class(how):
    import torch.nn as nn

    def rotate(x, positions, base):
        d = x.size(-1)
        if how == "arange":
            positions = torch.arange(x.size(-2))
        if how == "first half only":  # RoPE applied to the first d/2 features (as pairs), the rest untouched
            h = d // 2
            return torch.cat((rotate_full(x[..., :h], positions, base, h), x[..., h:]), dim=-1)
        return rotate_full(x, positions, base, d)

    def rotate_full(x, positions, base, d):
        theta = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = positions.float()[:, None] * theta[None, :]
        cos, sin = ang.cos(), ang.sin() * (-1 if how == "backwards" else 1)
        if how == "interleaved":
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        a, b = x[..., : d // 2], x[..., d // 2:]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)

    class RotaryEmbedding(nn.Module):
        def __init__(self, head_dim, base=10000.0):
            super().__init__()
            self.base = base

        def forward(self, x, positions):
            return rotate(x, positions, self.base)

    return RotaryEmbedding


WRONG = {
    "03.sinusoidal_embedding": {
        "exponent i/d instead of 2i/d": lambda n, d: _sinusoidal(n, d, "exponent i/d"),
        "exponent 2·(2i)/d (column index doubled)": lambda n, d: _sinusoidal(n, d, "exponent uses the column 2i twice"),
        "sin and cos as two halves, not interleaved": lambda n, d: _sinusoidal(n, d, "sin and cos as two halves"),
        "sin and cos swapped": lambda n, d: _sinusoidal(n, d, "sin and cos swapped"),
        "positions start at 1": lambda n, d: _sinusoidal(n, d, "positions start at 1"),
    },
    "03.apply_rope": {
        "interleaved layout instead of half-split": lambda x, p, base=10000.0: _rope(x, p, base, "interleaved layout"),
        "base ** (i / d): exponent off by a factor 2": lambda x, p, base=10000.0: _rope(x, p, base, "exponent i/d"),
        "angles interleaved but pairs half-split (layouts mixed)": lambda x, p, base=10000.0: _rope(x, p, base, "angles interleaved, pairs half-split"),
        "rotates the wrong way (sin sign flipped)": lambda x, p, base=10000.0: _rope(x, p, base, "rotates the wrong way"),
        "ignores positions, uses 0..T-1": lambda x, p, base=10000.0: _rope(x, p, base, "ignores positions (arange)"),
    },
    "03.alibi_slopes": {
        "the geometric sequence 2^(-8/n) for any n": lambda n: _alibi(n, "geometric sequence for any n"),
        "the wrong interleave: slopes(2p)[1::2]": lambda n: _alibi(n, "the wrong interleave [1::2]"),
        "the first n - p slopes of 2p, not every other": lambda n: _alibi(n, "the first slopes of 2p, not every other"),
        "the extra slopes put first": lambda n: _alibi(n, "extra slopes first"),
        "the first n slopes of the next power of two": lambda n: _alibi(n, "uses the next power of two's first n"),
    },
    "03.relative_position_bucket": {
        "max_exact off by one": lambda r, bidirectional=True, num_buckets=32, max_distance=128: _bucket(r, bidirectional, num_buckets, max_distance, "max_exact off by one"),
        "bidirectional: earlier keys get the upper half": lambda r, bidirectional=True, num_buckets=32, max_distance=128: _bucket(r, bidirectional, num_buckets, max_distance, "bidirectional sign flipped"),
        "causal: |rel| instead of max(-rel, 0)": lambda r, bidirectional=True, num_buckets=32, max_distance=128: _bucket(r, bidirectional, num_buckets, max_distance, "causal uses |rel|"),
        "rounds instead of flooring": lambda r, bidirectional=True, num_buckets=32, max_distance=128: _bucket(r, bidirectional, num_buckets, max_distance, "rounds instead of flooring"),
        "not capped at n - 1": lambda r, bidirectional=True, num_buckets=32, max_distance=128: _bucket(r, bidirectional, num_buckets, max_distance, "not capped at n - 1"),
    },
    "03.RotaryEmbedding": {
        "interleaved pairs (x[..., 0::2], x[..., 1::2]) instead of the two halves": _rope_class("interleaved"),
        "rotates only the first half of the features (RoPE on the wrong half)": _rope_class("first half only"),
        "ignores positions (uses 0..T-1)": _rope_class("arange"),
        "sin with the wrong sign (rotates backwards)": _rope_class("backwards"),
    },
}
