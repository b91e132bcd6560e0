"""Lesson 04's experiments and widgets, run through the same functions the lesson calls (smaller sizes)."""

import torch
import torch.nn.functional as F
from ipywidgets import Dropdown, IntSlider

from lmlab.model.attention import attention, sliding_window_mask
from lmlab.course.experiments import ch04_attention as X
from lmlab.course.widgets import FigureExplorer


def test_local_attention_matches_masked_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 8, generator=g) for _ in range(3))
    for w in (1, 5, 16, 40):
        torch.testing.assert_close(X.local_attention(q, k, v, w), attention(q, k, v, sliding_window_mask(37, w)))


def test_cost_experiment_full_grows_faster_than_window():
    cost = X.cost_experiment(lengths=(256, 1024), window=32, repeats=3)
    assert abs(cost["memory_exponent"] - 2) < 1e-6
    assert cost["full_exponent"] > cost["local_exponent"]  # timing on a shared machine: only robust claims
    assert cost["rows"][-1]["full_s"] > 2 * cost["rows"][-1]["local_s"]
    assert X.cost_figure(cost).data


def test_mask_fractions():
    T = 64
    full = X.mask_fraction(X.pattern_mask("full (causal)", T))
    assert full["kept"] == T * (T + 1) // 2 and full["of_causal"] == 1
    win = X.mask_fraction(X.pattern_mask("sliding window", T, window=4))
    assert win["kept"] == 4 * T - 6  # the first 3 rows see fewer than 4 keys
    for p in X.PATTERNS:
        assert X.mask_fraction(X.pattern_mask(p, T, 4, 8, 2))["of_causal"] <= 1


def test_kv_heads_experiment_small():
    res = X.kv_heads_experiment(kv_heads=(4, 1), steps=20, batch_size=8, seeds=(0, 1), lrs=(3e-3, 1e-2))
    mha, mqa = res.rows
    assert mha["kv_bytes_per_token"] == 4 * mqa["kv_bytes_per_token"]
    assert mqa["params"] < mha["params"]
    assert all(2.0 < r["val_loss"] < 5.0 for r in res.rows)
    assert set(res.sweep.loss) == {(r["name"], lr) for r in res.rows for lr in (3e-3, 1e-2)}
    assert all(len(v) == 2 for v in res.sweep.loss.values())  # one loss per seed: the noise is measured
    text, cmp, _ = res.sweep.verdict(mqa["name"], mha["name"])
    assert cmp.n == 2 and "at lr 0.003" in text and "at lr 0.01" in text


def test_decode_attention_matches_sdpa_and_mqa_reads_less():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, 1, 16, generator=g)
    k, v = torch.randn(2, 2, 50, 16, generator=g), torch.randn(2, 2, 50, 16, generator=g)
    torch.testing.assert_close(X.decode_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    rows = X.decode_attention_time(kv_heads=(8, 1), n_heads=8, head_dim=32, T=2048, batch=2, repeats=3)
    assert rows[0]["bytes_read"] == 8 * rows[1]["bytes_read"]
    assert rows[1]["step_ms"] < rows[0]["step_ms"]


def test_online_softmax_merge_and_trace():
    g = torch.Generator().manual_seed(2)
    s, v = torch.randn(3, 20, generator=g) * 4, torch.randn(20, 5, generator=g)

    def part(a, b):
        m = s[:, a:b].amax(-1)
        p = torch.exp(s[:, a:b] - m[:, None])
        return m, p.sum(-1), p @ v[a:b]

    m, l, acc = X.online_softmax_merge(*part(0, 7), *part(7, 20))
    torch.testing.assert_close(acc / l[:, None], torch.softmax(s, -1) @ v)
    tr = X.online_softmax_trace(*(torch.randn(32, 8, generator=g) for _ in range(3)), 8, 8)
    assert len(tr["steps"]) == 10 and tr["max_abs_diff"] < 1e-5
    last = tr["steps"][-1]
    assert torch.allclose(torch.tensor(last["m"]), torch.tensor(tr["final_m"][24:32]))


def test_mask_widget_wiring():
    ex = FigureExplorer(make_figure=X.mask_figure,
                        controls={"pattern": Dropdown(options=X.PATTERNS, value="sliding window"), "T": IntSlider(value=16, min=8, max=64),
                                  "window": IntSlider(value=4, min=1, max=32), "stride": IntSlider(value=4, min=1, max=16),
                                  "n_global": IntSlider(value=2, min=0, max=8)})
    before, note = ex.figure.data[0].z, ex.note.value
    ex.controls["window"].value = 8
    assert ex.figure.data[0].z != before and ex.note.value != note
    ex.controls["pattern"].value = "strided"
    assert "strided" in ex.figure.layout.title.text


def test_tile_widget_wiring():
    g = torch.Generator().manual_seed(3)
    tr = X.online_softmax_trace(*(torch.randn(32, 8, generator=g) for _ in range(3)), 8, 8)
    ex = FigureExplorer(make_figure=lambda step: X.tiled_figure(tr, step - 1), controls={"step": IntSlider(value=1, min=1, max=10)})
    before = ex.figure.data[0].z
    ex.controls["step"].value = 5
    assert ex.figure.data[0].z != before and "step 5 of 10" in ex.figure.layout.title.text
