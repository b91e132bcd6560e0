"""Megatron tensor parallelism from scratch (lesson 12, ``lessons/12_parallelism``; Shoeybi et al., 2019).

A weight matrix is cut across ``tp`` ranks. Two cuts suffice for a transformer:

- :class:`ColumnParallelLinear`: each rank holds some *output* features (rows of ``W``). Input
  replicated, output split: no communication forward; backward must sum the input gradients
  (operator ``f``: identity forward, all-reduce backward).
- :class:`RowParallelLinear`: each rank holds some *input* features (columns of ``W``). Input
  split, partial outputs must be summed (operator ``g``: all-reduce forward, identity backward).

Column then row (MLP: up, down; attention: q/k/v by heads, output projection) needs no
communication in between, so a transformer block costs exactly 2 all-reduces forward and 2
backward (:func:`lmlab.parallel.parallelize.shard_block` puts these layers into the model's own block). :class:`VocabParallelEmbedding` splits the vocabulary: each rank
looks up the ids it owns, zeros the rest, and an all-reduce adds the pieces.

Every layer has ``from_*`` constructors that shard an existing ``nn.Linear`` / ``nn.Embedding``, so outputs and gradients can be compared with the original.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.argcheck import check_tensor
from lmlab.parallel.in_process import run_in_process
from lmlab.parallel.transport import as_ranks

__all__ = ["copy_to_tp", "reduce_from_tp", "gather_from_tp", "column_parallel_forward", "row_parallel_forward",
           "ColumnParallelLinear", "RowParallelLinear",
           "VocabParallelEmbedding", "check_divisible",
           "simulated_row_parallel_forward"]


def check_divisible(value: int, tp: int, name: str, where: str) -> None:
    if value % tp:
        raise ValueError(f"{where}: {name} ({value}) must be divisible by tp ({tp})")


# -- the conjugate operators f and g ----------------------------------------------------------


class _CopyToTP(torch.autograd.Function):  # f
    @staticmethod
    def forward(ctx, x, ranks):
        ctx.ranks = ranks
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.ranks.all_reduce(grad.contiguous().clone()), None


class _ReduceFromTP(torch.autograd.Function):  # g
    @staticmethod
    def forward(ctx, x, ranks):
        return ranks.all_reduce(x.contiguous().clone())

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ranks):
        ctx.ranks = ranks
        out = ranks.all_gather(x.movedim(-1, 0).contiguous())  # (n * k, ...)
        return out.movedim(0, -1).contiguous()

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.ranks.size, dim=-1)[ctx.ranks.rank].contiguous(), None


# ``group``: a process group (None: all ranks) or in-process Ranks (lmlab.parallel.transport)
def copy_to_tp(x, group=None):
    """Identity forward, all-reduce of the gradient backward (Megatron's ``f``)."""
    return _CopyToTP.apply(x, as_ranks(group))


def reduce_from_tp(x, group=None):
    """All-reduce forward, identity backward (Megatron's ``g``)."""
    return _ReduceFromTP.apply(x, as_ranks(group))


def gather_from_tp(x, group=None):
    """Concatenate the ranks' last dimension forward; keep this rank's slice of the gradient backward."""
    return _GatherFromTP.apply(x, as_ranks(group))


def _check_features(x: torch.Tensor, weight: torch.Tensor, name: str, where: str) -> None:
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"{where}: {name}'s last dimension ({x.shape[-1]}) must equal the weight shard's "
                         f"input features ({weight.shape[-1]})")


def column_parallel_forward(x: torch.Tensor, weight_shard: torch.Tensor, bias_shard=None, group=None) -> torch.Tensor:
    """One rank of a column-parallel linear: ``x`` ``(..., in)`` is replicated, ``weight_shard`` ``(out/t, in)``
    holds this rank's output features; returns this rank's slice of the output ``(..., out/t)``. No
    communication forward; backward all-reduces the input gradient (``f``)."""
    _check_features(x, weight_shard, "x", "column_parallel_forward")
    return F.linear(copy_to_tp(x, group), weight_shard, bias_shard)


def row_parallel_forward(x_shard: torch.Tensor, weight_shard: torch.Tensor, bias=None, group=None) -> torch.Tensor:
    """One rank of a row-parallel linear: ``x_shard`` ``(..., in/t)`` (e.g. a column-parallel output) times
    this rank's columns ``weight_shard`` ``(out, in/t)`` is a partial sum of the output; the all-reduce
    (``g``) finishes it on every rank; the replicated ``bias`` ``(out,)`` is added once, after it."""
    _check_features(x_shard, weight_shard, "x_shard", "row_parallel_forward")
    y = reduce_from_tp(F.linear(x_shard, weight_shard), group)  # (..., out): partial sums -> full output
    return y + bias if bias is not None else y


# -- layers ------------------------------------------------------------------------------------


class ColumnParallelLinear(nn.Module):
    """``y_r = x W_r^T + b_r`` with ``W_r`` = this rank's rows. ``split_sizes``: a fused weight
    (q|k|v, or value|gate) is cut part by part, so each rank gets a slice of every part.
    ``gather_output=True`` returns the full output (all-gather), else this rank's slice.
    ``copy_input=False`` leaves out ``f`` (the all-reduce of the input gradient): the caller puts it at the
    input of the enclosing module instead (:func:`lmlab.parallel.parallelize.parallelize` does)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, gather_output: bool = False,
                 split_sizes: list[int] | None = None, group=None, copy_input: bool = True):
        super().__init__()
        self.ranks = as_ranks(group)
        tp = self.ranks.size
        self.split_sizes = list(split_sizes) if split_sizes is not None else [out_features]
        if sum(self.split_sizes) != out_features:
            raise ValueError(f"ColumnParallelLinear: split_sizes must add up to out_features ({out_features}), got {self.split_sizes}")
        for s in self.split_sizes:
            check_divisible(s, tp, "out_features" if len(self.split_sizes) == 1 else "each of split_sizes", "ColumnParallelLinear")
        if gather_output and len(self.split_sizes) > 1:
            raise ValueError("ColumnParallelLinear: gather_output needs a single part (split_sizes=None)")
        self.tp, self.gather_output, self.copy_input = tp, gather_output, bool(copy_input)
        self.weight = nn.Parameter(torch.empty(out_features // tp, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features // tp)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, gather_output: bool = False, split_sizes=None, group=None,
                    copy_input: bool = True):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    gather_output=gather_output, split_sizes=split_sizes, group=group, copy_input=copy_input)
        layer.to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(layer.shard(linear.weight))
            if linear.bias is not None:
                layer.bias.copy_(layer.shard(linear.bias))
        return layer

    def shard(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full ``(out, ...)`` tensor: slice ``r`` of each part."""
        r = self.ranks.rank
        return torch.cat([part.chunk(self.tp)[r] for part in full.split(self.split_sizes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            y = column_parallel_forward(x, self.weight, self.bias, self.ranks)  # (..., out / tp)
        else:
            y = F.linear(x, self.weight, self.bias)  # (..., out / tp): f is applied before this layer
        return gather_from_tp(y, self.ranks) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """``y = sum_r x_r W_r^T + b`` with ``W_r`` = this rank's columns; ``x_r`` is this rank's slice
    of the input (``input_is_parallel=True``: the output of a :class:`ColumnParallelLinear`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, input_is_parallel: bool = True, group=None):
        super().__init__()
        self.ranks = as_ranks(group)
        tp = self.ranks.size
        check_divisible(in_features, tp, "in_features", "RowParallelLinear")
        self.tp, self.input_is_parallel = tp, input_is_parallel
        self.weight = nn.Parameter(torch.empty(out_features, in_features // tp))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None  # replicated, added once

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, input_is_parallel: bool = True, group=None):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    input_is_parallel=input_is_parallel, group=group)
        layer.to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(layer.shard(linear.weight))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def shard(self, full: torch.Tensor) -> torch.Tensor:
        return full.chunk(self.tp, dim=-1)[self.ranks.rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = x.chunk(self.tp, dim=-1)[self.ranks.rank]
        return row_parallel_forward(x, self.weight, self.bias, self.ranks)


class VocabParallelEmbedding(nn.Module):
    """Rows ``[r V/tp, (r+1) V/tp)`` of the embedding live on rank ``r``; other ids give zeros here."""

    def __init__(self, num_embeddings: int, embedding_dim: int, group=None):
        super().__init__()
        self.ranks = as_ranks(group)
        tp = self.ranks.size
        check_divisible(num_embeddings, tp, "num_embeddings", "VocabParallelEmbedding")
        self.tp = tp
        per = num_embeddings // tp
        self.start = self.ranks.rank * per
        self.end = self.start + per
        self.weight = nn.Parameter(torch.empty(per, embedding_dim))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group=None):
        layer = cls(emb.num_embeddings, emb.embedding_dim, group=group)
        layer.to(emb.weight.device, emb.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(emb.weight[layer.start: layer.end])
        return layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.start) | (ids >= self.end)
        local = (ids - self.start).masked_fill(outside, 0)
        y = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)  # (..., C), zeros elsewhere
        return reduce_from_tp(y, self.ranks)


def simulated_row_parallel_forward(x_shards: list, weight_shards: list, bias=None) -> list:
    """:func:`row_parallel_forward` (what :class:`RowParallelLinear` runs) on ``t`` in-process ranks, all-reduce included.

    Rank r holds ``x_shards[r]`` ``(..., in/t)`` (its slice of the input features, e.g. a column-parallel
    layer's output) and ``weight_shards[r]`` ``(out, in/t)`` (its columns of ``W``); ``bias`` ``(out,)``
    is replicated and added once, after the sum. Returns every rank's output ``(..., out)`` (all equal
    ``F.linear(torch.cat(x_shards, -1), torch.cat(weight_shards, 1), bias)``).
    Graded reference of ``exercises/12_parallelism`` (``12.row_parallel_forward``).
    """
    where = "simulated_row_parallel_forward"
    if not isinstance(x_shards, (list, tuple)) or not isinstance(weight_shards, (list, tuple)) \
            or not x_shards or len(x_shards) != len(weight_shards):
        raise ValueError(f"{where}: x_shards and weight_shards must be lists of the same length >= 1 (one per rank)")
    for r, (x, w) in enumerate(zip(x_shards, weight_shards)):
        check_tensor(w, f"weight_shards[{r}]", where, dim=2)
        check_tensor(x, f"x_shards[{r}]", where, shape=(*x_shards[0].shape[:-1], w.shape[1]))
    if bias is not None:
        check_tensor(bias, "bias", where, shape=(weight_shards[0].shape[0],))
    # every rank (a thread) runs the function RowParallelLinear runs on gloo processes, all-reduce (g) included
    return run_in_process(lambda ranks, xw: row_parallel_forward(*xw, bias, ranks), list(zip(x_shards, weight_shards)))
