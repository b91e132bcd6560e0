"""Lesson 12's experiments, through the same functions the lesson calls (one 2-rank launch)."""

from fractions import Fraction

import pytest

from lmlab.scaling import calculators as calc
from lmlab.course.experiments import ch12_parallelism as P
from lmlab.parallel.pipeline import simulate

TOL = 1e-6


@pytest.fixture(scope="module")
def ranks():
    return P.run_two_ranks()


def test_launch_checks_equal_one_process_and_match_the_calculators(ranks):
    assert len(ranks) == 2
    for r in ranks:
        n, psi = r["world"], r["n_params"]
        assert r["ring_vs_all_reduce"] <= TOL and r["ring_sent_fraction"] == pytest.approx(2 * (n - 1) / n)
        assert r["ring_messages"] == 2 * (n - 1)
        assert r["dp_naive"] <= TOL and r["dp_bucketed"] <= TOL
        assert r["dp_sent_per_step"] == pytest.approx(calc.dp_comm_volume(psi, n))
        for s in range(4):
            assert r[f"zero{s}"] <= TOL
            assert r[f"zero{s}_bytes"] == {k: pytest.approx(v) for k, v in calc.zero_memory_per_gpu(psi, n, s).items()}
            assert r[f"zero{s}_sent_per_step"] == pytest.approx(calc.zero_comm_volume(psi, n, s))
        for kind in ("gelu", "llama"):
            assert r[f"tp_block_{kind}_out"] <= TOL and r[f"tp_block_{kind}_grad"] <= TOL
            assert tuple(r[f"tp_block_{kind}_all_reduces"]) == (2, 2)


def test_launch_runs_fsdp2_and_the_pipeline_schedules_on_real_ranks(ranks):
    for r in ranks:
        assert r["fsdp2"] <= TOL
        p = r["pipeline"]
        for name in ("gpipe", "1f1b", "torch_gpipe", "torch_1f1b"):
            assert p[f"{name}_grad"] <= TOL
    last = ranks[-1]["pipeline"]
    for name in ("gpipe", "1f1b", "torch_gpipe", "torch_1f1b"):
        assert abs(last[f"{name}_loss"] - last["ref_loss"]) <= TOL
    assert max(ranks[0]["pipeline"]["1f1b_peak"], ranks[1]["pipeline"]["1f1b_peak"]) <= 2  # 1F1B holds <= p
    assert ranks[0]["pipeline"]["gpipe_peak"] == 8  # GPipe holds all m micro-batches on the first stage


def test_launch_runs_the_in_process_code_on_gloo_ranks(ranks):
    from lmlab.course.experiments import ch12_spmd as S
    from lmlab.parallel.in_process import run_in_process

    inputs = S.spmd_inputs(2)
    gloo = [r["spmd"] for r in ranks]
    for other in (run_in_process(S.spmd_step, inputs), S.spmd_reference(inputs)):
        diff = S.max_differences(gloo, other)
        assert set(diff) == {"ring", "dp_grad", "zero1_param", "tp_out", "tp_x_grad"} and max(diff.values()) < 1e-10


def test_ring_schedule_is_a_valid_all_reduce():
    for n in (2, 3, 4, 5):
        table = P.ring_send_schedule(n)
        assert len(table) == 2 * (n - 1)
        # simulate: rank r holds one number per chunk; reduce-scatter adds, all-gather copies
        data = [[10 ** r * (c + 1) for c in range(n)] for r in range(n)]
        total = [sum(data[r][c] for r in range(n)) for c in range(n)]
        for s, row in enumerate(table):
            sent = [(row[r], data[r][row[r]]) for r in range(n)]
            for r in range(n):
                c, v = sent[(r - 1) % n]
                data[r][c] = data[r][c] + v if s < n - 1 else v
        assert all(d == total for d in data)
    assert P.ring_figure(3).data[0].z is not None


def test_zero_table_reproduces_the_paper():
    rows = P.zero_table(7.5e9, 64)
    assert [round(r["total"], 1) for r in rows] == [120.0, 31.4, 16.6, 1.9]
    assert rows[3]["comm_psi"] == pytest.approx(1.5 * rows[2]["comm_psi"])
    assert len(P.zero_figure(rows).data) == 3


def test_bubble_sweep_matches_the_formulas():
    rows = P.bubble_sweep(4, (1, 8, 32))
    for r in rows:
        assert r["sim_gpipe"] == pytest.approx(float(r["gpipe"])) and r["sim_1f1b"] == pytest.approx(float(r["gpipe"]))
        assert r["peak_gpipe"] == r["m"] and r["peak_1f1b"] == min(r["m"], 4)
    assert calc.bubble(4, 8) == Fraction(3, 11) and calc.bubble(4, 8, "megatron") == Fraction(3, 8)
    assert len(P.bubble_figure(rows, 4).data) == 4


def test_bloom_layout():
    b = P.bloom_layout()
    assert round(b["n_params"] / 1e9, 1) == 176.2
    assert b["layout"]["gpus_per_replica"] == 48 and b["rank0_groups"]["tp"] == [0, 1, 2, 3]
    assert b["last_rank"] == {"dp": 7, "pp": 11, "tp": 3}
    assert b["plan"]["fits"]


def test_planner_flags_what_does_not_fit():
    assert not P.plan("LLaMA-2-70B", 8, 8, 1, 1, 0, 4, gpu_gb=80)["fits"]  # 16 bytes x 69B on one GPU
    assert P.plan("LLaMA-2-7B", 8, 8, 1, 1, 3, 4, gpu_gb=80)["fits"]
    bad = P.plan("BLOOM-176B", 384, 8, 4, 8)
    assert not bad["fits"] and "384" in bad["problems"][0]
    z0, z3 = P.plan("LLaMA-2-7B", 8, 8, 1, 1, 0, 4), P.plan("LLaMA-2-7B", 8, 8, 1, 1, 3, 4)
    assert z3["optimizer"] == pytest.approx(z0["optimizer"] / 8) and z3["params"] == pytest.approx(z0["params"] / 8)


def test_gantt_widget_wiring():
    from ipywidgets import Dropdown, IntSlider

    from lmlab.course.widgets import FigureExplorer

    ex = FigureExplorer(make_figure=lambda schedule, p, m: P.gantt_figure(schedule, p, m),
                        controls={"schedule": Dropdown(options=["gpipe", "1f1b"], value="gpipe"),
                                  "p": IntSlider(value=4, min=1, max=8), "m": IntSlider(value=8, min=1, max=16)})
    before = [list(t.base) for t in ex.figure.data]
    ex.controls["schedule"].value = "1f1b"
    assert [list(t.base) for t in ex.figure.data] != before
    ex.controls["m"].value = 2
    assert sum(len(t.x) for t in ex.figure.data) == 2 * 4 * 2
    assert "bubble" in ex.note.value and str(calc.bubble(4, 2)) in ex.note.value
    assert simulate("1f1b", 4, 2).makespan == (2 + 3) * 3


def test_planner_widget_wiring():
    from ipywidgets import Dropdown, IntSlider

    from lmlab.course.widgets import FigureExplorer

    ex = FigureExplorer(make_figure=P.planner_figure,
                        controls={"model": Dropdown(options=list(P.MODELS), value="BLOOM-176B"),
                                  "zero_stage": IntSlider(value=1, min=0, max=3)})
    before = list(ex.figure.data[0].y)
    assert "fits" in ex.note.value and "NOT" not in ex.note.value
    ex.controls["zero_stage"].value = 3
    assert list(ex.figure.data[0].y) != before
    y3 = list(ex.figure.data[0].y)
    ex.controls["model"].value = "LLaMA-2-7B"
    assert list(ex.figure.data[0].y) != y3 and "6.7B" in ex.note.value
