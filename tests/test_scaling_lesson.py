"""Lesson 10's experiments, run through the same functions the lesson calls (smaller sizes)."""

import math

import pytest
from ipywidgets import Checkbox, Dropdown, FloatSlider

from lmlab.scaling import counting as scaling
from lmlab.course.experiments import ch10_scaling as exp
from lmlab.course.widgets import FigureExplorer

SMALL = dict(steps=120, n_checkpoints=6, first_checkpoint=10, eval_batches=2, batch_size=8, context_length=32)


@pytest.fixture(scope="module")
def sweep():
    runs = exp.run_sweep(sizes=(8, 16), **SMALL)
    big = exp.train_run(24, 150, **{k: v for k, v in SMALL.items() if k != "steps"})
    return runs, big


def test_sweep_is_seeded_and_records_sizes(sweep):
    runs, _ = sweep
    again = exp.train_run(8, 120, **{k: v for k, v in SMALL.items() if k != "steps"})
    assert [p["loss"] for p in again["points"]] == [p["loss"] for p in runs[0]["points"]]  # reproducible
    r = runs[1]
    cfg = exp.sweep_config(16, context_length=32)
    assert r["N"] == scaling.count_params(cfg) and r["N_nonemb"] < r["N"]
    assert [p["step"] for p in r["points"]][-1] == 120 and len(r["points"]) == 6
    for p in r["points"]:
        assert p["C"] == pytest.approx(scaling.flops_per_token(cfg) * p["step"] * 8 * 32)
    assert runs[1]["points"][-1]["loss"] < runs[1]["points"][0]["loss"]  # it learned something


def test_frontier_is_the_lower_envelope(sweep):
    runs, _ = sweep
    pts = exp.all_points(runs)
    env = exp.frontier(pts)
    assert [p["C"] for p in env] == sorted(p["C"] for p in env)
    assert all(a["loss"] > b["loss"] for a, b in zip(env, env[1:]))
    for p in pts:  # nothing cheaper beats a frontier point
        assert any(q["C"] <= p["C"] and q["loss"] <= p["loss"] for q in env)


def test_prediction_is_made_before_and_scored_after(sweep):
    runs, big = sweep
    C_big = big["points"][-1]["C"]
    pred = exp.predict_run(runs, C_big, n_boot=40)
    assert pred["ok"], pred["message"]
    assert pred["low"] <= pred["prediction"] <= pred["high"] and pred["extrapolation"] > 1
    actual = big["points"][-1]["loss"]
    s = exp.score_prediction(pred, actual)
    assert s["error"] == pytest.approx(actual - pred["prediction"])
    assert s["inside"] == (pred["low"] <= actual <= pred["high"])
    assert s["within_tolerance"] == (abs(s["rel_error"]) <= 0.05)
    assert ("inside" if s["inside"] else "outside") in s["sentence"]
    nd = exp.predict_run_chinchilla(runs, big["N"], big["points"][-1]["D"], n_boot=20)
    assert ("prediction" in nd) == nd["ok"]


def test_score_prediction_verdicts_follow_the_numbers():
    pred = dict(ok=True, prediction=2.0, low=1.9, high=2.1, level=0.9)
    assert exp.score_prediction(pred, 2.05)["inside"] and exp.score_prediction(pred, 2.05)["within_tolerance"]
    far = exp.score_prediction(pred, 2.5)
    assert not far["inside"] and not far["within_tolerance"] and "failed" in far["sentence"]
    near = exp.score_prediction(dict(pred, low=1.95, high=2.05), 2.08)  # 3.8 % off, outside a narrow interval
    assert not near["inside"] and near["within_tolerance"] and "too narrow" in near["sentence"]
    assert not exp.score_prediction(dict(ok=False, message="x"), 2.0)["ok"]
    with pytest.raises(ValueError, match="actual"):
        exp.score_prediction(pred, 0.0)


def test_subsets_and_isoflop(sweep):
    runs, big = sweep
    rows = exp.subset_predictions(runs, big["points"][-1]["C"], n_boot=20)
    assert [r["name"] for r in rows][0] == "all points"
    assert all(("prediction" in r) == r["ok"] for r in rows)
    every = runs + [big]
    lo = max(r["points"][0]["C"] for r in every)
    hi = min(r["points"][-1]["C"] for r in every)
    iso = exp.isoflop(every, [lo, math.sqrt(lo * hi), hi])
    assert len(iso) == 3
    for row in iso:
        assert len(row["runs"]) == 3 and row["best"]["loss"] == min(x["loss"] for x in row["runs"])
    fig = exp.isoflop_figure(iso)
    assert len(fig.data) == 6


def test_tokens_per_param_depends_on_what_n_counts(sweep):
    runs, big = sweep
    tp = exp.tokens_per_param(runs + [big], big["points"][-1]["C"])
    assert set(tp) == {"N", "N_nonemb"}
    for row in tp.values():
        assert ("tokens_per_param" in row) == row["ok"]


def test_budget_widget_wiring():
    ex = FigureExplorer(make_figure=exp.budget_figure, controls={
        "log10_compute": FloatSlider(value=23.8, min=18, max=26, step=0.1),
        "constants": Dropdown(options=list(scaling.CONSTANT_SETS), value="Chinchilla (published)"),
    })
    assert "93" in ex.note.value or "92.8" in ex.note.value
    before = list(ex.figure.data[1].x)
    ex.controls["constants"].value = "Epoch AI (replication)"
    assert list(ex.figure.data[1].x) != before and "18." in ex.note.value
    ex.controls["log10_compute"].value = 20.0
    assert ex.figure.data[1].x[0] < before[0]


def test_fit_explorer_wiring(sweep):
    runs, big = sweep
    ex = FigureExplorer(make_figure=lambda use8, use16, lo: exp.fit_explorer_figure(runs, big, {8: use8, 16: use16}, lo, n_boot=20),
                        controls={"use8": Checkbox(value=True), "use16": Checkbox(value=True),
                                  "lo": FloatSlider(value=6.0, min=6.0, max=12.0, step=0.5)})
    first = [list(t.y) for t in ex.figure.data]
    ex.controls["use8"].value = False
    assert [list(t.y) for t in ex.figure.data] != first
    ex.controls["lo"].value = 12.0  # nothing left to fit: said so, not drawn
    assert "no usable fit" in ex.note.value
