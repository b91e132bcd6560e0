"""ZeRO stages 0-3 from scratch (lesson 12, ``lessons/12_parallelism``; Rajbhandari et al., 2020).

Data parallel training keeps N identical copies of everything. ZeRO keeps one copy, cut in N
shards: rank r owns shard r of every flattened group of parameters ("unit": by default each
direct child of the model) and is the only one to update it.

==========  ==================================================  =====================================
stage       held per rank                                       communication per step (per rank)
==========  ==================================================  =====================================
0 (DP)      params, grads, optimizer state                      all-reduce grads          ~2 Psi
1           params, grads, 1/N optimizer state                  reduce-scatter grads, all-gather params
2           params, 1/N grads, 1/N optimizer state              the same                  ~2 Psi
3           1/N params, 1/N grads, 1/N optimizer state          all-gather params before forward *and*
                                                                before backward, reduce-scatter grads ~3 Psi
==========  ==================================================  =====================================

The optimizer (:class:`lmlab.train.optim.AdamW`, chapter 09's) runs on an fp32 *master* copy of the shard,
so a bf16 model costs exactly ZeRO's 2 + 2 + 12 bytes per parameter (:func:`lmlab.scaling.calculators.zero_memory_per_gpu`,
``precision="mixed"``); :meth:`ZeroOptimizer.memory_bytes` measures it. AdamW is element-wise, so
stepping a flat shard equals stepping the parameters one by one.

Stage 3 frees each unit's full parameters right after its forward. Backward needs them again:
a saved-tensor hook stores a *marker* instead of the weight; when the unit's backward begins (the
gradient of its output arrives) the unit is gathered once more and unpacking a marker returns a
view of it; the gradient of the gathered parameters is reduce-scattered to the owners
(``_GatherParams.backward``). Gradients are averaged over ranks (each rank's loss is a mean).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from lmlab.train.optim import AdamW, adamw_update_
from lmlab.argcheck import check_choice, check_int, check_number, check_tensor
from lmlab.parallel.in_process import run_in_process
from lmlab.parallel.transport import as_ranks

__all__ = ["ZeroOptimizer", "ZERO_STAGES", "zero1_adamw_step", "simulated_zero1_step"]

ZERO_STAGES = (0, 1, 2, 3)


def _flat(tensors, pad_to: int, dtype=None) -> torch.Tensor:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    pad = (-flat.numel()) % pad_to
    flat = torch.cat([flat, flat.new_zeros(pad)]) if pad else flat
    return flat.to(dtype) if dtype is not None else flat


class _Unit:
    """One flattened group of parameters and this rank's shard of it."""

    def __init__(self, module: nn.Module, stage: int, group):
        self.module, self.stage, self.ranks = module, stage, as_ranks(group)
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dtype = self.params[0].dtype
        self.n, self.r = self.ranks.size, self.ranks.rank
        with torch.no_grad():
            flat = _flat([p.detach() for p in self.params], self.n)
        self.padded = flat.numel()
        shard = flat if stage == 0 else flat.view(self.n, -1)[self.r]
        self.master = nn.Parameter(shard.detach().float().clone())  # fp32 master copy the optimizer updates
        self.grad_shard: torch.Tensor | None = None  # stage 2 (stage 3 uses shard.grad)
        self.shard: nn.Parameter | None = None  # stage 3: the only copy of this unit's weights

    def views(self, full: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape, k in zip(self.names, self.shapes, self.numels):
            out[name] = full[offset: offset + k].view(shape)
            offset += k
        return out

    def full_grad(self) -> torch.Tensor:
        return _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params], self.n)


class _GatherParams(torch.autograd.Function):
    """Forward: all-gather a unit's shards into its full flat parameters. Backward: reduce-scatter
    the full gradient so each rank keeps (the mean of) its own shard's gradient."""

    @staticmethod
    def forward(ctx, shard: torch.Tensor, wrapper: "_Zero3Unit") -> torch.Tensor:
        ctx.wrapper = wrapper
        return wrapper.unit.ranks.all_gather(shard.detach())

    @staticmethod
    def backward(ctx, grad_full: torch.Tensor):
        unit = ctx.wrapper.unit
        ctx.wrapper.regathered = None  # backward of this unit is over: free its parameters again
        return unit.ranks.reduce_scatter(grad_full.contiguous()) / unit.n, None


class _Zero3Unit(nn.Module):
    """Stands in for a unit under stage 3: holds only the shard, gathers the weights on demand."""

    def __init__(self, inner: nn.Module, unit: _Unit):
        super().__init__()
        self.inner, self.unit = inner, unit
        self.shard = nn.Parameter(unit.master.detach().to(unit.dtype).clone())
        unit.shard = self.shard
        for p in unit.params:  # free the full weights: from now on they exist only while gathered
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            p.requires_grad_(False)
        self.regathered: torch.Tensor | None = None

    def _regather(self) -> torch.Tensor:
        if self.regathered is None:
            self.regathered = self.unit.ranks.all_gather(self.shard.detach())
        return self.regathered

    def forward(self, *args, **kwargs):
        full = _GatherParams.apply(self.shard, self)
        ptr = full.untyped_storage().data_ptr()
        base = full.storage_offset()

        def pack(t):
            if t.untyped_storage().data_ptr() == ptr:  # a view of the gathered weights: keep a marker only
                return ("zero3-param", t.storage_offset() - base, t.size(), t.stride())
            return t

        def unpack(saved):
            if isinstance(saved, tuple) and saved[0] == "zero3-param":
                _, offset, size, stride = saved
                again = self._regather()
                return again.as_strided(size, stride, again.storage_offset() + offset)
            return saved

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            out = functional_call(self.inner, self.unit.views(full), args, kwargs)
        # when the gradient of our output arrives, this unit's backward begins: gather the weights
        # then (as FSDP does), even if only the input gradient is needed
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if torch.is_tensor(t) and t.requires_grad:
                t.register_hook(self._pre_backward)
        return out

    def _pre_backward(self, grad: torch.Tensor) -> None:
        self._regather()


class ZeroOptimizer:
    """AdamW with ZeRO ``stage`` over the ranks of ``group`` (a process group, ``None`` for all ranks, or
    in-process :class:`~lmlab.parallel.transport.Ranks`); all ranks must start with equal weights.

    ``units``: names of ``module``'s direct children to flatten and shard separately (default:
    every child that has parameters). Stage 3 replaces each unit by a wrapper, in place.
    Use it like an optimizer: ``loss.backward(); opt.step(); opt.zero_grad()``.

    Stage 2 with ``overlap=True`` (the default) is ZeRO-2 as DeepSpeed runs it: a post-accumulate-grad hook
    on every parameter notes its gradient; when a unit (a bucket) has all of its gradients, they are
    reduce-scattered *during backward* and freed, so the full gradient never exists at once (with several
    backward passes before a step, each adds its shard). ``overlap=False`` reduce-scatters in ``step()``.
    :attr:`peak_grad_bytes` is the most gradient memory held at once (sampled at every gradient arrival and
    around every reduce-scatter): measured, not a formula.
    """

    def __init__(self, module: nn.Module, stage: int, *, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, units: list[str] | None = None, group=None, overlap: bool = True):
        check_choice(stage, "stage", ZERO_STAGES, "ZeroOptimizer:")
        self.module, self.stage, self.ranks = module, stage, as_ranks(group)
        names = units if units is not None else [n for n, c in module.named_children() if any(True for _ in c.parameters())]
        children = dict(module.named_children())
        missing = [n for n in names if n not in children]
        if missing or not names:
            raise ValueError(f"ZeroOptimizer: units must name children of the module with parameters, "
                             f"one of {list(children)}, got {units!r}")
        self.units = [_Unit(children[n], stage, self.ranks) for n in names]
        if stage == 3:
            for n, u in zip(names, self.units):
                setattr(module, n, _Zero3Unit(children[n], u))
        self.opt = AdamW([u.master for u in self.units], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.overlap = bool(overlap) and stage == 2
        self.peak_grad_bytes = 0
        for u in self.units:
            u.arrived = set()
            for p in ([u.shard] if stage == 3 else u.params):
                p.register_post_accumulate_grad_hook(lambda p, u=u: self._grad_ready(u, p))

    def grad_bytes(self) -> int:
        """Gradient memory this rank holds now: full gradients of the parameters plus gradient shards."""
        size = lambda t: t.numel() * t.element_size() if t is not None else 0  # noqa: E731
        return sum(size(p.grad) for u in self.units for p in u.params) + sum(
            size(u.grad_shard) + (size(u.shard.grad) if u.shard is not None else 0) for u in self.units)

    def _grad_ready(self, u: _Unit, p: torch.Tensor) -> None:
        self.peak_grad_bytes = max(self.peak_grad_bytes, self.grad_bytes())
        if not self.overlap:
            return
        u.arrived.add(id(p))
        if len(u.arrived) == len(u.params):  # the bucket is complete: reduce-scatter it now, during backward
            self._reduce_unit(u)

    @torch.no_grad()
    def _reduce_unit(self, u: _Unit) -> None:
        flat = u.full_grad()  # (padded,): this bucket's gradients in one buffer (DDP's bucket; views in DeepSpeed)
        for p in u.params:
            p.grad = None  # the bucket replaces them
        self.peak_grad_bytes = max(self.peak_grad_bytes, self.grad_bytes() + flat.numel() * flat.element_size())
        shard = self.ranks.reduce_scatter(flat) / u.n  # (padded / N,): the mean gradient of what we own
        u.grad_shard = shard if u.grad_shard is None else u.grad_shard + shard
        u.arrived.clear()  # the bucket is freed on return: only our shard of this gradient stays

    @torch.no_grad()
    def step(self) -> None:
        for u in self.units:  # 1. each rank gets the (mean) gradient of what it owns
            if self.stage == 0:
                g = u.full_grad()
                self.ranks.all_reduce(g)
                u.master.grad = g.float() / u.n
            elif self.overlap:  # stage 2: reduce-scattered during backward
                if u.arrived:  # a parameter got no gradient this time: reduce what the bucket has
                    self._reduce_unit(u)
                u.master.grad = u.grad_shard.float() if u.grad_shard is not None else torch.zeros_like(u.master)
            elif self.stage in (1, 2):
                g = self.ranks.reduce_scatter(u.full_grad()) / u.n
                if self.stage == 2:  # the full gradient is gone; only our shard of it stays
                    u.grad_shard = g
                    for p in u.params:
                        p.grad = None
                u.master.grad = g.float()
            else:
                u.master.grad = u.shard.grad.float() if u.shard.grad is not None else torch.zeros_like(u.master)
        self.opt.step()  # 2. update the fp32 master shard
        for u in self.units:  # 3. put the new weights where the model reads them
            u.master.grad = None
            if self.stage == 3:
                u.shard.copy_(u.master)
                continue
            full = u.master if self.stage == 0 else self.ranks.all_gather(u.master.to(u.dtype))
            for p, v in zip(u.params, u.views(full).values()):
                p.copy_(v)

    def zero_grad(self) -> None:
        for u in self.units:
            u.grad_shard = None
            u.arrived.clear()
            for p in u.params:
                p.grad = None
            if u.shard is not None:
                u.shard.grad = None

    def memory_bytes(self) -> dict[str, int]:
        """Bytes this rank holds now (call it after ``step()``, before ``zero_grad()``): ``params``
        (what the model keeps), ``grads`` and ``optimizer`` (master copy + AdamW's two moments)."""
        size = lambda t: t.numel() * t.element_size() if t is not None else 0  # noqa: E731
        params = sum(size(p) for p in self.module.parameters())
        if self.stage in (0, 1):
            grads = sum(size(p.grad) for u in self.units for p in u.params)
        elif self.stage == 2:
            grads = sum(size(u.grad_shard) for u in self.units)
        else:
            grads = sum(size(u.shard.grad) for u in self.units)
        optimizer = sum(size(u.master) for u in self.units)
        for state in self.opt.state.values():
            optimizer += sum(size(v) for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
        return {"params": params, "grads": grads, "optimizer": optimizer, "total": params + grads + optimizer}

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter, gathered (a collective: call it on all ranks), keyed like the original model."""
        out = {}
        for u in self.units:
            full = self.ranks.all_gather(u.master.detach()) if self.stage else u.master.detach()
            prefix = next(n for n, m in self.module.named_children() if m is u.module or getattr(m, "inner", None) is u.module)
            out.update({f"{prefix}.{k}": v.clone() for k, v in u.views(full.to(u.dtype)).items()})
        return out


def simulated_zero1_step(params: list, grads: list, states: list, step: int, lr: float = 1e-3,
                         betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> tuple[list, list]:
    """One ZeRO-1 AdamW step over N simulated ranks in one process: :func:`zero1_adamw_step` on every rank.

    ``params[r]`` is rank r's full copy of the flat parameters ``(n,)`` (all equal), ``grads[r]`` its
    local gradient ``(n,)``, ``states[r]`` its optimizer state for shard r only:
    ``{"exp_avg": (n/N,), "exp_avg_sq": (n/N,)}``; ``step`` counts from 1. Reduce-scatter (rank r
    gets the *mean* gradient of its shard), AdamW on the shard, all-gather the updated shards.
    Returns ``(new_params, new_states)`` shaped like the inputs, which are not modified; equals
    ``torch.optim.AdamW`` on the full tensor with the mean gradient.
    Graded reference of ``exercises/12_parallelism`` (``12.zero1_step``).
    """
    where = "simulated_zero1_step"
    n_ranks = len(params) if isinstance(params, (list, tuple)) else 0
    if n_ranks < 1 or not isinstance(grads, (list, tuple)) or not isinstance(states, (list, tuple)) \
            or len(grads) != n_ranks or len(states) != n_ranks:
        raise ValueError(f"{where}: params, grads and states must be lists of the same length >= 1 (one entry per rank)")
    n = check_tensor(params[0], "params[0]", where, dim=1, floating=True).numel()
    if n % n_ranks:
        raise ValueError(f"{where}: the number of parameters ({n}) must be divisible by the number of ranks ({n_ranks})")
    for r in range(n_ranks):
        check_tensor(params[r], f"params[{r}]", where, shape=(n,))
        check_tensor(grads[r], f"grads[{r}]", where, shape=(n,))
        for key in ("exp_avg", "exp_avg_sq"):
            check_tensor(states[r].get(key) if isinstance(states[r], dict) else None, f"states[{r}][{key!r}]", where, shape=(n // n_ranks,))
    step = check_int(step, "step", where)
    check_number(lr, "lr", where, low=0.0)
    kw = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    # every rank (a thread) runs zero1_adamw_step, the function the gloo processes run
    out = run_in_process(lambda ranks, pgs: zero1_adamw_step(*pgs, step, ranks, **kw), list(zip(params, grads, states)))
    return [p for p, _ in out], [st for _, st in out]


def zero1_adamw_step(param: torch.Tensor, grad: torch.Tensor, state: dict, step: int, group=None, *, lr: float = 1e-3,
                     betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> tuple[torch.Tensor, dict]:
    """One rank's ZeRO-1 AdamW step. ``param`` ``(n,)``: this rank's full copy of the flat parameters;
    ``grad`` ``(n,)``: its local gradient; ``state``: AdamW's moments for *its shard only*,
    ``{"exp_avg": (n/N,), "exp_avg_sq": (n/N,)}``; ``step`` counts from 1. ``group``: a process group
    (``None``: all ranks) or in-process :class:`~lmlab.parallel.transport.Ranks`.
    Returns ``(new_param (n,), new_state)``. :class:`ZeroOptimizer` (stage 1) moves the same messages
    and runs the same update (:func:`lmlab.train.optim.adamw_update_`)."""
    ranks = as_ranks(group)
    n = check_tensor(param, "param", "zero1_adamw_step", dim=1, floating=True).numel()
    check_tensor(grad, "grad", "zero1_adamw_step", shape=(n,))
    if n % ranks.size:
        raise ValueError(f"zero1_adamw_step: param's numel ({n}) must be divisible by the number of ranks ({ranks.size})")
    g = ranks.reduce_scatter(grad.clone()) / ranks.size  # (n/N,): the mean gradient of the shard I own
    shard = param.chunk(ranks.size)[ranks.rank].clone()  # (n/N,): the parameters I own
    m, v = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    adamw_update_(shard, g, m, v, step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)  # chapter 09's AdamW, on 1/N
    return ranks.all_gather(shard), {"exp_avg": m, "exp_avg_sq": v}  # everyone gets every updated shard
