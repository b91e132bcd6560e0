"""Lesson 01's experiments at small sizes: the same functions the lesson runs, and its widgets' wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ipywidgets import Dropdown, FloatSlider, IntSlider, SelectMultiple

from lmlab.course.experiments import ch01_placement as NP
from lmlab.course.experiments import ch01_normalization as N
from lmlab.model import GPT, ModelConfig
from lmlab.model.norms import deepnorm_constants
from lmlab.course.widgets import FigureExplorer


def test_batchnorm_depends_on_the_batch_layernorm_does_not():
    r = N.batchnorm_vs_layernorm(batch_sizes=(1, 2, 8), d=8, max_len=16, probe_len=6, trials=10, seed=0)
    assert r["batch_sizes"] == [1, 2, 8]
    assert r["spread_layernorm"] == [0.0, 0.0, 0.0] and r["layernorm_max_change"] == 0.0
    assert r["spread_padded"][0] == 0.0  # alone in its batch: always the same batch
    assert min(r["spread_padded"][1:]) > 0.01 and min(r["spread_masked"][1:]) > 0.01
    # counting the pads biases the statistics: further from the population output than masking them
    assert all(p > m for p, m in zip(r["mismatch_padded"], r["mismatch_masked"]))
    assert r["mismatch_masked"][-1] < r["mismatch_masked"][0]  # bigger batches estimate better
    assert r["one_token_batchnorm_abs_max"] == 0.0 and abs(r["one_token_layernorm_std"] - 1) < 1e-3
    assert "more than 1 value" in r["torch_batchnorm_one_token_error"]
    assert len(N.batchnorm_figure(r).data) == 5


def test_training_mode_batchnorm_leaks_the_future_eval_mode_does_not():
    r = N.batchnorm_leakage(seed=1, T=16, position=8)
    assert r["layernorm"]["earlier_positions_changed"] == 0
    assert r["batchnorm_train"]["earlier_positions_changed"] == 8  # every earlier output saw the later token
    assert r["batchnorm_eval"]["earlier_positions_changed"] == 0 and r["eval_one_token_finite"]
    model = N.with_batchnorm(N.GPT(N.ModelConfig(vocab_size=16, context_length=8, d_model=16, n_layers=1, n_heads=2)))
    assert sum(isinstance(m, N.SequenceBatchNorm) for m in model.modules()) == 3  # two per block + the final norm
    with pytest.raises(ValueError, match="position"):
        N.batchnorm_leakage(T=8, position=8)


def test_batchnorm_is_seeded():
    a = N.batchnorm_vs_layernorm(batch_sizes=(2, 4), trials=5, seed=3)
    b = N.batchnorm_vs_layernorm(batch_sizes=(2, 4), trials=5, seed=3)
    assert a == b
    with pytest.raises(ValueError):
        N.batchnorm_vs_layernorm(batch_sizes=(0,))
    with pytest.raises(ValueError):
        N.batchnorm_vs_layernorm(trials=1)


def test_norm_properties():
    x = 2.0 + torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    p = N.norm_properties(x)
    assert abs(p["layernorm"]["row_mean"]) < 1e-5 and abs(p["layernorm"]["row_rms"] - 1) < 1e-3
    assert p["layernorm"]["change_when_shifted"] < 1e-4 and p["layernorm"]["change_when_scaled"] < 1e-4
    assert abs(p["rmsnorm"]["row_rms"] - 1) < 1e-3 and p["rmsnorm"]["row_mean"] > 0.5  # keeps the offset
    assert p["rmsnorm"]["change_when_scaled"] < 1e-4 and p["rmsnorm"]["change_when_shifted"] > 0.1


def test_scratch_norms_match_torch():
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(N._layer_norm_scratch(x), F.layer_norm(x, (16,)))
    torch.testing.assert_close(N._rms_norm_scratch(x), F.rms_norm(x, (16,), eps=1e-6))


def test_time_norms_structure():
    t = N.time_norms(rows=64, d=32, repeats=2, number=2)
    assert list(t) == ["forward", "forward+backward"]
    for mode in t.values():
        assert set(mode) == {"layernorm (scratch)", "rmsnorm (scratch)", "F.layer_norm", "F.rms_norm"}
        assert all(v > 0 and math.isfinite(v) for v in mode.values())
    assert len(N.timing_figure(t).data) == 2


def test_compare_norm_training_small():
    r = N.compare_norm_training(seeds=(0,), steps=30, d_model=16, n_layers=1, n_heads=2, context_length=16, batch_size=8)
    assert set(r.histories) == {"layernorm", "rmsnorm"}
    for norm in r.histories:
        (loss,) = r.final(norm)
        assert math.isfinite(loss) and loss < r.unigram_loss + 1.0 and r.seconds(norm) > 0
    assert len(N.norm_training_figure(r).data) == 2


def test_grad_norms_per_layer_keeps_its_contract():
    cfg = ModelConfig(vocab_size=20, context_length=8, d_model=16, n_layers=3, n_heads=2, norm_position="post")
    ids = torch.randint(20, (2, 9), generator=torch.Generator().manual_seed(0))
    a = NP.grad_norms_per_layer(cfg, ids, seed=0)
    b = NP.grad_norms_per_layer(cfg, (ids[:, :-1], ids[:, 1:]), seed=0)
    assert a == b and set(a) == {"attn", "ffn", "block", "loss"} and len(a["ffn"]) == 3
    with pytest.raises(ValueError):
        NP.grad_norms_per_layer(cfg, ids[:, :1])


def test_init_weights_xavier():
    cfg = ModelConfig(vocab_size=20, context_length=8, d_model=16, n_layers=2, n_heads=2, norm_position="deepnorm")
    torch.manual_seed(0)
    m = NP.init_weights(GPT(cfg), "xavier")
    bound = math.sqrt(6 / (16 + 64))  # xavier-uniform bound of the FFN's up-projection
    beta = deepnorm_constants(2).beta  # what init scales the FFN by (it used to be an attribute on the layer)
    assert float(m.blocks[0].ffn.up.weight.detach().abs().max()) <= bound * beta + 1e-6  # DeepNorm's beta kept
    assert abs(float(m.tok_emb.weight.detach().std()) - 16 ** -0.5) < 0.05
    assert m.lm_head.weight is m.tok_emb.weight
    with pytest.raises(ValueError):
        NP.init_weights(m, "kaiming")


def test_placement_gradients_show_the_init_dependence():
    """The lesson's finding at 12 layers: Xavier init gives post-LN larger gradients near the output
    than pre-LN; GPT-2 init makes post-LN's flat and far smaller than pre-LN's."""
    xavier = NP.placement_grad_norms(("post", "pre", "sandwich", "deepnorm"), n_layers=12, init="xavier")
    gpt2 = NP.placement_grad_norms(("post", "pre"), n_layers=12, init="gpt2")
    post, pre = xavier["post"]["ffn"], xavier["pre"]["ffn"]
    assert post[-1] / post[0] > 1.15 and post[-1] > 2 * pre[-1] and pre[0] > pre[-1]
    assert 0.8 < xavier["deepnorm"]["ffn"][-1] / xavier["deepnorm"]["ffn"][0] < 1.2
    assert gpt2["post"]["ffn"][-1] < 0.1 * gpt2["pre"]["ffn"][-1]
    assert gpt2["pre"]["stream_std"][0] < 0.1 and abs(gpt2["post"]["stream_std"][0] - 1) < 0.05
    assert len(NP.grad_norm_figure(xavier).data) == 4


def test_depth_scan_gap_grows():
    scan = NP.depth_scan(depths=(4, 16), seeds=(0,), d_model=32, batch_size=8, context_length=32)
    assert scan["depths"] == [4, 16]
    assert scan["post_over_pre_last"][1] > scan["post_over_pre_last"][0]
    assert scan["pre_last_over_first"][1] < 1


def test_pre_ln_block_matches_lmlab_block():
    cfg = ModelConfig(vocab_size=20, context_length=8, d_model=16, n_layers=2, n_heads=2, norm_position="pre")
    torch.manual_seed(0)
    block = GPT(cfg).blocks[0].eval()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(NP.pre_ln_block(x, block.attn, block.ffn, block.norm1, block.norm2), block(x))


def test_stability_small_run_and_status():
    r = NP.stability_experiment(positions=("pre", "sandwich"), n_layers=2, d_model=16, steps=10, batch_size=4,
                                context_length=16, seeds=(0, 1))
    assert r.status("pre") in ("trained", "stalled") and math.isfinite(r.final_loss("pre", 1))
    assert r.settings["init"] == "xavier" and r.seeds == [0, 1]
    assert len(NP.stability_figure(r).data) == 2 * (2 + 1)  # per placement: a loss curve per seed + one RMS curve
    assert all(len(t) == 10 and all(v > 0 for v in t) for ts in r.residual_rms.values() for t in ts)  # every training step
    assert r.final_loss("pre", 0) != r.final_loss("pre", 1)  # the seeds differ
    r.histories["pre"][1].train_loss[3] = float("nan")
    assert r.status("pre", 1) == "diverged" and r.counts("pre")["diverged"] == 1 and "diverged in 1" in r.summary("pre")


@pytest.mark.slow
def test_stability_claim_at_lesson_size():
    """The lesson's run: post-LN stalls, pre-LN and DeepNorm train (12 layers, lr 3e-3, Xavier, no warm-up)."""
    r = NP.stability_experiment()
    assert r.status("post") == "stalled" and r.status("pre") == "trained" and r.status("deepnorm") == "trained"
    assert r.counts("post")["stalled"] == 1


def test_grad_norm_widget_wiring():
    explorer = FigureExplorer(
        make_figure=NP.grad_norm_explorer_figure,
        controls={
            "depth": IntSlider(value=3, min=2, max=24),
            "placements": SelectMultiple(options=("post", "pre", "sandwich", "deepnorm"), value=("post",)),
            "init": Dropdown(options=("xavier", "gpt2"), value="xavier"),
        },
    )
    before = explorer.figure.data[0].y
    assert len(before) == 3
    explorer.controls["depth"].value = 5
    assert len(explorer.figure.data[0].y) == 5
    explorer.controls["placements"].value = ("post", "pre")
    assert [t.name for t in explorer.figure.data] == ["post-LN", "pre-LN"]
    y_xavier = explorer.figure.data[0].y
    explorer.controls["init"].value = "gpt2"
    assert explorer.figure.data[0].y != y_xavier and "last layer" in explorer.note.value


def test_histogram_widget_wiring():
    explorer = FigureExplorer(
        make_figure=N.activation_histogram_figure,
        controls={
            "shift": FloatSlider(value=0.0, min=-10, max=10),
            "scale": FloatSlider(value=1.0, min=0.1, max=5),
            "norm": Dropdown(options=("both", "layernorm", "rmsnorm"), value="both"),
        },
    )
    names = [t.name for t in explorer.figure.data]
    assert names == ["input", "after LayerNorm", "after RMSNorm"]
    ln_before, rms_before = explorer.figure.data[1].x, explorer.figure.data[2].x
    explorer.controls["shift"].value = 8.0
    ln_after, rms_after = explorer.figure.data[1].x, explorer.figure.data[2].x
    assert max(abs(a - b) for a, b in zip(ln_before, ln_after)) < 1e-4  # LayerNorm ignores the shift
    assert max(abs(a - b) for a, b in zip(rms_before, rms_after)) > 0.5  # RMSNorm does not
    assert sum(abs(v) for v in rms_after) / len(rms_after) > 0.95  # collapsed towards ±1
    explorer.controls["norm"].value = "rmsnorm"
    assert [t.name for t in explorer.figure.data] == ["input", "after RMSNorm"]
    with pytest.raises(ValueError):
        N.activation_histogram_figure(0.0, 1.0, norm="batchnorm")
