"""Worker functions for :func:`lmlab.parallel.launch` (lesson 12, ``lessons/12_parallelism``).

Spawned processes import these by name, so they live here and not in a notebook. Each one runs
many checks in a single launch (spawning ranks costs seconds) and returns plain numbers: max
absolute differences against one process or against torch's own API, and communication counts.
The reference (one process, full batch) is recomputed on every rank: it is cheap and needs no
communication.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config
from lmlab.parallel import comm
from lmlab.parallel.collectives import ring_all_reduce
from lmlab.parallel.data_parallel import BucketedDataParallel, average_gradients
from lmlab.parallel.grid import RankGrid
from lmlab.parallel.pipeline import gpt_stages, pipeline_step
from lmlab.parallel.parallelize import parallelize, shard_block
from lmlab.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from lmlab.parallel.three_d import train_step_3d
from lmlab.parallel.zero import ZeroOptimizer

__all__ = ["fail_on_rank", "hang_on_rank", "rank_info", "check_collectives_dp_zero", "check_tensor_parallel",
           "check_two_ranks", "check_pipeline", "check_3d",
           # the pieces, run inside a rank by lesson 12's own worker (lmlab.course.experiments.ch12_parallelism)
           "check_collectives", "check_data_parallel", "check_zero", "check_fsdp2", "check_tp_layers", "check_tp_block",
           "check_dtensor"]

STEPS = 5
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _maxdiff(a: dict | list, b: dict | list) -> float:
    pairs = zip(a.values(), b.values()) if isinstance(a, dict) else zip(a, b)
    return max(float((x.detach().float() - y.detach().float()).abs().max()) for x, y in pairs)


# -- launch behaviour ------------------------------------------------------------------------


def rank_info(rank: int, world_size: int) -> dict:
    return {"rank": comm.rank(), "world_size": comm.world_size(), "device": str(comm.device())}


def fail_on_rank(rank: int, world_size: int, bad_rank: int = 1) -> None:
    """``bad_rank`` raises; the others wait in a collective that can never complete."""
    if rank == bad_rank:
        raise ZeroDivisionError(f"deliberate failure on rank {rank}")
    comm.all_reduce(torch.ones(1))


def hang_on_rank(rank: int, world_size: int, sleep_s: float = 60.0) -> None:
    """Rank 0 waits for a message that rank 1 never sends: the process-group timeout must fire."""
    if rank == 0:
        comm.recv(torch.empty(1), src=1)
    else:
        time.sleep(sleep_s)


# -- a small model and data ------------------------------------------------------------------


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    """Every parameter group has a size divisible by 2 and 4 (no ZeRO padding)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.LayerNorm(16), nn.Linear(16, 8)).to(dtype)


def batches(steps: int = STEPS, batch: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 16, generator=g), torch.randn(batch, 8, generator=g)) for _ in range(steps)]


def reference_training(model: nn.Module, data, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """One process, full batch, AdamW: the answer every scheme must reproduce."""
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    for x, y in data[:steps]:
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _my_slice(x: torch.Tensor, group=None) -> torch.Tensor:
    return x.chunk(comm.group_size(group))[comm.group_rank(group)]


# -- 2 ranks: collectives, data parallel, ZeRO -------------------------------------------------


def check_collectives(out: dict) -> None:
    n = comm.world_size()
    torch.manual_seed(100 + comm.rank())
    t = torch.randn(6, 10)  # 60 elements: divisible by 2, 3, 4
    expected = t.clone()
    comm.all_reduce(expected)
    with comm.counting() as c:
        mine = ring_all_reduce(t.clone())
    out["ring_vs_all_reduce"] = _diff(mine, expected)
    out["ring_sent_fraction"] = c.elements["send"] / t.numel()  # 2 (N - 1) / N
    out["ring_messages"] = c.calls["send"]  # 2 (N - 1)
    odd = torch.randn(7)  # padding path
    ref = odd.clone()
    comm.all_reduce(ref)
    out["ring_odd_size"] = _diff(ring_all_reduce(odd), ref)
    out["world"] = n


def check_data_parallel(out: dict, data, reference) -> None:
    # naive: average gradients after backward
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    for x, y in data:
        F.mse_loss(model(_my_slice(x)), _my_slice(y)).backward()
        average_gradients(model)
        opt.step()
        opt.zero_grad()
    out["dp_naive"] = _maxdiff(dict(model.named_parameters()), reference)

    # bucketed, 2 micro-batches per step (gradient accumulation), one all-reduce per bucket per step
    model = mlp()
    ddp = BucketedDataParallel(model, bucket_elements=600)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    accum = 2
    with comm.counting() as c:
        for x, y in data:
            micro = list(zip(_my_slice(x).chunk(accum), _my_slice(y).chunk(accum)))
            for i, (mx, my) in enumerate(micro):
                ctx = ddp.no_sync() if i < accum - 1 else contextlib.nullcontext()
                with ctx:
                    (F.mse_loss(ddp(mx), my) / accum).backward()
            opt.step()
            opt.zero_grad()
    out["dp_bucketed"] = _maxdiff(dict(model.named_parameters()), reference)
    out["dp_buckets"] = len(ddp.buckets)
    out["dp_all_reduces_per_step"] = c.calls["all_reduce"] / len(data)
    out["dp_sent_per_step"] = c.elements["all_reduce"] / len(data)


def check_zero(out: dict, data, reference) -> None:
    n = comm.world_size()
    for stage in (0, 1, 2, 3):
        model = mlp()
        opt = ZeroOptimizer(model, stage, **ADAMW)
        with comm.counting() as c:
            for x, y in data:
                F.mse_loss(model(_my_slice(x)), _my_slice(y)).backward()
                opt.step()
                opt.zero_grad()
        out[f"zero{stage}"] = _maxdiff(opt.full_parameters(), reference)
        out[f"zero{stage}_sent_per_step"] = c.total_elements / len(data)
        out[f"zero{stage}_calls"] = dict(c.calls)
        # memory in ZeRO's mixed-precision regime: a bf16 model, fp32 master shards
        model = mlp(dtype=torch.bfloat16)
        opt = ZeroOptimizer(model, stage, **ADAMW)
        x, y = data[0]
        F.mse_loss(model(_my_slice(x).bfloat16()).float(), _my_slice(y)).backward()
        opt.step()
        out[f"zero{stage}_bytes"] = opt.memory_bytes()
    out["n_params"] = sum(p.numel() for p in mlp().parameters())
    out["zero_world"] = n


def check_fsdp2(out: dict, data, reference) -> None:
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    for x, y in data:
        F.mse_loss(model(_my_slice(x)), _my_slice(y)).backward()
        opt.step()
        opt.zero_grad()
    full = {k: v.full_tensor() for k, v in model.named_parameters()}
    out["fsdp2"] = _maxdiff(full, reference)


def check_collectives_dp_zero(rank: int, world_size: int) -> dict:
    """Ring all-reduce, naive and bucketed DP, ZeRO 0-3 (equality, bytes, traffic) and FSDP2."""
    out: dict = {}
    data = batches()
    reference = reference_training(mlp(), data)
    check_collectives(out)
    check_data_parallel(out, data, reference)
    check_zero(out, data, reference)
    check_fsdp2(out, data, reference)
    return out


# -- tensor parallel -----------------------------------------------------------------------------


def _grad_diffs(pairs) -> float:
    return max(_diff(a, b) for a, b in pairs)


def check_tp_layers(out: dict) -> None:
    torch.manual_seed(7)
    lin1, lin2, emb = nn.Linear(16, 32), nn.Linear(32, 16), nn.Embedding(20, 16)
    x = torch.randn(4, 5, 16, requires_grad=True)
    ids = torch.randint(0, 20, (4, 5))
    # reference: one process
    y_ref = lin2(F.gelu(lin1(x))) + emb(ids)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    x_grad_ref, x.grad = x.grad.clone(), None
    col, row = ColumnParallelLinear.from_linear(lin1), RowParallelLinear.from_linear(lin2)
    vemb = VocabParallelEmbedding.from_embedding(emb)
    with comm.counting() as c:
        y = row(F.gelu(col(x))) + vemb(ids)
    y.backward(g)
    out["tp_layers_out"] = _diff(y, y_ref)
    out["tp_layers_grad"] = _grad_diffs([
        (x.grad, x_grad_ref), (col.weight.grad, col.shard(lin1.weight.grad)), (col.bias.grad, col.shard(lin1.bias.grad)),
        (row.weight.grad, row.shard(lin2.weight.grad)), (row.bias.grad, lin2.bias.grad),
        (vemb.weight.grad, emb.weight.grad[vemb.start: vemb.end])])
    out["tp_layers_forward_all_reduces"] = c.calls["all_reduce"]  # row + embedding
    gathered = ColumnParallelLinear.from_linear(lin1, gather_output=True)
    out["tp_column_gather"] = _diff(gathered(x), lin1(x))


def check_tp_block(out: dict) -> None:
    for name, kw in (("gelu", {}), ("llama", dict(activation="swiglu", norm="rmsnorm", bias=False, n_kv_heads=2))):
        torch.manual_seed(3)
        cfg = ModelConfig(vocab_size=32, context_length=8, d_model=32, n_layers=1, n_heads=4, **kw)
        block = GPT(cfg).blocks[0]
        tp_block = shard_block(copy.deepcopy(block))  # the model's own block, its layers split over the ranks
        x = torch.randn(2, 8, 32, requires_grad=True)
        y_ref = block(x)
        g = torch.randn_like(y_ref)
        y_ref.backward(g)
        x_grad_ref, x.grad = x.grad.clone(), None
        with comm.counting() as fwd:
            y = tp_block(x)
        with comm.counting() as bwd:
            y.backward(g)
        out[f"tp_block_{name}_out"] = _diff(y, y_ref)
        at, ft = tp_block.attn, tp_block.ffn
        pairs = [(x.grad, x_grad_ref),
                 (at.qkv.weight.grad, at.qkv.shard(block.attn.qkv.weight.grad)),
                 (at.proj.weight.grad, at.proj.shard(block.attn.proj.weight.grad)),
                 (ft.up.weight.grad, ft.up.shard(block.ffn.up.weight.grad)),
                 (ft.down.weight.grad, ft.down.shard(block.ffn.down.weight.grad)),
                 (tp_block.norm1.weight.grad, block.norm1.weight.grad)]
        out[f"tp_block_{name}_grad"] = _grad_diffs(pairs)
        out[f"tp_block_{name}_all_reduces"] = (fwd.calls["all_reduce"], bwd.calls["all_reduce"])


def check_dtensor(out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(11)
    ref = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    theirs = copy.deepcopy(ref)
    mine = nn.Sequential(ColumnParallelLinear.from_linear(ref[0]), nn.GELU(), RowParallelLinear.from_linear(ref[2]))
    mesh = init_device_mesh(comm.device().type, (comm.world_size(),))
    parallelize_module(theirs, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    x = torch.randn(4, 16)
    ys = [m(x) for m in (ref, mine, theirs)]
    for y in ys:
        y.square().sum().backward()
    out["dtensor_out"] = max(_diff(ys[1], ys[2]), _diff(ys[0], ys[2]))
    out["dtensor_grad"] = _grad_diffs([
        (mine[0].weight.grad, theirs[0].weight.grad.to_local()),
        (mine[2].weight.grad, theirs[2].weight.grad.to_local()),
        (ref[0].weight.grad, theirs[0].weight.grad.full_tensor())])


def check_tensor_parallel(rank: int, world_size: int) -> dict:
    """Column/row/vocab-parallel layers, a TP block (GPT and LLaMA-style), DTensor cross-check."""
    out: dict = {}
    check_tp_layers(out)
    check_tp_block(out)
    check_dtensor(out)
    return out


def check_two_ranks(rank: int, world_size: int) -> dict:
    """Everything the tests check on 2 ranks, in one launch."""
    return {**check_collectives_dp_zero(rank, world_size), **check_tensor_parallel(rank, world_size)}


# -- 4 ranks: pipeline ---------------------------------------------------------------------------


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _pipeline_model():
    torch.manual_seed(5)
    cfg = ModelConfig(vocab_size=32, context_length=8, d_model=16, n_layers=4, n_heads=2, tie_embeddings=False)
    return GPT(cfg)


def check_pipeline(rank: int, world_size: int, n_micro: int = 8) -> dict:
    """A GPT cut into ``world_size`` stages, ``n_micro`` micro-batches: GPipe and 1F1B from scratch
    and torch.distributed.pipelining's schedules, all against one process (mean of micro-batch
    losses); plus a 4-rank ring all-reduce (2 (N-1)/N = 1.5 of the data per rank)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    out: dict = {}
    check_collectives(out)
    g = torch.Generator().manual_seed(9)
    idx = torch.randint(0, 32, (2 * n_micro, 8), generator=g)
    tgt = torch.randint(0, 32, (2 * n_micro, 8), generator=g)
    # one process: mean over micro-batch losses
    ref = _pipeline_model()
    loss = sum(_lm_loss(ref(x), y) for x, y in zip(idx.chunk(n_micro), tgt.chunk(n_micro))) / n_micro
    loss.backward()
    ref_stage = gpt_stages(ref, world_size)[rank]
    ref_grads = {k: p.grad for k, p in ref_stage.named_parameters()}
    out["ref_loss"] = float(loss.detach())
    last = rank == world_size - 1
    for schedule in ("gpipe", "1f1b"):
        stage = gpt_stages(_pipeline_model(), world_size)[rank]
        res = pipeline_step(stage, list(idx.chunk(n_micro)), list(tgt.chunk(n_micro)), _lm_loss, schedule=schedule)
        out[f"{schedule}_grad"] = _maxdiff({k: p.grad for k, p in stage.named_parameters()}, ref_grads)
        out[f"{schedule}_loss"] = res["loss"] if last else None
        out[f"{schedule}_peak"] = res["peak_activations"]
    for name, cls in (("torch_gpipe", ScheduleGPipe), ("torch_1f1b", Schedule1F1B)):
        stage = gpt_stages(_pipeline_model(), world_size)[rank]
        sched = cls(PipelineStage(stage, rank, world_size, comm.device()), n_microbatches=n_micro, loss_fn=_lm_loss)
        losses: list = []
        if rank == 0:
            sched.step(idx)
        elif last:
            sched.step(target=tgt, losses=losses)
        else:
            sched.step()
        out[f"{name}_grad"] = _maxdiff({k: p.grad for k, p in stage.named_parameters()}, ref_grads)
        out[f"{name}_loss"] = float(sum(losses) / n_micro) if last else None
    return out


# -- 8 ranks: 3D ---------------------------------------------------------------------------------


def check_3d(rank: int, world_size: int, steps: int = 3, n_micro: int = 2) -> dict:
    """A tiny LLaMA (RoPE, tied embeddings) on a 2 x 2 x 2 (dp, pp, tp) grid, made parallel by
    :func:`~lmlab.parallel.parallelize.parallelize`: per-step losses against one process."""
    grid = RankGrid(dp=2, pp=2, tp=2, world_size=world_size)
    groups = grid.make_groups()
    me = grid.coords(rank)
    torch.manual_seed(21)  # the capstone's LLaMA, small: RoPE, GQA, SwiGLU, RMSNorm, tied embeddings
    cfg = llama_config("tiny", vocab_size=32, context_length=8, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=32)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(4)
    data = [(torch.randint(0, 32, (8, 8), generator=g), torch.randint(0, 32, (8, 8), generator=g)) for _ in range(steps)]
    # one process: full batch, loss = mean over the dp shards' micro-batches
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    ref_losses = []
    for x, y in data:
        loss = sum(_lm_loss(ref(a), b) for a, b in zip(x.chunk(2 * n_micro), y.chunk(2 * n_micro))) / (2 * n_micro)
        loss.backward()
        opt.step()
        opt.zero_grad()
        ref_losses.append(float(loss.detach()))
    stage = parallelize(copy.deepcopy(model), grid, rank=rank, tp_group=groups["tp"])
    opt = torch.optim.AdamW(stage.parameters(), **ADAMW)
    losses = []
    for x, y in data:
        xs, ys = x.chunk(grid.dp)[me["dp"]].chunk(n_micro), y.chunk(grid.dp)[me["dp"]].chunk(n_micro)
        loss = train_step_3d(stage, opt, list(xs), list(ys), _lm_loss,
                             stage_ranks=grid.group_of(rank, "pp"), dp_group=groups["dp"])
        if loss is not None:  # last stage: average the data shards' losses
            t = torch.tensor([loss])
            comm.all_reduce(t, group=groups["dp"])
            losses.append(float(t) / grid.dp)
    return {"coords": me, "losses": losses or None, "ref_losses": ref_losses, "table": grid.table()}
