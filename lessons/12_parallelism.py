# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 12 · Scalable training on simulated GPUs: data, ZeRO, tensor and pipeline parallelism
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/12_parallelism.ipynb)
#
# **Goals**
# - Build a ring all-reduce from send/recv and count its traffic: $2(N-1)/N$ of the data per rank.
# - Write the ring, data parallel's gradient average, a ZeRO-1 step and Megatron's column/row split once,
#   run them on in-process ranks (a list of tensors), then the very same functions on gloo processes.
# - Run data parallelism, ZeRO stages 0–3 and a Megatron tensor-parallel block on real processes
#   ("simulated GPUs": CPU ranks talking through `torch.distributed`/gloo) and check each gives the
#   same model as one process, with memory and messages counted.
# - Reproduce the ZeRO paper's memory per GPU (7.5B parameters, 64 GPUs: 120 / 31.4 / 16.6 / 1.9 GB)
#   and the pipeline bubble in both of its definitions.
# - Plan BLOOM-176B's 8 × 4 × 12 layout on 384 GPUs on paper.

# %%
# Colab setup: install lmlab (Colab already has torch, so it is not reinstalled) and turn on
# widgets. Anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "lmlab @ git+https://github.com/lmlab-course/lmlab"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()
    import plotly.io as pio

    pio.renderers.default = "colab"

# %%
from fractions import Fraction

import torch
from ipywidgets import Dropdown, IntSlider

from lmlab.scaling import calculators as calc
from lmlab.course.doctor import doctor
from lmlab.course.experiments import ch12_parallelism as P
from lmlab.parallel import RankGrid
from lmlab.parallel.pipeline import render, simulate
from lmlab.course.widgets import FigureExplorer

info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# One GPU cannot hold a 100B-parameter model, nor train it in a lifetime. Four ways to split the work
# over $N$ devices, each trading memory for communication:
#
# | scheme | what is split | what travels each step |
# |---|---|---|
# | **data parallel (DP)** | the batch; every rank holds the whole model | an all-reduce of all gradients: $\approx 2\Psi$ elements per rank |
# | **ZeRO 1/2/3** (FSDP = stage 3) | DP, plus the optimizer state (1), the gradients (2), the parameters (3) | $2\Psi$ (stages 1–2), $3\Psi$ (stage 3) |
# | **tensor parallel (TP, Megatron)** | each weight matrix, by columns then rows | 2 all-reduces of the activations per layer forward, 2 backward |
# | **pipeline parallel (PP)** | the layers, into $p$ stages; the batch into $m$ micro-batches | one activation per micro-batch per stage boundary; idle **bubble** $\frac{p-1}{m+p-1}$ |
#
# The workhorse collective is the **ring all-reduce**. $N$ ranks in a ring cut their vector into $N$
# chunks. In $N-1$ *reduce-scatter* steps each rank sends one chunk right and *adds* the chunk it
# receives; then rank $r$ holds the full sum of chunk $(r+1) \bmod N$. In $N-1$ *all-gather* steps
# the finished chunks are passed on and *copied*. Each rank sends $2(N-1)$ chunks of $n/N$ elements:
#
# $$\text{sent per rank} = 2\,\frac{N-1}{N}\, n ,$$
#
# nearly independent of $N$ — the reason the ring is bandwidth-optimal. Bandwidth is not the whole
# cost, though: every one of the $2(N-1)$ steps also pays a fixed latency $\alpha$ (start-up per
# message), and with $\beta$ seconds per element sent the α–β cost model gives
#
# $$T_{\text{ring}} = 2(N-1)\,\alpha + 2\,\frac{N-1}{N}\, n\,\beta ,$$
#
# whose latency term *grows* with $N$: for small messages or many ranks the ring loses to tree-shaped
# all-reduces ($\approx 2\log_2 N$ steps), which is why NCCL switches between them. The picture: the
# chunk each rank sends at each step (rank $r$ sends $(r - s) \bmod N$ in reduce-scatter step $s$).

# %%
alpha, beta = 5e-6, 1 / 25e9 * 2  # illustrative: 5 µs per message, 25 GB/s links, 2-byte elements
for n_elems in (1e4, 1e9):
    cost = {N: (2 * (N - 1) * alpha, 2 * (N - 1) / N * n_elems * beta) for N in (2, 8, 64, 512)}
    print(f"n = {n_elems:.0e} elements: " + ", ".join(f"N={N}: latency {a * 1e3:.2f} ms + bandwidth {b_ * 1e3:.2f} ms"
                                                   for N, (a, b_) in cost.items()))
P.ring_figure(4).show()

# %% [markdown]
# With mixed-precision Adam each parameter costs $2 + 2 + 12 = 16$ bytes (16-bit weights and
# gradients; fp32 master weights, momentum and variance). ZeRO divides the part it shards by $N$:
#
# $$M_{\text{stage 0}} = 16\Psi,\quad M_1 = 4\Psi + \tfrac{12\Psi}{N},\quad M_2 = 2\Psi + \tfrac{14\Psi}{N},\quad M_3 = \tfrac{16\Psi}{N}.$$

# %% [markdown]
# ### First in one process: ranks as a list of tensors
#
# Every algorithm of this chapter is written **once**, as the code *one rank* runs, against a tiny
# interface, `lmlab.parallel.transport.Ranks`: its `rank` and `size`, a `sendrecv` with a neighbour, and three
# collectives (all-reduce, reduce-scatter, all-gather). Two worlds implement it:
#
# - `ThreadRanks` (`lmlab.parallel.in_process`): $N$ ranks inside this process, one thread each — a list of
#   tensors standing for the ranks, every message a copy through a queue. Its collectives *are* the ring below,
#   built on `sendrecv`.
# - `DistRanks` (`lmlab.parallel.transport`): real processes talking through `torch.distributed` (gloo on CPUs),
#   used in section 2.
#
# The only code that differs between the two is how one message travels:

# %%
import inspect

from lmlab.course.experiments import ch12_spmd as S
from lmlab.parallel.data_parallel import average_gradients
from lmlab.parallel.in_process import ThreadRanks, run_in_process, simulated_ring_all_reduce
from lmlab.parallel.transport import DistRanks

print(inspect.getsource(ThreadRanks.sendrecv))
print(inspect.getsource(DistRanks.sendrecv))

# %% [markdown]
# The ring all-reduce as every rank runs it — here on 4 in-process ranks, in section 2 on gloo processes.
# `ring_all_reduce` pads the vector to a multiple of $N$ and cuts it into $N$ chunks. **Reduce-scatter**:
# for $N-1$ steps every rank sends one chunk to its right neighbour and adds the chunk arriving from its left
# one, so afterwards each rank holds one finished sum. **All-gather**: $N-1$ more steps pass the finished chunks
# around, copying instead of adding. (You will write it in the exercises, so its code is not printed here.)

# %%
g = torch.Generator().manual_seed(0)
sim_ranks = [torch.randn(8, generator=g, dtype=torch.float64) for _ in range(4)]  # 4 ranks, 2 elements per chunk
history = simulated_ring_all_reduce(sim_ranks)  # ring_all_reduce on 4 threads, every step recorded
print(f"{len(history)} steps; after the reduce-scatter (step {len(sim_ranks) - 2}) rank 0 holds the finished chunk 1:",
      history[len(sim_ranks) - 2][0].view(4, 2)[1].numpy().round(3), "=", torch.stack(sim_ranks).sum(0).view(4, 2)[1].numpy().round(3))
assert all(torch.allclose(h, torch.stack(sim_ranks).sum(0)) for h in history[-1])

# %% [markdown]
# Data parallel averages the gradients (an all-reduce, then $\div N$); ZeRO-1 reduce-scatters them, updates
# only its $1/N$ of the parameters with AdamW and all-gathers the result; Megatron's column-parallel layer
# needs no message forward, the row-parallel layer all-reduces its partial sums. `lmlab.parallel` runs these
# functions itself (`RowParallelLinear.forward` calls `row_parallel_forward`); the ZeRO-1 step and the
# column/row pair are exercises, so only data parallel's average and `spmd_step`, one rank's part of all four
# (calling the others by name), are printed:

# %%
for fn in (average_gradients, S.spmd_step):
    print(inspect.getsource(fn))

# %% [markdown]
# Run it on 4 in-process ranks and compare every rank's result with one process doing the same arithmetic
# unsplit (`S.spmd_reference`: the full batch's gradient, torch's own AdamW, the whole MLP):

# %%
inputs4 = S.spmd_inputs(4)  # rank r's vector, batch slice, gradient, W1 rows and W2 columns
threads4 = run_in_process(S.spmd_step, inputs4)
diff4 = S.max_differences(threads4, S.spmd_reference(inputs4))
print("4 in-process ranks vs one process, max |diff| (float64):", {k: f"{v:.1e}" for k, v in diff4.items()})
assert max(diff4.values()) < 1e-10

# %% [markdown]
# ## 2 · Build it, and run it on two processes
#
# The workers live in `lmlab/course/experiments/ch12_parallelism.py` (spawned processes import them by name: a
# function defined in a notebook cannot be spawned). **One** launch of 2 CPU ranks (~15 s) runs
# everything: the ring all-reduce against `torch.distributed.all_reduce`; data parallel and ZeRO
# stages 0–3 and torch's FSDP2 (`fully_shard`) trained 5 AdamW steps against one process on the whole
# batch; a transformer block split Megatron-style against the unsplit block; a 4-layer GPT cut
# into 2 pipeline stages running GPipe and 1F1B over 8 micro-batches (lmlab's from scratch and
# `torch.distributed.pipelining`'s) against one process; and `spmd_step` from above, unchanged, on
# `DistRanks()`. Every communication call goes through `lmlab.parallel.comm`, which counts calls and elements sent.

# %%
ranks = P.run_two_ranks()
r0 = ranks[0]
N, psi = r0["world"], r0["n_params"]
TOL = 1e-6

# ring all-reduce == dist.all_reduce, and its traffic is 2(N-1)/N of the data in 2(N-1) messages
for r in ranks:
    assert r["ring_vs_all_reduce"] <= TOL and r["ring_odd_size"] <= TOL
    assert abs(r["ring_sent_fraction"] - 2 * (N - 1) / N) < 1e-12 and r["ring_messages"] == 2 * (N - 1)
print(f"ring all-reduce vs dist.all_reduce: max |diff| {max(r['ring_vs_all_reduce'] for r in ranks):.1e}; "
      f"sent {r0['ring_sent_fraction']:.3f} of the data per rank in {r0['ring_messages']} messages "
      f"(formula 2(N-1)/N = {2 * (N - 1) / N:.3f}, N = {N})")

# %% [markdown]
# **On a real cluster.** The same parallel code trains the course's LLaMA (the capstone's: RoPE, GQA, SwiGLU,
# tied embeddings) from one entry point, on CPUs (gloo) or one GPU per process (NCCL):
# `torchrun --standalone --nproc_per_node=8 -m lmlab.parallel.train --dp 2 --tp 2 --pp 2 --zero 1 --device cuda`.
# `lmlab.parallel.parallelize.parallelize(model, grid)` applies tensor and pipeline parallelism from outside to
# the unchanged model; the tests check every layout gives one process's loss.

# %% [markdown]
# ### The in-process code, on the processes
#
# Each gloo rank ran `S.spmd_step(DistRanks(), S.spmd_inputs(2)[rank])`: the same function and inputs as the
# threads, only the world differs. Three-way check: gloo ranks vs 2 in-process ranks vs one process.

# %%
inputs2 = S.spmd_inputs(2)
gloo = [r["spmd"] for r in ranks]
vs_threads = S.max_differences(gloo, run_in_process(S.spmd_step, inputs2))
vs_one = S.max_differences(gloo, S.spmd_reference(inputs2))
print(f"{'max |diff| (float64)':<22}{'gloo vs threads':>16}{'gloo vs 1 process':>19}")
for k in vs_one:
    print(f"{k:<22}{vs_threads[k]:>16.1e}{vs_one[k]:>19.1e}")
same = max(vs_threads.values()) < 1e-10 and max(vs_one.values()) < 1e-10
print(f"Verdict: on gloo processes the code {'gives' if same else 'does NOT give'} what it gave in-process and in one process.")
assert same

# %% [markdown]
# ### Data parallel and ZeRO: the same model as one process
#
# The model is a small MLP with $\Psi$ = 1,240 parameters. For ZeRO's memory we run it in bf16 with an
# fp32 master copy (the paper's mixed-precision setting) and measure the bytes each rank really holds.

# %%
print(f"{'scheme':<22}{'max |Δ| vs 1 process':>22}{'sent/step (elements)':>22}{'calc':>8}")
print(f"{'DP naive':<22}{r0['dp_naive']:>22.1e}")
print(f"{'DP bucketed (2 micro)':<22}{r0['dp_bucketed']:>22.1e}{r0['dp_sent_per_step']:>22.0f}{calc.dp_comm_volume(psi, N):>8.0f}")
for s in range(4):
    print(f"{'ZeRO stage ' + str(s):<22}{r0[f'zero{s}']:>22.1e}{r0[f'zero{s}_sent_per_step']:>22.0f}{calc.zero_comm_volume(psi, N, s):>8.0f}")
print(f"\n{'bytes per rank':<16}{'params':>8}{'grads':>8}{'optimizer':>10}{'total':>8}   calculator (mixed precision)")
zero_ok = True
for s in range(4):
    m, c = r0[f"zero{s}_bytes"], calc.zero_memory_per_gpu(psi, N, s, "mixed")
    same = all(abs(m[k] - c[k]) < 1e-9 for k in c)
    zero_ok &= same
    print(f"{'ZeRO stage ' + str(s):<16}{m['params']:>8}{m['grads']:>8}{m['optimizer']:>10}{m['total']:>8}   "
          f"{c['total']:>8.0f} {'✔' if same else '✘'}")
equal = all(r[k] <= TOL for r in ranks for k in ("dp_naive", "dp_bucketed", "zero0", "zero1", "zero2", "zero3"))
ratio = r0["zero3_sent_per_step"] / r0["zero2_sent_per_step"]
print(f"\nVerdict: every scheme {'gives' if equal else 'does NOT give'} the same parameters as one process (≤ {TOL:g}); "
      f"measured bytes {'match' if zero_ok else 'do NOT match'} the calculator at every stage; "
      f"ZeRO-3 sends {ratio:.2f}× ZeRO-2 (the paper: 3Ψ vs 2Ψ = 1.5×).")
assert equal and zero_ok and abs(ratio - 1.5) < 1e-9

# %% [markdown]
# ### Where the seed is wrong: ZeRO does not reduce communication
#
# The seed says ZeRO "reduces communication". It reduces *memory*. Below, the same ZeRO code runs on 2
# in-process ranks, where every collective is a ring of `sendrecv` calls, so we can count the elements that
# really pass between ranks (not a formula times the number of calls). We also measure the most gradient
# memory a rank holds at once during the step: ZeRO-2 reduce-scatters each bucket inside backward (in
# post-accumulate-grad hooks) and frees it, so the whole gradient never exists at once.

# %%
wire = P.zero_on_the_wire(2)
print(f"{'stage':<8}{'sent/step':>10}{'formula':>9}{'× Ψ':>6}{'peak grad bytes':>17}{'full grad':>11}")
for w in wire:
    print(f"{w['stage']:<8}{w['sent']:>10.0f}{w['formula']:>9.0f}{w['sent_psi']:>6.2f}{w['peak_grad_bytes']:>17}{w['full_grad_bytes']:>11}")
same_as_dp = all(w["sent"] == wire[0]["sent"] for w in wire[1:3])
print(f"Verdict: stages 1 and 2 send {'exactly' if same_as_dp else 'NOT'} what plain data parallel sends "
      f"({wire[0]['sent_psi']:.2f} Ψ per rank at N = 2, i.e. 2(N-1)/N Ψ), stage 3 {wire[3]['sent'] / wire[0]['sent']:.2f}× as much: "
      f"ZeRO trades memory for the same or more traffic, so the seed's claim is wrong. "
      f"Measured peak gradient memory: stage 1 {wire[1]['peak_grad_bytes']} B (the whole gradient), "
      f"stage 2 {wire[2]['peak_grad_bytes']} B (one bucket plus the shards).")
assert same_as_dp and wire[3]["sent"] == 1.5 * wire[0]["sent"] and all(w["sent"] == w["formula"] for w in wire)
assert wire[2]["peak_grad_bytes"] < wire[1]["peak_grad_bytes"] == wire[1]["full_grad_bytes"]

# %% [markdown]
# ### Tensor parallel: a Megatron block on 2 ranks
#
# Attention heads and the FFN's hidden units are divided: $W_{qkv}$ and $W_{up}$ are split by
# **columns** (each rank computes its own heads/units, no communication), $W_{o}$ and $W_{down}$ by
# **rows** (each rank gets a partial sum, so an all-reduce follows). Forward: 2 all-reduces (after
# attention, after the FFN); backward: 2 (the gradients flowing into the two column-parallel inputs).

# %%
for kind in ("gelu", "llama"):
    fwd, bwd = r0[f"tp_block_{kind}_all_reduces"]
    out_d = max(r[f"tp_block_{kind}_out"] for r in ranks)
    grad_d = max(r[f"tp_block_{kind}_grad"] for r in ranks)
    ok = out_d <= TOL and grad_d <= TOL and (fwd, bwd) == (2, 2)
    print(f"{kind:>6} block: output Δ {out_d:.1e}, gradient Δ {grad_d:.1e}; all-reduces counted: {fwd} forward, {bwd} backward "
          f"→ {'matches' if ok else 'does NOT match'} Megatron's 2 + 2 per layer")
    assert ok

# %% [markdown]
# ### FSDP2 and the pipeline on the same 2 ranks
#
# FSDP2 shards every parameter across the ranks (ZeRO-3's layout, torch's implementation). The
# pipeline runs each rank as one stage; its gradients must equal the one-process gradients of the
# same layers with the *mean* of the micro-batch losses (torch's schedules divide by the number of
# micro-batches). The stage peak says how many micro-batches' activations a stage held at once:
# GPipe keeps all $m$, 1F1B at most $p$.

# %%
print(f"FSDP2 (fully_shard) vs one process after 5 AdamW steps: max |Δ| {max(r['fsdp2'] for r in ranks):.1e}")
pipe = [r["pipeline"] for r in ranks]
pipe_ok = max(r["fsdp2"] for r in ranks) <= TOL
for name in ("gpipe", "1f1b", "torch_gpipe", "torch_1f1b"):
    grad_d = max(p[f"{name}_grad"] for p in pipe)
    loss_d = abs(pipe[-1][f"{name}_loss"] - pipe[-1]["ref_loss"])
    peak = [p.get(f"{name}_peak") for p in pipe]
    pipe_ok &= grad_d <= TOL and loss_d <= TOL
    print(f"{name:<12} gradient Δ {grad_d:.1e}, loss Δ {loss_d:.1e}" + (f", micro-batches held per stage {peak}" if peak[0] else ""))
print("FSDP2 and both pipeline schedules give the one-process model on real ranks." if pipe_ok else
      "A sharded or pipelined run did NOT match one process.")
assert pipe_ok

# %% [markdown]
# ## 3 · Calculation: the ZeRO paper's memory per GPU
#
# ZeRO (Rajbhandari et al., 2020, Fig. 1): a 7.5B-parameter model on 64 GPUs with mixed-precision Adam.
# This is arithmetic (bytes per parameter ÷ N), checked against the paper's numbers — a calculation,
# not an experiment; section 2 *measured* the bytes on real processes. On communication the seed says
# "ZeRO reduces communication overhead": the paper says the opposite — stages 1–2 move as much as plain
# data parallel (2Ψ per step) and stage 3 1.5× as much (3Ψ); ZeRO trades communication for memory.
# Measured in section 2: ZeRO-3 sent 1.5× ZeRO-2.

# %%
rows = P.zero_table(7.5e9, 64)
paper = {0: 120, 1: 31.4, 2: 16.6, 3: 1.9}
for row in rows:
    match = round(row["total"], 1) == paper[row["stage"]]
    print(f"stage {row['stage']}: {row['total']:6.2f} GB per GPU (paper {paper[row['stage']]:>5} GB) "
          f"{'matches' if match else 'does NOT match'}; traffic {row['comm_psi']:.2f} Ψ per step (calculated)")
assert all(round(r["total"], 1) == paper[r["stage"]] for r in rows)
P.zero_figure(rows).show()

# %% [markdown]
# ## 4 · Experiment: the pipeline bubble, simulated
#
# The simulator runs every stage's operations as soon as their inputs arrive (backward takes twice the
# forward). Digits are forwards of micro-batch $i$, letters backwards ($a$ = micro-batch 0), dots are
# the bubble. GPipe runs all forwards, then all backwards; 1F1B alternates after a warm-up.

# %%
for schedule in ("gpipe", "1f1b"):
    res = simulate(schedule, 4, 8)
    print(f"{schedule}:\n{render(res)}\n  bubble {res.bubble:.4f}, micro-batches stored per stage {res.peak_activations}\n")

p, m = 4, 8
g, meg = calc.bubble(p, m, "gpipe"), calc.bubble(p, m, "megatron")
sim = simulate("gpipe", p, m).bubble
print(f"p = {p}, m = {m}: simulated {sim:.4f}; GPipe (p-1)/(m+p-1) = {g} = {float(g):.4f}; "
      f"Megatron (p-1)/m = {meg} = {float(meg):.4f}")
print(f"identity megatron = gpipe / (1 - gpipe): {g / (1 - g)} {'==' if g / (1 - g) == meg else '!='} {meg}; "
      f"bubble_identity holds for all p, m ≤ 16: {all(calc.bubble_identity(a, b) for a in range(1, 17) for b in range(1, 17))}")
assert g == Fraction(3, 11) and meg == Fraction(3, 8) and abs(sim - float(g)) < 1e-12

# %% [markdown]
# **Predict, then run.** With $p = 4$ stages and $m = 64$ micro-batches, which schedule idles less — and which
# stores fewer micro-batches' activations? Choose before running the sweep below.

# %%
from ipywidgets import VBox
from lmlab.course.widgets import Prediction

predict_bubble = Prediction("At p = 4, m = 64, which schedule idles less?", ["GPipe", "1F1B", "the same"], description="smaller bubble")
predict_memory = Prediction("At p = 4, m = 64, which schedule stores fewer micro-batches?", ["GPipe", "1F1B", "the same"],
                            description="less memory")
VBox([predict_bubble, predict_memory])

# %%
sweep = P.bubble_sweep(4, (1, 2, 4, 8, 16, 32, 64))
agree = all(abs(r["sim_gpipe"] - float(r["gpipe"])) < 1e-12 and abs(r["sim_1f1b"] - float(r["gpipe"])) < 1e-12 for r in sweep)
print(f"Check (a simulation of a schedule, so a calculation that can still catch a wrong formula): simulated bubble {'equals' if agree else 'differs from'} (p-1)/(m+p-1) for GPipe and 1F1B at every m; "
      f"it falls from {sweep[0]['sim_gpipe']:.2f} (m = 1) to {sweep[-1]['sim_gpipe']:.3f} (m = 64). "
      f"Peak stored micro-batches at m = 64: GPipe {sweep[-1]['peak_gpipe']}, 1F1B {sweep[-1]['peak_1f1b']} "
      f"— 1F1B {'saves activation memory, not time' if sweep[-1]['peak_1f1b'] < sweep[-1]['peak_gpipe'] else 'saves nothing'}.")
P.bubble_figure(sweep, 4).show()

# %%
last = sweep[-1]
truth_bubble = "the same" if abs(last["sim_gpipe"] - last["sim_1f1b"]) < 1e-12 else ("GPipe" if last["sim_gpipe"] < last["sim_1f1b"] else "1F1B")
truth_memory = "the same" if last["peak_gpipe"] == last["peak_1f1b"] else ("GPipe" if last["peak_gpipe"] < last["peak_1f1b"] else "1F1B")
print(predict_bubble.reveal(truth_bubble))
print(predict_memory.reveal(truth_memory))

# %% [markdown]
# ### PipeDream: no flush, stale weights
#
# The seed mentions PipeDream. PipeDream (Narayanan et al., 2019) runs 1F1B *without* the flush at the
# end of the batch: each stage updates its weights after every backward while later micro-batches are
# still in flight, so there is no bubble in the steady state, but a forward runs on weights that are behind.
# Below, from the 1F1B event simulation: how many updates behind sequential SGD each forward is, per stage
# (PipeDream's weight stashing keeps that same version for the matching backward). 1F1B with a flush
# (PipeDream-Flush, Megatron, and what lmlab's pipeline runs) updates once per batch, with no staleness.

# %%
from lmlab.parallel.pipeline import pipedream_staleness, stale_sgd

for s_, row in enumerate(pipedream_staleness(4, 8)):
    print(f"stage {s_}: staleness of F_0..F_7 = {row}")
lrs = (0.3, 0.9)
print(f"\ngradient descent with the gradient k updates old (least squares; lr in units of 1/curvature), loss gap after 40 updates:")
gaps = {lr: [stale_sgd(k, lr)[-1] for k in range(4)] for lr in lrs}
for lr in lrs:
    print(f"  lr {lr}: " + ", ".join(f"k={k}: {g:.1e}" for k, g in enumerate(gaps[lr])))
print("Verdict: the first of 4 stages runs 3 updates behind; at a step size synchronous training takes "
      f"(lr 0.9) staleness 3 {'diverges' if gaps[0.9][3] > 1 else 'converges'} while k = 0 converges — "
      "asynchronous pipelines need smaller steps (or PipeDream-2BW's double-buffered weights), which is why "
      "large-model training uses 1F1B with a flush.")
assert pipedream_staleness(4, 8)[0][-1] == 3 and pipedream_staleness(4, 8)[3] == [0] * 8
assert gaps[0.9][0] < 1e-4 < 1 < gaps[0.9][3]

# %% [markdown]
# ## 5 · Widgets
#
# ### Pipeline schedule (Gantt chart)
#
# Blue: forward of micro-batch $i$ (F$i$); red: backward (B$i$). Move $p$ and $m$ and switch GPipe/1F1B:
# the white gaps (the bubble) depend only on $p$ and $m$, the stored micro-batches on the schedule.

# %%
gantt_explorer = FigureExplorer(
    make_figure=lambda schedule, p, m: P.gantt_figure(schedule, p, m),
    controls={"schedule": Dropdown(options=["gpipe", "1f1b"], value="gpipe", description="schedule"),
              "p": IntSlider(value=4, min=1, max=8, description="stages p"),
              "m": IntSlider(value=8, min=1, max=16, description="micro-batches m")},
    caption="Backward takes twice the forward. Bubble = (p-1)/(m+p-1) of the step, for both schedules.",
)
gantt_explorer

# %% [markdown]
# ### 3D-parallelism planner
#
# Pick a model and a layout. Bars: memory per GPU (model states under ZeRO over the DP group, for the
# replica's $\Psi / (t \cdot p)$ parameters; activations from Korthikanti et al.'s per-layer formula,
# times layers per stage, times micro-batches in flight on the first stage). The note gives the bubble
# and the bytes each GPU sends per step, and flags layouts that do not fit or do not multiply to the GPUs.

# %%
planner = FigureExplorer(
    make_figure=P.planner_figure,
    controls={
        "model": Dropdown(options=list(P.MODELS), value="BLOOM-176B", description="model"),
        "gpu": Dropdown(options=list(P.GPU_MEMORY_GB), value="A100 80GB", description="GPU"),
        "n_gpus": IntSlider(value=384, min=1, max=1024, description="GPUs"),
        "dp": IntSlider(value=8, min=1, max=128, description="data parallel"),
        "tp": IntSlider(value=4, min=1, max=16, description="tensor parallel"),
        "pp": IntSlider(value=12, min=1, max=64, description="pipeline parallel"),
        "zero_stage": IntSlider(value=1, min=0, max=3, description="ZeRO stage"),
        "n_micro": IntSlider(value=8, min=1, max=64, description="micro-batches"),
        "precision": Dropdown(options=list(calc.PRECISIONS), value="mixed", description="precision"),
        "recompute": Dropdown(options=list(calc.RECOMPUTE), value="selective", description="recompute"),
        "schedule": Dropdown(options=["gpipe", "1f1b"], value="1f1b", description="schedule"),
    },
    caption="Micro-batch of 1 sequence at the model's context length. Try LLaMA-2-70B with tp = 1, pp = 1.",
)
planner

# %% [markdown]
# ### Guided tasks with the planner
#
# Use the planner above (or `P.plan(...)`) to answer; then run the check cell. Leave `None` to skip a task.

# %%
from lmlab.course.experiments.ch12_planner import TASKS, check_answers

for key, question in TASKS.items():
    print(f"- {key}: {question}")
answers = {"fits_on_one_node": None, "smallest_tp_32_gpus_pp4": None, "smallest_pp_64_gpus_tp8": None}  # your answers

# %%
print("\n".join(check_answers(answers)))

# %% [markdown]
# ## 6 · BLOOM-176B on paper (a calculation)
#
# BLOOM (BigScience, 2022) trained on 384 A100-80GB: 8-way data × 4-way tensor × 12-way pipeline, with
# ZeRO stage 1. Its shape: $h = 14336$, 70 layers, vocabulary 250,880, tied embeddings, LayerNorm
# after the embedding, ALiBi (no position parameters).
#
# The rank order below is **lmlab's** convention (`lmlab.parallel.RankGrid`): tensor parallel fastest,
# then pipeline, then data outermost, `rank = (d·pp + p)·tp + t`. Megatron-DeepSpeed, which trained
# BLOOM, also keeps tensor parallel fastest but puts **pipeline outermost** (its topology's axes are
# pipe, data, model). Both keep each TP group inside one node, but they number the DP and PP groups
# differently: rank 4 is (data 0, stage 1) here and (data 1, stage 0) in Megatron-DeepSpeed.

# %%
b = P.bloom_layout()
print(f"BLOOM parameters: {b['n_params']:,} ≈ {b['n_params'] / 1e9:.1f}B  (12 L h² = {12 * 70 * 14336**2 / 1e9:.1f}B for the layers alone)")
print(f"layout: {b['layout']}")
print(f"rank 0's groups (lmlab's order, data outermost): tp {b['rank0_groups']['tp']}, pp {b['rank0_groups']['pp'][:4]}…(12), "
      f"dp {b['rank0_groups']['dp']}; rank 383 = {b['last_rank']}")
pl = b["plan"]
print(f"per GPU (ZeRO-1, 1F1B, global batch {pl['global_batch']} = 8 replicas × 128 micro-batches of 2 × 2048 tokens, "
      f"full recompute assumed): params {pl['params']:.1f} + grads "
      f"{pl['grads']:.1f} + optimizer {pl['optimizer']:.1f} + activations {pl['activations']:.1f} = {pl['total']:.1f} GB "
      f"→ {'fits' if pl['fits'] else 'does NOT fit'} in 80 GB; bubble {pl['bubble']} = {float(pl['bubble']):.1%} of the step")
one_gpu = calc.zero_memory_per_gpu(b["n_params"], 1, 0)["total"] / 1e9
print(f"without any parallelism the model states alone would need {one_gpu:,.0f} GB on one GPU.")
assert round(b["n_params"] / 1e9, 1) == 176.2 and b["layout"]["gpus_per_replica"] == 48

# %% [markdown]
# ### The seed's frameworks, and what torch ships today
#
# | the seed names | what it does | in torch itself | lmlab's from-scratch version |
# |---|---|---|---|
# | DeepSpeed ZeRO stage 1 / 2 | shard optimizer state / and gradients | `torch.distributed.optim.ZeroRedundancyOptimizer` (stage 1); FSDP2 `fully_shard(reshard_after_forward=False)` (≈ stage 2) | `lmlab.parallel.zero.ZeroOptimizer(stage=1/2)` |
# | DeepSpeed ZeRO stage 3 | shard parameters too | FSDP2 `torch.distributed.fsdp.fully_shard` | `ZeroOptimizer(stage=3)` |
# | Megatron-LM tensor parallel | column/row-parallel linears | DTensor `torch.distributed.tensor.parallel.parallelize_module` (`ColwiseParallel`, `RowwiseParallel`) | `lmlab.parallel.tensor_parallel`, applied by `lmlab.parallel.parallelize` |
# | GPipe, PipeDream-Flush (1F1B) | pipeline schedules | `torch.distributed.pipelining` (`ScheduleGPipe`, `Schedule1F1B`, interleaved) | `lmlab.parallel.pipeline.pipeline_step` |
# | Colossal-AI, Alpa | automatic / combined parallel plans | no auto-planner; combine the above on a `DeviceMesh` (torchtitan does) | `lmlab.parallel.train` (`--dp --tp --pp --zero`) |
#
# The 2-rank run above checked three rows of this table against lmlab's versions on real processes:

# %%
torch_checks = {
    "FSDP2 fully_shard vs one process (5 AdamW steps)": max(r["fsdp2"] for r in ranks),
    "DTensor Colwise/Rowwise vs lmlab column/row layers": max(r["dtensor_out"] for r in ranks),
    "pipelining Schedule1F1B vs one process (gradients)": max(p["torch_1f1b_grad"] for p in pipe),
}
for name, d in torch_checks.items():
    print(f"{name:<55} max |Δ| {d:.1e}")
print(f"Verdict: torch's own implementations {'agree' if max(torch_checks.values()) <= TOL else 'do NOT agree'} "
      f"with lmlab's from-scratch versions (≤ {TOL:g}) on these 2 gloo ranks.")
assert max(torch_checks.values()) <= TOL

# %% [markdown]
# ## 7 · Exercises
#
# Open [`exercises/12_parallelism.ipynb`](../exercises/12_parallelism.ipynb). You will write, and check
# as you go (all in-process, no spawning: a "rank" is an entry of a list). Five 1-point warm-ups
# (`ring_send_chunk`, `zero_bytes_per_gpu`, `bubble_fraction`, `column_parallel_forward`, `rank_coords`), then
# the components:
# - `ring_all_reduce_sim`: the ring all-reduce itself, reduce-scatter then all-gather, step by step;
# - `zero1_step`: one ZeRO-1 AdamW step (reduce-scatter grads, update your shard, all-gather), checked
#   against torch's AdamW on the full tensor;
# - `row_parallel_forward`: a row-parallel linear layer and its all-reduce;
# - `one_f_one_b`: the 1F1B schedule's order of forwards and backwards on each stage.
#
# Grade with `lmlab grade exercises/12_parallelism.ipynb`.
#
# ## 8 · Summary and further reading
#
# - A ring all-reduce sends $2(N-1)/N$ of the data per rank; data parallel needs one per step.
# - ZeRO shards optimizer state, gradients, then parameters: 16Ψ → 4Ψ + 12Ψ/N → 2Ψ + 14Ψ/N → 16Ψ/N
#   bytes, for the same traffic as data parallel at stages 1–2 and 1.5× at stage 3 (measured on the wire:
#   ZeRO saves memory, not communication, whatever the seed says). Every stage trains the same model.
# - PipeDream drops the flush: no bubble, but stale weights (the first of $p$ stages is $p-1$ updates behind).
# - Megatron TP: column- then row-parallel linears, 2 all-reduces forward and 2 backward per layer.
# - Pipelines idle for $(p-1)/(m+p-1)$ of the step (= $(p-1)/m$ of the ideal time); 1F1B keeps that
#   bubble but stores at most $p$ micro-batches instead of $m$.
# - Reading: Rajbhandari et al., *ZeRO* (2020); Shoeybi et al., *Megatron-LM* (2019); Narayanan et al.,
#   *Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM* (2021); Huang et al.,
#   *GPipe* (2019); Korthikanti et al., *Reducing Activation Recomputation in Large Transformer Models*
#   (2022); BigScience, *BLOOM* (2022); Zhao et al., *FSDP* (2023); Zhao et al., *A Survey of LLMs* (2023), section
#   *Pre-training*, subsection *Scalable Training Techniques* (cited by title, as the seed note names it: it gives
#   no section numbers).
