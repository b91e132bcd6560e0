"""Ranks that are threads of this process (lesson 12, ``lessons/12_parallelism``).

:class:`ThreadRanks` implements :class:`lmlab.parallel.transport.Ranks` for N ranks inside one process,
one thread each: ``sendrecv`` passes a copy of the tensor through a queue, and the collectives are the
ring of :mod:`lmlab.parallel.collectives` built on that ``sendrecv``, so in-process runs use the ring,
too. :func:`run_in_process` starts the threads: ``run_in_process(fn, inputs)`` calls ``fn(ranks_r, inputs[r])``
on every rank and returns the results in rank order; :func:`simulated_ring_all_reduce` runs the ring
that way and records every step.

This module sits above the ring (it runs it), the ring above the interface (:mod:`.transport`): the ring
is written against ``Ranks`` only and never depends on a particular transport.
"""

from __future__ import annotations

import queue
import threading

import torch

from lmlab.argcheck import check_tensor
from lmlab.parallel.collectives import ring_all_gather, ring_all_reduce, ring_reduce_scatter
from lmlab.parallel.transport import Ranks

__all__ = ["ThreadRanks", "run_in_process", "simulated_ring_all_reduce"]


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
        return ring_all_reduce(t, self)

    def reduce_scatter(self, t):
        if t.shape[0] % self.size:
            raise ValueError(f"reduce_scatter: dim 0 ({t.shape[0]}) must be divisible by the group size ({self.size})")
        chunks = t.reshape(self.size, -1)
        rolled = torch.cat([chunks[-1:], chunks[:-1]]).reshape(-1)  # the ring finishes chunk r + 1 on rank r
        ring_reduce_scatter(rolled, self)
        return rolled.view(self.size, -1)[(self.rank + 1) % self.size].view(t.shape[0] // self.size, *t.shape[1:]).clone()

    def all_gather(self, t):
        out = t.new_zeros(self.size, t.numel())
        out[(self.rank + 1) % self.size] = t.reshape(-1)  # rolled by one chunk, as the ring expects
        ring_all_gather(out.view(-1), self)
        return torch.cat([out[1:], out[:1]]).view(self.size * t.shape[0], *t.shape[1:])


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


def simulated_ring_all_reduce(tensors: list) -> list:
    """The same ring in one process: ``tensors[r]`` is rank ``r``'s 1-D vector (numel divisible by N).

    Each rank is a thread running :func:`ring_all_reduce`, the function the gloo processes run; every
    step all ranks send at once (each sends what it held *before* the step). Returns the
    history: after each of the ``2 (N - 1)`` steps, a copy of every rank's vector; the last entry
    is the all-reduce (every rank holds the sum). The inputs are not modified.
    Graded reference of ``exercises/12_parallelism`` (``12.ring_all_reduce_sim``).
    """
    if not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
        raise ValueError(f"simulated_ring_all_reduce: tensors must be a list of >= 2 tensors (one per rank), got {tensors!r:.80}")
    n = len(tensors)
    for r, t in enumerate(tensors):
        check_tensor(t, f"tensors[{r}]", "simulated_ring_all_reduce", dim=1, shape=(tensors[0].numel(),))
    if tensors[0].numel() % n:
        raise ValueError(f"simulated_ring_all_reduce: numel must be divisible by N = {n}, got {tensors[0].numel()}")

    def one_rank(ranks, t):  # what every rank runs: the ring above, recording its vector after each step
        trace: list = []
        ring_all_reduce(t.clone(), ranks, trace)
        return trace

    traces = run_in_process(one_rank, list(tensors))  # traces[r][s]
    return [[traces[r][s] for r in range(n)] for s in range(2 * (n - 1))]
