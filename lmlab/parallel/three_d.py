"""3D parallelism: data x pipeline x tensor parallel together (lesson 12, ``lessons/12_parallelism``).

A :class:`~lmlab.parallel.grid.RankGrid` gives every rank coordinates ``(d, p, t)`` and three
groups. Rank ``(d, p, t)`` holds tensor-parallel slice ``t`` of pipeline stage ``p`` and works on
data shard ``d``:

1. the pipeline (:func:`~lmlab.parallel.pipeline.pipeline_step`) passes activations along the
   ``pp`` group, between ranks with the same ``t`` (each sends its replicated activation);
2. inside each stage, :class:`~lmlab.parallel.tensor_parallel.TPBlock` all-reduces over ``tp``;
3. after backward, gradients are averaged over the ``dp`` group;
4. each rank steps AdamW on the slices it holds (AdamW is element-wise, so that equals the
   full model's step). BLOOM did this with (dp, pp, tp) = (8, 12, 4) on 384 GPUs.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from lmlab.argcheck import check_divides, check_int
from lmlab.parallel.data_parallel import average_gradients
from lmlab.parallel.pipeline import pipeline_step
from lmlab.parallel.tensor_parallel import ColumnParallelLinear, TPBlock, VocabParallelEmbedding

__all__ = ["build_stage", "train_step_3d"]


def build_stage(model, stage: int, n_stages: int, tp_group=None) -> nn.Sequential:
    """This rank's part of a :class:`lmlab.model.gpt.GPT` (pre-LN, untied, no learned positions):
    stage ``stage`` of ``n_stages``, its layers split over ``tp_group``."""
    cfg = model.config
    if cfg.tie_embeddings or cfg.position != "none" or cfg.norm_position != "pre":
        raise ValueError("build_stage: the model needs tie_embeddings=False, position='none', norm_position='pre' "
                         f"(LLaMA-style), got {cfg.tie_embeddings}, {cfg.position!r}, {cfg.norm_position!r}")
    L = len(model.blocks)
    check_int(n_stages, "n_stages", "build_stage:", maximum=L)
    check_divides(n_stages, L, "n_stages", "n_layers", "build_stage:")
    per = L // n_stages
    layers: list[nn.Module] = []
    if stage == 0:
        layers.append(VocabParallelEmbedding.from_embedding(model.tok_emb, group=tp_group))
    layers += [TPBlock(b, group=tp_group) for b in model.blocks[stage * per: (stage + 1) * per]]
    if stage == n_stages - 1:
        layers += [copy.deepcopy(model.final_norm),
                   ColumnParallelLinear.from_linear(model.lm_head, gather_output=True, group=tp_group)]
    return nn.Sequential(*layers)


def train_step_3d(stage_module: nn.Module, optimizer, micro_inputs, micro_targets, loss_fn, *,
                  stage_ranks: list[int], dp_group=None, schedule: str = "1f1b") -> float | None:
    """One optimizer step: pipeline forward/backward, gradient average over ``dp_group``, AdamW.
    Returns this data shard's mean loss on the last stage, else None."""
    res = pipeline_step(stage_module, micro_inputs, micro_targets, loss_fn, schedule=schedule, stage_ranks=stage_ranks)
    average_gradients(stage_module, group=dp_group)
    optimizer.step()
    optimizer.zero_grad()
    return res["loss"]
