"""Lesson 12's experiments (``lessons/12_parallelism``): one 2-rank launch, calculators, the simulator.

- :func:`lesson_checks` is the worker the lesson launches on 2 ranks (it must live in an importable
  module): ring all-reduce vs ``all_reduce``, data parallel and ZeRO 0-3 vs one process, measured
  bytes and traffic, a Megatron tensor-parallel block with its all-reduces counted, FSDP2, the pipeline
  schedules, and :func:`lmlab.course.experiments.ch12_spmd.spmd_step` (the code the lesson first runs in-process).
- :func:`run_two_ranks` launches it; everything else is arithmetic (:mod:`lmlab.scaling.calculators`), a
  parameter count on the meta device (:func:`lmlab.scaling.counting.count_params` of the LLaMA preset's
  flavors, :func:`lmlab.scaling.calculators.bloom_params`) or the pipeline simulator
  (:mod:`lmlab.parallel.pipeline`), so it costs nothing.
- Figures: :func:`ring_figure`, :func:`zero_figure`, :func:`gantt_figure`, :func:`bubble_figure`,
  :func:`planner_figure` (the 3D-parallelism planner widget).
"""

from __future__ import annotations

import functools

import plotly.graph_objects as go
import torch.nn.functional as F

from lmlab.course.experiments.ch12_spmd import spmd_inputs, spmd_step
from lmlab.course.widgets import style_figure
from lmlab.model.llama import llama_config
from lmlab.parallel import workers
from lmlab.parallel.collectives import ring_send_schedule  # noqa: F401 (re-exported)
from lmlab.parallel.grid import RankGrid
from lmlab.parallel.in_process import run_in_process
from lmlab.parallel.launch import launch
from lmlab.parallel.pipeline import simulate
from lmlab.parallel.transport import DistRanks
from lmlab.parallel.zero import ZERO_STAGES, ZeroOptimizer
from lmlab.scaling import calculators as calc
from lmlab.scaling.counting import count_params

__all__ = ["lesson_checks", "run_two_ranks", "ring_send_schedule", "ring_figure", "zero_table", "zero_figure",
           "bubble_sweep", "bubble_figure", "gantt_figure", "MODELS", "model_shape", "GPU_MEMORY_GB", "plan", "planner_figure",
           "bloom_layout"]

GB = 1e9


# -- the one launch ---------------------------------------------------------------------------


def lesson_checks(rank: int, world_size: int) -> dict:
    """Everything the lesson runs on real ranks, in one launch (runs in each spawned process)."""
    out: dict = {}
    data = workers.batches()
    reference = workers.reference_training(workers.mlp(), data)
    workers.check_collectives(out)  # ring all-reduce == all_reduce, sends counted
    workers.check_data_parallel(out, data, reference)  # naive + bucketed DP == one process
    workers.check_zero(out, data, reference)  # ZeRO 0-3 == one process; bytes and traffic measured
    workers.check_fsdp2(out, data, reference)  # torch's FSDP2 (fully_shard) == one process
    workers.check_tp_block(out)  # Megatron block: output/grads == one process, all-reduces counted
    workers.check_dtensor(out)  # torch's DTensor parallelize_module (Colwise/Rowwise) == lmlab's column/row layers
    # a 4-layer GPT cut into world_size stages, 8 micro-batches: GPipe and 1F1B (from scratch and torch's) == one process
    out["pipeline"] = {k: v for k, v in workers.check_pipeline(rank, world_size).items() if not k.startswith("ring")}
    # the lesson's in-process code, unchanged, on this gloo rank: ring, DP average, ZeRO-1 step, TP column -> row
    out["spmd"] = spmd_step(DistRanks(), spmd_inputs(world_size)[rank])
    return out


def run_two_ranks(timeout: float = 60.0) -> list[dict]:
    """Spawn 2 gloo ranks running :func:`lesson_checks`; returns both ranks' dicts."""
    return launch(lesson_checks, 2, timeout=timeout, join_timeout=240)


# -- ring all-reduce schedule -----------------------------------------------------------------


def ring_figure(n_ranks: int = 4) -> go.Figure:
    table = ring_send_schedule(n_ranks)
    steps = [f"{'RS' if s < n_ranks - 1 else 'AG'} {s}" for s in range(len(table))]
    fig = go.Figure(go.Heatmap(z=[list(col) for col in zip(*table)], x=steps, y=[f"rank {r}" for r in range(n_ranks)],
                               text=[[str(c) for c in col] for col in zip(*table)], texttemplate="chunk %{text}",
                               colorscale="Viridis", showscale=False))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="step (RS = reduce-scatter: add; AG = all-gather: copy)")
    return style_figure(fig, f"Ring all-reduce on {n_ranks} ranks: the chunk each rank sends to its right neighbour",
                        height=120 + 45 * n_ranks)


# -- ZeRO ----------------------------------------------------------------------------------------


def zero_table(n_params: float = 7.5e9, n_gpus: int = 64, precision: str = "mixed") -> list[dict]:
    """GB per GPU for ZeRO stages 0-3 (params, grads, optimizer, total) and traffic in units of Psi."""
    rows = []
    for stage in calc.ZERO_STAGES:
        m = calc.zero_memory_per_gpu(n_params, n_gpus, stage, precision)
        rows.append({"stage": stage, **{k: v / GB for k, v in m.items()},
                     "comm_psi": calc.zero_comm_volume(int(n_params), n_gpus, stage) / n_params})
    return rows


def zero_on_the_wire(n_ranks: int = 2, steps: int = 2) -> list[dict]:
    """ZeRO stages 0-3 on ``n_ranks`` in-process ranks (the chapter's MLP, Psi = 1,240): the elements each rank
    really sent per step (every collective is a ring of ``sendrecv`` calls; ``ThreadRanks.sent`` counts them),
    the formula, and the most gradient memory held during the step (ZeRO-2 reduce-scatters inside backward)."""
    data = workers.batches(steps)
    rows = []
    for stage in ZERO_STAGES:
        def rank_fn(ranks, rm, stage=stage):
            r, model = rm
            opt = ZeroOptimizer(model, stage, group=ranks, **workers.ADAMW)
            for x, y in data:
                F.mse_loss(model(x.chunk(n_ranks)[r]), y.chunk(n_ranks)[r]).backward()
                opt.step()
                opt.zero_grad()
            return ranks.sent / steps, opt.peak_grad_bytes

        # the models are built here: threads share one random stream
        sent, peak = run_in_process(rank_fn, [(r, workers.mlp()) for r in range(n_ranks)])[0]
        psi = sum(p.numel() for p in workers.mlp().parameters())
        rows.append({"stage": stage, "sent": sent, "formula": calc.zero_comm_volume(psi, n_ranks, stage),
                     "sent_psi": sent / psi, "peak_grad_bytes": peak, "full_grad_bytes": 4 * psi})
    return rows


def zero_figure(rows: list[dict], title: str = "ZeRO: memory per GPU, 7.5B parameters on 64 GPUs") -> go.Figure:
    fig = go.Figure()
    names = ["no ZeRO" if r["stage"] == 0 else f"stage {r['stage']}" for r in rows]
    for part, color in (("params", "#4c78a8"), ("grads", "#f58518"), ("optimizer", "#54a24b")):
        fig.add_bar(x=names, y=[r[part] for r in rows], name=part, marker_color=color)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="GB per GPU")
    for n, r in zip(names, rows):
        fig.add_annotation(x=n, y=r["total"], text=f"{r['total']:.1f} GB", showarrow=False, yshift=10)
    return style_figure(fig, title, height=380)


# -- pipeline --------------------------------------------------------------------------------------


def bubble_sweep(p: int = 4, ms=(1, 2, 4, 8, 16, 32)) -> list[dict]:
    """Simulated bubble (GPipe and 1F1B) against both formulas, for each number of micro-batches."""
    rows = []
    for m in ms:
        g, f = simulate("gpipe", p, m), simulate("1f1b", p, m)
        rows.append({"m": m, "sim_gpipe": g.bubble, "sim_1f1b": f.bubble, "gpipe": calc.bubble(p, m, "gpipe"),
                     "megatron": calc.bubble(p, m, "megatron"), "peak_gpipe": max(g.peak_activations),
                     "peak_1f1b": max(f.peak_activations)})
    return rows


def bubble_figure(rows: list[dict], p: int) -> go.Figure:
    ms = [r["m"] for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=ms, y=[r["sim_gpipe"] for r in rows], mode="markers", marker_size=12, name="simulated GPipe")
    fig.add_scatter(x=ms, y=[r["sim_1f1b"] for r in rows], mode="markers", marker_symbol="x", marker_size=9, name="simulated 1F1B")
    fig.add_scatter(x=ms, y=[float(r["gpipe"]) for r in rows], mode="lines", name="(p-1)/(m+p-1)  (of total time)")
    fig.add_scatter(x=ms, y=[float(r["megatron"]) for r in rows], mode="lines", line_dash="dash", name="(p-1)/m  (of ideal time)")
    fig.update_xaxes(title="micro-batches m", type="log")
    fig.update_yaxes(title="bubble")
    return style_figure(fig, f"Pipeline bubble, p = {p} stages", height=380)


def gantt_figure(schedule: str = "gpipe", p: int = 4, m: int = 8) -> tuple[go.Figure, str]:
    """A Gantt chart of :func:`lmlab.parallel.pipeline.simulate` (t_backward = 2 t_forward)."""
    res = simulate(schedule, p, m)
    fig = go.Figure()
    for kind, color in (("F", "#4c78a8"), ("B", "#e45756")):
        ev = [e for e in res.events if e[1] == kind]
        fig.add_bar(y=[f"stage {e[0]}" for e in ev], x=[e[4] - e[3] for e in ev], base=[e[3] for e in ev],
                    orientation="h", marker_color=color, marker_line=dict(color="white", width=1),
                    text=[f"{kind}{e[2]}" for e in ev], textposition="inside", name="forward" if kind == "F" else "backward")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="time (forward = 1, backward = 2)", range=[0, res.makespan])
    fig.update_layout(barmode="overlay")
    note = (f"{schedule}: makespan {res.makespan:g}, simulated bubble {res.bubble:.3f} = (p-1)/(m+p-1) = "
            f"{calc.bubble(p, m)} ; micro-batches stored at once per stage: {res.peak_activations}")
    return style_figure(fig, f"{schedule.upper()} pipeline, p = {p}, m = {m}", height=140 + 40 * p), note


# -- the 3D planner -----------------------------------------------------------------------------------

def _shape(cfg, n_params: int) -> dict:
    """What the planner needs of a model: parameters, width, depth, heads, sequence length."""
    return dict(n_params=n_params, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                seq_len=cfg.context_length)


# The planner's models: counted on the meta device the first time the planner asks (not at import).
MODELS = {
    "BLOOM-176B": lambda: _shape(calc.bloom_config(), calc.bloom_params()),
    "LLaMA-2-70B": lambda: _shape(llama_config("llama2_70b"), count_params(llama_config("llama2_70b"))),
    "LLaMA-2-7B": lambda: _shape(llama_config("llama2_7b"), count_params(llama_config("llama2_7b"))),
}


@functools.lru_cache(maxsize=None)
def model_shape(model: str) -> dict:
    """``MODELS[model]``'s parameters, width, depth, heads and sequence length (counted once)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
    return MODELS[model]()
GPU_MEMORY_GB = {"A100 80GB": 80, "A100 40GB": 40, "H100 80GB": 80, "V100 32GB": 32, "RTX 4090 24GB": 24}


def plan(model: str = "BLOOM-176B", n_gpus: int = 384, dp: int = 8, tp: int = 4, pp: int = 12, zero_stage: int = 1,
         n_micro: int = 8, micro_batch: int = 1, precision: str = "mixed", recompute: str = "selective",
         schedule: str = "1f1b", gpu_gb: float = 80) -> dict:
    """Memory per GPU (GB: params, grads, optimizer, activations), bubble and bytes sent per GPU per step
    for a (dp, tp, pp) layout. Model states: the replica's ``N / (tp pp)`` parameters under ZeRO over ``dp``.
    Activations: Korthikanti et al.'s per-layer formula x layers per stage x micro-batches in flight on the
    first stage (GPipe: m; 1F1B: min(m, p)). Communication: ZeRO/DP gradients, TP all-reduces, PP sends,
    in 16-bit (4 bytes per element in fp32)."""
    cfg = model_shape(model)
    problems = []
    if dp * tp * pp != n_gpus:
        problems.append(f"dp x tp x pp = {dp * tp * pp} is not the {n_gpus} GPUs")
    if cfg["n_heads"] % tp:
        problems.append(f"tp = {tp} does not divide the {cfg['n_heads']} heads")
    layers = -(-cfg["n_layers"] // pp)  # the busiest stage
    elem = 4 if precision == "fp32" else 2
    states = calc.zero_memory_per_gpu(cfg["n_params"] / (tp * pp), dp, zero_stage, precision)
    per_layer = calc.activation_memory_per_layer(cfg["seq_len"], micro_batch, cfg["d_model"], cfg["n_heads"], tp,
                                                 recompute=recompute) * elem / 2
    in_flight = n_micro if schedule == "gpipe" else min(n_micro, pp)
    act = per_layer * layers * in_flight
    local_params = int(cfg["n_params"] / (tp * pp))
    comm = {"dp": calc.zero_comm_volume(local_params, dp, zero_stage) * elem,
            "tp": calc.tp_comm_volume(micro_batch, cfg["seq_len"], cfg["d_model"], tp, layers) * n_micro * elem if tp > 1 else 0.0,
            "pp": calc.pp_comm_volume(micro_batch, cfg["seq_len"], cfg["d_model"], n_micro) * elem if pp > 1 else 0}
    total = states["total"] + act
    if total > gpu_gb * GB:
        problems.append(f"needs {total / GB:.1f} GB per GPU > {gpu_gb} GB")
    return {"params": states["params"] / GB, "grads": states["grads"] / GB, "optimizer": states["optimizer"] / GB,
            "activations": act / GB, "total": total / GB, "bubble": calc.bubble(pp, n_micro),
            "comm_gb": {k: v / GB for k, v in comm.items()}, "fits": not problems, "problems": problems,
            "n_params": cfg["n_params"], "global_batch": dp * n_micro * micro_batch, "in_flight": in_flight,
            "schedule": schedule}


def planner_figure(model="BLOOM-176B", gpu="A100 80GB", n_gpus=384, dp=8, tp=4, pp=12, zero_stage=1, n_micro=8,
                   precision="mixed", recompute="selective", schedule="1f1b") -> tuple[go.Figure, str]:
    gpu_gb = GPU_MEMORY_GB[gpu]
    r = plan(model, n_gpus, dp, tp, pp, zero_stage, n_micro, 1, precision, recompute, schedule, gpu_gb)
    fig = go.Figure()
    parts = ("params", "grads", "optimizer", "activations")
    fig.add_bar(x=list(parts) + ["total"], y=[r[k] for k in parts] + [r["total"]],
                marker_color=["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756" if not r["fits"] else "#72b7b2"],
                # label each bar; the total's label also names what is wrong with the layout (e.g. dp x tp x pp
                # not matching the GPU count), so every control shows on the plot itself
                text=[f"{r[k]:.1f}" for k in parts[:3]] + [f"{r['activations']:.1f} ({r['in_flight']} in flight, {r['schedule']})"] + [f"{r['total']:.1f}" + ("" if r["fits"] else " ⚠ " + "; ".join(r["problems"]))],
                textposition="outside", cliponaxis=False)
    fig.add_hline(y=gpu_gb, line_dash="dash", annotation_text=f"{gpu}: {gpu_gb} GB")
    fig.update_yaxes(title="GB per GPU")
    c = r["comm_gb"]
    note = (f"{model}: {r['n_params'] / 1e9:.1f}B params · {'fits' if r['fits'] else 'DOES NOT FIT: ' + '; '.join(r['problems'])}"
            f" · bubble {float(r['bubble']):.1%} of the step · sent per GPU per step: DP {c['dp']:.2f} GB, "
            f"TP {c['tp']:.2f} GB, PP {c['pp']:.3f} GB · global batch {r['global_batch']} sequences")
    return style_figure(fig, f"Memory per GPU: dp {dp} × tp {tp} × pp {pp}, ZeRO-{zero_stage}", height=380), note


def bloom_layout() -> dict:
    """BLOOM-176B on paper: parameters, the 8 x 4 x 12 layout, and the planner's numbers for it at
    BLOOM's global batch of 2048 sequences (per replica: 128 micro-batches of 2), assuming full
    activation recomputation (activation checkpointing)."""
    layout = calc.parallel_layout(384, 8, 4, 12)
    grid = RankGrid(dp=8, pp=12, tp=4, world_size=384)
    return {"n_params": calc.bloom_params(), "layout": layout, "rank0_groups": {d: grid.group_of(0, d) for d in ("dp", "pp", "tp")},
            "last_rank": grid.coords(383), "plan": plan("BLOOM-176B", 384, 8, 4, 12, 1, n_micro=128, micro_batch=2, recompute="full")}
