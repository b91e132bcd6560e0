"""The in-process (simulated ranks) references of chapter 12's component exercises."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.parallel.in_process import simulated_ring_all_reduce
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


# -- one implementation: in-process ranks (threads) run the same functions as gloo processes ----------


def test_thread_ranks_collectives_follow_torch_distributed_semantics():
    from lmlab.parallel.in_process import run_in_process

    ts = [torch.arange(12.0).view(6, 2) * 10 ** r for r in range(3)]

    def one_rank(ranks, t):
        return ranks.reduce_scatter(t.clone()), ranks.all_gather(t[:2].clone()), ranks.all_reduce(t.clone()), ranks.sent

    total = sum(ts)
    for r, (rs, ag, ar, sent) in enumerate(run_in_process(one_rank, ts)):
        assert torch.equal(rs, total[2 * r: 2 * r + 2])  # rank r keeps chunk r of the sum, (2, 2)
        assert torch.equal(ag, torch.cat([t[:2] for t in ts]))  # rank order, (6, 2)
        assert torch.equal(ar, total)
        # reduce-scatter 2/3 of 12, all-gather 2 x 4 elements, all-reduce 2 x 2/3 of 12 -> 8 + 8 + 16
        assert sent == 32


def test_run_in_process_reraises_the_failing_rank_without_waiting():
    import time

    from lmlab.parallel.in_process import run_in_process

    def one_rank(ranks, t):
        if ranks.rank == 1:
            raise ZeroDivisionError("rank 1 broke")
        return ranks.all_reduce(t)  # would wait forever for rank 1

    t0 = time.monotonic()
    with pytest.raises(ZeroDivisionError, match="rank 1 broke"):
        run_in_process(one_rank, [torch.ones(4) for _ in range(3)])
    assert time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="inputs"):
        run_in_process(one_rank, [])


@pytest.mark.parametrize("n", [1, 2, 4])
def test_spmd_step_in_process_equals_one_process(n):
    from lmlab.course.experiments import ch12_spmd as S
    from lmlab.parallel.in_process import run_in_process

    inputs = S.spmd_inputs(n)
    diff = S.max_differences(run_in_process(S.spmd_step, inputs), S.spmd_reference(inputs))
    assert set(diff) == {"ring", "dp_grad", "zero1_param", "tp_out", "tp_x_grad"}
    assert max(diff.values()) < 1e-10
    with pytest.raises(ValueError, match="n_ranks"):
        S.spmd_inputs(3)


def test_megatron_layers_and_block_run_on_in_process_ranks():
    """The nn.Module layers the gloo processes use, on threads: the model's own block split by shard_block == the block."""
    import torch.nn as nn

    from lmlab.model import GPT, ModelConfig
    import copy

    from lmlab.parallel.parallelize import shard_block
    from lmlab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from lmlab.parallel.in_process import run_in_process

    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=32, context_length=8, d_model=32, n_layers=1, n_heads=4, activation="swiglu",
                      norm="rmsnorm", bias=False, n_kv_heads=2)
    block = GPT(cfg).blocks[0]
    lin1, lin2 = nn.Linear(16, 32), nn.Linear(32, 16)
    x, xm = torch.randn(2, 8, 32), torch.randn(3, 16)
    y_ref = block(x)
    m_ref = lin2(F.gelu(lin1(xm)))

    def one_rank(ranks, _):
        tp_block = shard_block(copy.deepcopy(block), group=ranks)
        xg = x.clone().requires_grad_()
        y = tp_block(xg)
        y.square().sum().backward()
        mlp = nn.Sequential(ColumnParallelLinear.from_linear(lin1, group=ranks), nn.GELU(),
                            RowParallelLinear.from_linear(lin2, group=ranks))
        return y.detach(), xg.grad, mlp(xm).detach()

    xr = x.clone().requires_grad_()
    block(xr).square().sum().backward()
    for y, x_grad, m in run_in_process(one_rank, [None, None]):
        torch.testing.assert_close(y, y_ref.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_grad, xr.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m, m_ref.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_optimizer_runs_on_in_process_ranks(stage):
    """ZeroOptimizer, the class the gloo ranks train with, on 2 threads: the same model as one process."""
    from lmlab.parallel import workers
    from lmlab.parallel.in_process import run_in_process
    from lmlab.parallel.zero import ZeroOptimizer

    data = workers.batches(steps=3)
    reference = workers.reference_training(workers.mlp(), data, steps=3)
    models = [workers.mlp(), workers.mlp()]  # built here: torch.manual_seed is global, not per thread

    def one_rank(ranks, model):
        opt = ZeroOptimizer(model, stage, group=ranks, **workers.ADAMW)
        for x, y in data:
            F.mse_loss(model(x.chunk(2)[ranks.rank]), y.chunk(2)[ranks.rank]).backward()
            opt.step()
            opt.zero_grad()
        return opt.full_parameters()

    for params in run_in_process(one_rank, models):
        assert params.keys() == reference.keys()
        for k in params:
            torch.testing.assert_close(params[k], reference[k], atol=1e-6, rtol=1e-5)


def test_spmd_functions_name_bad_shapes():
    from lmlab.parallel.tensor_parallel import column_parallel_forward, row_parallel_forward
    from lmlab.parallel.in_process import run_in_process
    from lmlab.parallel.zero import zero1_adamw_step

    with pytest.raises(ValueError, match="x_shard"):
        run_in_process(lambda ranks, _: row_parallel_forward(torch.zeros(2, 3), torch.zeros(4, 5), None, ranks), [None])
    with pytest.raises(ValueError, match="column_parallel_forward: x"):
        run_in_process(lambda ranks, _: column_parallel_forward(torch.zeros(2, 3), torch.zeros(4, 5), None, ranks), [None])
    state = {"exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}
    with pytest.raises(ValueError, match="divisible"):
        run_in_process(lambda ranks, _: zero1_adamw_step(torch.zeros(5), torch.zeros(5), state, 1, ranks), [None, None])


def test_pipedream_staleness_and_its_cost():
    from lmlab.parallel.pipeline import pipedream_staleness, stale_sgd

    for p in (2, 4):
        st = pipedream_staleness(p, 12)
        assert [row[-1] for row in st] == [p - 1 - s for s in range(p)]  # steady state: p - 1 - s updates behind
        assert all(row[i] <= i for row in st for i in range(12))  # never behind more updates than exist
    assert stale_sgd(0, 0.9)[-1] < 1e-4  # synchronous: converges at this step size
    assert stale_sgd(3, 0.9)[-1] > 1  # 3 updates stale: diverges at the same step size
    assert stale_sgd(3, 0.3)[-1] < 1e-3  # ... and converges with a smaller one
    with pytest.raises(ValueError, match="staleness"):
        stale_sgd(-1)
