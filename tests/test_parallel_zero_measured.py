"""ZeRO measured, not computed (lesson 12): elements that actually pass between in-process ranks (every
collective of :class:`~lmlab.parallel.in_process.ThreadRanks` is a ring of ``sendrecv`` calls, counted by
``ranks.sent``) against ZeRO's 2 Psi / 2 Psi / 3 Psi, and the gradient memory held during backward: ZeRO-2
reduce-scatters each bucket inside backward, so the full gradient never exists at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.parallel.in_process import run_in_process
from lmlab.parallel.workers import ADAMW, batches, mlp
from lmlab.parallel.zero import ZeroOptimizer

N, STEPS = 2, 3
PSI = sum(p.numel() for p in mlp().parameters())  # 1240, every unit divisible by N: no padding


def _train(stage: int, overlap: bool = True):
    data = batches(STEPS)

    def rank_fn(ranks, rm):
        r, model = rm
        opt = ZeroOptimizer(model, stage, group=ranks, overlap=overlap, **ADAMW)
        sent = []
        for x, y in data:
            before = ranks.sent
            F.mse_loss(model(x.chunk(N)[r]), y.chunk(N)[r]).backward()
            opt.step()
            opt.zero_grad()
            sent.append(ranks.sent - before)
        return {"params": opt.full_parameters(), "sent": sent, "peak": opt.peak_grad_bytes}

    return run_in_process(rank_fn, [(r, mlp()) for r in range(N)])  # built here: threads share one random stream


def test_traffic_on_the_wire_matches_zero_formulas():
    ring = (N - 1) / N
    expected = {0: 2 * ring * PSI, 1: 2 * ring * PSI, 2: 2 * ring * PSI, 3: 3 * ring * PSI}
    for stage, elements in expected.items():
        for rank in _train(stage):
            assert rank["sent"] == [elements] * STEPS, (stage, rank["sent"], elements)


def test_overlapped_zero2_equals_stage_0_and_holds_less_gradient():
    runs = {stage: _train(stage) for stage in (0, 1, 2)}
    late = _train(2, overlap=False)  # reduce-scatter in step(): the full gradient exists after backward
    for stage in (1, 2):
        for a, b in zip(runs[stage], runs[0]):
            for k in b["params"]:
                torch.testing.assert_close(a["params"][k], b["params"][k], atol=1e-6, rtol=1e-6)
    full = 4 * PSI  # fp32 gradient of every parameter
    assert all(r["peak"] == full for r in runs[1]), [r["peak"] for r in runs[1]]
    assert all(r["peak"] == full for r in late)
    print({stage: [r["peak"] for r in runs[stage]] for stage in runs}, "bytes; full gradient", full)
    largest_unit = 4 * max(sum(p.numel() for p in m.parameters()) for m in mlp())
    for r in runs[2]:  # one bucket's gradient plus the shards so far, never the whole gradient
        assert r["peak"] <= largest_unit + full // N, r["peak"]
        assert r["peak"] < full
