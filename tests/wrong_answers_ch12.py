"""Plausible wrong answers to chapter 12's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import torch
import torch.nn.functional as F


def _ring(rank, step, n, mistake):
    if step < n - 1:
        return (rank + step) % n if mistake == "sends forward in reduce-scatter" else (rank - step) % n
    s = step - (n - 1)
    if mistake == "all-gather restarts the reduce-scatter pattern":
        return (rank - s) % n
    if mistake == "all-gather forgets the +1 (sends an unfinished chunk)":
        return (rank - s) % n
    return (rank + 1 - s) % n


def _zero(psi, n, stage, mistake):
    p, g, o = 2 * psi, 2 * psi, 12 * psi
    if mistake == "stage k shards params first":
        return p / (n if stage >= 1 else 1) + g / (n if stage >= 2 else 1) + o / (n if stage >= 3 else 1)
    if mistake == "optimizer is 8 bytes (forgot the fp32 master copy)":
        o = 8 * psi
    if mistake == "stage 2 also shards the weights":
        return p / (n if stage >= 2 else 1) + g / (n if stage >= 2 else 1) + o / (n if stage >= 1 else 1)
    return p / (n if stage >= 3 else 1) + g / (n if stage >= 2 else 1) + o / (n if stage >= 1 else 1)


def _col(x, ws, bs, mistake):
    biases = bs if bs is not None else [None] * len(ws)
    outs = [F.linear(x, w, b) for w, b in zip(ws, biases)]
    if mistake == "sums the shards (row-parallel)":
        return sum(outs)
    if mistake == "ignores the bias":
        return torch.cat([F.linear(x, w) for w in ws], dim=-1)
    if mistake == "concatenates along dim 0":
        return torch.cat(outs, dim=0)
    return torch.cat(outs, dim=-1)


WRONG = {
    "12.ring_send_chunk": {
        "sends forward in reduce-scatter": lambda r, s, n: _ring(r, s, n, "sends forward in reduce-scatter"),
        "all-gather forgets the +1 (sends an unfinished chunk)": lambda r, s, n: _ring(r, s, n, "all-gather forgets the +1 (sends an unfinished chunk)"),
        "all-gather keeps counting from step 0": lambda r, s, n: (r - s) % n if s < n - 1 else (r + 1 - s) % n,
    },
    "12.zero_bytes_per_gpu": {
        "stage k shards params first": lambda p, n, s: _zero(p, n, s, "stage k shards params first"),
        "optimizer is 8 bytes (forgot the fp32 master copy)": lambda p, n, s: _zero(p, n, s, "optimizer is 8 bytes (forgot the fp32 master copy)"),
        "stage 2 also shards the weights": lambda p, n, s: _zero(p, n, s, "stage 2 also shards the weights"),
        "everything sharded from stage 1": lambda p, n, s: 16 * p / (n if s >= 1 else 1),
    },
    "12.bubble_fraction": {
        "Megatron's (p-1)/m": lambda p, m: (p - 1) / m,
        "(p-1)/(m+p)": lambda p, m: (p - 1) / (m + p),
        "p/(m+p-1)": lambda p, m: p / (m + p - 1),
        "integer division": lambda p, m: (p - 1) // (m + p - 1),
    },
    "12.column_parallel_forward": {
        "sums the shards (row-parallel)": lambda x, ws, bs: _col(x, ws, bs, "sums the shards (row-parallel)"),
        "ignores the bias": lambda x, ws, bs: _col(x, ws, bs, "ignores the bias"),
        "concatenates along dim 0": lambda x, ws, bs: _col(x, ws, bs, "concatenates along dim 0"),
    },
    "12.rank_coords": {
        "data parallel fastest": lambda r, dp, pp, tp: (r % dp, (r // dp) % pp, r // (dp * pp)),
        "pp without the modulo": lambda r, dp, pp, tp: (r // (pp * tp), r // tp, r % tp),
        "divides by pp instead of tp": lambda r, dp, pp, tp: (r // (pp * tp), (r // pp) % pp, r % tp),
    },
}
