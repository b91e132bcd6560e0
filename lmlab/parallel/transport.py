"""Who talks to whom: the one interface lesson 12's algorithms are written against (``lessons/12_parallelism``).

The ring all-reduce (:mod:`.collectives`), data parallel's gradient average (:mod:`.data_parallel`),
a ZeRO-1 step (:mod:`.zero`) and Megatron's column/row-parallel layers (:mod:`.tensor_parallel`) are
each written **once**, as the code one rank runs ("SPMD"). What they need from the world is a
:class:`Ranks` object: ``rank``, ``size``, a point-to-point ``sendrecv`` with the neighbours, and three
collectives (``all_reduce``, ``reduce_scatter``, ``all_gather``, sums over ranks). Two kinds:

- :class:`DistRanks`: real processes (``torch.distributed``, gloo or nccl), every call through
  :mod:`.comm` (so it is counted);
- :class:`ThreadRanks`: N ranks in *this* process, one thread each, messages passed through queues;
  its collectives are the ring of :mod:`.collectives` built on ``sendrecv``, so in-process runs use
  the ring, too. :func:`run_in_process` starts the threads: ``run_in_process(fn, inputs)`` calls
  ``fn(ranks_r, inputs[r])`` on every rank and returns the results in rank order.

``ring_all_reduce``, ``average_gradients``, ``zero1_adamw_step``, :class:`~lmlab.parallel.zero.ZeroOptimizer`
and the tensor-parallel layers accept a :class:`Ranks` where they take ``group`` (:func:`as_ranks`), so the
lesson runs the same function on a list of tensors and on gloo processes. ``BucketedDataParallel``
(asynchronous all-reduces), ``broadcast_parameters`` and the pipeline still need ``torch.distributed``.
"""

from __future__ import annotations

import queue
import threading

import torch

from lmlab.parallel import comm

__all__ = ["Ranks", "DistRanks", "ThreadRanks", "as_ranks", "run_in_process"]


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
        handle = comm.isend(send.contiguous().clone(), to_global[dst])  # non-blocking: everyone sends at once
        comm.recv(recv_buf, to_global[src])
        handle.wait()
        return recv_buf

    def all_reduce(self, t):
        comm.all_reduce(t, group=self.group)
        return t

    def reduce_scatter(self, t):
        return comm.reduce_scatter(t, group=self.group)

    def all_gather(self, t):
        return comm.all_gather(t, group=self.group)


class _World:
    """What the threads share: one queue per (sender, receiver) pair."""

    def __init__(self, size: int, timeout: float):
        self.size, self.timeout = size, timeout
        self.queues = {(a, b): queue.Queue() for a in range(size) for b in range(size)}
        self.failed = threading.Event()  # set when a rank raised: the others stop waiting

    def get(self, src: int, dst: int) -> torch.Tensor:
        for _ in range(int(self.timeout / 0.05) + 1):
            if self.failed.is_set():
                raise RuntimeError(f"rank {dst}: stopped, another rank failed")
            try:
                return self.queues[(src, dst)].get(timeout=0.05)
            except queue.Empty:
                pass
        raise RuntimeError(f"rank {dst}: no message from rank {src} after {self.timeout} s "
                           "(the ranks called different collectives?)")


class ThreadRanks(Ranks):
    """Rank ``rank`` of ``size`` in-process ranks; ``sent`` counts the elements it sent."""

    def __init__(self, world: _World, rank: int):
        self.world, self.rank, self.size, self.sent = world, rank, world.size, 0

    def sendrecv(self, send, dst, recv_buf, src):
        self.world.queues[(self.rank, dst)].put(send.detach().clone())  # a copy: the sender may change its own
        self.sent += send.numel()
        return recv_buf.copy_(self.world.get(src, self.rank))

    # the collectives are the ring of lmlab.parallel.collectives, over sendrecv
    def all_reduce(self, t):
        from lmlab.parallel.collectives import ring_all_reduce

        return ring_all_reduce(t, self)

    def reduce_scatter(self, t):
        from lmlab.parallel.collectives import ring_reduce_scatter

        if t.shape[0] % self.size:
            raise ValueError(f"reduce_scatter: dim 0 ({t.shape[0]}) must be divisible by the group size ({self.size})")
        chunks = t.reshape(self.size, -1)
        rolled = torch.cat([chunks[-1:], chunks[:-1]]).reshape(-1)  # the ring finishes chunk r + 1 on rank r
        ring_reduce_scatter(rolled, self)
        return rolled.view(self.size, -1)[(self.rank + 1) % self.size].view(t.shape[0] // self.size, *t.shape[1:]).clone()

    def all_gather(self, t):
        from lmlab.parallel.collectives import ring_all_gather

        out = t.new_zeros(self.size, t.numel())
        out[(self.rank + 1) % self.size] = t.reshape(-1)  # rolled by one chunk, as the ring expects
        ring_all_gather(out.view(-1), self)
        return torch.cat([out[1:], out[:1]]).view(self.size * t.shape[0], *t.shape[1:])


def as_ranks(group=None) -> Ranks:
    """A :class:`Ranks` as it is, else the ``torch.distributed`` group ``group`` (``None``: all ranks)."""
    return group if isinstance(group, Ranks) else DistRanks(group)


def run_in_process(fn, inputs: list, timeout: float = 30.0) -> list:
    """Run ``fn(ranks, inputs[r])`` on ``len(inputs)`` ranks, one thread each, in this process; return the
    results in rank order. The first exception in any rank is re-raised here, naming the rank."""
    if not callable(fn):
        raise ValueError(f"run_in_process: fn must be callable, got {fn!r}")
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError(f"run_in_process: inputs must be a list with one entry per rank, got {inputs!r:.80}")
    world = _World(len(inputs), timeout)
    results, errors = [None] * len(inputs), {}

    def body(r):
        try:
            results[r] = fn(ThreadRanks(world, r), inputs[r])
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors[r] = e
            world.failed.set()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:  # the first rank that failed by itself (not the ones stopped because of it)
        r = min(errors, key=lambda k: "another rank failed" in str(errors[k]))
        errors[r].add_note(f"(raised on in-process rank {r} of {len(inputs)})")
        raise errors[r]
    return results
