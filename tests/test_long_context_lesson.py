"""Lesson 06's experiments and widgets, run through the same functions the lesson calls (smaller sizes)."""

import math

import pytest
import torch
from ipywidgets import Dropdown, FloatSlider, IntSlider

from lmlab.course.experiments import ch06_long_context as X
from lmlab.infer.long_context import lambda_mask
from lmlab.course.widgets import FigureExplorer


@pytest.fixture(scope="module")
def base():
    return X.train_base(context_length=32, steps=40, batch_size=8, d_model=32, n_layers=1, n_heads=2)


def test_method_changes_and_validation():
    assert X.method_changes("no trick", 64, 4) == {}
    assert X.method_changes("PI (linear)", 64, 4)["rope_scaling"] == {"type": "linear", "factor": 4}
    lam = X.method_changes("Λ (sinks + window)", 64, 4, n_sink=4)
    assert lam["window"] + lam["n_sink"] == 64  # same cache size as the window control
    with pytest.raises(ValueError, match="method must be one of"):
        X.method_changes("xpos", 64, 4)


def test_length_experiment_small(base):
    res = X.length_experiment(base, lengths=(32, 64), factor=2.0, methods=("no trick", "PI (linear)", "sliding window"),
                              fine_tuned=("PI (linear)",), ft_steps=2, ft_batch=2, eval_batch=2, eval_batches=1)
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"no trick", "PI (linear)", "sliding window", "PI (linear) + 2-step fine-tune"}
    # at the trained length the sliding window (of L) and the plain model are the same computation
    assert rows["sliding window"]["short"] == pytest.approx(rows["no trick"]["short"], abs=1e-5)
    assert rows["PI (linear)"]["short"] != pytest.approx(rows["no trick"]["short"], abs=1e-4)  # PI moves every angle
    assert all(math.isfinite(v) for r in res["rows"] for v in r["losses"].values())
    assert res["ft_length"] == 64 and len(X.length_figure(res).data) == 4


def test_fine_tune_leaves_the_original_alone(base):
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    tuned, _ = X.fine_tune(base.model, base.train_ids, 64, steps=2, batch_size=2, rope_scaling={"type": "ntk", "factor": 2.0})
    assert tuned.config.context_length == 64 and tuned.config.rope_scaling["type"] == "ntk"
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())


def test_sink_decode_is_bounded_and_exact(base):
    sd = X.sink_decode(base.model, base.val_ids[:80], n_sink=2, window=10, every=8)
    assert max(sd["held"]) == sd["capacity"] == 12
    assert sd["held"][0] == 8 and sd["max_abs_diff"] < 1e-4
    assert sd["positions_kept"] == [0, 1] + list(range(70, 80))


def test_pcw_experiment_order_invisible(base):
    r = X.pcw_experiment(base.model, base.val_ids, n_segments=3, segment_length=8, task_length=4, n_samples=2)
    assert r["swap_max_abs_diff"] < 1e-4
    assert r["max_position_parallel"] == 11 and r["max_position_sequential"] == 27
    assert set(r["loss"]) == {"task alone", "parallel windows", "sequential (past L)"}


def test_fact_batch_places_facts_and_questions():
    x, y, where, far = X.fact_batch(3, n_segments=3, segment_length=16, generator=torch.Generator().manual_seed(0))
    v = X.fact_vocab(8, 8, 16)
    assert x.shape == y.shape == (3, 48) and int(where.sum()) == 3 * 8 and int(far.sum()) == 3 * 4
    for b in range(3):
        facts = set(x[b, :8].tolist()) - set(range(16))
        assert len(facts) == 4
        for t in torch.nonzero(where[b]).flatten().tolist():
            k = int(x[b, t]) - v["query0"]  # the question token sits at the answer's input position
            assert 0 <= k < 8 and int(y[b, t]) in facts and (int(y[b, t]) - v["fact0"]) // 8 == k
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_knn_memory_beats_local_attention():
    r = X.knn_experiment(steps=60, batch_size=16, eval_batch=64)
    assert r["far_with_memory"] > r["far_local_only"] + 0.3
    assert r["far_local_only"] < 0.35  # the fact is outside the window: about chance (1/8)


def test_wavelength_figure_properties():
    fig, note = X.wavelength_figure("PI (linear)", 4.0, head_dim=16)
    plain, scaled = fig.data[0].y, fig.data[1].y
    assert all(s == pytest.approx(4 * p, rel=1e-5) for p, s in zip(plain, scaled))
    fig, _ = X.wavelength_figure("NTK-aware", 4.0, head_dim=16)
    assert fig.data[1].y[0] == pytest.approx(fig.data[0].y[0], rel=1e-5)
    assert fig.data[1].y[-1] == pytest.approx(4 * fig.data[0].y[-1], rel=1e-4)
    with pytest.raises(ValueError):
        X.wavelength_figure("xpos", 4.0)


def test_lambda_stats():
    s = X.lambda_stats(16, 2, 4)
    assert torch.equal(s["mask"], lambda_mask(16, 2, 4))
    assert s["kept"] == sum(min(i + 1, 6) for i in range(16)) and s["cache"] == 6


def test_wavelength_widget_wiring():
    ex = FigureExplorer(make_figure=lambda method, factor, head_dim, base, L: X.wavelength_figure(method, factor, head_dim, base, L),
                        controls={"method": Dropdown(options=X.WAVELENGTH_METHODS, value="NTK-aware"),
                                  "factor": FloatSlider(value=4.0, min=1.0, max=32.0, step=1.0),
                                  "head_dim": Dropdown(options=[16, 32, 64, 128], value=64),
                                  "base": Dropdown(options=[500.0, 10000.0, 500000.0], value=10000.0),
                                  "L": IntSlider(value=64, min=16, max=4096, step=16)})
    for name, value in (("method", "YaRN"), ("factor", 8.0), ("head_dim", 32), ("base", 500.0), ("L", 128)):
        before = [tuple(t.y) for t in ex.figure.data]
        ex.controls[name].value = value
        assert [tuple(t.y) for t in ex.figure.data] != before, name


def test_lambda_widget_wiring():
    ex = FigureExplorer(make_figure=X.lambda_figure, controls={"T": IntSlider(value=32, min=8, max=64, step=8),
                                                               "n_sink": IntSlider(value=2, min=0, max=8),
                                                               "window": IntSlider(value=6, min=1, max=32)})
    for name, value in (("T", 40), ("n_sink", 3), ("window", 7)):
        before, note = ex.figure.data[0].z, ex.note.value
        ex.controls[name].value = value
        assert ex.figure.data[0].z != before and ex.note.value != note, name


def test_lambda_cost_counts_pairs_and_cache():
    from lmlab.course.experiments.ch06_compare import lambda_cost
    from lmlab.model import ModelConfig

    cfg = ModelConfig(vocab_size=16, context_length=64, d_model=32, n_layers=2, n_heads=4, position="rope")
    c = lambda_cost(128, 4, 60, cfg)
    kept = int(X.lambda_mask(128, 4, 60).sum()) if hasattr(X, "lambda_mask") else X.lambda_stats(128, 4, 60)["kept"]
    assert c["attention_flops_full"] == 4 * 8 * 4 * 2 * (128 * 129 // 2)
    assert c["attention_flops_lambda"] == 4 * 8 * 4 * 2 * kept < c["attention_flops_full"]
    assert c["cache_bytes_lambda"] * 128 == c["cache_bytes_full"] * 64  # 64 of 128 tokens held


def test_attention_mass_by_key_is_one_for_uniform_attention():
    from lmlab.model import GPT, ModelConfig

    cfg = ModelConfig(vocab_size=16, context_length=16, d_model=16, n_layers=1, n_heads=2, position="rope")
    model = GPT(cfg)
    for p in model.blocks[0].attn.qkv.parameters():
        torch.nn.init.zeros_(p)  # q = k = 0: every query attends uniformly
    ids = torch.randint(16, (200,), generator=torch.Generator().manual_seed(0))
    mass = X.attention_mass_by_key(model, ids, 16, batch_size=2, n_batches=1)
    assert mass == pytest.approx([1.0] * 16, abs=1e-5)
    assert len(X.sink_mass_figure(mass).data) == 1
