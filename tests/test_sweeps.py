"""lmlab.course.experiments.sweeps: the (variant, LR, seed) grid and its verdict."""

import math

import pytest

from lmlab.course.experiments.sweeps import Sweep, train_sweep


def _sweep(loss):
    variants = sorted({v for v, _ in loss})
    lrs = sorted({lr for _, lr in loss})
    return Sweep(variants, lrs, [0, 1, 2], loss)


def test_verdict_says_when_the_outcome_depends_on_the_lr():
    # a wins clearly at the small LR, b wins clearly at the large one
    loss = {("a", 1e-3): [2.00, 2.01, 2.02], ("b", 1e-3): [2.20, 2.21, 2.23],
            ("a", 1e-2): [2.50, 2.52, 2.51], ("b", 1e-2): [1.90, 1.91, 1.93]}
    text, best, same = _sweep(loss).verdict("a", "b")
    assert not same and "depends on the learning rate" in text
    assert _sweep(loss).best_lr("a") == 1e-3 and _sweep(loss).best_lr("b") == 1e-2
    assert best.better == "b"  # each at its own best LR: 2.01 vs 1.91


def test_verdict_same_at_every_lr_and_diverged_runs_are_not_averaged():
    loss = {("a", 1e-3): [2.00, 2.01, 2.02], ("b", 1e-3): [2.20, 2.21, 2.23],
            ("a", 1e-2): [1.95, 1.97, 1.96], ("b", 1e-2): [2.30, 2.31, 2.33]}
    text, best, same = _sweep(loss).verdict("a", "b")
    assert same and best.better == "a"
    loss[("b", 1e-2)] = [2.3, math.nan, 2.3]
    s = _sweep(loss)
    assert s.best_lr("b") == 1e-3 and s.compare("a", "b", 1e-2) is None and "(1 div)" in s.table()


def test_train_sweep_is_paired_and_seeded():
    a = train_sweep({"x": {}, "y": dict(n_kv_heads=1)}, lrs=(3e-3,), seeds=(0, 1), steps=5, batch_size=4)
    b = train_sweep({"x": {}}, lrs=(3e-3,), seeds=(0, 1), steps=5, batch_size=4)
    assert a.loss[("x", 3e-3)] == b.loss[("x", 3e-3)]
    assert a.loss[("x", 3e-3)][0] != a.loss[("x", 3e-3)][1]
    with pytest.raises(ValueError, match="seeds"):
        train_sweep({"x": {}}, seeds=(0, 0))


def test_sweep_figure_has_a_line_and_the_seeds_per_variant():
    from lmlab.course.experiments.sweeps import sweep_figure

    loss = {("a", 1e-3): [2.0, 2.1, 2.2], ("b", 1e-3): [2.2, 2.3, 2.4], ("a", 1e-2): [1.9, 2.0, 2.1], ("b", 1e-2): [2.5, math.nan, 2.4]}
    fig = sweep_figure(_sweep(loss))
    assert len(fig.data) == 4 and list(fig.data[1].y) == [2.0, 2.1, 2.2, 1.9, 2.0, 2.1]
    assert fig.data[2].y[1] is None  # a diverged LR has no mean


def test_verdict_is_three_way_and_holm_corrected_once_per_distinct_comparison():
    loss = {("a", 1e-3): [2.00, 2.01, 2.02, 2.00, 2.01], ("b", 1e-3): [2.001, 2.012, 2.018, 2.002, 2.011],
            ("a", 1e-2): [2.50, 2.52, 2.51, 2.50, 2.53], ("b", 1e-2): [2.40, 2.45, 2.60, 2.55, 2.50]}
    s = Sweep(["a", "b"], [1e-3, 1e-2], [0, 1, 2, 3, 4], loss)
    text, best, same = s.verdict("a", "b", claim="equal", margin=0.02)
    # both best at 1e-3: the best-LR comparison is the 1e-3 one, and Holm counts 2 claims, not 3
    assert best == s.verdict("a", "b", claim="equal", margin=0.02)[1] and "Holm-corrected over 2 claims" in best.sentence
    assert best.outcome == "supports"  # equal within ±0.02 at lr 1e-3
    assert not same and "UNDETERMINED" in text  # at lr 1e-2 the noise leaves it open
