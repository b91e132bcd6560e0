"""Lesson 02's experiments and widgets, run through the same functions the lesson calls (small sizes)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.course.experiments.ch02_activations import COMPARED_KINDS
from lmlab.course.experiments.ch02_activations import (
    ACTIVATION_FUNCTIONS, SWISH_RELU_GAP, ActivationComparison, activation_curves, compare_activations, compare_figure,
    comparison_figure, comparison_verdicts, curves_figure, ffn_parameter_table, swish_figure, swish_properties,
)


@pytest.fixture(scope="module")
def small_comparison():
    return compare_activations(seeds=(0, 1), steps=30, d_model=24, context_length=16, batch_size=8, eval_batches=4)


# --- the curves and Swish's properties ------------------------------------------------------


def test_curves_and_autograd_derivatives_match_closed_forms():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    c = activation_curves(["Swish β=1 (SiLU)", "GeLU", "ReLU"], x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(torch.tensor(c["Swish β=1 (SiLU)"]["y"], dtype=torch.float64), F.silu(x))
    torch.testing.assert_close(torch.tensor(c["Swish β=1 (SiLU)"]["dy"], dtype=torch.float64), s + x * s * (1 - s))
    phi = torch.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(torch.tensor(c["GeLU"]["dy"], dtype=torch.float64), cdf + x * phi)
    assert c["ReLU"]["dy"][0] == 0.0 and c["ReLU"]["dy"][-1] == 1.0
    with pytest.raises(ValueError, match="unknown activation"):
        activation_curves(["tanh"])


def test_the_seeds_swish_claims_hold():
    p = swish_properties(1.0)
    assert p["value_at_hi"] > 7.99  # (1) no cap above
    assert p["min_value"] == pytest.approx(-SWISH_RELU_GAP, abs=1e-6) and p["argmin"] == pytest.approx(-1.2785, abs=2e-3)  # (2) dip
    assert p["max_derivative_jump"] < 1e-3  # (3) smooth
    assert not p["monotonic"] and p["min_derivative"] == pytest.approx(-0.0998, abs=1e-3)  # (4) non-monotonic


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0, 10.0, 100.0])
def test_swish_limits(beta):
    p = swish_properties(beta)
    assert p["max_gap_to_relu"] <= SWISH_RELU_GAP / beta + 1e-6
    assert p["max_gap_to_relu"] == pytest.approx(SWISH_RELU_GAP / beta, rel=1e-2)
    zero = swish_properties(0.0)
    assert zero["max_gap_to_half_x"] == 0.0 and zero["monotonic"]


def test_swish_properties_rejects_bad_beta():
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="beta"):
            swish_properties(bad)


# --- parameter counts ------------------------------------------------------------------------


@pytest.mark.parametrize("d_model,multiple", [(32, 8), (128, 8), (4096, 256)])
def test_glu_has_half_again_the_parameters_and_the_two_thirds_rule_matches(d_model, multiple):
    plain, same, matched = ffn_parameter_table(d_model, multiple_of=multiple)
    assert same["parameters"] == 1.5 * plain["parameters"]
    assert abs(matched["vs_plain"]) < 0.05 and matched["hidden"] % multiple == 0
    if d_model == 4096:
        assert matched["hidden"] == 11008  # LLaMA-7B


# --- the training comparison -----------------------------------------------------------------


def test_comparison_is_parameter_matched_and_complete(small_comparison):
    r = small_comparison
    assert r.activations == list(COMPARED_KINDS) and r.seeds == [0, 1]
    assert all(len(r.final_loss[a]) == 2 and all(math.isfinite(v) for v in r.final_loss[a]) for a in r.activations)
    base = r.parameters["gelu"]
    assert r.parameters["relu"] == base
    for a in ("swiglu", "geglu"):
        assert abs(r.parameters[a] / base - 1) < 0.05 and r.ffn_hidden[a] < r.ffn_hidden["gelu"]
    table = r.table()
    for a in r.activations:
        assert f"{r.mean(a):.3f} ± {r.std(a):.3f}" in table
    # it learned something in 30 steps: below the uniform loss log V
    assert max(max(v) for v in r.final_loss.values()) < math.log(100)


def test_comparison_is_reproducible(small_comparison):
    again = compare_activations(activations=["swiglu"], seeds=(1,), steps=30, d_model=24, context_length=16,
                                batch_size=8, eval_batches=4)
    assert again.final_loss["swiglu"] == [small_comparison.final_loss["swiglu"][1]]


def test_verdicts_are_computed_from_the_numbers(small_comparison):
    verdicts = comparison_verdicts(small_comparison, against="gelu")
    assert {v["activation"] for v in verdicts} == {"relu", "swiglu", "geglu"}
    for v in verdicts:
        diffs = [a - b for a, b in zip(small_comparison.final_loss[v["activation"]], small_comparison.final_loss["gelu"])]
        assert v["mean_diff"] == pytest.approx(sum(diffs) / 2)
        assert v["critical"] == pytest.approx(12.706, abs=1e-3) and f"{v['mean_diff']:+.3f}" in v["sentence"]
    # the default reference is the best mean
    best = min(small_comparison.activations, key=small_comparison.mean)
    assert all(v["against"] == best for v in comparison_verdicts(small_comparison))


def _synthetic(losses: dict[str, list[float]]) -> ActivationComparison:
    acts = list(losses)
    n = len(next(iter(losses.values())))
    return ActivationComparison(acts, list(range(n)), losses, {a: 1 for a in acts}, {a: 1 for a in acts})


def test_verdict_detects_a_real_gap_and_refuses_noise():
    clear = _synthetic({"gelu": [2.30, 2.31, 2.29, 2.30, 2.32], "swiglu": [2.20, 2.22, 2.19, 2.21, 2.21]})
    (v,) = comparison_verdicts(clear, against="gelu")
    assert v["significant"] and v["better"] == "swiglu" and v["outcome"] == "supports" and "SUPPORTS" in v["sentence"]
    noisy = _synthetic({"gelu": [2.30, 2.20, 2.40, 2.25], "swiglu": [2.25, 2.32, 2.28, 2.29]})
    (v,) = comparison_verdicts(noisy, against="gelu")
    assert not v["significant"] and v["better"] is None and v["outcome"] == "undetermined"
    assert "UNDETERMINED" in v["sentence"] and "margin ±0.02" in v["sentence"]
    one_seed = _synthetic({"gelu": [2.3], "swiglu": [2.0]})
    assert not comparison_verdicts(one_seed, against="gelu")[0]["significant"]
    with pytest.raises(ValueError):
        comparison_verdicts(clear, against="relu")


def test_verdicts_are_holm_corrected_together():
    # three activations vs gelu: each comparison is Holm-corrected over the three claims
    losses = {"gelu": [2.30, 2.31, 2.29, 2.30], "relu": [2.40, 2.45, 2.38, 2.41],
              "swiglu": [2.25, 2.32, 2.28, 2.29], "geglu": [2.29, 2.32, 2.28, 2.31]}
    vs = {v["activation"]: v for v in comparison_verdicts(_synthetic(losses), against="gelu", claims={"relu": "worse"})}
    assert all("Holm-corrected over 3 claims" in v["sentence"] for v in vs.values())
    assert vs["relu"]["outcome"] == "supports" and vs["swiglu"]["outcome"] == "undetermined"


def test_verdicts_are_the_shared_paired_comparison():
    from lmlab.course.stats import paired_comparison

    losses = {"gelu": [2.30, 2.20, 2.40, 2.25], "swiglu": [2.25, 2.32, 2.28, 2.29]}
    (v,) = comparison_verdicts(_synthetic(losses), against="gelu")
    assert v["sentence"] == paired_comparison(losses["swiglu"], losses["gelu"], "swiglu", "gelu", margin=0.02).sentence
    (v,) = comparison_verdicts(_synthetic({"gelu": [2.3], "swiglu": [2.0]}), against="gelu")
    assert "one seed only" in v["sentence"]  # one seed: the noise was not measured, so no verdict


def test_compare_activations_rejects_bad_arguments():
    with pytest.raises(ValueError, match="activations"):
        compare_activations(activations=["tanh"], seeds=(0,), steps=1)
    with pytest.raises(ValueError, match="seeds"):
        compare_activations(seeds=(0, 0), steps=1)


# --- figures and widgets ---------------------------------------------------------------------


def test_figures_plot_the_data(small_comparison):
    fig = comparison_figure(small_comparison)
    assert list(fig.data[0].y) == pytest.approx([small_comparison.mean(a) for a in small_comparison.activations])
    assert len(fig.data) == 1 + len(small_comparison.seeds)
    fig = curves_figure(["ReLU", "GeLU"])
    assert len(fig.data) == 4  # function and derivative for each


def test_swish_widget_redraws_when_beta_moves():
    from ipywidgets import FloatSlider

    from lmlab.course.widgets import FigureExplorer

    explorer = FigureExplorer(make_figure=lambda beta: swish_figure(beta),
                              controls={"beta": FloatSlider(value=1.0, min=0.0, max=20.0, step=0.1)})
    y1, dy1 = explorer.figure.data[-2].y, explorer.figure.data[-1].y
    assert "dips to -0.278" in explorer.note.value
    explorer.controls["beta"].value = 0.0
    y0 = torch.tensor(explorer.figure.data[-2].y)
    x0 = torch.tensor(explorer.figure.data[-2].x)
    torch.testing.assert_close(y0, x0 / 2)  # β = 0: the line x/2
    assert "no dip" in explorer.note.value
    explorer.controls["beta"].value = 10.0
    assert explorer.figure.data[-2].y != y1 and explorer.figure.data[-1].y != dy1
    assert "dips to -0.028" in explorer.note.value and explorer.renders == 3


def test_compare_widget_redraws_when_selection_or_range_changes():
    from ipywidgets import FloatSlider, SelectMultiple

    from lmlab.course.widgets import FigureExplorer

    explorer = FigureExplorer(
        make_figure=lambda names, x_range: compare_figure(names, x_range),
        controls={"names": SelectMultiple(options=list(ACTIVATION_FUNCTIONS), value=["ReLU", "GeLU"]),
                  "x_range": FloatSlider(value=5.0, min=1.0, max=10.0)},
    )
    assert [t.name for t in explorer.figure.data[::2]] == ["ReLU", "GeLU"]
    assert "ReLU: min +0.000, monotonic" in explorer.note.value and "GeLU: min -0.170, non-monotonic" in explorer.note.value
    explorer.controls["names"].value = ("sigmoid (GLU's gate)", "Swish β=1 (SiLU)", "ReLU")
    assert [t.name for t in explorer.figure.data[::2]] == ["sigmoid (GLU's gate)", "Swish β=1 (SiLU)", "ReLU"]
    assert "sigmoid (GLU's gate): min +0.000, monotonic" in explorer.note.value
    explorer.controls["x_range"].value = 2.0
    assert max(explorer.figure.data[0].x) == pytest.approx(2.0)
