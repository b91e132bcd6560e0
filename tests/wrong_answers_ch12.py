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


# ---------------------------------------------------------------------------------------------
# Components over simulated ranks
# ---------------------------------------------------------------------------------------------


def _ring_sim(tensors, mistake):
    n = len(tensors)
    state = [t.view(n, -1) if mistake == "modifies the inputs" else t.clone().view(n, -1) for t in tensors]
    history = []
    for s in range(2 * (n - 1)):
        reduce = s < n - 1
        if reduce:
            out = [(r + s) % n if mistake == "sends the wrong chunk (r + s)" else (r - s) % n for r in range(n)]
        else:
            a = s - (n - 1)
            out = [(r - a) % n if mistake == "all-gather forgets the +1" else (r + 1 - a) % n for r in range(n)]
        msgs = [state[r][out[r]].clone() for r in range(n)]
        for r in range(n):
            src = (r + 1) % n if mistake == "receives from the right neighbour" else (r - 1) % n
            c, chunk = out[src], msgs[src]
            if reduce or mistake == "all-gather adds instead of copying":
                state[r][c] += chunk
            elif mistake != "forgets the all-gather":
                state[r][c] = chunk
        history.append([x.reshape(-1).clone() for x in state])
    return history


def _zero1(params, grads, states, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, mistake=None):
    n = len(params)
    b1, b2 = betas
    g_all = torch.stack(grads).sum(0) if mistake == "sums the gradients (no mean)" else torch.stack(grads).mean(0)
    shards, new_states = [], []
    for r in range(n):
        g = grads[r].chunk(n)[r] if mistake == "no reduce-scatter (local gradient)" else g_all.chunk(n)[r]
        p = params[r].chunk(n)[r]
        if mistake == "L2 in the gradient (Adam, not AdamW)":
            g = g + weight_decay * p
        else:
            p = p * (1 - lr * weight_decay)
        m = b1 * states[r]["exp_avg"] + (1 - b1) * g
        v = b2 * states[r]["exp_avg_sq"] + (1 - b2) * g * g
        if mistake == "no bias correction":
            shards.append(p - lr * m / (v.sqrt() + eps))
        else:
            shards.append(p - lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps))
        new_states.append({"exp_avg": m, "exp_avg_sq": v})
    if mistake == "forgets the all-gather":
        out = []
        for r in range(n):
            parts = list(params[r].chunk(n))
            parts[r] = shards[r]
            out.append(torch.cat(parts))
        return out, new_states
    full = torch.cat(shards)
    return [full.clone() for _ in range(n)], new_states


def _row(xs, ws, b, mistake):
    partial = [F.linear(x, w) for x, w in zip(xs, ws)]
    if mistake == "bias added on every rank before the all-reduce":
        partial = [y + b if b is not None else y for y in partial]
        total = torch.stack(partial).sum(0)
        return [total.clone() for _ in xs]
    if mistake == "no all-reduce (each rank keeps its partial sum)":
        return [y + b if b is not None else y for y in partial]
    if mistake == "concatenates instead of summing":
        total = torch.cat(partial, dim=-1)
    elif mistake == "averages instead of summing":
        total = torch.stack(partial).mean(0)
    else:
        total = torch.stack(partial).sum(0)
    total = total + b if b is not None else total
    return [total.clone() for _ in xs]


def _1f1b(p, m, stage, mistake):
    warm = {"warm-up of p - stage forwards": p - stage, "warm-up counted from the wrong end (stage forwards)": stage}.get(mistake, p - 1 - stage)
    if mistake != "warm-up not capped at m":
        warm = min(warm, m)
    ops = [("F", i) for i in range(warm)]
    for i in range(max(m - warm, 0)):
        ops += [("B", i), ("F", warm + i)] if mistake == "backward before forward in the steady state" else [("F", warm + i), ("B", i)]
    rest = list(range(max(m - warm, 0), m))
    if mistake == "cool-down backwards in reverse order":
        rest = rest[::-1]
    return ops + [("B", i) for i in rest]


WRONG.update({
    "12.ring_all_reduce_sim": {m: (lambda t, m=m: _ring_sim(t, m)) for m in (
        "sends the wrong chunk (r + s)", "all-gather forgets the +1", "receives from the right neighbour",
        "all-gather adds instead of copying", "forgets the all-gather", "modifies the inputs")},
    "12.zero1_step": {m: (lambda *a, m=m, **k: _zero1(*a, mistake=m, **k)) for m in (
        "forgets the all-gather", "sums the gradients (no mean)", "no reduce-scatter (local gradient)",
        "L2 in the gradient (Adam, not AdamW)", "no bias correction")},
    "12.row_parallel_forward": {m: (lambda xs, ws, b, m=m: _row(xs, ws, b, m)) for m in (
        "bias added on every rank before the all-reduce", "no all-reduce (each rank keeps its partial sum)",
        "concatenates instead of summing", "averages instead of summing")},
    "12.one_f_one_b": {
        **{m: (lambda p, n, s, m=m: _1f1b(p, n, s, m)) for m in (
            "warm-up of p - stage forwards", "warm-up counted from the wrong end (stage forwards)", "warm-up not capped at m",
            "backward before forward in the steady state", "cool-down backwards in reverse order")},
        "GPipe's order": lambda p, m, s: [("F", i) for i in range(m)] + [("B", i) for i in range(m)],
        "backwards newest first": lambda p, m, s: [("F", i) for i in range(m)] + [("B", i) for i in reversed(range(m))],
    },
})
