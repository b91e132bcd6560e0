"""Lesson 09's experiments and widgets, run through the same functions the lesson calls (smaller sizes)."""

from __future__ import annotations

import math

import pytest
import torch
from ipywidgets import FloatSlider, IntSlider

from lmlab.course.experiments import ch09_recipe as R
from lmlab.course.experiments import ch09_figures as RF
from lmlab.course.widgets import FigureExplorer

SMALL = dict(d_model=16, n_layers=1, n_heads=2, context_length=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    torch.set_num_threads(1)


def test_runs_are_seeded_and_change_one_setting():
    a, b = R.run(0, SMALL, steps=12), R.run(0, SMALL, steps=12)
    assert a.train_loss == b.train_loss and len(a.val_loss) == 1
    c = R.run(0, SMALL, steps=12, grad_clip=None)
    assert c.train_loss[0] == a.train_loss[0] and c.train_loss != a.train_loss  # same first batch, other recipe
    assert a.lr[0] == pytest.approx(R.BASE.lr / R.BASE.warmup)  # warm-up + cosine by default


def test_compare_settings_gives_paired_verdicts_and_counts_divergence():
    r = R.compare_settings(("no warm-up", "Adafactor", "batch ramp"), seeds=(0, 1), steps=12, model_kw=SMALL, batch_size=8)
    assert set(r.losses) == {"baseline", "no warm-up", "Adafactor", "batch ramp"}
    assert all(len(v) == 2 for v in r.losses.values())
    c = r.comparisons["no warm-up"]
    assert c.n == 2 and c.mean_diff == pytest.approx(sum(a - b for a, b in zip(r.losses["no warm-up"], r.losses["baseline"])) / 2)
    assert r.sentence("no warm-up") == c.sentence
    ramp = r.histories["batch ramp"][0]
    assert ramp.batch_size[0] == 4 and sum(ramp.batch_size) >= 12 * 8  # at least the baseline's sequences
    assert sum(ramp.batch_size) - ramp.batch_size[-1] < 12 * 8
    assert len(RF.settings_figure(r).data) == 2
    r.losses["Adafactor"][0] = math.nan  # a diverged run: reported, never fed to the t-test
    r.comparisons["Adafactor"] = None
    r.diverged["Adafactor"] = 1
    assert "diverged in 1 of 2" in r.sentence("Adafactor")
    with pytest.raises(ValueError, match="variants"):
        R.compare_settings(("no such thing",))


def test_status_and_lr_sweep():
    s = R.lr_sweep(lrs=(1e-2, 3e-2), warmups=(0, 3), steps=12, model_kw=SMALL)
    assert set(s["losses"]) == {0, 3} and all(len(v) == 2 for v in s["losses"].values())
    assert len(RF.sweep_figure(s).data) == 2
    h = R.run(0, SMALL, steps=12)
    assert R.status(h, unigram=100.0) == "trained" and R.status(h, unigram=0.0) == "diverged"


def test_spike_is_detected_rolled_back_and_recovered():
    r = R.spike_experiment(jolt_step=45, factor=30.0, window=30, threshold=6.0, min_history=20, steps=90,
                           model_kw=SMALL, lr=2e-2, margin=0.1)
    assert max(r.hurt.train_loss[45:50]) > r.clean.train_loss[45] + 0.5  # the jolt is a real spike
    assert r.detected_at in (46, 47)  # the loss after the jolted update
    assert r.healed.rollbacks and r.healed.rollbacks[0]["to_step"] in (30, 40)
    assert r.recovered, (R.final_loss(r.healed), R.final_loss(r.clean))
    assert R.final_loss(r.hurt) > R.final_loss(r.healed)
    assert r.healed.steps == list(range(1, 91)) and r.healed.rolled_back


def test_optimizer_memory():
    m = R.optimizer_memory()
    assert m["adamw"] == 360_710_144 and m["adafactor"] == 60_416
    assert m["tiny_adafactor"] < m["tiny_adamw"] < 2 * m["tiny_params_bytes"] + 4096


def test_schedule_explorer_marks_the_rise_and_changes():
    fig, note = RF.schedule_figure(10, 60, 0.1, 40)
    torch_curve, ours = fig.data[0].y, fig.data[-1].y
    assert max(torch_curve[60:]) > 0.5 and min(ours[60:]) == max(ours[60:]) == 0.1
    assert fig.layout.shapes and "rise again" in fig.layout.annotations[0].text and "0.1" in note
    explorer = FigureExplorer(make_figure=lambda warmup, total, min_frac, past: RF.schedule_figure(warmup, total, min_frac, past),
                              controls={"warmup": IntSlider(10, 0, 50), "total": IntSlider(60, 10, 200),
                                        "min_frac": FloatSlider(0.1, min=0.0, max=0.5), "past": IntSlider(40, 0, 200)})
    before = list(explorer.figure.data[-1].y)
    explorer.controls["min_frac"].value = 0.3
    assert list(explorer.figure.data[-1].y) != before and explorer.renders == 2


def test_spike_lab_figure():
    fig, note = RF.spike_lab_figure(jolt_step=45, factor=30.0, window=30, threshold=6.0, skip_batches=10)
    assert len(fig.data) >= 3 and "rollback" in note
    fig2, note2 = RF.spike_lab_figure(jolt_step=45, factor=30.0, window=30, threshold=50.0, skip_batches=10)
    assert "0 rollback" in note2 and list(fig2.data[2].y) == list(fig2.data[1].y)  # nothing caught: same as unhandled
