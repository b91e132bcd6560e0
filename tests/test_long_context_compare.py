"""lmlab.course.experiments.ch06_compare: the cost counts against hand counts, and the comparisons on small cases."""

import pytest
import torch

from lmlab.course.experiments import ch06_long_context as X
from lmlab.course.experiments import ch06_compare as C
from lmlab.infer.long_context import lambda_mask
from lmlab.model import ModelConfig


def _cfg(n_layers, n_heads, d_model, n_kv_heads=None):
    return ModelConfig(vocab_size=16, context_length=8, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, position="rope")


def test_full_cost_by_hand():
    c = C.attention_cost(4, _cfg(2, 2, 16))  # head_dim 8; 4 tokens: 1 + 2 + 3 + 4 = 10 pairs per head and layer
    assert c["pairs"] == 10 * 2 * 2
    assert c["attention_flops"] == c["flops"] == 4 * 8 * 40 and c["search_flops"] == 0
    assert c["cache_bytes"] == 2 * 2 * 2 * 8 * 4 * 4  # K and V, layers, kv heads, head_dim, tokens, fp32


def test_lambda_cost_by_hand_and_against_the_mask():
    cfg = _cfg(1, 1, 8)
    c = C.attention_cost(6, cfg, "lambda", n_sink=1, window=2)
    assert c["pairs"] == 1 + 2 + 3 + 3 + 3 + 3 == int(lambda_mask(6, 1, 2).sum())
    assert c["cache_bytes"] == 2 * 8 * 3 * 4  # the sink + 2 recent tokens
    assert C.attention_cost(40, cfg, "lambda", n_sink=3, window=7)["pairs"] == int(lambda_mask(40, 3, 7).sum())
    assert C.lambda_cost(40, 3, 7, cfg)["attention_flops_lambda"] == 4 * 8 * int(lambda_mask(40, 3, 7).sum())


def test_knn_cost_by_hand():
    # 2 segments of 4: local 10 + 10 pairs; segment 1's 4 queries score 4 memory entries and attend to 2
    c = C.attention_cost(8, _cfg(1, 1, 4), "knn", segment_length=4, top_k=2, memory_size=8)
    assert c["pairs"] == 20 + 8
    assert c["attention_flops"] == 4 * 4 * 28 and c["search_flops"] == 2 * 4 * 16
    assert c["cache_bytes"] == 2 * 4 * 4 * 4 + 2 * 4 * 4 * 4  # the current segment + 4 memory entries
    # a memory of 2 holds only the 2 newest entries: scored 4 · 2, attended 4 · 2
    small = C.attention_cost(8, _cfg(1, 1, 4), "knn", segment_length=4, top_k=2, memory_size=2)
    assert small["search_flops"] == 2 * 4 * 8 and small["pairs"] == 28
    # no memory layer: just the segment windows
    assert C.attention_cost(8, _cfg(1, 1, 4), "knn", segment_length=4, top_k=2, memory_size=8, memory_layers=0)["pairs"] == 20


def test_cost_validation():
    with pytest.raises(ValueError, match="method"):
        C.attention_cost(8, _cfg(1, 1, 4), "sparse")
    with pytest.raises(ValueError, match="window"):
        C.attention_cost(8, _cfg(1, 1, 4), "lambda", n_sink=2)
    with pytest.raises(ValueError, match="memory_layers"):
        C.attention_cost(8, _cfg(1, 1, 4), "knn", segment_length=4, top_k=2, memory_size=8, memory_layers=2)


def test_fraction_recovered():
    assert C.fraction_recovered(2.0, 1.5, 1.0) == pytest.approx(0.5)  # a loss
    assert C.fraction_recovered(0.1, 0.9, 1.0) == pytest.approx(8 / 9)  # an accuracy
    assert C.fraction_recovered(2.0, 2.5, 1.0) == pytest.approx(-0.5)  # worse than the baseline
    with pytest.raises(ValueError, match="reference"):
        C.fraction_recovered(1.0, 0.5, 1.0)


def test_fine_tune_seeds_pairs_methods_and_reuses_known_runs():
    base = X.train_base(context_length=16, steps=10, batch_size=4, d_model=16, n_layers=1, n_heads=2)
    kw = dict(length=32, factor=2.0, ft_steps=2, ft_batch=2, eval_batch=2, eval_batches=1)
    r = C.fine_tune_seeds(base, ("no trick", "Λ (sinks + window)"), seeds=(1, 2), known={("no trick", 1): {16: 7.0, 32: 123.0}},
                          **kw)
    assert r["eval_lengths"] == [16, 32] and r["seeds"] == [1, 2]
    assert C.per_seed(r, "no trick")[0] == 123.0 and C.per_seed(r, "no trick", 16)[0] == 7.0  # the known run, not re-run
    lam = C.per_seed(r, "Λ (sinks + window)")
    assert lam[0] != lam[1]  # the fine-tune seed changes the batches
    assert all(0 < v < 10 for v in C.per_seed(r, "no trick")[1:] + lam)
    # a seed run again gives the same loss: the paired test compares like with like
    again = C.fine_tune_seeds(base, ("Λ (sinks + window)",), seeds=(2,), **kw)
    assert C.per_seed(again, "Λ (sinks + window)") == [lam[1]]
    # a known run that lacks an evaluation length is run again
    partial = C.fine_tune_seeds(base, ("Λ (sinks + window)",), seeds=(2,), known={("Λ (sinks + window)", 2): {32: 9.0}}, **kw)
    assert C.per_seed(partial, "Λ (sinks + window)") == [lam[1]]


def test_fine_tune_seeds_validation():
    base = X.train_base(context_length=16, steps=2, batch_size=2, d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="method must be one of"):
        C.fine_tune_seeds(base, ("xpos",), length=32, ft_steps=1)
    with pytest.raises(ValueError, match="length"):
        C.fine_tune_seeds(base, ("no trick",), length=16)  # no longer than the trained length
    with pytest.raises(ValueError, match="seeds"):
        C.fine_tune_seeds(base, ("no trick",), length=32, seeds=(1, 1))
    r = C.fine_tune_seeds(base, ("no trick",), length=32, seeds=(1,), ft_steps=1, ft_batch=1, eval_batch=1, eval_batches=1)
    with pytest.raises(ValueError, match="method"):
        C.per_seed(r, "PI (linear)")
    with pytest.raises(ValueError, match="length"):
        C.per_seed(r, "no trick", 64)


def test_full_attention_answers_far_facts_and_knn_vs_full_reuses_known():
    kw = dict(steps=60, batch_size=16, eval_batch=64)
    full = C.full_attention_facts(**kw)
    assert full["far"] > 0.6 and full["config"].context_length == 64  # it sees the fact; chance is 1/8
    known = {0: {"far_with_memory": 0.5, "far_local_only": 0.125}}
    r = C.knn_vs_full(seeds=(0,), known=known, **kw)
    assert r == {"knn": [0.5], "local": [0.125], "full": [full["far"]], "seeds": [0]}
