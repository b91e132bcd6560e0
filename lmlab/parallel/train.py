"""Pretrain the course's LLaMA with any mix of data, ZeRO, tensor and pipeline parallelism (lesson 12,
``lessons/12_parallelism``): one entry point for a laptop and a cluster.

On CPUs (gloo), 2 processes::

    torchrun --standalone --nproc_per_node=2 -m lmlab.parallel.train --dp 2 --zero 1 --steps 5

On GPUs (nccl, one GPU per process, ``cuda:LOCAL_RANK``), e.g. one node of 8 GPUs in a 2 x 2 x 2 layout,
or two nodes (run the same command on each, ``--node_rank`` 0 and 1)::

    torchrun --standalone --nproc_per_node=8 -m lmlab.parallel.train --dp 2 --pp 2 --tp 2 --device cuda
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        -m lmlab.parallel.train --dp 4 --pp 2 --tp 2 --device cuda

(``torchrun --master_port=0`` hangs: use ``--standalone`` or a fixed free port.) Without torchrun,
``python -m lmlab.parallel.train`` is a world of one process: the reference every layout must reproduce.

What runs, on every rank (the same code under torchrun and under :func:`lmlab.parallel.launch`, which
calls :func:`train_worker`):

1. the model: ``llama_config("tiny", ...)`` (the capstone's: RoPE, GQA, SwiGLU, RMSNorm, tied embeddings),
   built from the same seed on every rank, moved to this rank's device;
2. :func:`lmlab.parallel.parallelize.parallelize` applies tensor and pipeline parallelism from outside;
3. :class:`lmlab.parallel.zero.ZeroOptimizer` over the ``dp`` group is data parallelism (stage 0) or ZeRO 1-3;
4. each step: this data shard's micro-batches through :func:`lmlab.parallel.pipeline.pipeline_step`
   (1F1B; one stage when ``pp = 1``), the tied embedding's two gradients added across the first and last
   stage, then the ZeRO step. The loss printed is the global batch's mean, the number one process gets.

Bad layouts raise a ``ValueError`` naming the parameter; a rank that fails raises :class:`WorkerError`
naming it; a rank that hangs makes the others' collectives time out after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmlab.argcheck import check_choice, check_int, check_number
from lmlab.model import GPT
from lmlab.model.llama import llama_config
from lmlab.parallel import comm
from lmlab.parallel.grid import RankGrid
from lmlab.parallel.launch import WorkerError, default_backend, init_from_env, local_rank
from lmlab.parallel.parallelize import ModelStage, parallelize
from lmlab.parallel.pipeline import pipeline_step
from lmlab.parallel.zero import ZERO_STAGES, ZeroOptimizer

__all__ = ["DEFAULTS", "check_layout", "make_batches", "train_worker", "main", "parse_args"]

# the CI's small LLaMA: 2 layers, 4 heads / 2 KV heads, SwiGLU, RoPE, tied embeddings
DEFAULTS = dict(dp=1, tp=1, pp=1, zero=0, steps=5, device="cpu", micro=None, batch=8, seq=16, vocab=64, d_model=32,
                n_layers=2, lr=1e-2, weight_decay=0.1, seed=0, timeout=60.0, out=None, fail_rank=None, hang_rank=None)


def check_layout(args: dict, world_size: int) -> dict:
    """Validate a layout and fill its defaults; ``ValueError`` naming the parameter that is wrong."""
    unknown = set(args) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"train: unknown option(s) {sorted(unknown)}; options: {sorted(DEFAULTS)}")
    a = {**DEFAULTS, **args}
    for name in ("dp", "tp", "pp", "steps", "batch", "seq", "vocab", "d_model", "n_layers"):
        check_int(a[name], name, "train:")
    check_choice(a["zero"], "zero", ZERO_STAGES, "train:")
    check_choice(a["device"], "device", ("cpu", "cuda"), "train:")
    check_number(a["timeout"], "timeout", "train:", low=0.0, low_inclusive=False, note="seconds")
    if a["dp"] * a["tp"] * a["pp"] != world_size:
        raise ValueError(f"dp x tp x pp must equal the number of processes (world size {world_size}), got "
                         f"dp={a['dp']} x tp={a['tp']} x pp={a['pp']} = {a['dp'] * a['tp'] * a['pp']}")
    if a["pp"] > a["n_layers"]:
        raise ValueError(f"pp ({a['pp']}) must be at most n_layers ({a['n_layers']}): a stage needs a block")
    a["micro"] = (2 if a["pp"] > 1 else 1) if a["micro"] is None else a["micro"]
    check_int(a["micro"], "micro", "train:")
    if a["batch"] % (a["dp"] * a["micro"]):
        raise ValueError(f"batch ({a['batch']}) must be divisible by dp x micro = {a['dp']} x {a['micro']}")
    if a["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for, but torch sees no GPU; use --device cpu")
    return a


def model_config(a: dict):
    """The capstone's LLaMA (``llama_config("tiny")``) at the layout's small size."""
    return llama_config("tiny", vocab_size=a["vocab"], context_length=a["seq"], d_model=a["d_model"], n_layers=a["n_layers"])


def make_batches(a: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches ``(x, y)`` of ``(batch, seq)`` token ids, the same on every rank: a noisy
    repeating pattern, so the loss goes down (no download)."""
    g = torch.Generator().manual_seed(a["seed"] + 1)
    out = []
    for _ in range(a["steps"]):
        start = torch.randint(0, a["vocab"], (a["batch"], 1), generator=g)
        ids = (start + 3 * torch.arange(a["seq"] + 1)) % a["vocab"]  # (B, T + 1)
        noise = torch.rand(ids.shape, generator=g) < 0.1
        ids = torch.where(noise, torch.randint(0, a["vocab"], ids.shape, generator=g), ids)
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def _optimizers(stage: ModelStage, zero: int, dp_group, a: dict) -> list[ZeroOptimizer]:
    """ZeRO over the dp group. Units: each block, then the other modules with weights. A tied embedding
    is used at both ends of the forward pass (and lives on two stages under pp), so it is kept whole
    during the step: its unit runs at stage ``min(zero, 2)``."""
    kw = dict(lr=a["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=a["weight_decay"], group=dp_group)
    opts = [ZeroOptimizer(stage.blocks, zero, **kw)]
    tied = stage.tied_weight if stage.n_stages > 1 else (stage.tok_emb.weight if stage.config.tie_embeddings else None)
    others, tied_units = [], []
    for name, child in stage.named_children():
        if name == "blocks" or not any(True for _ in child.parameters()):
            continue
        if tied is not None and any(p is tied for p in child.parameters()):
            if not tied_units:  # one unit holds it (tok_emb and lm_head share it on a single stage)
                tied_units.append(name)
            continue
        others.append(name)
    if others:
        opts.append(ZeroOptimizer(stage, zero, units=others, **kw))
    if tied_units:
        # kept whole until the step: under pp its gradient is added across stages after backward
        opts.append(ZeroOptimizer(stage, min(zero, 2), units=tied_units, overlap=False, **kw))
    return opts


def train_worker(rank: int, world_size: int, args: dict) -> dict:
    """Train on this rank (the process group is already up); returns ``{"losses": [...], ...}`` on every rank."""
    a = check_layout(args, world_size)
    device = torch.device("cuda", local_rank()) if a["device"] == "cuda" else torch.device("cpu")
    grid = RankGrid(dp=a["dp"], pp=a["pp"], tp=a["tp"], world_size=world_size)
    groups = grid.make_groups()
    me = grid.coords(rank)
    torch.manual_seed(a["seed"])
    model = GPT(model_config(a)).to(device)  # the same weights on every rank
    stage = parallelize(model, grid, rank=rank, tp_group=groups["tp"])
    opts = _optimizers(stage, a["zero"], groups["dp"], a)
    stage_ranks = grid.group_of(rank, "pp")
    losses, t0 = [], time.perf_counter()
    for step, (x, y) in enumerate(make_batches(a)):
        if rank == a["fail_rank"] and step == 1:
            raise RuntimeError(f"deliberate failure on rank {rank} (--fail-rank)")
        if rank == a["hang_rank"] and step == 1:
            time.sleep(10 * a["timeout"])  # the others' next collective times out
        xs = x.chunk(grid.dp)[me["dp"]].to(device).chunk(a["micro"])  # this data shard's micro-batches
        ys = y.chunk(grid.dp)[me["dp"]].to(device).chunk(a["micro"])
        res = pipeline_step(stage, list(xs), list(ys), _lm_loss, schedule="1f1b", stage_ranks=stage_ranks)
        stage.sync_tied_grads()
        for opt in opts:
            opt.step()
            opt.zero_grad()
        mine = res["loss"] if res["loss"] is not None and me["tp"] == 0 else 0.0  # one copy per data shard
        total = torch.tensor([mine], dtype=torch.float64, device=comm.device())
        comm.all_reduce(total)
        losses.append(float(total) / grid.dp)
        if rank == 0:
            print(f"step {step}: loss {losses[-1]:.6f}", flush=True)
    return {"losses": losses, "layout": {k: a[k] for k in ("dp", "tp", "pp", "zero", "micro", "device")},
            "world_size": world_size, "seconds": time.perf_counter() - t0,
            "params_here": sum(p.numel() for p in stage.parameters())}


def parse_args(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lmlab.parallel.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("dp", "tp", "pp", "steps", "batch", "seq", "vocab", "n_layers", "seed", "micro"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=DEFAULTS[name])
    p.add_argument("--d-model", dest="d_model", type=int, default=DEFAULTS["d_model"])
    p.add_argument("--zero", type=int, default=0, help="ZeRO stage over the dp group: 0 (plain data parallel), 1, 2, 3")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, cuda:LOCAL_RANK)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--timeout", type=float, default=DEFAULTS["timeout"], help="seconds a collective may wait")
    p.add_argument("--out", default=None, help="rank 0 writes its result (losses, layout) here as JSON")
    p.add_argument("--fail-rank", dest="fail_rank", type=int, default=None, help="(testing) this rank raises at step 1")
    p.add_argument("--hang-rank", dest="hang_rank", type=int, default=None, help="(testing) this rank hangs at step 1")
    return vars(p.parse_args(argv))


def main(argv=None) -> dict:
    """The torchrun entry point: join the process group (``env://``), train, leave."""
    args = parse_args(argv)
    check_layout(args, int(os.environ.get("WORLD_SIZE", "1")))  # before any process group: a bad layout fails fast
    init_from_env(default_backend(args["device"]), timeout_s=args["timeout"])
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        out = train_worker(rank, world, args)
        if rank == 0 and args["out"] is not None:
            with open(args["out"], "w") as f:
                json.dump(out, f)
    except ValueError:
        raise  # a bad layout: the message names the parameter
    except Exception as err:  # noqa: BLE001 - re-raised naming this rank
        raise WorkerError(rank, traceback.format_exc()) from err
    finally:
        dist.destroy_process_group()
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
