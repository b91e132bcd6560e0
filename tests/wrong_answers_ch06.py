"""Plausible wrong answers to chapter 06's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import torch


def _lambda(T, n_sink, window, how):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if how == "<= window (one too many)":
        return (j <= i) & ((i - j <= window) | (j < n_sink))
    if how == "sinks not causal":
        return ((j <= i) & (i - j < window)) | (j < n_sink)
    if how == "window excludes itself":
        return (j <= i) & (((i - j < window) & (j < i)) | (j < n_sink))
    if how == "<= n_sink (one sink too many)":
        return (j <= i) & ((i - j < window) | (j <= n_sink))
    if how == "sinks only, no window":
        return (j <= i) & (j < n_sink)
    raise ValueError(how)


def _topk(q, mk, mv, k, how):
    scores = q @ mk.T  # (T, M)
    if how == "k smallest":
        top, idx = torch.topk(scores, k, dim=-1, largest=False)
    elif how == "not sorted (by row index)":
        _, idx = torch.topk(scores, k, dim=-1)
        idx = idx.sort(dim=-1).values
        top = scores.gather(-1, idx)
    elif how == "L2 distance":
        dist = torch.cdist(q, mk) ** 2  # (T, M)
        neg, idx = torch.topk(-dist, k, dim=-1)
        top = scores.gather(-1, idx)
    elif how == "cosine similarity":
        cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(mk, dim=-1).T
        _, idx = torch.topk(cos, k, dim=-1)
        top = scores.gather(-1, idx)
    elif how == "values from mem_k":
        top, idx = torch.topk(scores, k, dim=-1)
        return top, idx, mk[idx][..., : mv.size(1)]
    else:
        raise ValueError(how)
    return top, idx, mv[idx]


WRONG = {
    "06.interpolate_positions": {
        "multiplies by s instead of dividing": lambda p, s: p.float() * s,
        "integer division drops the fractions": lambda p, s: torch.div(p, s, rounding_mode="floor").float(),
        "positions unchanged": lambda p, s: p.float(),
        "divides by s - 1": lambda p, s: p.float() / max(s - 1, 1e-9),
    },
    "06.ntk_base": {
        "exponent 1: base · s": lambda b, s, d: b * s,
        "exponent (d-2)/d instead of d/(d-2)": lambda b, s, d: b * s ** ((d - 2) / d),
        "precedence: s ** d / (d - 2)": lambda b, s, d: b * s ** d / (d - 2),
        "scales the base to the power (base ** (d/(d-2)))": lambda b, s, d: (b * s) ** (d / (d - 2)),
    },
    "06.lambda_mask": {
        "off by one: i - j <= window": lambda T, n, w: _lambda(T, n, w, "<= window (one too many)"),
        "sinks not causal (later sinks visible)": lambda T, n, w: _lambda(T, n, w, "sinks not causal"),
        "the window excludes the token itself": lambda T, n, w: _lambda(T, n, w, "window excludes itself"),
        "off by one: j <= n_sink": lambda T, n, w: _lambda(T, n, w, "<= n_sink (one sink too many)"),
        "sinks only, no window": lambda T, n, w: _lambda(T, n, w, "sinks only, no window"),
    },
    "06.memory_top_k": {
        "returns the k smallest scores": lambda q, mk, mv, k: _topk(q, mk, mv, k, "k smallest"),
        "not sorted (by memory row)": lambda q, mk, mv, k: _topk(q, mk, mv, k, "not sorted (by row index)"),
        "L2 distance instead of inner product": lambda q, mk, mv, k: _topk(q, mk, mv, k, "L2 distance"),
        "cosine similarity instead of inner product": lambda q, mk, mv, k: _topk(q, mk, mv, k, "cosine similarity"),
        "values taken from the keys": lambda q, mk, mv, k: _topk(q, mk, mv, k, "values from mem_k"),
    },
}
