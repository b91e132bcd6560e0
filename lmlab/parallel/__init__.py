"""Parallel training from scratch on ``torch.distributed`` (lesson 12, ``lessons/12_parallelism``).

- :mod:`.launch`: :func:`launch` spawns ranks in a notebook (gloo; nccl on ``cuda:LOCAL_RANK`` if asked) and
  :func:`~.launch.init_from_env` joins a torchrun world (``env://``).
- :mod:`.comm`: every collective behind one small module, with a traffic :func:`counting` context.
- :mod:`.transport`: :class:`~.transport.Ranks`, the interface the algorithms are written against, and
  gloo/nccl processes implementing it (:class:`~.transport.DistRanks`).
- :mod:`.grid`: :class:`RankGrid`, the (dp, pp, tp) layout of ranks and its process groups.
- :mod:`.collectives`: a ring all-reduce from send/recv (over any :class:`~.transport.Ranks`).
- :mod:`.in_process`: ranks that are threads of this process (:class:`~.in_process.ThreadRanks`, whose
  collectives are that ring) and :func:`~.in_process.run_in_process`, which runs one function on all of them.
- :mod:`.data_parallel`: naive and bucketed data parallel with gradient accumulation.
- :mod:`.zero`: :class:`ZeroOptimizer`, ZeRO stages 0-3 (stage 2 reduce-scatters buckets during backward).
- :mod:`.tensor_parallel`: Megatron column-/row-/vocab-parallel layers.
- :mod:`.parallelize`: :func:`~.parallelize.parallelize` applies tensor and pipeline parallelism from outside
  to the unchanged GPT (the capstone's LLaMA included).
- :mod:`.pipeline`: a schedule simulator (GPipe, 1F1B, PipeDream's staleness) and a pipeline over real ranks.
- :mod:`.three_d`: one 3D training step.
- :mod:`.train`: the torchrun entry point (``torchrun --nproc_per_node=N -m lmlab.parallel.train --dp --tp --pp --zero``).
- :mod:`.workers`: the functions the lesson and the tests launch.
"""

from lmlab.parallel.grid import DIMS, RankGrid
from lmlab.parallel.launch import WorkerError, launch

__all__ = ["launch", "WorkerError", "RankGrid", "DIMS"]
