"""Who talks to whom: the one interface lesson 12's algorithms are written against (``lessons/12_parallelism``).

The ring all-reduce (:mod:`.collectives`), data parallel's gradient average (:mod:`.data_parallel`),
a ZeRO-1 step (:mod:`.zero`) and Megatron's column/row-parallel layers (:mod:`.tensor_parallel`) are
each written **once**, as the code one rank runs ("SPMD"). What they need from the world is a
:class:`Ranks` object: ``rank``, ``size``, a point-to-point ``sendrecv`` with the neighbours, and three
collectives (``all_reduce``, ``reduce_scatter``, ``all_gather``, sums over ranks). Two kinds:

- :class:`DistRanks` (here): real processes (``torch.distributed``, gloo or nccl), every call through
  :mod:`.comm` (so it is counted);
- :class:`~lmlab.parallel.in_process.ThreadRanks` (:mod:`.in_process`): N ranks in *this* process, one
  thread each, messages passed through queues; its collectives are the ring of :mod:`.collectives` built
  on ``sendrecv``. The layers: this interface, then the ring written against it, then the in-process
  ranks that run the ring: so the ring never depends on a particular transport.

``ring_all_reduce``, ``average_gradients``, ``zero1_adamw_step``, :class:`~lmlab.parallel.zero.ZeroOptimizer`
and the tensor-parallel layers accept a :class:`Ranks` where they take ``group`` (:func:`as_ranks`), so the
lesson runs the same function on a list of tensors and on gloo processes. ``BucketedDataParallel``
(asynchronous all-reduces), ``broadcast_parameters`` and the pipeline still need ``torch.distributed``.
"""

from __future__ import annotations

import torch

from lmlab.parallel import comm

__all__ = ["Ranks", "DistRanks", "as_ranks"]


class Ranks:
    """This rank's view of its group: ``rank`` in ``[0, size)`` and the operations the algorithms use."""

    rank: int
    size: int

    def sendrecv(self, send: torch.Tensor, dst: int, recv_buf: torch.Tensor, src: int) -> torch.Tensor:
        """Send ``send`` to group rank ``dst`` while receiving into ``recv_buf`` from ``src``; returns ``recv_buf``."""
        raise NotImplementedError

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """In place: every rank ends with the sum over ranks."""
        raise NotImplementedError

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of ``t`` ``(N n, ...)``; returns this rank's chunk ``rank`` ``(n, ...)``."""
        raise NotImplementedError

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` ``(n, ...)`` concatenated in rank order: ``(N n, ...)``."""
        raise NotImplementedError


class DistRanks(Ranks):
    """The ranks of a ``torch.distributed`` process group (``None``: all ranks), through :mod:`.comm`."""

    def __init__(self, group=None):
        self.group = group
        self.rank, self.size = comm.group_rank(group), comm.group_size(group)

    def sendrecv(self, send, dst, recv_buf, src):
        to_global = comm.group_ranks(self.group)  # group rank -> global rank
        # posted together (batch_isend_irecv): every rank sends and receives at once, on gloo and nccl alike
        return comm.sendrecv(send.contiguous().clone(), to_global[dst], recv_buf, to_global[src])

    def all_reduce(self, t):
        comm.all_reduce(t, group=self.group)
        return t

    def reduce_scatter(self, t):
        return comm.reduce_scatter(t, group=self.group)

    def all_gather(self, t):
        return comm.all_gather(t, group=self.group)


def as_ranks(group=None) -> Ranks:
    """A :class:`Ranks` as it is, else the ``torch.distributed`` group ``group`` (``None``: all ranks)."""
    return group if isinstance(group, Ranks) else DistRanks(group)
