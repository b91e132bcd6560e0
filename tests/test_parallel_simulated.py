"""The in-process (simulated ranks) references of chapter 12's component exercises."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.parallel.collectives import simulated_ring_all_reduce
from lmlab.parallel.pipeline import schedule_ops, simulate
from lmlab.parallel.tensor_parallel import simulated_row_parallel_forward
from lmlab.parallel.zero import simulated_zero1_step


@pytest.mark.parametrize("n", [2, 3, 5])
def test_simulated_ring_sums_and_keeps_inputs(n):
    ts = [torch.randn(n * 3, dtype=torch.float64, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    copies = [t.clone() for t in ts]
    history = simulated_ring_all_reduce(ts)
    assert len(history) == 2 * (n - 1)
    for r in range(n):
        torch.testing.assert_close(history[-1][r], torch.stack(copies).sum(0))
        torch.testing.assert_close(ts[r], copies[r], rtol=0, atol=0)
    # after the reduce-scatter rank r holds the finished chunk (r + 1) mod N
    for r in range(n):
        c = (r + 1) % n
        torch.testing.assert_close(history[n - 2][r].view(n, -1)[c], torch.stack(copies).sum(0).view(n, -1)[c])


def test_simulated_ring_validates():
    with pytest.raises(ValueError, match="divisible"):
        simulated_ring_all_reduce([torch.zeros(5), torch.zeros(5)])
    with pytest.raises(ValueError, match="tensors"):
        simulated_ring_all_reduce([torch.zeros(4)])


@pytest.mark.parametrize("n_ranks,wd", [(1, 0.0), (2, 0.1), (4, 0.1)])
def test_simulated_zero1_equals_torch_adamw(n_ranks, wd):
    n = 8
    w = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = torch.nn.Parameter(w.clone())
    opt = torch.optim.AdamW([full], lr=1e-2, betas=(0.9, 0.95), weight_decay=wd)
    params = [w.clone() for _ in range(n_ranks)]
    states = [{"exp_avg": torch.zeros(n // n_ranks, dtype=torch.float64), "exp_avg_sq": torch.zeros(n // n_ranks, dtype=torch.float64)}
              for _ in range(n_ranks)]
    for step in range(1, 4):
        grads = [torch.randn(n, dtype=torch.float64) for _ in range(n_ranks)]
        full.grad = torch.stack(grads).mean(0)
        opt.step()
        params, states = simulated_zero1_step(params, grads, states, step, lr=1e-2, betas=(0.9, 0.95), weight_decay=wd)
        for r in range(n_ranks):
            torch.testing.assert_close(params[r], full.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(states[r]["exp_avg"], opt.state[full]["exp_avg"].chunk(n_ranks)[r], rtol=1e-12, atol=1e-12)


def test_simulated_zero1_validates():
    p = [torch.zeros(5), torch.zeros(5)]
    with pytest.raises(ValueError, match="divisible"):
        simulated_zero1_step(p, p, [{}, {}], 1)


def test_simulated_row_parallel_equals_linear():
    x, w, b = torch.randn(2, 3, 8), torch.randn(5, 8), torch.randn(5)
    outs = simulated_row_parallel_forward(list(x.chunk(4, -1)), list(w.chunk(4, 1)), b)
    assert len(outs) == 4
    for y in outs:
        torch.testing.assert_close(y, F.linear(x, w, b))
    with pytest.raises(ValueError, match="x_shards"):
        simulated_row_parallel_forward([x], list(w.chunk(2, 1)))


def test_1f1b_schedule_bounds_activations():
    for p, m in ((4, 8), (5, 2)):
        res = simulate("1f1b", p, m)
        assert res.peak_activations == [min(p - s, m) for s in range(p)]
        assert len(schedule_ops("1f1b", p, m, 0)) == 2 * m
