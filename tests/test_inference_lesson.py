"""Lesson 08's experiments, run through the same functions the lesson calls (smaller sizes)."""

import pytest
import torch
from ipywidgets import Dropdown, IntSlider

from lmlab.course.experiments.ch08_inference import (
    PRESETS,
    SCRIPT,
    block_scenario,
    block_table_figure,
    cache_bytes_for,
    forward_flops,
    kv_memory_figure,
    PeakLiveBytes,
    prefill_decode_experiment,
    prefill_decode_memory,
    step_cost_experiment,
    step_cost_figure,
    tiny_model,
    waste_experiment,
    waste_figure,
)
from lmlab.course.widgets import FigureExplorer


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_model(d_model=64, n_layers=2, n_heads=4, context_length=512, seed=0)


def test_tiny_model_is_seeded():
    a, b = tiny_model(d_model=32, n_layers=1, seed=3), tiny_model(d_model=32, n_layers=1, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not a.training


def test_forward_flops_counts_attention(model):
    base = forward_flops(model, 1, 0)
    assert forward_flops(model, 1, 100) - base == 4 * model.config.n_layers * model.config.d_model * 100
    assert forward_flops(model, 10) > 10 * base  # later tokens see more keys


def test_prefill_is_cheaper_per_token_than_decode(model):
    r = prefill_decode_experiment(model, prompt_len=128, decode_steps=16, repeats=2)
    assert 0.8 < r["decode_flops_per_token"] / r["prefill_flops_per_token"] < 1.5  # about equal FLOPs per token
    assert r["decode_s_per_token"] > 2 * r["prefill_s_per_token"]  # but decode is much slower per token
    assert r["prefill_flops_per_s"] > r["decode_flops_per_s"]


def test_cache_step_same_logits_and_faster_at_long_context(model):
    sc = step_cost_experiment(model, lengths=(16, 256, 511), repeats=3)
    assert sc["max_logit_diff"] < 1e-3
    assert sc["recompute_s"][-1] > 2 * sc["cached_s"][-1]
    assert sc["recompute_flops"][-1] > 50 * sc["cached_flops"][-1]
    c = sc["cached_flops"]
    assert c[2] - c[1] == pytest.approx((c[1] - c[0]) * (511 - 256) / (256 - 16))  # linear in T
    fig = step_cost_figure(sc)
    assert list(fig.data[0].x) == [16, 256, 511] and len(fig.data) == 4


def test_calculator_reference_numbers():
    assert cache_bytes_for("LLaMA-2-13B", 8192) == 6_710_886_400
    assert cache_bytes_for("LLaMA-2-70B (GQA-8)", 1) == 327_680
    assert cache_bytes_for("LLaMA-2-70B (GQA-8)", 1, n_kv_heads=64) == 8 * 327_680
    assert cache_bytes_for("LLaMA-2-13B", 100, batch=3, precision="fp32") == 2 * 3 * cache_bytes_for("LLaMA-2-13B", 100)
    fig, note = kv_memory_figure("LLaMA-2-13B", 8192, 1, "fp16 / bf16")
    assert "6,710,886,400" in note and fig.data[-1].x[0] == 8192


def test_waste_claims():
    w = waste_experiment(n_requests=128, block_sizes=(4, 16, 64), seed=0)
    assert w["contiguous_waste"] >= 0.6
    assert w["paged_waste"][1] < 0.04
    assert w["paged_waste"] == sorted(w["paged_waste"])  # bigger blocks waste more
    assert waste_experiment(n_requests=128, block_sizes=(4, 16, 64), seed=0) == w  # reproducible
    assert len(waste_figure(w).data[0].y) == 4


def test_block_scenario_forks_and_copy_on_write():
    s = block_scenario(5, block_size=4)  # A (7 tokens), B (7), C forked from A
    assert s["tables"]["C"] == s["tables"]["A"]
    assert all(s["ref_counts"][b] == 2 for b in s["tables"]["A"])
    s = block_scenario(6, block_size=4)  # C appends into the shared, partly filled last block: copied
    assert s["tables"]["C"][0] == s["tables"]["A"][0] and s["tables"]["C"][1] != s["tables"]["A"][1]
    assert "copy-on-write" in s["last"]
    s = block_scenario(10, block_size=4)
    assert "B" not in s["tables"]
    end = block_scenario(len(SCRIPT), block_size=4)
    assert end["num_free"] == end["n_blocks"] - len(set(end["tables"]["A"]) | set(end["tables"]["C"]))


def test_memory_widget_wiring():
    ex = FigureExplorer(make_figure=kv_memory_figure, controls={
        "preset": Dropdown(options=list(PRESETS), value="LLaMA-2-13B"),
        "context": IntSlider(value=8192, min=512, max=131072, step=512),
        "batch": IntSlider(value=1, min=1, max=128),
        "precision": Dropdown(options=["fp32", "fp16 / bf16", "int8", "int4"], value="fp16 / bf16"),
        "kv_heads": Dropdown(options=["preset", "MHA", "GQA-8", "MQA"], value="preset"),
    })
    before = ex.figure.data[-1].y[0]
    ex.controls["kv_heads"].value = "MQA"
    assert ex.figure.data[-1].y[0] == pytest.approx(before / 40)
    ex.controls["batch"].value = 4
    assert ex.figure.data[-1].y[0] == pytest.approx(before / 10)
    ex.controls["preset"].value = "LLaMA-2-70B (GQA-8)"
    assert "LLaMA-2-70B" in ex.figure.layout.title.text


def test_block_widget_wiring():
    ex = FigureExplorer(make_figure=block_table_figure, controls={
        "steps": IntSlider(value=0, min=0, max=len(SCRIPT)),
        "block_size": IntSlider(value=4, min=1, max=8),
    })
    assert len(ex.figure.data) == 1  # only the pool, all free
    ex.controls["steps"].value = 6
    assert len(ex.figure.data) > 1
    colors = list(ex.figure.data[-1].marker.color)
    assert "#999999" in colors  # a block shared by the fork
    ex.controls["block_size"].value = 1
    assert len(ex.figure.data) > 10  # one bar per token now


def test_peak_live_bytes_counts_fresh_tensors_not_views():
    with PeakLiveBytes() as p:
        a = torch.zeros(1000)  # 4000 B
        view = a[:10]
        a.add_(1)  # in place: no new memory
        b = torch.zeros(1000)  # peak 8000
        del a, view
        c = torch.zeros(500)  # 4000 + 2000
    assert p.peak == 8000 and p.live == 6000
    del b, c


def test_prefill_needs_more_working_memory_decode_reads_more_per_flop():
    model = tiny_model(d_model=64, n_layers=2, context_length=256)
    r = prefill_decode_memory(model, prompt_len=128)
    assert r["prefill_peak_bytes"] > 10 * r["decode_peak_bytes"] > 0
    assert r["decode_flops_per_byte_read"] < r["prefill_flops_per_byte_read"] / 10
