"""Chapter 12 graders, part 2: the components over simulated ranks (a list with one entry per rank):
a ring all-reduce, a ZeRO-1 AdamW step, a row-parallel linear with its all-reduce, the 1F1B order.
Imported by :mod:`lmlab.grading.chapters.ch12`, which also uses :func:`ring_expected_chunk` (the ring's send
schedule, written here once) for ``12.ring_send_chunk``. Each check compares with an independent construction written
here (a ring on lists, torch's AdamW on the full tensor, ``F.linear`` on the unsplit weight, a
timeline simulation of the learner's own orders).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import describe, expect_close, expect_equal, expect_true, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.parallel.pipeline import schedule_ops


def ring_expected_chunk(rank, step, n):
    """The chunk ``rank`` sends at ``step`` of an ``n``-rank ring (also the expected table of ``12.ring_send_chunk``)."""
    return (rank - step) % n if step < n - 1 else (rank + 1 - (step - (n - 1))) % n


# =============================================================================================
# Components over simulated ranks (a list with one entry per rank)
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# 12.ring_all_reduce_sim
# ---------------------------------------------------------------------------------------------


def _ring_inputs(n, per_chunk, seed):
    return [seeded_randn(n * per_chunk, seed=seed + r, dtype=torch.float64) for r in range(n)]


def _ring_history(f, tensors, n):
    originals = [t.clone() for t in tensors]
    history = f([t.clone() for t in tensors])
    expect_true(isinstance(history, (list, tuple)), f"ring_all_reduce_sim({n} ranks) should return the history (a list), got {type(history).__name__}")
    expect_equal(len(history), 2 * (n - 1), f"len(ring_all_reduce_sim(...)) for N = {n} (one entry per step: N - 1 reduce-scatter + N - 1 all-gather)")
    for s, state in enumerate(history):
        expect_true(isinstance(state, (list, tuple)) and len(state) == n, f"history[{s}] should be a list of {n} tensors (one per rank)")
    return history, originals


def _ring_sum(f):
    for n, per in ((2, 3), (3, 2), (4, 5)):
        tensors = _ring_inputs(n, per, seed=1200 + n)
        history, _ = _ring_history(f, tensors, n)
        total = torch.stack(tensors).sum(0)
        for r in range(n):
            expect_close(history[-1][r], total, f"rank {r}'s vector after the last step (N = {n}) vs the sum over ranks", atol=1e-12, rtol=1e-12)


def _ring_every_step(f):
    for n in (3, 4):
        tensors = [torch.tensor([float(10 ** r * (c + 1)) for c in range(n) for _ in range(2)], dtype=torch.float64) for r in range(n)]
        history, _ = _ring_history(f, tensors, n)
        state = [[t[2 * c:2 * c + 2].clone() for c in range(n)] for t in tensors]  # state[rank][chunk]
        for s in range(2 * (n - 1)):
            sent = [(ring_expected_chunk(r, s, n), state[r][ring_expected_chunk(r, s, n)].clone()) for r in range(n)]
            for r in range(n):
                c, v = sent[(r - 1) % n]
                state[r][c] = state[r][c] + v if s < n - 1 else v
            phase = "reduce-scatter" if s < n - 1 else "all-gather"
            for r in range(n):
                expect_close(history[s][r], torch.cat(state[r]), f"rank {r}'s vector after step {s} ({phase}) with N = {n} "
                             f"(rank r sends chunk {'(r - s)' if s < n - 1 else '(r + 1 - s + N - 1)'} mod N to r + 1)", atol=0, rtol=0)


def _ring_inputs_kept(f):
    tensors = _ring_inputs(3, 4, seed=1210)
    copies = [t.clone() for t in tensors]
    f(tensors)
    for r in range(3):
        expect_close(tensors[r], copies[r], f"tensors[{r}] after the call (do not modify the inputs: clone them)", atol=0, rtol=0)


register(Exercise(
    id="12.ring_all_reduce_sim",
    points=4,
    minutes=25,
    signature="ring_all_reduce_sim(tensors: list of N 1-D tensors (numel divisible by N)) -> history: 2(N-1) lists of N tensors",
    hint="simulate both phases step by step: in each step every rank sends one chunk to its right neighbour at the same time.",
    hints=(
        "An all-reduce is a reduce-scatter (each rank ends with the finished sum of one chunk) followed by an all-gather "
        "(the finished chunks travel round the ring). Both take N - 1 steps, and in every step each rank talks only to its neighbours.",
        "Clone the inputs and view each as N chunks (t.view(N, -1)). Per step: first collect every rank's outgoing chunk "
        "(cloned, so everyone sends what they held before the step), then let rank r apply what rank r - 1 sent: add during "
        "the reduce-scatter, copy during the all-gather. Append a copy of all N vectors to the history after each step.",
        "for s in range(2 * (N - 1)):\n    out = [index_sent_by(r, s) for r in range(N)]\n    msgs = ...  # every rank's outgoing chunk, cloned\n"
        "    for r in range(N):\n        c = out[(r - 1) % N]   # what the left neighbour sent\n        ...  # add or copy into chunks[r][c]\n"
        "    history.append(...)",
    ),
    checks=(
        Check("every rank ends with the sum over ranks (N = 2, 3, 4)", _ring_sum),
        Check("every step equals the ring's send schedule (reduce-scatter adds, all-gather copies)", _ring_every_step),
        Check("the input tensors are not modified", _ring_inputs_kept),
    ),
    reference="lmlab.parallel.in_process:simulated_ring_all_reduce",
))

# ---------------------------------------------------------------------------------------------
# 12.zero1_step
# ---------------------------------------------------------------------------------------------


def _adamw_reference(w, lr, wd):
    """torch's own AdamW update (``torch.optim.adamw.adamw``, what ``AdamW.step`` runs with foreach=False),
    called directly: constructing an ``optim.AdamW`` imports torch._dynamo, seconds on a busy laptop."""
    from torch.optim.adamw import adamw

    state = {"exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w), "step": torch.tensor(0.0)}

    def step(grad):
        adamw([w], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]], foreach=False, capturable=False,
              differentiable=False, fused=None, grad_scale=None, found_inf=None, has_complex=False, amsgrad=False,
              beta1=0.9, beta2=0.95, lr=lr, weight_decay=wd, eps=1e-8, maximize=False)
    return state, step


def _zero1_run(f, n_ranks, n, steps, lr, wd, seed):
    w = seeded_randn(n, seed=seed, dtype=torch.float64)
    full = w.clone()
    ref, adamw_step = _adamw_reference(full, lr, wd)
    params = [w.clone() for _ in range(n_ranks)]
    states = [{"exp_avg": torch.zeros(n // n_ranks, dtype=torch.float64), "exp_avg_sq": torch.zeros(n // n_ranks, dtype=torch.float64)}
              for _ in range(n_ranks)]
    for step in range(1, steps + 1):
        grads = [seeded_randn(n, seed=seed + 100 * step + r, dtype=torch.float64) for r in range(n_ranks)]
        adamw_step(torch.stack(grads).mean(0))
        what = f"zero1_step on {n_ranks} ranks, step {step}"
        out = f([p.clone() for p in params], [g.clone() for g in grads], [{k: v.clone() for k, v in st.items()} for st in states],
                step, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
        expect_true(isinstance(out, (list, tuple)) and len(out) == 2, f"{what} should return (new_params, new_states), got {describe(out)}")
        params, states = out
        expect_true(isinstance(params, (list, tuple)) and len(params) == n_ranks, f"{what}: new_params should be a list of {n_ranks} tensors")
        expect_true(isinstance(states, (list, tuple)) and len(states) == n_ranks and all(isinstance(st, dict) for st in states),
                    f"{what}: new_states should be a list of {n_ranks} dicts")
        for r in range(n_ranks):
            expect_close(params[r], full, f"{what}: rank {r}'s parameters vs torch's AdamW on the full tensor "
                         "with the mean gradient (all ranks must hold every updated shard)", atol=1e-12, rtol=1e-10)
            for key in ("exp_avg", "exp_avg_sq"):
                expect_close(states[r].get(key), ref[key].chunk(n_ranks)[r], f"{what}: states[{r}][{key!r}] vs shard {r} of AdamW's "
                             f"{key} (each rank keeps only its 1/{n_ranks} of the optimizer state)", atol=1e-12, rtol=1e-10)


def _zero1_two(f):
    _zero1_run(f, 2, 6, 3, lr=1e-2, wd=0.0, seed=1220)


def _zero1_four(f):
    _zero1_run(f, 4, 16, 3, lr=3e-2, wd=0.1, seed=1230)
    _zero1_run(f, 1, 5, 2, lr=1e-2, wd=0.1, seed=1240)


register(Exercise(
    id="12.zero1_step",
    points=4,
    minutes=25,
    signature="zero1_step(params: N tensors (n,), grads: N tensors (n,), states: N dicts {'exp_avg', 'exp_avg_sq': (n/N,)}, "
              "step: int from 1, lr, betas, eps, weight_decay) -> (new_params, new_states)",
    hint="three phases: reduce-scatter the gradients, AdamW on your own shard only, all-gather the updated shards.",
    hints=(
        "ZeRO-1 keeps one copy of the optimizer state, cut in N shards: rank r owns shard r, updates only that slice of the "
        "parameters, and then everybody exchanges their updated slices so each rank again holds the whole model.",
        "Shard r of a flat tensor is t.chunk(N)[r]. (1) Rank r needs the mean over ranks of everyone's gradient, for its shard "
        "only. (2) AdamW on that shard: decoupled weight decay p *= 1 - lr*wd, then m, v, bias corrections 1 - beta**step, "
        "p -= lr * m_hat / (sqrt(v_hat) + eps). (3) Concatenate the N updated shards and give every rank a copy.",
        "g_shards = ...  # reduce-scatter: the mean gradient, cut in N\nfor r in range(N):\n"
        "    p = ...  # rank r's shard of its parameters, after weight decay\n    m = ...; v = ...  # from states[r] and g_shards[r]\n"
        "    shards.append(...)  # the bias-corrected update\n    new_states.append(...)\nfull = ...  # all-gather\n"
        "return ..., new_states  # one copy of full per rank",
    ),
    checks=(
        Check("2 ranks, 3 steps: every rank equals torch.optim.AdamW on the full tensor", _zero1_two),
        Check("4 ranks with weight decay, and 1 rank: parameters and the sharded state", _zero1_four),
    ),
    reference="lmlab.parallel.zero:simulated_zero1_step",
))

# ---------------------------------------------------------------------------------------------
# 12.row_parallel_forward
# ---------------------------------------------------------------------------------------------


def _row_case(f, tp, bias, seed, shape=(2, 3, 8), out=6):
    x = seeded_randn(*shape, seed=seed)
    w = seeded_randn(out, shape[-1], seed=seed + 1)
    b = seeded_randn(out, seed=seed + 2) if bias else None
    xs, ws = list(x.chunk(tp, dim=-1)), list(w.chunk(tp, dim=1))
    what = f"row_parallel_forward({tp} input shards {tuple(xs[0].shape)}, weight shards {tuple(ws[0].shape)}, {'bias' if bias else 'None'})"
    got = f(xs, ws, b)
    expect_true(isinstance(got, (list, tuple)) and len(got) == tp, f"{what} should return a list of {tp} outputs (one per rank), got {describe(got)}")
    for r in range(tp):
        expect_close(got[r], F.linear(x, w, b), f"{what}: rank {r}'s output vs F.linear with the unsplit input and weight", atol=1e-5)


def _row_bias(f):
    _row_case(f, 2, True, 1250)
    _row_case(f, 4, True, 1253, shape=(5, 8), out=3)


def _row_no_bias(f):
    _row_case(f, 3, False, 1256, shape=(4, 9))
    _row_case(f, 1, True, 1259, shape=(4, 8))


register(Exercise(
    id="12.row_parallel_forward",
    points=3,
    minutes=15,
    signature="row_parallel_forward(x_shards: t tensors (..., in/t), weight_shards: t tensors (out, in/t), bias: (out,) or None) "
              "-> list of t tensors (..., out), one per rank",
    hint="each rank's product is only a partial sum of the output; what collective turns partial sums into the full output on every rank?",
    hints=(
        "A row-parallel layer splits W by its input columns, so x W^T = sum over ranks of x_r W_r^T: every rank holds a partial "
        "result of the full output shape, and an all-reduce (sum) finishes it (Megatron's operator g).",
        "Per rank: F.linear(x_r, W_r) without bias has shape (..., out). Sum the t partial results (that is the all-reduce), "
        "add the replicated bias once, after the sum, and return one copy per rank.",
        "partial = [...]  # each rank's F.linear of its input shard and weight shard, no bias\n"
        "total = ...  # the all-reduce (a sum)\n...  # the bias, once, if there is one\nreturn [... for _ in range(len(x_shards))]",
    ),
    checks=(
        Check("2 and 4 ranks with bias equal F.linear on the whole input and weight", _row_bias),
        Check("3 ranks without bias, and a single rank", _row_no_bias),
    ),
    reference="lmlab.parallel.tensor_parallel:simulated_row_parallel_forward",
))

# ---------------------------------------------------------------------------------------------
# 12.one_f_one_b
# ---------------------------------------------------------------------------------------------


def _1f1b_expected(p, m, stage):
    warm = min(p - 1 - stage, m)
    ops, f_next, b_next = [], 0, 0
    while f_next < warm:
        ops.append(("F", f_next))
        f_next += 1
    while f_next < m:  # steady state: one forward, then the oldest backward
        ops += [("F", f_next), ("B", b_next)]
        f_next, b_next = f_next + 1, b_next + 1
    while b_next < m:
        ops.append(("B", b_next))
        b_next += 1
    return ops


def _1f1b_ops(f, p, m, stage):
    got = f(p, m, stage)
    what = f"one_f_one_b(p={p}, m={m}, stage={stage})"
    expect_true(isinstance(got, (list, tuple)), f"{what} should return a list of ('F' or 'B', micro-batch) pairs, got {describe(got)}")
    return [tuple(op) if isinstance(op, (list, tuple)) else op for op in got], what


def _1f1b_order(f):
    for p, m in ((4, 8), (2, 3), (5, 2)):
        for stage in range(p):
            got, what = _1f1b_ops(f, p, m, stage)
            expect_equal(got, _1f1b_expected(p, m, stage), what)


def _1f1b_timeline(f):
    """Run the learner's per-stage orders on a timeline (F = 1, B = 2 time units): no deadlock,
    at most p - s micro-batches stored on stage s, GPipe's bubble (p-1)/(m+p-1)."""
    for p, m in ((3, 2), (4, 4), (5, 7), (6, 3)):
        ops = [_1f1b_ops(f, p, m, s)[0] for s in range(p)]
        for s in range(p):
            want = sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            expect_equal(sorted(ops[s]), want, f"one_f_one_b(p={p}, m={m}, stage={s}): every F and B of micro-batches 0..{m - 1} once (sorted)")
        done, free, nxt, stored = {}, [0.0] * p, [0] * p, [0] * p
        while any(nxt[s] < len(ops[s]) for s in range(p)):
            moved = False
            for s in range(p):
                if nxt[s] == len(ops[s]):
                    continue
                kind, i = ops[s][nxt[s]]
                dep = (("F", s - 1, i) if s > 0 else None) if kind == "F" else (("B", s + 1, i) if s < p - 1 else ("F", s, i))
                if dep is not None and dep not in done:
                    continue
                start = max(free[s], done[dep] if dep else 0.0)
                done[(kind, s, i)] = free[s] = start + (1.0 if kind == "F" else 2.0)
                nxt[s] += 1
                stored[s] += 1 if kind == "F" else -1
                expect_true(stored[s] <= p - s, f"one_f_one_b(p={p}, m={m}): stage {s} holds {stored[s]} micro-batches' activations "
                            f"at once; 1F1B keeps at most p - stage = {p - s}")
                moved = True
            expect_true(moved, f"one_f_one_b(p={p}, m={m}): the stages' orders deadlock (a stage waits for work that another "
                        f"stage only does later); next ops: {[ops[s][nxt[s]] if nxt[s] < len(ops[s]) else None for s in range(p)]}")
        makespan = max(done.values())
        bubble = 1 - 3.0 * m * p / (p * makespan)
        expect_close(torch.tensor(bubble), torch.tensor(3.0 * (p - 1) / (3.0 * (m + p - 1))), f"the bubble of your schedule (p={p}, m={m})", atol=1e-9)


register(Exercise(
    id="12.one_f_one_b",
    points=3,
    minutes=15,
    signature="one_f_one_b(p: int stages, m: int micro-batches, stage: int) -> list of ('F', i) / ('B', i) in the order stage runs them",
    hint="warm up with a few forwards (how many depends on how far the stage is from the last one), then alternate, then drain.",
    hints=(
        "1F1B (PipeDream-Flush) runs a backward as soon as one is possible, so a stage never stores more micro-batches than "
        "the pipeline can have in flight below it. The last stage can start backwards right after its first forward.",
        "Three phases per stage s: a warm-up of forwards only (the further from the last stage, the more; never more than m), "
        "a steady state that alternates one forward with one backward (backwards oldest first), and a cool-down of the "
        "remaining backwards in micro-batch order.",
        "warm = ...\nops = [(\"F\", i) for i in range(warm)]\nfor i in range(m - warm):\n    ops += [(\"F\", ...), (\"B\", ...)]\n"
        "ops += [(\"B\", i) for i in range(..., m)]",
    ),
    checks=(
        Check("the order on every stage for p = 4, m = 8; p = 2, m = 3; p = 5, m = 2", _1f1b_order),
        Check("run on a timeline: no deadlock, at most p - stage micro-batches stored, GPipe's bubble", _1f1b_timeline),
    ),
    reference="lmlab.grading.chapters.ch12_ranks:reference_one_f_one_b",
))


def reference_one_f_one_b(p, m, stage):
    """lmlab's :func:`lmlab.parallel.pipeline.schedule_ops` for the 1F1B schedule."""
    return schedule_ops("1f1b", p, m, stage)
