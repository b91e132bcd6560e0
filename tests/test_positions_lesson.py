"""Lesson 03's experiments and widgets, run through the same functions the lesson calls (smaller sizes)."""

import math

import pytest
import torch
from ipywidgets import FloatLogSlider, IntSlider

from lmlab.course.experiments import ch03_positions as X
from lmlab.model.positions.encodings import relative_position_bucket
from lmlab.train.loop import evaluate
from lmlab.course.widgets import FigureExplorer


def test_permutation_check_only_unmasked_no_position_is_equivariant():
    res = X.permutation_check(T=10, seed=1)
    assert sorted(res["perm"]) == list(range(10)) and res["perm"] != list(range(10))
    assert res["attention, no mask"] < 1e-5
    assert res["attention, causal mask"] > 1e-2  # the causal mask is positional by itself
    assert res["causal, 1 layer, last token"] < 1e-5  # ... but the last token of one layer sees a set
    for name, r in res["model"].items():
        if name == "none":
            assert r["bidirectional"] < 1e-5 and r["causal"] > 1e-2
        else:
            assert r["bidirectional"] > 1e-2, name


def test_bucket_table_exact_near_log_far():
    rows = X.bucket_table(num_buckets=32, max_distance=128, up_to=300)
    assert [r["bucket"] for r in rows] == list(range(32))
    assert all(r["width"] == 1 and r["first"] == r["bucket"] for r in rows[:16])
    assert rows[0]["first"] == 0 and rows[-1]["last"] == 300
    assert all(a["last"] + 1 == b["first"] for a, b in zip(rows, rows[1:]))  # runs tile the distances
    # the last bucket starts at the first d with 16 + floor(log(d/16) / log(8) * 16) >= 31
    first_last = next(d for d in range(16, 300) if 16 + int(math.log(d / 16) / math.log(8) * 16) >= 31)
    assert rows[-1]["first"] == first_last
    widths = [r["width"] for r in rows[16:-1]]
    assert widths[0] <= 3 and widths[-1] > 10 and widths[-1] == max(widths)  # wider and wider: log-spaced


def test_learned_table_with_untrained_rows_is_measured_past_L():
    """The claim is tested, not raised: a 4L table trained on L windows runs at 4L, and its rows past L
    are exactly their initial values (no gradient ever reached them)."""
    res = X.extrapolation_experiment(schemes=("learned",), L=16, steps=15, batch_size=8, eval_batches=2, seeds=(0, 1))
    (row,) = res.rows
    assert row["error"] is None and len(row["per_position"]) == 64 and all(math.isfinite(v) for v in row["losses"].values())
    assert len(row["per_seed"]) == 2 and row["per_seed"][0] != row["per_seed"][1]
    model = res.models["learned"]
    from lmlab.model import GPT
    from lmlab.train.loop import seed_everything
    seed_everything(0)
    fresh = GPT(model.config)
    params = dict(model.named_parameters())
    fresh_params = dict(fresh.named_parameters())
    (name,) = [n for n in params if n.startswith("pos_emb")]
    decay = (1 - 3e-3 * 0.1) ** 15  # AdamW's decoupled weight decay is all that reaches them (lr 3e-3, wd 0.1)
    torch.testing.assert_close(params[name][16:], fresh_params[name][16:] * decay)  # rows past L: no gradient
    assert not torch.equal(params[name][:16], fresh_params[name][:16])  # rows inside L: trained
    v = X.extrapolation_verdicts(res)["learned"]
    assert v["verdict"] in ("holds", "degrades", "undetermined") and v["comparison"].n == 2


def test_extrapolation_experiment_small():
    res = X.extrapolation_experiment(schemes=("learned", "alibi", "rope"), L=16, steps=15, batch_size=8, eval_batches=2,
                                     learned_rows=16)
    assert res.lengths == [16, 32, 64]
    rows = {r["scheme"]: r for r in res.rows}
    learned = rows["learned"]
    assert math.isfinite(learned["losses"][16]) and math.isnan(learned["losses"][32]) and math.isnan(learned["losses"][64])
    assert learned["per_position"] is None and "cannot extrapolate" in learned["error"]
    for s in ("alibi", "rope"):
        assert all(math.isfinite(v) for v in rows[s]["losses"].values()) and len(rows[s]["per_position"]) == 64
        assert rows[s]["error"] is None
    verdicts = X.extrapolation_verdicts(res)
    assert verdicts["learned"]["verdict"] == "cannot run"
    assert {verdicts[s]["verdict"] for s in ("alibi", "rope")} <= {"undetermined"}  # one seed: no verdict
    fig = X.extrapolation_figure(res)
    assert len(fig.data) == 3 + 2  # a length curve per scheme, a per-position curve for those that ran
    with pytest.raises(ValueError, match="schemes"):
        X.extrapolation_experiment(schemes=("relative",))


def test_loss_by_position_averages_to_evaluate():
    res = X.extrapolation_experiment(schemes=("alibi",), L=16, steps=5, batch_size=8, eval_batches=2)
    model = res.models["alibi"]
    from lmlab.data.text import CharTokenizer, load_corpus
    corpus = load_corpus()
    ids = torch.tensor(CharTokenizer(corpus.text).encode(corpus.val))
    per_pos = X.loss_by_position(model, ids, 16, batch_size=4, n_batches=3)
    assert len(per_pos) == 16
    assert abs(sum(per_pos) / 16 - evaluate(model, ids, 4, 3)) < 1e-4  # same windows, same mean


def test_verdicts_from_numbers():
    def seeds(inside, past, jitter=(0.0, 0.01, -0.01, 0.005, -0.005)):
        return [[inside + j] * 16 + [past + 2 * j + 0.001 * k] * 48 for k, j in enumerate(jitter)]
    flat, worse, noisy = seeds(2.0, 2.0), seeds(2.0, 2.5), [[2.0] * 16 + [2.0 + d] * 48 for d in (0.3, -0.2, 0.25, -0.3, 0.1)]
    res = X.ExtrapolationResult(16, [16, 32, 64], [
        {"scheme": "alibi", "losses": {}, "per_position": flat[0], "per_seed": flat, "error": None},
        {"scheme": "rope", "losses": {}, "per_position": worse[0], "per_seed": worse, "error": None},
        {"scheme": "t5", "losses": {}, "per_position": noisy[0], "per_seed": noisy, "error": None},
        {"scheme": "learned", "losses": {}, "per_position": None, "error": "cannot extrapolate"}], seeds=[0, 1, 2, 3, 4])
    v = X.extrapolation_verdicts(res)
    assert v["alibi"]["verdict"] == "holds" and v["rope"]["verdict"] == "degrades" and v["learned"]["verdict"] == "cannot run"
    assert v["t5"]["verdict"] == "undetermined"  # a non-significant difference is not "holds"
    assert "Holm-corrected over 3 claims" in v["rope"]["comparison"].sentence
    assert abs(v["rope"]["beyond"] - 2.5) < 0.01 and abs(v["rope"]["inside"] - 2.0) < 1e-9
    one = X.ExtrapolationResult(16, [16, 32, 64], [{"scheme": "rope", "losses": {}, "per_position": worse[0], "error": None}])
    assert X.extrapolation_verdicts(one)["rope"]["verdict"] == "undetermined"  # one seed decides nothing


def test_t5_learned_bias_reads_the_table():
    res = X.extrapolation_experiment(schemes=("t5", "rope"), L=16, steps=3, batch_size=4, eval_batches=1)
    model = res.models["t5"]
    bias = X.t5_learned_bias(model, up_to=50)  # (nh, 51)
    table = model.position.t5.relative_attention_bias.weight  # (buckets, nh)
    buckets = relative_position_bucket(-torch.arange(51), False, 32, 128)
    torch.testing.assert_close(bias, table[buckets].T.detach())
    with pytest.raises(ValueError, match="position='t5'"):
        X.t5_learned_bias(res.models["rope"])


def _ys(fig):
    return [list(t.y) for t in fig.data]


def test_rope_widget_wiring():
    ex = FigureExplorer(make_figure=lambda position, base: X.rope_figure(position, base),
                        controls={"position": IntSlider(value=8, min=0, max=64),
                                  "base": FloatLogSlider(value=10000, base=10, min=1, max=6, step=0.5)})
    before = _ys(ex.figure)
    ex.controls["position"].value = 9
    after = _ys(ex.figure)
    assert after != before
    assert after[-1] == pytest.approx(before[-1], abs=1e-3)  # q·k vs distance does not depend on the starting position
    ex.controls["base"].value = 100.0
    assert _ys(ex.figure)[-1] != after[-1] and "base 100" in ex.figure.layout.title.text
    with pytest.raises(ValueError, match="position"):
        X.rope_figure(-1, 10000.0)


def test_rope_figure_dot_product_is_shift_invariant_and_wavelengths():
    fig, note = X.rope_figure(0, 10000.0, head_dim=8, pairs=(0, 1, 3))
    wavelengths = list(fig.data[-2].y)
    assert wavelengths == pytest.approx([2 * math.pi * 10000 ** (2 * i / 8) for i in range(4)], rel=1e-5)
    fig2, _ = X.rope_figure(37, 10000.0, head_dim=8, pairs=(0, 1, 3))
    with pytest.raises(ValueError, match="pairs"):
        X.rope_figure(0, 10000.0, head_dim=8)
    assert list(fig.data[-1].y) == pytest.approx(list(fig2.data[-1].y), abs=1e-3)
    assert "depends on m − n only" in note


def test_bias_widget_wiring():
    ex = FigureExplorer(make_figure=X.bias_figure,
                        controls={"n_heads": IntSlider(value=8, min=1, max=16), "num_buckets": IntSlider(value=32, min=4, max=32, step=2),
                                  "max_distance": IntSlider(value=128, min=20, max=256, step=4)})
    for name, value in (("n_heads", 9), ("num_buckets", 30), ("max_distance", 132)):
        before, note = _ys(ex.figure), ex.note.value
        ex.controls[name].value = value
        assert _ys(ex.figure) != before, name
    assert len([t for t in ex.figure.data if t.name.startswith("head")]) == 9
    # the widget's extreme settings still draw (max_distance > num_buckets // 2 always)
    X.bias_figure(16, 32, 20)
    X.bias_figure(1, 4, 256)
    with pytest.raises(ValueError, match="max_distance"):
        X.bias_figure(8, 32, 16)


def test_attention_by_distance_is_relative_to_uniform_and_sees_alibi_decay():
    from lmlab.data.text import char_data

    _, _, val_ids = char_data()
    res = X.extrapolation_experiment(schemes=("none", "alibi"), L=16, steps=3, batch_size=4, eval_batches=1)
    none = X.attention_by_distance(res.models["none"], val_ids, 32, batch_size=2, n_batches=1)
    alibi = X.attention_by_distance(res.models["alibi"], val_ids, 32, batch_size=2, n_batches=1)
    assert len(none) == 32 and all(0.5 < w < 2 for w in none)  # barely trained, no positions: about uniform
    assert alibi[1] > 1.5 * alibi[31]  # ALiBi's fixed penalty: attention falls with distance
    assert len(X.attention_distance_figure({"none": none, "alibi": alibi}, 16).data) == 2
