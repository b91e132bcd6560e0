"""Data parallelism from scratch (lesson 12, ``lessons/12_parallelism``).

Every rank holds the whole model and a different slice of the batch. If each rank's loss is the
mean over its slice, the mean of the ranks' gradients is the gradient of the full batch's mean
loss, so after averaging the ranks take identical optimizer steps and stay identical.

- :func:`average_gradients`: the naive version, one all-reduce per parameter after backward (it runs
  on gloo processes and, in lesson 12's first section, on in-process ranks).
- :class:`BucketedDataParallel`: what ``DistributedDataParallel`` does: gradients are grouped
  into buckets of about ``bucket_elements``; when the last gradient of a bucket is ready during
  backward, the bucket is flattened and all-reduced asynchronously (overlapping with the rest of
  backward); :meth:`~BucketedDataParallel.no_sync` skips communication on gradient-accumulation
  micro-steps, so there is one all-reduce per bucket per optimizer step.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from lmlab.argcheck import check_int
from lmlab.parallel import comm
from lmlab.parallel.transport import as_ranks

__all__ = ["average_gradients", "broadcast_parameters", "BucketedDataParallel"]


def broadcast_parameters(module: nn.Module, src: int = 0, group=None) -> None:
    """Make every rank start from ``src``'s weights (same seed would do too; this is what DDP does)."""
    with torch.no_grad():
        for p in module.parameters():
            comm.broadcast(p.data, src=src, group=group)


def average_gradients(module: nn.Module, group=None) -> None:
    """Naive data parallel: after ``loss.backward()``, replace every gradient by its mean over ranks.
    ``group``: a process group (``None``: all ranks) or in-process :class:`~lmlab.parallel.transport.Ranks`."""
    ranks = as_ranks(group)
    for p in module.parameters():
        if p.grad is not None:
            ranks.all_reduce(p.grad)  # the sum over ranks, in place
            p.grad.div_(ranks.size)


class BucketedDataParallel(nn.Module):
    """Wrap ``module``; gradients are averaged over ``group`` bucket by bucket during backward.

    ``bucket_elements``: target bucket size (DDP's default is 25 MB). Buckets are filled in reverse
    parameter order, roughly the order in which backward produces gradients. Every parameter that
    requires grad must receive a gradient in every backward (as with DDP's default).

    Gradient accumulation::

        for i, micro in enumerate(micro_batches):
            ctx = model.no_sync() if i < len(micro_batches) - 1 else contextlib.nullcontext()
            with ctx:
                (loss_fn(model(micro)) / len(micro_batches)).backward()
        opt.step()
    """

    def __init__(self, module: nn.Module, bucket_elements: int = 2**20, group=None):
        super().__init__()
        check_int(bucket_elements, "bucket_elements", "BucketedDataParallel:")
        self.module, self.group, self._sync = module, group, True
        self.buckets: list[list[nn.Parameter]] = []
        params = [p for p in module.parameters() if p.requires_grad]
        bucket, size = [], 0
        for p in reversed(params):
            bucket.append(p)
            size += p.numel()
            if size >= bucket_elements:
                self.buckets.append(bucket)
                bucket, size = [], 0
        if bucket:
            self.buckets.append(bucket)
        self._bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self._ready = [0] * len(self.buckets)
        self._pending: list[tuple[object, torch.Tensor, int]] = []
        for p in params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)
        broadcast_parameters(module, src=comm.group_ranks(group)[0], group=group)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside this block backward only accumulates local gradients (no communication)."""
        self._sync = False
        try:
            yield
        finally:
            self._sync = True

    def _on_grad_ready(self, p: torch.Tensor) -> None:
        if not self._sync:
            return
        i = self._bucket_of[id(p)]
        self._ready[i] += 1
        if self._ready[i] == len(self.buckets[i]):  # the bucket's last gradient just arrived
            self._ready[i] = 0
            flat = torch.cat([q.grad.reshape(-1) for q in self.buckets[i]])
            handle = comm.all_reduce(flat, group=self.group, async_op=True)
            if not self._pending:  # wait for every bucket once backward has finished
                torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._pending.append((handle, flat, i))

    def _finish(self) -> None:
        n = comm.group_size(self.group)
        for handle, flat, i in self._pending:
            handle.wait()
            flat.div_(n)
            offset = 0
            for q in self.buckets[i]:
                q.grad.copy_(flat[offset: offset + q.numel()].view_as(q))
                offset += q.numel()
        self._pending.clear()
