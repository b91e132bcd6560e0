"""Parallel training from scratch on ``torch.distributed`` (lesson 12, ``lessons/12_parallelism``).

- :mod:`.launch`: :func:`launch` spawns ranks (gloo on CPU, nccl with a GPU per rank).
- :mod:`.comm`: every collective behind one small module, with a traffic :func:`counting` context.
- :mod:`.transport`: :class:`~.transport.Ranks`, the interface the algorithms are written against, and
  gloo/nccl processes implementing it (:class:`~.transport.DistRanks`).
- :mod:`.grid`: :class:`RankGrid`, the (dp, pp, tp) layout of ranks and its process groups.
- :mod:`.collectives`: a ring all-reduce from send/recv (over any :class:`~.transport.Ranks`).
- :mod:`.in_process`: ranks that are threads of this process (:class:`~.in_process.ThreadRanks`, whose
  collectives are that ring) and :func:`~.in_process.run_in_process`, which runs one function on all of them.
- :mod:`.data_parallel`: naive and bucketed data parallel with gradient accumulation.
- :mod:`.zero`: :class:`ZeroOptimizer`, ZeRO stages 0-3.
- :mod:`.tensor_parallel`: Megatron column-/row-/vocab-parallel layers and a TP transformer block.
- :mod:`.pipeline`: a schedule simulator (GPipe, 1F1B) and a pipeline over real ranks.
- :mod:`.workers`: the functions the lesson and the tests launch.
"""

from lmlab.parallel.grid import DIMS, RankGrid
from lmlab.parallel.launch import WorkerError, launch

__all__ = ["launch", "WorkerError", "RankGrid", "DIMS"]
