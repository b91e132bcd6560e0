"""A ring all-reduce from point-to-point messages (lesson 12, ``lessons/12_parallelism``).

N ranks in a ring, each holding a vector cut into N chunks. Two phases of N - 1 steps each, in
every step rank r sends one chunk to rank r + 1 and receives one from rank r - 1:

1. reduce-scatter: the received chunk is *added* to the local one; after N - 1 steps rank r
   holds the full sum of chunk (r + 1) mod N;
2. all-gather: the received (finished) chunk *replaces* the local one; after N - 1 steps
   every rank holds every finished chunk.

Each rank sends 2 (N - 1) chunks of n / N elements: ``2 (N - 1) / N x n``, almost independent
of N, which is why the ring is bandwidth-optimal (:func:`lmlab.scaling.calculators.ring_all_reduce_volume`).

Written once, as the code one rank runs, against the interface :class:`lmlab.parallel.transport.Ranks`
only: the lesson runs these very functions on ranks that are threads of one process
(:mod:`lmlab.parallel.in_process`, whose ranks' collectives are this ring, and
:func:`~lmlab.parallel.in_process.simulated_ring_all_reduce`) and on gloo processes (``group=None`` or a
process group).
"""

from __future__ import annotations

import torch

from lmlab.parallel.transport import Ranks, as_ranks

__all__ = ["ring_all_reduce", "ring_reduce_scatter", "ring_all_gather", "ring_send_chunk", "ring_send_schedule"]


def _chunks(flat: torch.Tensor, n: int) -> list[torch.Tensor]:
    return list(flat.view(n, -1).unbind(0))  # n equal views into flat


def _padded(t: torch.Tensor, n: int) -> torch.Tensor:
    flat = t.reshape(-1)
    pad = (-flat.numel()) % n
    return torch.cat([flat, flat.new_zeros(pad)]) if pad else flat.clone()


def ring_send_chunk(rank: int, step: int, n_ranks: int) -> int:
    """The chunk ``rank`` sends to its right neighbour at ``step`` (``0 <= step < 2 (N - 1)``), lesson 12's
    exercise: reduce-scatter step ``s`` sends ``(rank - s) mod N``; all-gather step ``s' = s - (N - 1)``
    sends the finished chunk ``(rank + 1 - s') mod N``. The two ring functions below follow it."""
    if step < n_ranks - 1:
        return (rank - step) % n_ranks
    return (rank + 1 - (step - (n_ranks - 1))) % n_ranks


def ring_send_schedule(n_ranks: int) -> list[list[int]]:
    """``table[s][r] = ring_send_chunk(r, s, N)``: every rank's chunk at each of the ``2 (N - 1)`` steps."""
    return [[ring_send_chunk(r, s, n_ranks) for r in range(n_ranks)] for s in range(2 * (n_ranks - 1))]


def ring_reduce_scatter(flat: torch.Tensor, ranks: Ranks, trace: list | None = None) -> int:
    """In place on ``flat`` ``(n,)``, n divisible by N: afterwards chunk ``(r + 1) mod N`` holds the sum
    over ranks. Returns the index of that chunk. ``trace``: a copy of ``flat`` is appended after each step."""
    n, me = ranks.size, ranks.rank
    chunks = _chunks(flat, n)  # (N, n / N) views into flat
    buf = torch.empty_like(chunks[0])
    for s in range(n - 1):
        got = ranks.sendrecv(chunks[ring_send_chunk(me, s, n)], (me + 1) % n, buf, (me - 1) % n)  # right, left
        chunks[(me - s - 1) % n].add_(got)  # the left neighbour sent the chunk one step behind ours
        if trace is not None:
            trace.append(flat.clone())
    return (me + 1) % n


def ring_all_gather(flat: torch.Tensor, ranks: Ranks, trace: list | None = None) -> None:
    """In place: rank r's finished chunk ``(r + 1) mod N`` is copied around the ring to everyone."""
    n, me = ranks.size, ranks.rank
    chunks = _chunks(flat, n)
    buf = torch.empty_like(chunks[0])
    for s in range(n - 1):
        got = ranks.sendrecv(chunks[ring_send_chunk(me, n - 1 + s, n)], (me + 1) % n, buf, (me - 1) % n)
        chunks[(me - s) % n].copy_(got)
        if trace is not None:
            trace.append(flat.clone())


def ring_all_reduce(t: torch.Tensor, group=None, trace: list | None = None) -> torch.Tensor:
    """Sum ``t`` over the ranks of ``group``, in place, with send/recv only. Equals ``dist.all_reduce``
    (up to the order of the additions). Works for any numel (zero-padded to a multiple of N).
    ``group``: a process group (``None``: all ranks) or a :class:`~lmlab.parallel.transport.Ranks`."""
    ranks = as_ranks(group)
    if ranks.size == 1:
        return t
    flat = _padded(t, ranks.size)
    ring_reduce_scatter(flat, ranks, trace)
    ring_all_gather(flat, ranks, trace)
    t.copy_(flat[: t.numel()].view_as(t))
    return t
