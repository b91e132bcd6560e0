"""Lesson 05's experiments, run through the same functions the lesson calls (smaller sizes)."""

import pytest
import torch
from ipywidgets import Checkbox, Dropdown, FloatSlider, IntSlider

from lmlab.course.experiments.ch05_objectives import (course_tokenizer, eval_windows, lm_suffix_loss, mixture_figure,
                                          mode_switch_scores, objective_verdicts, objectives_experiment,
                                          results_figure, span_explorer_figure, span_fill_scores, tiny_model,
                                          train_objective)
from lmlab.data.objectives import UL2_DENOISERS
from lmlab.data.span_corruption import random_spans_noise_mask
from lmlab.course.widgets import FigureExplorer


@pytest.fixture(scope="module")
def small():
    """Two seeds of every objective, short training: the numbers the lesson's verdicts read."""
    return objectives_experiment(seeds=(0, 1), steps=60, batch_size=8, seq_len=32, n_eval=16)


def test_runs_are_complete_and_equal_compute(small):
    runs = small["runs"]
    assert set(runs) == {"causal", "prefix", "span", "ul2"} and all(len(r) == 2 for r in runs.values())
    inputs = {r["input_tokens"] for rs in runs.values() for r in rs}
    assert inputs == {60 * 8 * 32}  # every objective: same steps x batch x length
    trained = {o: sum(r["trained_tokens"] for r in rs) / 2 for o, rs in runs.items()}
    assert trained["causal"] == 60 * 8 * 32
    assert 0.3 < trained["prefix"] / trained["causal"] < 0.75  # the prefix is never trained
    assert trained["span"] < trained["prefix"]  # 15 % noise + sentinels
    assert abs(runs["causal"][0]["trained_tokens_half"] - 30 * 8 * 32) == 0
    for rs in runs.values():
        for r in rs:
            assert 0 < r["lm_loss"] < 6 and 0 < r["span"]["loss"] < 6 and 0 <= r["span"]["accuracy"] <= 1


def test_training_lowers_the_loss_below_uniform(small):
    import math

    V = small["setup"]["vocab_size"]
    for rs in small["runs"].values():
        for r in rs:
            assert r["train_loss"] < math.log(V) - 0.5  # learned something beyond uniform guessing


def test_seeded_and_objectives_differ():
    tok, train_ids, _ = course_tokenizer()
    a, la = train_objective("prefix", tok, train_ids, seed=3, steps=5, batch_size=4, seq_len=24)
    b, lb = train_objective("prefix", tok, train_ids, seed=3, steps=5, batch_size=4, seq_len=24)
    assert la["losses"] == lb["losses"] and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c, lc = train_objective("causal", tok, train_ids, seed=3, steps=5, batch_size=4, seq_len=24)
    assert lc["losses"] != la["losses"]
    init_a, init_c = tiny_model(tok.vocab_size, 24, seed=3), tiny_model(tok.vocab_size, 24, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(init_a.parameters(), init_c.parameters()))  # paired: same init


def test_the_scores_read_the_right_positions():
    """An untrained model scores near log(V); a model that is told the answer scores ~0 only where it should."""
    tok, _, val_ids = course_tokenizer()
    model = tiny_model(tok.vocab_size, 32, seed=0).eval()
    windows = eval_windows(val_ids, 8, 24)
    masks = [random_spans_noise_mask(24, 0.15, 3.0, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    for obj in ("causal", "span"):
        s = span_fill_scores(model, obj, tok, windows, masks)
        assert s["tokens"] == sum(int(m.sum()) for m in masks)  # exactly the masked tokens, in both formats
        assert abs(s["loss"] - torch.log(torch.tensor(float(tok.vocab_size)))) < 0.5
    lm = lm_suffix_loss(model, "ul2", tok, eval_windows(val_ids, 8, 30), 15)
    assert abs(lm - torch.log(torch.tensor(float(tok.vocab_size)))) < 0.5
    m = mode_switch_scores(model, tok, windows, masks)
    assert set(m) >= {"loss [R]", "loss [X]", "loss [S]", "tv [R] vs [X]"} and 0 <= m["tv [R] vs [X]"] <= 1


def test_verdicts_are_computed_from_the_numbers(small):
    v = objective_verdicts(small)
    assert {"prefix_vs_causal_lm", "span_vs_causal_fill", "ul2_vs_span_fill", "mode_switch_vs_control"} <= set(v)
    prefix = [r["lm_loss"] for r in small["runs"]["prefix"]]
    causal = [r["lm_loss"] for r in small["runs"]["causal"]]
    assert v["prefix_vs_causal_lm"].mean_diff == pytest.approx(sum(p - c for p, c in zip(prefix, causal)) / 2)
    runs = small["runs"]
    flipped = {**small, "runs": {**runs, "prefix": [{**p, "lm_loss": c["lm_loss"]} for p, c in zip(runs["prefix"], runs["causal"])],
                                 "causal": [{**c, "lm_loss": p["lm_loss"]} for p, c in zip(runs["prefix"], runs["causal"])]}}
    assert objective_verdicts(flipped)["prefix_vs_causal_lm"].mean_diff == pytest.approx(-v["prefix_vs_causal_lm"].mean_diff)
    assert len(results_figure(small).data) == 8
    assert set(small["examples"]) == {"span", "ul2"} and all("<X0>" in e["inputs"] for e in small["examples"]["span"])


def test_span_explorer_wiring():
    ex = FigureExplorer(make_figure=lambda density, mean_span, seed, roll: span_explorer_figure(density, mean_span, seed, roll),
                        controls={"density": FloatSlider(value=0.15, min=0.05, max=0.8, step=0.05),
                                  "mean_span": FloatSlider(value=3.0, min=1.0, max=32.0, step=1.0),
                                  "seed": IntSlider(value=0, min=0, max=20), "roll": Checkbox(value=False)})
    z0 = ex.figure.data[0].z
    assert sum(v or 0 for row in z0 for v in row) == round(96 * 0.15)
    ex.controls["density"].value = 0.5
    assert sum(v or 0 for row in ex.figure.data[0].z for v in row) == 48
    assert "48 noise tokens" in ex.note.value and "&lt;X0&gt;" in ex.note.value
    ex.controls["roll"].value = True
    ex.controls["seed"].value = 3
    assert ex.figure.data[0].z != z0


def test_mixture_explorer_wiring():
    ex = FigureExplorer(make_figure=lambda denoiser, seed: mixture_figure(denoiser, seed),
                        controls={"denoiser": Dropdown(options=list(UL2_DENOISERS) + ["causal LM"], value="S prefix LM"),
                                  "seed": IntSlider(value=0, min=0, max=20)})
    attn = ex.figure.data[1].z
    assert attn[0][1] == 1  # the S prefix is bidirectional
    ex.controls["denoiser"].value = "causal LM"
    assert all(v == 1 for v in ex.figure.data[0].z[0])  # every position trained
    assert ex.figure.data[1].z[0][1] == 0  # causal: token 0 cannot see token 1
    ex.controls["denoiser"].value = "X r=0.5 μ=8"
    assert "[X]" in ex.note.value and "&lt;X0&gt;" in ex.note.value
