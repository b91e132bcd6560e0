"""Pipeline parallelism: a schedule simulator and a pipeline over real ranks (lesson 12,
``lessons/12_parallelism``).

The model is cut into ``p`` consecutive stages, one per rank; the batch into ``m`` micro-batches.
Stage ``s`` runs forward ``F_i`` of micro-batch ``i`` after stage ``s - 1`` sent it the activation,
and backward ``B_i`` after stage ``s + 1`` sent back the gradient.

- GPipe ("all forward, all backward"): every stage runs ``F_0 .. F_{m-1}`` then the backwards.
  A stage stores the activations of all ``m`` micro-batches.
- 1F1B (PipeDream-Flush, Megatron): stage ``s`` runs ``p - 1 - s`` warm-up forwards, then
  alternates one forward and one backward. The same bubble, but at most ``p - s`` micro-batches
  are in flight on stage ``s``.

Bubble (idle fraction of the total time) = ``(p - 1) / (m + p - 1)`` for both
(:func:`lmlab.scaling.calculators.bubble`). :func:`simulate` measures it on an event timeline;
:func:`pipeline_step` runs a schedule on real ranks with send/recv. The loss is the *mean* of the
micro-batch losses, so the gradients equal one process on the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from lmlab.argcheck import check_choice, check_int
from lmlab.parallel import comm
from lmlab.parallel.parallelize import ModelStage

__all__ = ["SCHEDULES", "schedule_ops", "simulate", "SimResult", "render", "gpt_stages", "pipeline_step",
           "pipedream_staleness", "stale_sgd"]

SCHEDULES = ("gpipe", "1f1b")


def _check(schedule: str, n_stages: int, n_micro: int, where: str) -> None:
    check_choice(schedule, "schedule", SCHEDULES, f"{where}:")
    check_int(n_stages, "n_stages", f"{where}:")
    check_int(n_micro, "n_micro", f"{where}:")


def schedule_ops(schedule: str, n_stages: int, n_micro: int, stage: int) -> list[tuple[str, int]]:
    """The order in which ``stage`` runs its work: ``[("F", 0), ("F", 1), ..., ("B", 0), ...]``."""
    _check(schedule, n_stages, n_micro, "schedule_ops")
    check_int(stage, "stage", "schedule_ops:", minimum=0, maximum=n_stages - 1)
    if schedule == "gpipe":
        return [("F", i) for i in range(n_micro)] + [("B", i) for i in range(n_micro)]
    warmup = min(n_stages - 1 - stage, n_micro)
    ops = [("F", i) for i in range(warmup)]
    for i in range(n_micro - warmup):  # steady state: one forward, one backward
        ops += [("F", warmup + i), ("B", i)]
    return ops + [("B", i) for i in range(n_micro - warmup, n_micro)]


@dataclass
class SimResult:
    events: list[tuple[int, str, int, float, float]]  # (stage, "F"/"B", micro-batch, start, end)
    makespan: float
    bubble: float  # idle fraction of n_stages x makespan
    peak_activations: list[int] = field(default_factory=list)  # per stage: micro-batches stored at once


def simulate(schedule: str, n_stages: int, n_micro: int, t_forward: float = 1.0, t_backward: float = 2.0) -> SimResult:
    """Event simulation: each stage runs its ops in order, each op as soon as its input is there
    (``F`` needs the previous stage's ``F``; ``B`` needs the next stage's ``B``)."""
    _check(schedule, n_stages, n_micro, "simulate")
    ops = [schedule_ops(schedule, n_stages, n_micro, s) for s in range(n_stages)]
    done: dict[tuple[str, int, int], float] = {}  # (kind, stage, micro) -> end time
    free, nxt = [0.0] * n_stages, [0] * n_stages
    events, stored, peak = [], [0] * n_stages, [0] * n_stages
    while any(nxt[s] < len(ops[s]) for s in range(n_stages)):
        progressed = False
        for s in range(n_stages):
            if nxt[s] == len(ops[s]):
                continue
            kind, i = ops[s][nxt[s]]
            dep = ("F", s - 1, i) if kind == "F" else ("B", s + 1, i)
            if kind == "F" and s == 0:
                ready = 0.0
            elif kind == "B" and s == n_stages - 1:
                ready = done[("F", s, i)]
            elif dep in done:
                ready = done[dep]
            else:
                continue
            start = max(free[s], ready)
            end = start + (t_forward if kind == "F" else t_backward)
            done[(kind, s, i)], free[s], nxt[s] = end, end, nxt[s] + 1
            events.append((s, kind, i, start, end))
            stored[s] += 1 if kind == "F" else -1
            peak[s] = max(peak[s], stored[s])
            progressed = True
        if not progressed:
            raise RuntimeError("simulate: the schedule deadlocked")  # cannot happen for GPipe / 1F1B
    makespan = max(e[4] for e in events)
    busy = n_micro * (t_forward + t_backward) * n_stages
    return SimResult(events, makespan, 1 - busy / (n_stages * makespan), peak)


def render(result: SimResult, unit: float = 1.0) -> str:
    """A text timeline, one row per stage: digits are forwards, letters backwards (a = micro-batch 0),
    dots are the bubble."""
    n_stages = 1 + max(e[0] for e in result.events)
    width = int(round(result.makespan / unit))
    rows = [["."] * width for _ in range(n_stages)]
    for s, kind, i, start, end in result.events:
        mark = str(i % 10) if kind == "F" else chr(ord("a") + i % 26)
        for t in range(int(round(start / unit)), int(round(end / unit))):
            rows[s][t] = mark
    return "\n".join(f"stage {s}: {''.join(r)}" for s, r in enumerate(rows))


# -- PipeDream: no flush, asynchronous updates -----------------------------------------------------


def pipedream_staleness(n_stages: int, n_micro: int) -> list[list[int]]:
    """PipeDream (Narayanan et al., 2019) runs 1F1B *without* a flush: stage ``s`` updates its weights after
    every backward, while later micro-batches are already in flight. From the 1F1B event simulation, for
    each stage and micro-batch: how many updates behind sequential SGD (which would have applied all
    ``i`` earlier ones) the weights of forward ``F_i`` are, ``i - (backwards done on s before F_i starts)``.
    Steady state: ``n_stages - 1 - s`` (weight stashing keeps that version for the backward). 1F1B with a
    flush (PipeDream-Flush, Megatron, what :func:`pipeline_step` runs) updates once per batch: staleness 0."""
    _check("1f1b", n_stages, n_micro, "pipedream_staleness")
    events = simulate("1f1b", n_stages, n_micro).events
    out = []
    for s in range(n_stages):
        backs = sorted(end for st, kind, _, _, end in events if st == s and kind == "B")
        fwd = {i: start for st, kind, i, start, _ in events if st == s and kind == "F"}
        out.append([i - sum(1 for e in backs if e <= fwd[i]) for i in range(n_micro)])
    return out


def stale_sgd(staleness: int, lr: float = 0.5, steps: int = 40, dim: int = 8, seed: int = 0) -> list[float]:
    """Gradient descent on a least-squares problem where each update uses the gradient at the weights of
    ``staleness`` updates ago (PipeDream's first stage: ``staleness = p - 1``). ``lr`` is in units of
    ``1 / L`` (``L``: the largest curvature): synchronous descent (``staleness=0``, a pipeline with a flush)
    converges for ``lr < 2``, stale descent only for smaller steps. Returns the loss minus its minimum
    after each update."""
    check_int(staleness, "staleness", "stale_sgd:", minimum=0)
    check_int(steps, "steps", "stale_sgd:")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"stale_sgd: lr must be a positive number (in units of 1/L), got {lr!r}")
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4 * dim, dim, generator=g, dtype=torch.float64)  # (4d, d)
    b = torch.randn(4 * dim, generator=g, dtype=torch.float64)
    H = A.T @ A / A.shape[0]  # (d, d): the curvature of 0.5 * mean((A w - b)^2)
    L = float(torch.linalg.eigvalsh(H).max())
    best = torch.linalg.lstsq(A, b).solution
    loss = lambda w: float(0.5 * ((A @ w - b) ** 2).mean())  # noqa: E731
    w = torch.zeros(dim, dtype=torch.float64)
    history, out = [w], []
    for _ in range(steps):
        old = history[max(0, len(history) - 1 - staleness)]  # the weights its gradient was computed at
        w = w - lr / L * (A.T @ (A @ old - b) / A.shape[0])
        history.append(w)
        out.append(loss(w) - loss(best))
    return out


# -- real ranks ----------------------------------------------------------------------------------


def gpt_stages(model, n_stages: int) -> list[ModelStage]:
    """Cut a :class:`lmlab.model.gpt.GPT` into ``n_stages`` consecutive pieces
    (:class:`lmlab.parallel.parallelize.ModelStage`: the model's own blocks, embedding with the first, final
    norm and output layer with the last). They share the model's parameters (no copy), except a tied
    embedding, which the last stage copies (see :meth:`ModelStage.sync_tied_grads`)."""
    L = len(model.blocks)
    check_int(n_stages, "n_stages", "gpt_stages:", maximum=L, note=f"at most n_layers = {L}")
    return [ModelStage(model, s, n_stages) for s in range(n_stages)]


def pipeline_step(stage_module: nn.Module, micro_inputs, micro_targets, loss_fn, *, schedule: str = "1f1b",
                  stage_ranks: list[int] | None = None) -> dict:
    """Run one forward+backward of all micro-batches through the pipeline; gradients accumulate in
    ``stage_module``. Every stage calls this; ``micro_inputs`` matter on the first stage,
    ``micro_targets`` on the last (a list of ``m`` tensors each; the others may pass ``[None] * m``).
    ``stage_ranks``: global rank of each stage (default ``0 .. p-1``).

    Returns ``{"loss": mean of the micro-batch losses (last stage, else None), "peak_activations": n}``.
    """
    stage_ranks = list(range(comm.world_size())) if stage_ranks is None else list(stage_ranks)
    n_stages, n_micro = len(stage_ranks), len(micro_inputs)
    _check(schedule, n_stages, n_micro, "pipeline_step")
    s = stage_ranks.index(comm.rank())
    first, last = s == 0, s == n_stages - 1
    inputs, outputs, pending = {}, {}, []  # pending: (handle, tensor) of non-blocking sends
    total, peak = 0.0, 0
    for kind, i in schedule_ops(schedule, n_stages, n_micro, s):
        if kind == "F":
            x = micro_inputs[i] if first else comm.recv_tensor(stage_ranks[s - 1]).requires_grad_()
            y = stage_module(x)
            if last:
                y = loss_fn(y, micro_targets[i]) / n_micro  # mean over micro-batches
                total += float(y.detach())
            else:
                pending += comm.send_tensor(y.detach(), stage_ranks[s + 1])
            inputs[i], outputs[i] = x, y
            peak = max(peak, len(outputs))
        else:
            x, y = inputs.pop(i), outputs.pop(i)
            if last:
                y.backward()
            else:
                y.backward(comm.recv_tensor(stage_ranks[s + 1]))
            if not first:
                pending += comm.send_tensor(x.grad, stage_ranks[s - 1])
    for handle, _tensor in pending:
        handle.wait()
    return {"loss": total if last else None, "peak_activations": peak}
