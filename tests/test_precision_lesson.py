"""Lesson 11's experiments and widgets, run through the same functions the lesson calls (smaller sizes)."""

import math

import pytest
import torch
from ipywidgets import Dropdown, FloatText, IntSlider, Text

from lmlab.course.experiments.ch11_precision import (RECIPES, fp16_simulation, gradient_underflow, memory_per_parameter,
                                         overflow_examples, running_sum, tiny_config, train_recipe, update_rounding)
from lmlab.course.experiments.ch11_figures import (curves_figure, format_explorer, memory_figure, parse_steps, scale_lab,
                                                 sum_figure, underflow_figure)
from lmlab.model import GPT
from lmlab.train.precision import FORMAT_NAMES, quantize
from lmlab.course.widgets import FigureExplorer

CFG = tiny_config(d_model=32, n_layers=1, context_length=16)


def test_overflow_and_the_001_sum_reference_numbers():
    ov = overflow_examples()
    assert not ov["fp16"]["exp_finite"] and math.isnan(ov["fp16"]["softmax"][-1]) and math.isinf(ov["fp16"]["mean_square"])
    assert ov["bf16"]["exp_finite"] and ov["bf16"]["mean_square_finite"] and ov["fp32"]["exp_finite"]
    assert round(running_sum(fmt="fp32")[-1], 4) == 10.0001
    assert round(running_sum(fmt="fp16")[-1], 3) == 9.953
    assert running_sum(fmt="bf16")[-1] == 4.0
    assert running_sum(fmt="tf32")[-1] == running_sum(fmt="fp16")[-1]  # same 10 mantissa bits
    assert len(sum_figure({"fp16": running_sum(fmt="fp16", n=10)}).data[0].y) == 10
    with pytest.raises(ValueError, match="fmt"):
        running_sum(fmt="fp64")


def test_simulation_rounds_activations_and_gradients():
    torch.manual_seed(0)
    model = GPT(CFG)
    idx = torch.randint(CFG.vocab_size, (2, CFG.context_length))
    seen = []
    with fp16_simulation(model):
        h = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o))
        logits = model(idx)
        h.remove()
    assert torch.equal(logits, quantize(logits, "fp16")) and torch.equal(seen[0], quantize(seen[0], "fp16"))
    assert not torch.equal(model(idx), logits)  # the hooks are gone after the with-block


def test_gradient_underflow_shrinks_with_scale_and_overflows_when_too_large():
    torch.manual_seed(0)
    u = gradient_underflow(GPT(CFG), scales=(2.0**-12, 1.0, 2.0**12, 2.0**28), batch_size=8)
    for kind in ("real", "simulated"):
        assert u[kind][0] > u[kind][1] >= u[kind][2]  # smaller gradients: more flushed to zero
        assert u[kind][0] > 0.05
        assert u[kind + "_inf"] == [False, False, False, True]  # 2**28 times the gradient overflows FP16
    assert abs(u["real"][1] - u["simulated"][1]) < 0.02  # the simulation tracks real FP16
    assert len(underflow_figure(u).data) >= 4


def test_recipes_share_init_and_batches_and_scaling_rescues():
    runs = {r: train_recipe(r, seed=0, steps=6, batch_size=4, cfg=CFG, eval_batches=1) for r in RECIPES}
    first = {r: x["losses"][0] for r, x in runs.items()}
    assert max(first.values()) - min(first.values()) < 2e-2  # same weights and batch at step 0 (up to rounding)
    assert all(math.isfinite(x["val_loss"]) for x in runs.values())
    assert runs["fp32"]["losses"][-1] < runs["fp32"]["losses"][0]
    w = runs["fp16_scaled_master"]["model"].lm_head.weight if hasattr(runs["fp16_scaled_master"]["model"], "lm_head") else \
        next(runs["fp16_scaled_master"]["model"].parameters())
    assert torch.equal(w, quantize(w, "fp16"))  # FP16 weights
    assert runs["fp16_scaled_master"]["scales"][0] == 65536.0
    assert runs["fp16_no_master"]["lost_updates"] and not runs["fp32"]["lost_updates"]
    tiny = train_recipe("fp16_no_master", seed=0, steps=3, batch_size=4, cfg=CFG, lr=1e-7, eval_batches=1)
    assert min(tiny["lost_updates"]) > 0.9 and tiny["weights_changed"] < 0.1  # updates far below FP16's spacing vanish
    with_master = train_recipe("fp16_scaled_master", seed=0, steps=3, batch_size=4, cfg=CFG, lr=1e-7, eval_batches=1)
    assert torch.equal(with_master["master"].master[0], with_master["master"].master[0])  # the master exists
    assert with_master["master"].master[0].dtype == torch.float32
    assert len(curves_figure({r: [x] for r, x in runs.items()}).data) == len(RECIPES)
    with pytest.raises(ValueError, match="recipe"):
        train_recipe("fp64")


def test_update_rounding_grows_as_lr_shrinks():
    torch.manual_seed(0)
    ur = update_rounding(GPT(CFG), lrs=(1e-2, 1e-4, 1e-6))
    assert ur["fp32"][0] == 0.0
    for fmt in ("bf16", "fp16"):
        assert ur[fmt] == sorted(ur[fmt]) and ur[fmt][-1] > 0.5
    assert ur["bf16"][1] > ur["fp16"][1]  # fewer mantissa bits: more updates lost


def test_memory_per_parameter_is_zero_papers_16():
    mem = memory_per_parameter(CFG, batch_size=4)
    rows = mem["rows"]
    assert rows["fp16 + fp32 master + AdamW"]["total"] == 16 and rows["fp16 + fp32 master + AdamW"]["weights"] == 2
    assert rows["fp32 + AdamW"]["total"] == 16 and rows["pure fp16 + AdamW"]["total"] == 8
    assert rows["bf16 autocast + AdamW"]["activation_bytes"] < rows["fp32 + AdamW"]["activation_bytes"]
    assert len(memory_figure(mem).data) == 4


def test_format_explorer_widget_wiring():
    ex = FigureExplorer(make_figure=format_explorer, controls={
        "value": FloatText(value=0.1), "fmt": Dropdown(options=list(FORMAT_NAMES), value="fp16")})
    before = ex.figure.data[-1].x
    assert "0 01011 1001100110" in ex.note.value  # 0.1 in FP16
    ex.controls["value"].value = 70000.0
    assert ex.figure.data[-1].x != before and "inf" in ex.note.value
    ex.controls["fmt"].value = "bf16"
    assert ex.figure.data[-1].name == "bf16 neighbours"


def test_scale_lab_matches_gradscaler_and_reacts():
    fig, note = scale_lab(16, 10, -4, "30", 80)
    assert "identical" in note and "DIFFER" not in note
    ex = FigureExplorer(make_figure=scale_lab, controls={
        "init_scale_log2": IntSlider(value=16, min=0, max=30), "growth_interval": IntSlider(value=20, min=1, max=100),
        "grad_max_log2": IntSlider(value=-4, min=-30, max=10), "inject": Text(value="60, 61")})
    before = list(ex.figure.data[1].y)
    ex.controls["grad_max_log2"].value = 4  # bigger gradients: a lower ceiling
    assert list(ex.figure.data[1].y) != before and max(ex.figure.data[1].y[10:]) <= math.log2(65504 / 16) + 1  # backed off below it
    ex.controls["inject"].value = "5"
    assert 5 in list(ex.figure.data[2].x)
    before = list(ex.figure.data[2].x)
    ex.controls["inject"].value = "5x, 7"  # what a learner (or the browser test) might type
    assert 7 in list(ex.figure.data[2].x) and list(ex.figure.data[2].x) != before and "Ignored" in ex.note.value
    assert parse_steps(" 3, 1;2 ") == [1, 2, 3]
    with pytest.raises(ValueError, match="inject"):
        parse_steps("five")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_recipes_run_on_cuda():
    for r in ("bf16_autocast", "fp16_scaled_master"):
        out = train_recipe(r, seed=0, steps=3, batch_size=4, cfg=CFG, eval_batches=1, device="cuda")
        assert math.isfinite(out["val_loss"]) and next(out["model"].parameters()).is_cuda
