"""Parallelism applied from outside to the unchanged model (lesson 12, ``lessons/12_parallelism``).

torchtitan's habit (``parallelize_llama``): the model is written once, for one device, and a separate
function makes it parallel. :func:`parallelize` takes a :class:`lmlab.model.GPT` (any option the registry
allows that can be sharded: the capstone's LLaMA with RoPE, GQA, SwiGLU and tied embeddings included) and
a :class:`~lmlab.parallel.grid.RankGrid`, and

1. **tensor parallel** (``grid.tp > 1``), in place: each block's own ``attn.qkv`` and ``ffn.up`` become
   :class:`~lmlab.parallel.tensor_parallel.ColumnParallelLinear` (this rank's heads / hidden units; fused
   q|k|v and value|gate cut part by part), ``attn.proj`` and ``ffn.down`` become
   :class:`~lmlab.parallel.tensor_parallel.RowParallelLinear`, the token embedding a
   :class:`~lmlab.parallel.tensor_parallel.VocabParallelEmbedding` and the output layer a column-parallel
   layer over the vocabulary that gathers the logits (sharing the embedding's shard when tied). The
   attention module is told how many heads *it* holds (``n_heads / tp``); its forward is unchanged.
   Megatron's ``f`` (identity forward, all-reduce of the input gradient backward) sits at the input of
   ``attn`` and ``ffn`` as a forward pre-hook, so the FFN's fused fp32 path (which reads ``up.weight``
   directly) is covered too. Norms stay replicated: their gradients are already equal on every rank.
2. **pipeline parallel** (``grid.pp > 1``): :class:`ModelStage` keeps this stage's own consecutive
   blocks (the embedding with the first, the final norm and output layer with the last) and runs them
   with the model's own :meth:`~lmlab.model.gpt.GPT.embed` and ``Block.forward``. A tied embedding lives
   on the first and the last stage: each holds a copy, and :meth:`ModelStage.sync_tied_grads` adds the two
   gradients (Megatron's embedding group), so both copies take the same step.

Data parallelism and ZeRO wrap the result from outside, too (:mod:`.zero`, :mod:`.train`).
Options that cannot be sharded raise a ``ValueError`` naming the option (:func:`check_parallelizable`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlab.model import GPT
from lmlab.model.attention import MultiHeadAttention
from lmlab.model.ffn import FeedForward
from lmlab.parallel import comm
from lmlab.parallel.grid import RankGrid
from lmlab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding, copy_to_tp
from lmlab.parallel.transport import as_ranks

__all__ = ["parallelize", "check_parallelizable", "shard_block", "ModelStage", "stage_bounds"]


def stage_bounds(n_layers: int, pp: int) -> list[tuple[int, int]]:
    """Blocks ``[start, end)`` of each of ``pp`` stages: as equal as possible, earlier stages get the extra."""
    if not isinstance(pp, int) or isinstance(pp, bool) or not 1 <= pp <= n_layers:
        raise ValueError(f"pp must be an integer in [1, n_layers={n_layers}] (a stage needs at least one block), got {pp!r}")
    per, extra = divmod(n_layers, pp)
    bounds, start = [], 0
    for s in range(pp):
        end = start + per + (1 if s < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def check_parallelizable(model: GPT, grid: RankGrid) -> None:
    """``ValueError`` naming the model option (or grid dimension) that this layout cannot shard."""
    if not isinstance(model, GPT):
        raise ValueError(f"parallelize: model must be an lmlab.model.GPT, got {type(model).__name__}")
    if not isinstance(grid, RankGrid):
        raise ValueError(f"parallelize: grid must be a RankGrid, got {type(grid).__name__}")
    cfg, tp = model.config, grid.tp
    stage_bounds(cfg.n_layers, grid.pp)  # pp <= n_layers
    if cfg.knn_memory is not None and (tp > 1 or grid.pp > 1):
        raise ValueError("knn_memory: a kNN-memory layer keeps a per-process memory of past keys; it cannot be "
                         "sharded (use knn_memory=None with tp > 1 or pp > 1)")
    if cfg.position == "t5" and grid.pp > 1:
        raise ValueError("position: 't5' shares one learned bias table across all layers, so it cannot be cut into "
                         "pipeline stages (use 'rope', 'learned', 'sinusoidal' or 'none' with pp > 1)")
    if tp == 1:
        return
    if cfg.position in ("alibi", "t5"):
        raise ValueError(f"position: {cfg.position!r} adds a per-head bias computed for all heads; it cannot be split "
                         f"over tp={tp} ranks (use 'rope', 'learned', 'sinusoidal' or 'none')")
    if cfg.dropout > 0:
        raise ValueError(f"dropout: {cfg.dropout} > 0 needs the same random stream on every tensor-parallel rank "
                         "(Megatron's RNG tracker), which lmlab does not have; use dropout=0 with tp > 1")
    for i, block in enumerate(model.blocks):
        _check_block(block, tp, f"layer {i}")
    if cfg.vocab_size % tp:
        raise ValueError(f"vocab_size ({cfg.vocab_size}) must be divisible by tp ({tp})")


def _copy_input_hook(ranks):
    """Megatron's ``f`` on a module's input: identity forward, all-reduce of the input gradient backward."""

    def hook(module, args):
        return (copy_to_tp(args[0], ranks), *args[1:])

    return hook


def _check_block(block: nn.Module, tp: int, where: str) -> None:
    if type(block.attn) is not MultiHeadAttention:
        raise ValueError(f"attention: {where}'s attention is {type(block.attn).__name__}, not lmlab's "
                         "MultiHeadAttention: parallelize only knows how to shard that one by heads")
    if type(block.ffn) is not FeedForward:
        raise ValueError(f"activation: {where}'s FFN is {type(block.ffn).__name__}, not lmlab's FeedForward: "
                         "parallelize only knows how to shard that one by hidden units")
    for name, value in (("n_heads", block.attn.n_heads), ("n_kv_heads", block.attn.n_kv_heads), ("d_ff", block.ffn.hidden)):
        if value % tp:
            raise ValueError(f"{name} ({value}) must be divisible by tp ({tp})")


def shard_block(block: nn.Module, group=None) -> nn.Module:
    """Split a :class:`lmlab.model.gpt.Block` over the tensor-parallel ``group`` (a process group, ``None`` for
    all ranks, or in-process :class:`~lmlab.parallel.transport.Ranks`), in place, and return it: ``attn.qkv`` and
    ``ffn.up`` column-parallel (this rank's heads / hidden units), ``attn.proj`` and ``ffn.down`` row-parallel,
    ``f`` at the input of ``attn`` and ``ffn``. Its own ``forward`` then costs 2 all-reduces forward
    (after the two row-parallel layers) and 2 backward (``f``), whatever the norm placement."""
    ranks = as_ranks(group)
    _check_block(block, ranks.size, "the block")
    attn, ffn, tp = block.attn, block.ffn, ranks.size
    C = attn.n_heads * attn.head_dim
    attn.qkv = ColumnParallelLinear.from_linear(attn.qkv, split_sizes=[C, attn.kv_dim, attn.kv_dim], group=ranks,
                                                copy_input=False)
    attn.proj = RowParallelLinear.from_linear(attn.proj, group=ranks)
    attn.n_heads, attn.n_kv_heads, attn.kv_dim = attn.n_heads // tp, attn.n_kv_heads // tp, attn.kv_dim // tp
    gated = ffn.up.out_features == 2 * ffn.hidden
    ffn.up = ColumnParallelLinear.from_linear(ffn.up, split_sizes=[ffn.hidden] * (2 if gated else 1), group=ranks,
                                              copy_input=False)
    ffn.down = RowParallelLinear.from_linear(ffn.down, group=ranks)
    ffn.hidden //= tp
    for part in (attn, ffn):
        part.register_forward_pre_hook(_copy_input_hook(ranks))
    return block


def _tensor_parallel(model: GPT, ranks) -> None:
    """Swap the model's own layers for their tensor-parallel versions, in place."""
    tied = model.config.tie_embeddings
    for block in model.blocks:
        shard_block(block, ranks)
    model.tok_emb = VocabParallelEmbedding.from_embedding(model.tok_emb, group=ranks)
    head = ColumnParallelLinear.from_linear(model.lm_head, gather_output=True, group=ranks)
    if tied:
        head.weight = model.tok_emb.weight  # the same rows of the same matrix: one shared shard
    model.lm_head = head


class ModelStage(nn.Module):
    """Stage ``stage`` of ``n_stages`` of a :class:`~lmlab.model.GPT`: its own blocks ``[start, end)``, the
    embedding on the first stage, the final norm and output layer on the last (the model's own modules, not
    copies). ``forward``: token ids ``(B, T)`` on the first stage, hidden states ``(B, T, C)`` on the others;
    returns logits ``(B, T, V)`` on the last stage, else the hidden states for the next one."""

    embed = GPT.embed  # the model's one way into the blocks: reads tok_emb, pos_emb, position, drop

    def __init__(self, model: GPT, stage: int, n_stages: int):
        super().__init__()
        bounds = stage_bounds(model.config.n_layers, n_stages)
        if not isinstance(stage, int) or not 0 <= stage < n_stages:
            raise ValueError(f"stage must be an integer in [0, {n_stages}), got {stage!r}")
        self.config, self.stage, self.n_stages = model.config, stage, n_stages
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.start, self.end = bounds[stage]
        self.position = model.position  # every stage rotates q and k (RoPE has no weights)
        if self.first:
            self.tok_emb, self.pos_emb, self.drop = model.tok_emb, model.pos_emb, model.drop
        self.blocks = nn.ModuleList(model.blocks[self.start: self.end])
        if self.last:
            self.final_norm, self.lm_head = model.final_norm, model.lm_head
            if model.config.tie_embeddings and not self.first:  # the tied weight's second copy lives here
                self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach().clone())
        self.tied_group = None  # set by parallelize: first and last stage, when they share a tied weight

    @property
    def tied_weight(self) -> nn.Parameter | None:
        """The tied embedding this stage holds a copy of (first or last stage, ``tie_embeddings``), else None."""
        if not self.config.tie_embeddings or self.n_stages == 1:
            return None
        return self.tok_emb.weight if self.first else self.lm_head.weight if self.last else None

    def sync_tied_grads(self) -> None:
        """After backward: add the first stage's and the last stage's gradients of the tied embedding."""
        w = self.tied_weight
        if w is None:
            return
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        comm.all_reduce(w.grad, group=self.tied_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)  # (T,)
        if self.first:
            x, positions = self.embed(x, pos, pos)  # (B, T, C)
        else:
            positions = self.position.for_attention(pos, pos) if self.position is not None else None
        for block in self.blocks:
            x = block(x, positions=positions)  # (B, T, C): the model's own Block.forward
        return self.lm_head(self.final_norm(x)) if self.last else x  # (B, T, V) or (B, T, C)


def _tied_group(grid: RankGrid, me: int):
    """Process groups {first stage, last stage} of every pp group (all ranks create all, in order)."""
    mine = None
    for ranks in grid.groups("pp"):
        pair = [ranks[0], ranks[-1]]
        g = comm.new_group(pair)
        if me in pair:
            mine = g
    return mine


def parallelize(model: GPT, grid: RankGrid, *, rank: int | None = None, tp_group=None) -> ModelStage:
    """Make ``model`` this rank's part of the ``grid`` layout; returns its :class:`ModelStage`.

    ``rank``: this rank's global rank in the grid (default: ``torch.distributed``'s). ``tp_group``: the
    tensor-parallel group (a process group from ``grid.make_groups()["tp"]``, or in-process
    :class:`~lmlab.parallel.transport.Ranks`; required when ``grid.tp > 1``). The model is changed in
    place (tensor parallel); with ``grid.pp > 1`` and tied embeddings every rank must call this, in the
    same order (it creates the first/last-stage groups). Data parallelism is the caller's (:mod:`.zero`).
    """
    check_parallelizable(model, grid)
    rank = comm.rank() if rank is None else rank
    coords = grid.coords(rank)
    if grid.tp > 1:
        if tp_group is None:
            raise ValueError("tp_group: grid.tp > 1 needs this rank's tensor-parallel group "
                             "(grid.make_groups()['tp'] or in-process Ranks)")
        ranks = as_ranks(tp_group)
        if ranks.size != grid.tp:
            raise ValueError(f"tp_group: has {ranks.size} ranks, the grid's tp is {grid.tp}")
        _tensor_parallel(model, ranks)
    stage = ModelStage(model, coords["pp"], grid.pp)
    if grid.pp > 1 and model.config.tie_embeddings:
        stage.tied_group = _tied_group(grid, rank)
    return stage
