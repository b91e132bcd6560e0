"""Tensor-parallel layers refuse sizes a TP degree cannot split (no processes needed: the TP degree
is what ``lmlab.parallel.comm.group_size`` reports, replaced here by a fake of 3 ranks)."""

import pytest
import torch.nn as nn

from lmlab.model import ModelConfig
from lmlab.model.gpt import Block
from lmlab.parallel import comm
from lmlab.parallel import tensor_parallel as tp


@pytest.fixture
def three_ranks(monkeypatch):
    monkeypatch.setattr(comm, "group_size", lambda group=None: 3)
    monkeypatch.setattr(comm, "group_rank", lambda group=None: 0)


def test_check_divisible_names_the_parameter():
    tp.check_divisible(12, 3, "n_heads", "TPBlock")  # fine
    with pytest.raises(ValueError, match=r"TPBlock: n_heads \(4\) must be divisible by tp \(3\)"):
        tp.check_divisible(4, 3, "n_heads", "TPBlock")


def test_layers_refuse_sizes_tp_cannot_split(three_ranks):
    with pytest.raises(ValueError, match=r"ColumnParallelLinear: out_features \(8\) must be divisible by tp \(3\)"):
        tp.ColumnParallelLinear(6, 8)
    with pytest.raises(ValueError, match=r"RowParallelLinear: in_features \(8\) must be divisible by tp \(3\)"):
        tp.RowParallelLinear(8, 6)
    with pytest.raises(ValueError, match=r"VocabParallelEmbedding: num_embeddings \(10\) must be divisible by tp \(3\)"):
        tp.VocabParallelEmbedding(10, 4)
    assert tp.ColumnParallelLinear(6, 9).weight.shape == (3, 6)  # divisible: each rank gets a third


def test_shard_block_refuses_heads_tp_cannot_split(three_ranks):
    from lmlab.parallel.parallelize import shard_block

    block = Block(ModelConfig(vocab_size=16, context_length=8, d_model=16, n_layers=1, n_heads=4, d_ff=48))
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by tp \(3\)"):
        shard_block(block)
    post = Block(ModelConfig(vocab_size=16, context_length=8, d_model=24, n_layers=1, n_heads=3, d_ff=48, norm_position="post"))
    ok = shard_block(post)  # any norm placement: the block's own forward runs
    assert isinstance(ok.attn.qkv, nn.Module) and ok.attn.qkv.weight.shape == (24, 24)  # (3 parts x 24) / 3 ranks
    assert ok.attn.n_heads == 1
