"""Tests for :func:`lmlab.parallel.parallelize.parallelize` (lesson 12): the unchanged GPT made tensor-
and pipeline-parallel from outside, checked against the same model in one process.

Tensor parallelism runs on in-process ranks (threads, :func:`lmlab.parallel.in_process.run_in_process`),
so no process is spawned here; the torchrun runs are in ``tests/test_parallel_train.py``.
Tolerance: 1e-5 on logits and gradients (fp32; observed ~1e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config
from lmlab.parallel import RankGrid
from lmlab.parallel.in_process import run_in_process
from lmlab.parallel.parallelize import ModelStage, parallelize, stage_bounds
from lmlab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

TOL = dict(atol=1e-5, rtol=1e-5)

CONFIGS = {
    # the capstone's LLaMA: RoPE, GQA (4 heads, 2 KV heads), SwiGLU, RMSNorm, tied embeddings
    "llama_tiny": llama_config("tiny", vocab_size=64, context_length=16, d_model=32, n_layers=3),
    "gpt2_style": ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, position="learned"),
    "post_ln_geglu_window": ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4,
                                        norm_position="post", activation="geglu", attention="sliding_window",
                                        window=4, position="sinusoidal", tie_embeddings=False),
    "sandwich_relu_mqa": ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                     norm_position="sandwich", activation="relu", norm="rmsnorm", position="rope"),
}


def _data(cfg, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, cfg.vocab_size, (3, cfg.context_length), generator=g),
            torch.randint(0, cfg.vocab_size, (3, cfg.context_length), generator=g))


def _loss(logits, y):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def _reference(cfg):
    torch.manual_seed(0)
    model = GPT(cfg)
    x, y = _data(cfg)
    logits = model(x)
    _loss(logits, y).backward()
    return model, logits.detach()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tensor_parallel_matches_one_process(name):
    cfg = CONFIGS[name]
    ref, ref_logits = _reference(cfg)
    x, y = _data(cfg)
    fresh = copy.deepcopy(ref)
    fresh.zero_grad()
    grid = RankGrid(tp=2)

    def rank_fn(ranks, r):
        model = copy.deepcopy(fresh)
        stage = parallelize(model, grid, rank=r, tp_group=ranks)
        logits = stage(x)
        _loss(logits, y).backward()
        return model, logits.detach()

    for r, (model, logits) in enumerate(run_in_process(rank_fn, [0, 1])):
        torch.testing.assert_close(logits, ref_logits, **TOL)
        assert isinstance(model.tok_emb, VocabParallelEmbedding)
        for i, (blk, ref_blk) in enumerate(zip(model.blocks, ref.blocks)):
            assert isinstance(blk.attn.qkv, ColumnParallelLinear) and isinstance(blk.ffn.down, RowParallelLinear)
            assert blk.attn.n_heads == ref_blk.attn.n_heads // 2  # this rank's heads
            torch.testing.assert_close(blk.attn.qkv.weight.grad, blk.attn.qkv.shard(ref_blk.attn.qkv.weight.grad), **TOL)
            torch.testing.assert_close(blk.attn.proj.weight.grad, blk.attn.proj.shard(ref_blk.attn.proj.weight.grad), **TOL)
            torch.testing.assert_close(blk.ffn.up.weight.grad, blk.ffn.up.shard(ref_blk.ffn.up.weight.grad), **TOL)
            torch.testing.assert_close(blk.ffn.down.weight.grad, blk.ffn.down.shard(ref_blk.ffn.down.weight.grad), **TOL)
            for p, q in zip(blk.norm1.parameters(), ref_blk.norm1.parameters()):  # replicated, full gradient
                torch.testing.assert_close(p.grad, q.grad, **TOL)
        emb = model.tok_emb
        # tied: the embedding's shard gets both uses' gradient (embedding lookup + output layer)
        torch.testing.assert_close(emb.weight.grad, ref.tok_emb.weight.grad[emb.start: emb.end], **TOL)
        assert (model.lm_head.weight is emb.weight) == cfg.tie_embeddings


def test_pipeline_stages_chain_to_the_model():
    cfg = CONFIGS["llama_tiny"]  # 3 blocks over 2 stages: [0, 2), [2, 3); tied embeddings on both ends
    ref, ref_logits = _reference(cfg)
    x, y = _data(cfg)
    fresh = copy.deepcopy(ref)
    fresh.zero_grad()
    stages = [ModelStage(copy.deepcopy(fresh), s, 2) for s in range(2)]
    assert [(s.start, s.end) for s in stages] == [(0, 2), (2, 3)]
    h = stages[0](x)
    h_in = h.detach().requires_grad_()
    logits = stages[1](h_in)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    _loss(logits, y).backward()
    h.backward(h_in.grad)
    # the stages hold the model's own blocks (2 + 1) and no others
    assert len(stages[0].blocks) == 2 and len(stages[1].blocks) == 1
    assert not hasattr(stages[1], "tok_emb") and not hasattr(stages[0], "lm_head")
    for name, p in stages[1].blocks[0].named_parameters():
        torch.testing.assert_close(p.grad, ref.blocks[2].get_parameter(name).grad, **TOL)
    # tied weight: each end has a copy; their gradients add up to the tied gradient (sync_tied_grads does it)
    w0, w1 = stages[0].tied_weight, stages[1].tied_weight
    assert w0 is not w1
    torch.testing.assert_close(w0.grad + w1.grad, ref.tok_emb.weight.grad, **TOL)


@pytest.mark.parametrize("changes, grid, name", [
    (dict(n_heads=4, n_kv_heads=1), RankGrid(tp=2), "n_kv_heads"),
    (dict(vocab_size=63), RankGrid(tp=2), "vocab_size"),
    (dict(d_ff=36), RankGrid(tp=8), "n_heads"),
    (dict(d_ff=36), RankGrid(tp=2, pp=1), None),
    (dict(position="alibi"), RankGrid(tp=2), "position"),
    (dict(position="t5"), RankGrid(pp=2), "position"),
    (dict(dropout=0.1), RankGrid(tp=2), "dropout"),
    (dict(knn_memory={"layer": 0, "size": 32, "top_k": 4}), RankGrid(pp=2), "knn_memory"),
    ({}, RankGrid(pp=4), "pp"),
])
def test_bad_layouts_name_the_option(changes, grid, name):
    base = dict(vocab_size=64, context_length=16, d_model=32, n_layers=3, n_heads=4)
    model = GPT(ModelConfig(**{**base, **changes}))
    if name is None:  # d_ff 36 splits over 2 ranks: no error before the groups are needed
        with pytest.raises(ValueError, match="tp_group"):
            parallelize(model, grid, rank=0)
        return
    with pytest.raises(ValueError, match=name):
        parallelize(model, grid, rank=0, tp_group=None)


def test_stage_bounds():
    assert stage_bounds(5, 2) == [(0, 3), (3, 5)]
    assert stage_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="pp"):
        stage_bounds(2, 3)
