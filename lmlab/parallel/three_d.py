"""3D parallelism: data x pipeline x tensor parallel together (lesson 12, ``lessons/12_parallelism``).

A :class:`~lmlab.parallel.grid.RankGrid` gives every rank coordinates ``(d, p, t)`` and three
groups. Rank ``(d, p, t)`` holds tensor-parallel slice ``t`` of pipeline stage ``p`` and works on
data shard ``d``:

1. the pipeline (:func:`~lmlab.parallel.pipeline.pipeline_step`) passes activations along the
   ``pp`` group, between ranks with the same ``t`` (each sends its replicated activation);
2. inside each stage, the blocks :func:`~lmlab.parallel.parallelize.parallelize` split all-reduce over ``tp``;
3. after backward, gradients are averaged over the ``dp`` group;
4. each rank steps AdamW on the slices it holds (AdamW is element-wise, so that equals the
   full model's step). BLOOM did this with (dp, pp, tp) = (8, 12, 4) on 384 GPUs.
"""

from __future__ import annotations

from lmlab.parallel.data_parallel import average_gradients
from lmlab.parallel.pipeline import pipeline_step

__all__ = ["train_step_3d"]


def train_step_3d(stage_module, optimizer, micro_inputs, micro_targets, loss_fn, *,
                  stage_ranks: list[int], dp_group=None, schedule: str = "1f1b") -> float | None:
    """One optimizer step: pipeline forward/backward, gradient average over ``dp_group``, AdamW.
    Returns this data shard's mean loss on the last stage, else None."""
    res = pipeline_step(stage_module, micro_inputs, micro_targets, loss_fn, schedule=schedule, stage_ranks=stage_ranks)
    stage_module.sync_tied_grads()  # a tied embedding: first + last stage gradients
    average_gradients(stage_module, group=dp_group)
    optimizer.step()
    optimizer.zero_grad()
    return res["loss"]
