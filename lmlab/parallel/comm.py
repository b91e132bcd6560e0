"""Every collective the chapter uses, in one place, with a counter (lesson 12, ``lessons/12_parallelism``).

The rest of :mod:`lmlab.parallel` calls these wrappers, never ``torch.distributed`` directly, so

- the names torch 2.13 deprecates (``all_gather_into_tensor``, ``reduce_scatter_tensor``) are
  handled here once, and
- every call is counted: :func:`counting` records, per operation, the number of calls and the
  elements *this rank sends* under the ring algorithm (all-reduce ``2 (N-1)/N n``, reduce-scatter
  and all-gather ``(N-1)/N n``, send ``n``). The lesson compares these counts with :mod:`lmlab.scaling.calculators`.

``group=None`` means all ranks. Sums are the default reduction; callers divide to average.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "Counter", "counting", "rank", "world_size", "group_size", "group_rank", "group_ranks", "device",
    "all_reduce", "all_gather", "reduce_scatter", "broadcast", "barrier",
    "send", "isend", "recv", "sendrecv", "send_tensor", "recv_tensor", "new_group",
]


class Counter:
    """Calls and elements sent by this rank, per operation (``"all_reduce"``, ``"send"``, ...)."""

    def __init__(self):
        self.calls: dict[str, int] = defaultdict(int)
        self.elements: dict[str, float] = defaultdict(float)

    def add(self, op: str, elements: float) -> None:
        self.calls[op] += 1
        self.elements[op] += elements

    @property
    def total_elements(self) -> float:
        return sum(self.elements.values())

    def as_dict(self) -> dict:
        return {"calls": dict(self.calls), "elements": dict(self.elements), "total_elements": self.total_elements}

    def __repr__(self) -> str:
        return f"Counter(calls={dict(self.calls)}, elements={dict(self.elements)})"


_COUNTERS: list[Counter] = []


@contextlib.contextmanager
def counting():
    """``with counting() as c: ...`` counts every wrapped call inside the block (blocks may nest)."""
    c = Counter()
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def _count(op: str, elements: float) -> None:
    for c in _COUNTERS:
        c.add(op, elements)


# -- who am I --------------------------------------------------------------------------------


def rank() -> int:
    return dist.get_rank()


def world_size() -> int:
    return dist.get_world_size()


def group_size(group=None) -> int:
    return dist.get_world_size(group)


def group_rank(group=None) -> int:
    return dist.get_rank(group)


def group_ranks(group=None) -> list[int]:
    """Global ranks of a group, in group order."""
    return list(range(world_size())) if group is None else dist.get_process_group_ranks(group)


def device() -> torch.device:
    """Where this rank's tensors live: ``cuda:<LOCAL_RANK>`` under nccl (the device the launcher selected),
    else the CPU. Every tensor a collective or send/recv touches must be there."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_GROUP_TIMEOUT: list = [None]  # the world's timeout (a timedelta), set by whoever initialised it


def set_group_timeout(seconds: float) -> None:
    """The timeout every group made by :func:`new_group` gets (torch's subgroups otherwise wait 30 min)."""
    _GROUP_TIMEOUT[0] = timedelta(seconds=seconds)


def new_group(ranks: list[int]):
    """Every rank must call this for every group, in the same order (a torch.distributed rule). The group
    times out like the world does (:func:`set_group_timeout`): a hung peer raises instead of hanging."""
    return dist.new_group(ranks, timeout=_GROUP_TIMEOUT[0])


# -- collectives -----------------------------------------------------------------------------

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(t: torch.Tensor, op: str = "sum", group=None, async_op: bool = False):
    """In place: every rank ends with the reduction (sum by default) over the group."""
    n = group_size(group)
    _count("all_reduce", 2 * (n - 1) / n * t.numel())
    return dist.all_reduce(t, op=_OPS[op], group=group, async_op=async_op)


def all_gather(t: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 (rank order): ``(n,...) -> (N n, ...)``."""
    n = group_size(group)
    out = torch.empty((n * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    _count("all_gather", (n - 1) * t.numel())  # out.numel() * (N-1)/N
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, t.contiguous(), group=group)
    return out


def reduce_scatter(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over ranks, then rank ``r`` keeps chunk ``r`` of dim 0: ``(N n, ...) -> (n, ...)``."""
    n = group_size(group)
    if t.shape[0] % n:
        raise ValueError(f"reduce_scatter: dim 0 ({t.shape[0]}) must be divisible by the group size ({n})")
    out = torch.empty((t.shape[0] // n, *t.shape[1:]), dtype=t.dtype, device=t.device)
    _count("reduce_scatter", (n - 1) / n * t.numel())
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, t.contiguous(), group=group)
    return out


def broadcast(t: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """In place: every rank gets global rank ``src``'s ``t``."""
    _count("broadcast", t.numel() if rank() == src else 0)
    dist.broadcast(t, src=src, group=group)
    return t


def barrier(group=None) -> None:
    dist.barrier(group=group)


# -- point to point --------------------------------------------------------------------------


def send(t: torch.Tensor, dst: int) -> None:
    _count("send", t.numel())
    dist.send(t.contiguous(), dst=dst)


def isend(t: torch.Tensor, dst: int):
    """Non-blocking send; keep ``t`` alive and ``.wait()`` the returned handle."""
    _count("send", t.numel())
    return dist.isend(t, dst=dst)


def recv(t: torch.Tensor, src: int) -> torch.Tensor:
    dist.recv(t, src=src)
    return t


def sendrecv(send_t: torch.Tensor, dst: int, recv_t: torch.Tensor, src: int) -> torch.Tensor:
    """Send ``send_t`` to global rank ``dst`` and receive into ``recv_t`` from ``src`` as one batch of
    point-to-point operations (``batch_isend_irecv``: NCCL needs both posted together, or a ring of
    blocking receives deadlocks). Returns ``recv_t``."""
    _count("send", send_t.numel())
    ops = [dist.P2POp(dist.isend, send_t.contiguous(), dst), dist.P2POp(dist.irecv, recv_t, src)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return recv_t


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]


def send_tensor(t: torch.Tensor, dst: int) -> list:
    """Send a tensor of any shape, header first (ndim, dtype, shape), non-blocking, from :func:`device`
    (where :func:`recv_tensor` receives it). Returns handles to wait on (the header is not counted: it is
    bookkeeping, not data)."""
    dev = device()
    t = t.to(dev).contiguous()
    header = torch.tensor([t.dim(), _DTYPES.index(t.dtype), *t.shape], dtype=torch.int64, device=dev)
    size = torch.tensor([header.numel()], dtype=torch.int64, device=dev)
    handles = [dist.isend(size, dst=dst), dist.isend(header, dst=dst), isend(t, dst)]
    return [(h, keep) for h, keep in zip(handles, (size, header, t))]


def recv_tensor(src: int) -> torch.Tensor:
    """Receive what :func:`send_tensor` sent, on :func:`device`."""
    dev = device()
    size = recv(torch.empty(1, dtype=torch.int64, device=dev), src)
    header = recv(torch.empty(int(size), dtype=torch.int64, device=dev), src).tolist()
    dtype, shape = _DTYPES[header[1]], header[2:2 + header[0]]  # header[0] = ndim
    return recv(torch.empty(shape, dtype=dtype, device=dev), src)
