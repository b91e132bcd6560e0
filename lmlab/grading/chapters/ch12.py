"""Chapter 12 graders (``exercises/12_parallelism.ipynb``). Warm-ups (1 point): ring schedule, ZeRO
memory, bubble, column-parallel forward, rank coordinates. Components: a ring all-reduce, a ZeRO-1
AdamW step, a row-parallel linear with its all-reduce, the 1F1B order, each over simulated ranks
(a list of tensors, one per rank). All in-process: no ranks are spawned.

Every check compares with a published number (ZeRO's 120 / 31.4 / 16.6 / 1.9 GB, GPipe's bubble),
an independent construction written here (a ring simulated in Python lists, the pipeline simulator's
measured idle time, ``F.linear`` with the unsplit weight, nested loops over the grid), or a property.
lmlab's own implementation is only the ``reference`` that the tests feed through the same checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_equal, expect_int, expect_tensor, expect_true
from lmlab.grading.chapters import ch12_ranks  # noqa: F401 (registers 12.ring_all_reduce_sim, 12.zero1_step, 12.row_parallel_forward, 12.one_f_one_b)
from lmlab.grading.chapters.ch12_ranks import ring_expected_chunk
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator
from lmlab.parallel.grid import RankGrid
from lmlab.parallel.pipeline import simulate
from lmlab.scaling.calculators import zero_memory_per_gpu

# The notebook's order (12_parallelism.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "12.ring_send_chunk",
    "12.zero_bytes_per_gpu",
    "12.bubble_fraction",
    "12.column_parallel_forward",
    "12.rank_coords",
    "12.ring_all_reduce_sim",
    "12.zero1_step",
    "12.row_parallel_forward",
    "12.one_f_one_b",
)


# ---------------------------------------------------------------------------------------------
# 12.ring_send_chunk
# ---------------------------------------------------------------------------------------------


def _ring_small(f):
    for n in (2, 3, 4):
        table = [[expect_int(f(r, s, n), f"ring_send_chunk({r}, {s}, {n})") for r in range(n)] for s in range(2 * (n - 1))]
        expected = [[ring_expected_chunk(r, s, n) for r in range(n)] for s in range(2 * (n - 1))]
        expect_equal(table, expected, f"the send table for N = {n} (rows = steps, columns = ranks)")


def _ring_simulated(f):
    for n in (3, 5, 8):
        data = [[10 ** r * (c + 1) for c in range(n)] for r in range(n)]
        total = [sum(data[r][c] for r in range(n)) for c in range(n)]
        for s in range(2 * (n - 1)):
            sent = [(f(r, s, n), None) for r in range(n)]
            sent = [(c, data[r][c]) for r, (c, _) in enumerate(sent)]
            for r in range(n):
                c, v = sent[(r - 1) % n]  # received from the left neighbour
                data[r][c] = data[r][c] + v if s < n - 1 else v
        expect_equal(data, [total] * n, f"every rank's chunks after running your schedule on a simulated ring of {n} "
                     "(reduce-scatter adds what arrives, all-gather copies it)")


register(Exercise(
    id="12.ring_send_chunk",
    points=1,
    signature="ring_send_chunk(rank: int, step: int, n_ranks: int) -> int (the chunk index sent at step, 0 <= step < 2(N-1))",
    hint="two phases of N - 1 steps; in each, the chunk a rank sends moves one place round the ring per step. Where does rank r's finished chunk sit when the reduce-scatter ends?",
    minutes=5,
    hints=(
        "Ring all-reduce cuts each tensor into N chunks. In the reduce-scatter every rank passes one chunk to its "
        "right neighbour per step and adds what arrives from the left; after N - 1 steps each rank holds one finished "
        "chunk. The all-gather then passes the finished chunks round the ring.",
        "Reduce-scatter (step < N - 1): rank r first sends chunk r, then one chunk lower every step (mod N). When it "
        "ends, rank r holds the finished chunk r + 1 (mod N); in the all-gather it sends that one first, then again "
        "one lower per step.",
        "if step < n_ranks - 1:\n    return ...  # reduce-scatter\n"
        "return ...  # all-gather, starting from the finished chunk",
    ),
    checks=(
        Check("the send table for N = 2, 3, 4", _ring_small),
        Check("your schedule, run on a simulated ring of 3, 5 and 8 ranks, all-reduces", _ring_simulated),
    ),
    reference="lmlab.parallel.collectives:ring_send_chunk",
))

# ---------------------------------------------------------------------------------------------
# 12.zero_bytes_per_gpu
# ---------------------------------------------------------------------------------------------


def _zero_paper(f):
    paper = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in paper.items():
        what = f"zero_bytes_per_gpu(7.5e9, 64, {stage}) / 1e9 (ZeRO paper, Fig. 1)"
        got = f(7.5e9, 64, stage)
        expect_true(isinstance(got, (int, float)) and not isinstance(got, bool), f"{what}: return a number of bytes, got {got!r}")
        expect_equal(round(got / 1e9, 1), gb, what)


def _zero_formula(f):
    for psi, n in ((1000, 4), (1240, 2), (10**9, 8), (3, 1)):
        b = {"params": 2 * psi, "grads": 2 * psi, "optimizer": 12 * psi}
        for stage in range(4):
            shard = {"optimizer": stage >= 1, "grads": stage >= 2, "params": stage >= 3}
            expected = sum(v / (n if shard[k] else 1) for k, v in b.items())
            expect_close(torch.tensor(float(f(psi, n, stage)), dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                         f"zero_bytes_per_gpu({psi}, {n}, {stage})", rtol=1e-9, atol=1e-6)


register(Exercise(
    id="12.zero_bytes_per_gpu",
    points=1,
    signature="zero_bytes_per_gpu(n_params, n_gpus, stage in 0..3) -> bytes per GPU (mixed-precision Adam)",
    hint="three parts per parameter: 16-bit weights, 16-bit gradients, fp32 optimizer state (master copy, momentum, variance); which parts does each stage shard?",
    minutes=5,
    hints=(
        "Mixed-precision Adam stores 16 bytes per parameter: 2 for the 16-bit weights, 2 for the 16-bit gradients and "
        "12 for the FP32 optimizer state (master weights, momentum, variance). ZeRO removes the copies by sharding "
        "these across the data-parallel GPUs.",
        "Stage 1 shards the optimizer state, stage 2 the gradients as well, stage 3 the weights as well: a sharded "
        "part is divided by n_gpus, the rest stays whole. Stage 0 is plain data parallelism.",
        "params, grads, optimizer = ..., ..., ...  # bytes\n...  # divide the parts this stage shards by n_gpus\n"
        "return ...",
    ),
    checks=(
        Check("7.5B parameters on 64 GPUs: 120 / 31.4 / 16.6 / 1.9 GB", _zero_paper),
        Check("the formula on other sizes, including N = 1", _zero_formula),
    ),
    reference="lmlab.grading.chapters.ch12:reference_zero_bytes_per_gpu",
))


def reference_zero_bytes_per_gpu(n_params, n_gpus, stage):
    """The total of lmlab's :func:`lmlab.scaling.calculators.zero_memory_per_gpu` (mixed precision, Adam)."""
    return zero_memory_per_gpu(n_params, n_gpus, stage)["total"]

# ---------------------------------------------------------------------------------------------
# 12.bubble_fraction
# ---------------------------------------------------------------------------------------------


def _bubble_reference_numbers(f):
    what = "bubble_fraction(4, 8)"
    got = f(4, 8)
    expect_true(isinstance(got, (int, float)) and not isinstance(got, bool) or hasattr(got, "numerator"), f"{what}: return a number, got {got!r}")
    expect_close(torch.tensor(float(got)), torch.tensor(3 / 11), what + " (GPipe: idle / total time)", atol=1e-9)
    expect_close(torch.tensor(float(f(1, 5))), torch.tensor(0.0), "bubble_fraction(1, 5) (one stage never idles)", atol=1e-9)


def _bubble_simulated(f):
    for p, m in ((2, 1), (3, 5), (4, 4), (8, 3), (6, 32)):
        measured = simulate("gpipe", p, m).bubble  # idle slots / (p x makespan), on a timeline
        expect_close(torch.tensor(float(f(p, m))), torch.tensor(measured), f"bubble_fraction({p}, {m}) vs the idle fraction "
                     "measured on a simulated GPipe timeline", atol=1e-9)


register(Exercise(
    id="12.bubble_fraction",
    points=1,
    signature="bubble_fraction(p: int stages, m: int micro-batches) -> float (idle fraction of the total time)",
    hint="count the time slots from the first stage's first forward to the last stage's last one, and how many of them one stage works.",
    minutes=3,
    hints=(
        "In GPipe a pipeline of p stages runs m micro-batches; the stages wait while the pipe fills and drains. The "
        "idle share of the timeline is the bubble.",
        "Count in slots of one micro-batch's forward on one stage: from the first stage's first slot to the last "
        "stage's last there are m + p - 1 slots, and one stage works in m of them. (The backward pass repeats the "
        "pattern and gives the same ratio.)",
        "total = ...  # slots from start to finish\nbusy = ...  # slots in which one stage works\n"
        "return ...  # the idle fraction",
    ),
    checks=(
        Check("p = 4, m = 8 gives 3/11; one stage gives 0", _bubble_reference_numbers),
        Check("equals the idle fraction of simulated GPipe timelines", _bubble_simulated),
    ),
    reference="lmlab.scaling.calculators:bubble",  # a Fraction; its default definition is GPipe's
))

# ---------------------------------------------------------------------------------------------
# 12.column_parallel_forward
# ---------------------------------------------------------------------------------------------


def _col_case(f, tp, bias, seed, shape=(2, 3, 8), out=12):
    g = check_generator(seed)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(out, shape[-1], generator=g)
    b = torch.randn(out, generator=g) if bias else None
    w_shards = list(w.chunk(tp, dim=0))
    b_shards = list(b.chunk(tp)) if bias else None
    what = f"column_parallel_forward(x {tuple(shape)}, {tp} weight shards of {tuple(w_shards[0].shape)}, {'bias shards' if bias else 'None'})"
    got = expect_tensor(f(x, w_shards, b_shards), what, shape=(*shape[:-1], out))
    expect_close(got, F.linear(x, w, b), what + " vs F.linear with the unsplit weight", atol=1e-5)


def _col_bias(f):
    _col_case(f, 2, True, 120)
    _col_case(f, 4, True, 121, shape=(5, 8), out=8)


def _col_no_bias(f):
    _col_case(f, 3, False, 122)
    _col_case(f, 1, False, 123, shape=(4, 8), out=6)


register(Exercise(
    id="12.column_parallel_forward",
    points=1,
    signature="column_parallel_forward(x: (..., in), weight_shards: list of (out/tp, in), bias_shards: list of (out/tp,) or None) -> (..., out)",
    hint="each rank computes its own slice of the output features; how do slices of features go back together?",
    minutes=5,
    hints=(
        "A column-parallel linear layer (Megatron) splits the weight by its output rows: rank r holds W_r (out/tp, in) "
        "and computes its slice of the output features from the full input. No communication is needed until the "
        "slices are joined.",
        "Rank r computes F.linear(x, W_r, b_r): (..., out/tp). Join the slices along the last (feature) dim in rank "
        "order: (..., out). bias_shards may be None, which means no bias.",
        "biases = ...  # the bias shards, or one None per rank\nslices = [... for w, b in zip(weight_shards, biases)]\n"
        "return torch.cat(slices, dim=...)",
    ),
    checks=(
        Check("2 and 4 shards with bias equal F.linear with the whole weight", _col_bias),
        Check("without bias, and with a single shard", _col_no_bias),
    ),
    reference="lmlab.grading.chapters.ch12:reference_column_parallel_forward",
))


def reference_column_parallel_forward(x, weight_shards, bias_shards):
    """Each shard's slice of the output features, concatenated: ``(..., in) -> (..., out)``."""
    biases = bias_shards if bias_shards is not None else [None] * len(weight_shards)
    return torch.cat([F.linear(x, w, b) for w, b in zip(weight_shards, biases)], dim=-1)

# ---------------------------------------------------------------------------------------------
# 12.rank_coords
# ---------------------------------------------------------------------------------------------


def _grid_expected(dp, pp, tp):
    out, r = {}, 0
    for d in range(dp):
        for p in range(pp):
            for t in range(tp):  # tensor parallel fastest: neighbours share a node
                out[r] = (d, p, t)
                r += 1
    return out


def _coords_case(f, dp, pp, tp):
    for rank, expected in _grid_expected(dp, pp, tp).items():
        what = f"rank_coords({rank}, dp={dp}, pp={pp}, tp={tp})"
        got = f(rank, dp, pp, tp)
        expect_equal(tuple(got) if isinstance(got, (list, tuple)) else got, expected, what + " -> (dp, pp, tp)")


def _coords_small(f):
    _coords_case(f, 2, 2, 2)
    _coords_case(f, 1, 3, 2)


def _coords_bloom(f):
    _coords_case(f, 2, 3, 4)
    for rank, expected in ((0, (0, 0, 0)), (5, (0, 1, 1)), (48, (1, 0, 0)), (383, (7, 11, 3)), (201, (4, 2, 1))):
        got = f(rank, 8, 12, 4)
        expect_equal(tuple(got) if isinstance(got, (list, tuple)) else got, expected, f"rank_coords({rank}, 8, 12, 4) (BLOOM's grid)")


register(Exercise(
    id="12.rank_coords",
    points=1,
    signature="rank_coords(rank: int, dp: int, pp: int, tp: int) -> (d, p, t) tuple of ints",
    hint="like digits of a number in a mixed base: the fastest-changing coordinate is the last digit.",
    minutes=5,
    hints=(
        "3D parallelism numbers the GPUs so that tensor-parallel ranks are neighbours (the fastest links), then "
        "pipeline stages, then data-parallel replicas: rank = (d * pp + p) * tp + t.",
        "Invert that numbering: t is the remainder by tp; p is the next digit (divide by tp, then the remainder by "
        "pp); d is what is left after dividing by pp * tp.",
        "t = ...\np = ...\nd = ...\nreturn d, p, t",
    ),
    checks=(
        Check("every rank of 2 x 2 x 2 and 1 x 3 x 2 grids", _coords_small),
        Check("a 2 x 3 x 4 grid and BLOOM's 8 x 12 x 4", _coords_bloom),
    ),
    reference="lmlab.grading.chapters.ch12:reference_rank_coords",
))


def reference_rank_coords(rank, dp, pp, tp):
    """``(d, p, t)`` of ``rank`` from lmlab's :class:`lmlab.parallel.RankGrid`."""
    return tuple(RankGrid(dp=dp, pp=pp, tp=tp).coords(rank).values())
