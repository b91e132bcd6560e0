"""Start ``world_size`` processes that talk through torch.distributed (lesson 12, ``lessons/12_parallelism``).

:func:`launch` is the chapter's in-notebook ``torchrun`` for CPUs: it spawns one process per rank on
127.0.0.1 (gloo by default; ``backend="nccl"`` puts rank ``r`` on GPU ``LOCAL_RANK = r``, and then the
worker must put its tensors on :func:`lmlab.parallel.comm.device`), runs ``fn(rank, world_size, *args)``
in each, and returns every rank's result to the caller, in rank order. On a real cluster use
``torchrun`` and :mod:`lmlab.parallel.train` instead; :func:`init_from_env` is what such a process
calls first (``env://``, ``LOCAL_RANK``).

Safety rails, because a distributed bug usually looks like a hang:

- the process group has a ``timeout``: a collective that one rank never joins raises instead
  of waiting forever;
- the first exception in any rank stops *all* ranks and is re-raised in the parent as a
  :class:`WorkerError` naming the rank, with the worker's traceback;
- no process outlives :func:`launch` (they are terminated, then killed, then joined).

``fn`` must live in an importable module (``lmlab.parallel.workers``): spawned processes import
it by name, and a function defined in a notebook cell cannot be found that way.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from lmlab.argcheck import check_choice, check_int, check_number
from lmlab.parallel import comm

__all__ = ["launch", "WorkerError", "free_port", "default_backend", "local_rank", "init_from_env"]


class WorkerError(RuntimeError):
    """A rank raised (or died); ``rank`` names it and the message holds its traceback."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed:\n{message}")
        self.rank = rank


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend(device: str = "cpu") -> str:
    """The backend that moves tensors living on ``device``: ``nccl`` for ``"cuda"``, ``gloo`` for ``"cpu"``.
    (The backend follows where the tensors are, not how many GPUs the machine has.)"""
    check_choice(device, "device", ("cpu", "cuda"), "default_backend:")
    return "nccl" if device == "cuda" else "gloo"


def local_rank() -> int:
    """This process's index on its own machine: ``LOCAL_RANK`` (set by torchrun and by :func:`launch`), else 0.
    The GPU a rank uses is ``cuda:LOCAL_RANK``, never its global rank (rank 8 is GPU 0 of the second node)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(backend: str, timeout_s: float = 60.0) -> None:
    """Join the process group torchrun describes (``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``).
    Under nccl, first select ``cuda:LOCAL_RANK``. Without torchrun's variables: a world of one process."""
    check_choice(backend, "backend", ("gloo", "nccl"), "init_from_env:")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    comm.set_group_timeout(timeout_s)


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)  # tensors travel by value, not through shared memory
    return buf.getvalue()


def _worker(fn, rank: int, world_size: int, args: tuple, backend: str, port: int, timeout_s: float, results) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # one host: the local rank is the rank
    try:
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        comm.set_group_timeout(timeout_s)
        out = fn(rank, world_size, *args)
        results.put(("ok", rank, _dumps(out)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        results.put(("error", rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - the parent already has the real error
                pass


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def launch(fn, world_size: int, *args, backend: str | None = None, timeout: float = 60.0,
           join_timeout: float | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks; return their results in rank order.

    ``backend``: ``"gloo"`` (the default: the chapter's workers build CPU tensors) or ``"nccl"`` (one GPU per
    rank, ``cuda:LOCAL_RANK``; ``fn`` must then put its tensors on :func:`lmlab.parallel.comm.device`).
    ``timeout``: seconds a collective may wait before raising (the process group's timeout).
    ``join_timeout``: seconds for the whole run (default ``10 * timeout``); then every rank is killed.
    Results are passed back with ``torch.save``, so tensors, numbers and dicts of them are fine.
    """
    check_int(world_size, "world_size", "launch:")
    backend = "gloo" if backend is None else backend
    check_choice(backend, "backend", ("gloo", "nccl"), "launch:", note="or None: gloo")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"launch: backend 'nccl' needs a GPU per rank: world_size={world_size}, "
                         f"GPUs={torch.cuda.device_count()}")
    if not callable(fn) or getattr(fn, "__module__", "__main__") in ("__main__", None) or "<locals>" in getattr(fn, "__qualname__", ""):
        raise ValueError(f"launch: fn must be a function defined at the top level of an importable module "
                         f"(spawned processes import it by name), got {fn!r}")
    check_number(timeout, "timeout", "launch:", low=0.0, low_inclusive=False, note="seconds")
    join_timeout = 10 * timeout if join_timeout is None else join_timeout

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, args, backend, port, timeout, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    deadline = time.monotonic() + join_timeout
    try:
        while len(out) < world_size:
            try:
                status, r, payload = results.get(timeout=0.2)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and p.exitcode not in (0, None) and r not in out]
                if dead:
                    time.sleep(0.5)  # its message may still be in flight
                    if results.empty():
                        raise WorkerError(dead[0], f"process exited with code {procs[dead[0]].exitcode} without a result")
                if time.monotonic() > deadline:
                    missing = [r for r in range(world_size) if r not in out]
                    raise WorkerError(missing[0], f"no result after {join_timeout:.0f} s (ranks {missing} still running)")
                continue
            if status == "error":
                raise WorkerError(r, payload)
            out[r] = torch.load(io.BytesIO(payload), weights_only=False)
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _stop(procs)
        results.close()
        results.join_thread()
    return [out[r] for r in range(world_size)]
