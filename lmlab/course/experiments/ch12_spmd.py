"""Lesson 12's "same code, two worlds" check (``lessons/12_parallelism``).

:func:`spmd_step` is what *one rank* runs: the ring all-reduce, data parallel's gradient average, a
ZeRO-1 AdamW step and a Megatron column -> row-parallel MLP (forward and backward), each through
the function :mod:`lmlab.parallel` itself uses. The lesson runs it on in-process ranks
(``run_in_process(spmd_step, spmd_inputs(N))``, threads passing tensors through queues) and, inside
its one launch, on gloo processes (``spmd_step(DistRanks(), spmd_inputs(2)[rank])``), and compares
both with :func:`spmd_reference`, the same arithmetic in one process without any split.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.parallel.collectives import ring_all_reduce
from lmlab.parallel.data_parallel import average_gradients
from lmlab.parallel.tensor_parallel import column_parallel_forward, row_parallel_forward
from lmlab.parallel.zero import zero1_adamw_step

__all__ = ["spmd_inputs", "spmd_step", "spmd_reference", "max_differences", "ADAMW"]

ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
D_IN, D_HID, BATCH = 8, 16, 8  # sizes divisible by 1, 2, 4 and 8 ranks


def _model() -> nn.Linear:
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(D_IN, 4, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, D_IN, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    return lin


def _shared(seed: int = 0) -> dict:
    """Everything the ranks agree on (weights, the whole batch), float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"x": r(BATCH, D_IN), "y": r(BATCH, 4), "w": r(D_HID * 2), "w1": r(D_HID, D_IN), "b1": r(D_HID),
            "w2": r(D_IN, D_HID), "b2": r(D_IN)}


def spmd_inputs(n_ranks: int, seed: int = 0) -> list[dict]:
    """Rank r's inputs: its own vector and gradient, its slice of the batch, its shards of W1 / W2."""
    if isinstance(n_ranks, bool) or not isinstance(n_ranks, int) or n_ranks < 1 or D_HID % n_ranks or BATCH % n_ranks:
        raise ValueError(f"spmd_inputs: n_ranks must be one of (1, 2, 4, 8), got {n_ranks!r}")
    s, g = _shared(seed), torch.Generator().manual_seed(seed + 1)
    out = []
    for r in range(n_ranks):
        out.append({
            "vec": torch.randn(12, generator=g, dtype=torch.float64),  # ring: any length (padded to N)
            "x": s["x"].chunk(n_ranks)[r], "y": s["y"].chunk(n_ranks)[r],  # DP: this rank's slice of the batch
            "param": s["w"].clone(), "grad": torch.randn(D_HID * 2, generator=g, dtype=torch.float64),  # ZeRO-1
            "x_tp": s["x"], "w1": s["w1"].chunk(n_ranks, 0)[r], "b1": s["b1"].chunk(n_ranks)[r],  # TP: column shard
            "w2": s["w2"].chunk(n_ranks, 1)[r], "b2": s["b2"],  # TP: row shard, replicated bias
        })
    return out


def spmd_step(ranks, inp: dict) -> dict:
    """One rank's part of all four algorithms; ``ranks``: in-process Ranks or ``DistRanks()``."""
    out = {"ring": ring_all_reduce(inp["vec"].clone(), ranks)}  # sum of every rank's vector

    model = _model()  # data parallel: the same model everywhere, its own data
    F.mse_loss(model(inp["x"]), inp["y"]).backward()
    average_gradients(model, ranks)  # the full batch's gradient
    out["dp_grad"] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    n = inp["param"].numel() // ranks.size
    state = {"exp_avg": inp["param"].new_zeros(n), "exp_avg_sq": inp["param"].new_zeros(n)}
    out["zero1_param"], _ = zero1_adamw_step(inp["param"], inp["grad"], state, 1, ranks, **ADAMW)

    x = inp["x_tp"].clone().requires_grad_()  # tensor parallel: x replicated
    h = F.gelu(column_parallel_forward(x, inp["w1"], inp["b1"], ranks))  # (B, hidden / t): my units
    y = row_parallel_forward(h, inp["w2"], inp["b2"], ranks)  # (B, d): all-reduced partial sums
    y.square().sum().backward()  # the input gradient is all-reduced on the way back (f)
    out["tp_out"], out["tp_x_grad"] = y.detach(), x.grad
    return out


def spmd_reference(inputs: list[dict]) -> dict:
    """The same numbers in one process, with nothing split: what every rank of :func:`spmd_step` must get."""
    x, y = torch.cat([i["x"] for i in inputs]), torch.cat([i["y"] for i in inputs])
    model = _model()
    F.mse_loss(model(x), y).backward()
    p = nn.Parameter(inputs[0]["param"].clone())
    p.grad = torch.stack([i["grad"] for i in inputs]).mean(0)
    opt = torch.optim.AdamW([p], **ADAMW)
    opt.step()
    w1, b1 = torch.cat([i["w1"] for i in inputs]), torch.cat([i["b1"] for i in inputs])
    w2 = torch.cat([i["w2"] for i in inputs], 1)
    xt = inputs[0]["x_tp"].clone().requires_grad_()
    yt = F.linear(F.gelu(F.linear(xt, w1, b1)), w2, inputs[0]["b2"])
    yt.square().sum().backward()
    return {"ring": torch.stack([i["vec"] for i in inputs]).sum(0),
            "dp_grad": torch.cat([q.grad.reshape(-1) for q in model.parameters()]),
            "zero1_param": p.detach(), "tp_out": yt.detach(), "tp_x_grad": xt.grad}


def max_differences(per_rank: list[dict], other) -> dict:
    """``{key: max |a - b|}`` over every rank; ``other``: one dict (a reference) or one per rank."""
    others = other if isinstance(other, list) else [other] * len(per_rank)
    return {k: max(float((a[k] - b[k]).abs().max()) for a, b in zip(per_rank, others)) for k in per_rank[0]}
