"""Tests for :mod:`lmlab.parallel` (lesson 12): every scheme against one process and against torch.

Spawning ranks is slow (~11 s for 2, ~25 s for 4, ~32 s for 8 on 2 cores), so each launch runs
many checks inside the workers (:mod:`lmlab.parallel.workers`) and returns numbers that the
tests below assert on; the launches are module-scoped fixtures shared by several tests.
Tolerances (fp32): 1e-6 after 5 AdamW steps (lr 1e-2) and for single forward/backward passes;
observed differences are ~1e-7. After the tests no worker process may remain.
"""

from __future__ import annotations

import os
import time

import pytest

from lmlab.scaling import calculators as calc
from lmlab.parallel import RankGrid, WorkerError, launch, workers
from lmlab.parallel.pipeline import SCHEDULES, render, simulate

TOL = 1e-6


def _children() -> set[int]:
    """PIDs of this process's live children but multiprocessing's resource tracker (from /proc)."""
    me, out = os.getpid(), set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                # multiprocessing's resource tracker is started once and lives as long as we do
                if int(fields[1]) == me and fields[0] != "Z" and b"resource_tracker" not in cmdline:
                    out.add(int(pid))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _no_children_left(before: set[int], wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not (_children() - before):
            return True
        time.sleep(0.1)
    return False


# -- no processes ------------------------------------------------------------------------------


def test_grid_coordinates_and_groups():
    g = RankGrid(dp=2, pp=2, tp=2, world_size=8)
    assert [tuple(g.coords(r).values()) for r in range(8)] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert all(g.rank(**g.coords(r)) == r for r in range(8))
    assert g.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert g.groups("pp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g.groups("dp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    table = g.table()
    assert table.count("\n") == 8 and "[0, 4]" in table
    bloom = RankGrid(dp=8, pp=12, tp=4, world_size=384)
    assert len(bloom.groups("dp")) == 48 and len(bloom.group_of(0, "pp")) == 12  # 48 GPUs per replica
    assert calc.parallel_layout(384, 8, 4, 12)["gpus_per_replica"] == 48


@pytest.mark.parametrize("call,name", [
    (lambda: launch(workers.rank_info, 0), "world_size"),
    (lambda: launch(workers.rank_info, 2, backend="mpi"), "backend"),
    (lambda: launch(lambda r, w: None, 2), "fn"),
    (lambda: RankGrid(dp=2, pp=2, tp=1, world_size=8), "world_size"),
    (lambda: RankGrid(dp=0), "dp"),
    (lambda: RankGrid(dp=2).coords(2), "rank"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_device_follows_the_tensors_and_local_rank(monkeypatch):
    from lmlab.parallel.launch import default_backend, local_rank

    assert default_backend("cpu") == "gloo" and default_backend("cuda") == "nccl"
    with pytest.raises(ValueError, match="device"):
        default_backend("tpu")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_rank() == 3  # the GPU index on this machine, not the global rank
    monkeypatch.delenv("LOCAL_RANK")
    assert local_rank() == 0
    import torch

    if torch.cuda.device_count() < 64:  # nccl needs one GPU per rank: refused before anything is spawned
        with pytest.raises(ValueError, match="nccl"):
            launch(workers.rank_info, 64, backend="nccl")


def test_pipeline_bad_input():
    with pytest.raises(ValueError, match="n_micro"):
        simulate("gpipe", n_stages=4, n_micro=0)
    with pytest.raises(ValueError, match="n_stages"):
        simulate("1f1b", n_stages=0, n_micro=4)
    with pytest.raises(ValueError, match="schedule"):
        simulate("zb", n_stages=4, n_micro=4)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("p,m", [(4, 8), (2, 1), (3, 5), (4, 4), (1, 3)])
def test_simulated_bubble_equals_the_formula(schedule, p, m):
    res = simulate(schedule, p, m)  # t_backward = 2 t_forward
    assert res.bubble == pytest.approx(float(calc.bubble(p, m)))
    assert res.makespan == (m + p - 1) * 3
    expected_peak = [m] * p if schedule == "gpipe" else [min(m, p - s) for s in range(p)]
    assert res.peak_activations == expected_peak  # 1F1B: same bubble, fewer stored activations


def test_render_shows_the_bubble():
    text = render(simulate("gpipe", 4, 8))
    assert text.splitlines()[0] == "stage 0: 01234567.........aabbccddeeffgghh"
    idle = text.count(".")  # bubble slots: p x makespan - busy
    assert idle == 4 * 33 - 4 * 8 * 3


# -- launch: failures stop everything ----------------------------------------------------------


def test_worker_exception_names_the_rank_and_leaves_no_process():
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 1 failed(.|\n)*ZeroDivisionError") as info:
        launch(workers.fail_on_rank, 2, timeout=30)
    assert info.value.rank == 1
    assert time.monotonic() - t0 < 30  # did not wait for rank 0's collective to time out
    assert _no_children_left(before)


def test_hung_collective_times_out_instead_of_hanging():
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="rank 0 failed"):
        launch(workers.hang_on_rank, 2, timeout=3)
    assert time.monotonic() - t0 < 40
    assert _no_children_left(before)


def launch_and_clean_up(fn, world_size: int) -> list:
    """Run a checking worker on ``world_size`` real processes; no child process may outlive it."""
    before = _children()
    results = launch(fn, world_size, timeout=60, join_timeout=240)
    assert _no_children_left(before)
    return results


# -- 2 ranks: collectives, data parallel, ZeRO, FSDP2, tensor parallel ---------------------------


@pytest.fixture(scope="module")
def two():
    return launch_and_clean_up(workers.check_two_ranks, 2)


def test_ring_all_reduce(two):
    for r in two:
        assert r["ring_vs_all_reduce"] <= TOL and r["ring_odd_size"] <= TOL
        n = r["world"]
        assert r["ring_sent_fraction"] == pytest.approx(2 * (n - 1) / n)  # of the data, per rank
        assert r["ring_messages"] == 2 * (n - 1)


def test_data_parallel_equals_one_process(two):
    for r in two:
        assert r["dp_naive"] <= TOL
        assert r["dp_bucketed"] <= TOL
        assert r["dp_buckets"] >= 2
        assert r["dp_all_reduces_per_step"] == r["dp_buckets"]  # one per bucket per step, not per micro-batch
        assert r["dp_sent_per_step"] == pytest.approx(calc.dp_comm_volume(r["n_params"], r["world"]))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_equals_one_process_and_matches_the_calculator(two, stage):
    for r in two:
        assert r[f"zero{stage}"] <= TOL
        measured = r[f"zero{stage}_bytes"]
        expected = calc.zero_memory_per_gpu(r["n_params"], r["zero_world"], stage, precision="mixed")
        assert measured == {k: pytest.approx(v) for k, v in expected.items()}
        assert r[f"zero{stage}_sent_per_step"] == pytest.approx(calc.zero_comm_volume(r["n_params"], r["zero_world"], stage))


def test_zero3_moves_one_and_a_half_times_zero2(two):
    for r in two:
        assert r["zero3_sent_per_step"] == pytest.approx(1.5 * r["zero2_sent_per_step"])
        assert r["zero3_calls"]["all_gather"] == 2 * r["zero2_calls"]["all_gather"]  # forward and backward


def test_fsdp2_gives_the_same_parameters(two):
    assert all(r["fsdp2"] <= TOL for r in two)


def test_tensor_parallel_layers(two):
    for r in two:
        assert r["tp_layers_out"] <= TOL and r["tp_layers_grad"] <= TOL and r["tp_column_gather"] <= TOL


@pytest.mark.parametrize("kind", ["gelu", "llama"])
def test_tensor_parallel_block_two_all_reduces_each_way(two, kind):
    for r in two:
        assert r[f"tp_block_{kind}_out"] <= TOL and r[f"tp_block_{kind}_grad"] <= TOL
        assert tuple(r[f"tp_block_{kind}_all_reduces"]) == (2, 2)


def test_tensor_parallel_matches_dtensor(two):
    assert all(r["dtensor_out"] <= TOL and r["dtensor_grad"] <= TOL for r in two)


# -- 4 ranks: pipeline (4 stages, 8 micro-batches) -----------------------------------------------


@pytest.fixture(scope="module")
def four():
    return launch_and_clean_up(workers.check_pipeline, 4)


def test_ring_all_reduce_four_ranks(four):
    for r in four:
        assert r["ring_vs_all_reduce"] <= TOL and r["ring_odd_size"] <= TOL
        assert r["ring_sent_fraction"] == pytest.approx(1.5) and r["ring_messages"] == 6


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "torch_gpipe", "torch_1f1b"])
def test_pipeline_equals_one_process(four, name):
    last = four[-1]
    assert last[f"{name}_loss"] == pytest.approx(last["ref_loss"], abs=TOL)
    assert all(r[f"{name}_grad"] <= TOL for r in four)


def test_pipeline_peak_activations_match_the_simulator(four):
    for schedule in SCHEDULES:
        assert [r[f"{schedule}_peak"] for r in four] == simulate(schedule, 4, 8).peak_activations


# -- 8 ranks: 3D (dp, pp, tp) = (2, 2, 2), a tiny LLaMA-style model ------------------------------


def test_3d_losses_match_one_process():
    results = launch_and_clean_up(workers.check_3d, 8)
    grid = RankGrid(dp=2, pp=2, tp=2)
    assert results[0]["table"] == grid.table()
    for rank, r in enumerate(results):
        assert r["coords"] == grid.coords(rank)
        if r["coords"]["pp"] == 1:  # the last stage reports the loss
            assert r["losses"] == pytest.approx(r["ref_losses"], abs=1e-5)
            assert len(set(r["ref_losses"])) == len(r["ref_losses"])  # the model did change between steps
        else:
            assert r["losses"] is None
