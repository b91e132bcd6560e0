# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Predictable scaling: count the FLOPs, fit small runs, predict the big run
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/10_scaling.ipynb)
#
# **Goals**
# - Count a model's **parameters by part** and its **training FLOPs**: the $6N$ rule, and the
#   attention term $12LTd$ it leaves out, checked against PyTorch's own FLOP counter.
# - Fit **scaling laws** the way the papers do: $L(C) = aC^b + c$ (GPT-4's report) and Chinchilla's
#   $L(N, D) = E + A/N^\alpha + B/D^\beta$, with a Huber loss, several starting points and bootstrap intervals.
# - **Predict the loss of a bigger run before training it**, then train it and score the prediction.
# - Size a model for a compute budget in closed form, and see why the famous "20 tokens per
#   parameter" is not what Chinchilla's published constants say.

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
import math
import time

import plotly.graph_objects as go
import torch
from ipywidgets import Checkbox, Dropdown, FloatSlider

from lmlab.scaling import counting as scaling
from lmlab.course.doctor import doctor
from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config
from lmlab.scaling.fit import bootstrap_power_law, fit_chinchilla, fit_power_law
from lmlab.course.widgets import FigureExplorer, style_figure

info = doctor()  # versions, device, and whether widgets will render
torch.set_num_threads(1)  # one thread: the same numbers and timings on a busy laptop

# %% [markdown]
# ## 1 · The idea
#
# The seed note says GPT-4 used **predictable scaling**: train small models, fit how their loss
# falls with compute, and predict the large model's performance before spending the compute. The
# GPT-4 report predicted the final loss of its big run from runs with up to 10,000× less compute by
# fitting
# $$L(C) = a\,C^{b} + c, \qquad b < 0,$$
# where $c$ is the *irreducible* loss (the entropy of the text itself). Two ingredients:
#
# - **Compute** $C$ in FLOPs. Each weight costs a multiply-add forward and two backward, so training
#   on $D$ tokens costs $C \approx 6ND$ (GPT-3: $6 \cdot 175\text{e}9 \cdot 300\text{e}9 = 3.15\text{e}23$).
#   Attention adds $12 L T d$ per token that no weight counts: PaLM's *model FLOPs* count (Chowdhery
#   et al. 2022, App. B: $6N + 12 \cdot L \cdot H \cdot Q \cdot T$, both attention matmuls, forward + backward).
#   Kaplan et al. (2020, Table 1) count $2 \cdot n_{layer} \cdot n_{ctx} \cdot d_{attn}$ per token *forward*, i.e.
#   $6LTd$ per training token — half of PaLM's. Both are shown below; PyTorch's counter sides with PaLM's.
# - **A law for the loss.** Chinchilla (Hoffmann et al., 2022) fits
#   $L(N, D) = E + A/N^{\alpha} + B/D^{\beta}$ and, under $C = 6ND$, reads off the best $N$ and $D$
#   for a budget in closed form.

# %% [markdown]
# ## 2 · Build it: parameters by part, FLOPs per token
#
# `scaling.param_counts` groups the model's own `named_parameters` by role, built on PyTorch's
# `meta` device (shapes without memory), so it can count LLaMA-7B on a laptop. It is lmlab's only
# parameter counter, so a count cannot drift from the model's code; the total must be the model's
# `num_parameters()` for every kind of config. LLaMA-7B is a *flavor* of the one LLaMA preset,
# `llama_config("llama_7b")` (lesson 13's model is `llama_config("tiny")`).

# %%
configs = {
    "sweep model d=32": ModelConfig(vocab_size=103, context_length=64, d_model=32, n_layers=2, n_heads=2),
    "GQA + SwiGLU + RoPE, untied": ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, activation="swiglu", position="rope",
                                               bias=False, norm="rmsnorm", tie_embeddings=False),
    "T5 bias, sandwich-LN": ModelConfig(d_model=64, position="t5", norm_position="sandwich"),
    "learned table of 512 rows": ModelConfig(d_model=64, position="learned", n_positions=512),
}
print(f"{'config':<30}" + "".join(f"{p:>11}" for p in scaling.PARTS) + f"{'total':>11}{'model':>11}")
for name, cfg in configs.items():
    parts = scaling.param_counts(cfg)
    own = GPT(cfg).num_parameters()
    assert parts["total"] == own and parts["other"] == 0
    print(f"{name:<30}" + "".join(f"{parts[p]:>11,}" for p in scaling.PARTS) + f"{parts['total']:>11,}{own:>11,}")
llama7b = llama_config("llama_7b")
n7b = scaling.param_counts(llama7b)
assert n7b["total"] == 6_738_415_616
print(f"LLaMA-7B: {n7b['total']:,} parameters (the published 6,738,415,616 ✔), of which "
      f"{n7b['embedding'] + n7b['output']:,} ({(n7b['embedding'] + n7b['output']) / n7b['total']:.1%}) are the embedding and output layer")

# %% [markdown]
# **FLOPs.** We run one real training step (forward, loss, backward) under
# `torch.utils.flop_counter.FlopCounterMode` and divide by the tokens. $N$ in $6N$ is the number of
# weights that multiply activations: every `nn.Linear`, the output layer included (it is a matmul even
# when tied to the embedding; the embedding *lookup* is not). One trap first: on CPU, PyTorch's fused
# attention kernel has no FLOP formula, so the counter silently reports attention as zero —
# `measure_training_flops` runs attention on SDPA's math backend, where it is counted.

# %%
from torch.utils.flop_counter import FlopCounterMode

from lmlab.course.experiments.ch10_scaling import sweep_config

cfg = sweep_config(32, context_length=128)
model = GPT(cfg)
x = torch.randint(cfg.vocab_size, (1, 128))
with FlopCounterMode(display=False) as naive:  # the default (fused) attention kernel
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
fused = naive.get_total_flops() / 128
print(f"default CPU kernel: {fused:,.0f} FLOPs/token = {fused / (6 * scaling.matmul_params(cfg)):.3f} × 6N — attention counted as 0")

rows = []
for d in (16, 32, 64, 128, 256):
    cfg = sweep_config(d, n_heads=2, context_length=128)
    measured = scaling.measure_training_flops(GPT(cfg), batch_size=1)["per_token"]
    six_n = 6 * scaling.matmul_params(cfg)
    rows.append((d, six_n, scaling.flops_per_token(cfg), measured))
print(f"{'d':>5}{'6N':>14}{'+6LTd Kaplan':>14}{'+12LTd PaLM':>14}{'measured':>14}{'measured/6N':>13}"
      f"{'measured/(6N+12LTd)':>21}")
for d, six_n, palm, measured in rows:
    kaplan = six_n + 6 * cfg.n_layers * cfg.context_length * d  # Kaplan: 2·n_layer·n_ctx·d_attn forward, ×3 to train
    print(f"{d:>5}{six_n:>14,.0f}{kaplan:>14,.0f}{palm:>14,.0f}{measured:>14,.0f}{measured / six_n:>13.3f}{measured / palm:>21.4f}")
    assert abs(measured / palm - 1) < 0.01
print(f"6N + 12LTd is within 1 % of the counter at every width; plain 6ND undercounts by "
      f"{1 - rows[0][1] / rows[0][3]:.0%} at d = {rows[0][0]} and {1 - rows[-1][1] / rows[-1][3]:.0%} at d = {rows[-1][0]} "
      f"(T = 128): the attention term is 12LTd / 6N ≈ T / (6d) of the rest, large for narrow models.")

# %%
fig = go.Figure(go.Scatter(x=[r[0] for r in rows], y=[r[3] / r[1] for r in rows], mode="lines+markers", name="measured / 6N"))
fig.add_scatter(x=[r[0] for r in rows], y=[r[3] / r[2] for r in rows], mode="lines+markers", name="measured / (6N + 12LTd)")
fig.update_xaxes(type="log", title="width d (2 layers, T = 128)")
fig.update_yaxes(title="FlopCounterMode ÷ formula")
style_figure(fig, "6N undercounts narrow models; the attention term fixes it", height=360).show()

# %% [markdown]
# **Chinchilla's constants and compute-optimal sizing.** Fix the compute $C = 6ND$ and minimise
# $L(N, D) = E + A/N^\alpha + B/D^\beta$ along that curve: the optimum balances the two shrinking terms,
# and both $N_{opt}$ and $D_{opt}$ come out as power laws of $C$ (you derive the closed form in exercise
# 10.3). We evaluate it with the paper's published (rounded) constants and with Epoch AI's replication
# (Besiroglu et al., 2024), at Chinchilla's own compute.

# %%
print(f"L(70e9, 1.4e12) with the published constants: {scaling.chinchilla_loss(70e9, 1.4e12):.4f} (reference ≈ 1.937)")
assert abs(scaling.chinchilla_loss(70e9, 1.4e12) - 1.937) < 1e-3
C_chin = scaling.CHINCHILLA_COMPUTE
for k in scaling.CONSTANT_SETS.values():
    opt = scaling.compute_optimal(C_chin, k)
    print(f"{k.name:<26} at C = {C_chin:.2e}: N_opt = {opt['N'] / 1e9:5.1f}B, D_opt = {opt['D'] / 1e12:4.2f}T, "
          f"{opt['tokens_per_param']:5.1f} tokens/parameter")
tpp = {k.name: scaling.compute_optimal(C_chin, k)["tokens_per_param"] for k in scaling.CONSTANT_SETS.values()}
print(f"The published constants give {tpp['Chinchilla (published)']:.0f} tokens per parameter, Epoch AI's "
      f"{tpp['Epoch AI (replication)']:.0f}: only the replication lands near the famous 20. The paper's rule came from "
      "its other two methods (training-curve envelopes and isoFLOP valleys); its rounded fit does not reproduce it.")

# %% [markdown]
# **The fitter, checked on data with known constants.** `fit_power_law` and `fit_chinchilla`
# minimise the Huber loss ($\delta = 10^{-3}$) of log-loss residuals from a grid of starting points,
# with our own batched optimiser (Levenberg–Marquardt steps on reweighted least squares). On
# synthetic points they must give the constants back — and a hopeless fit must *say* so.

# %%
g = torch.Generator().manual_seed(0)
C_syn = torch.logspace(15, 19, 12, dtype=torch.float64)
L_syn = (40 * C_syn ** -0.12 + 1.7) * torch.exp(0.002 * torch.randn(12, generator=g, dtype=torch.float64))
f = fit_power_law(C_syn.tolist(), L_syn.tolist())
print(f"L(C) = 40·C^-0.12 + 1.7 with 0.2 % noise → a = {f.a:.1f}, b = {f.b:.4f}, c = {f.c:.3f} ({f.message}); "
      f"a and b trade off, the curve is what the points pin down: at C = 1e20 the fit says {f.predict(1e20):.4f}, "
      f"the truth is {40 * 1e20 ** -0.12 + 1.7:.4f}")
assert abs(f.b + 0.12) < 0.02 and abs(f.c - 1.7) < 0.05

Ns, Ds, Ls = [], [], []
for n in torch.logspace(7, 9.5, 6).tolist():
    for dd in torch.logspace(8, 11, 6).tolist():
        Ns.append(n)
        Ds.append(dd)
        Ls.append(scaling.chinchilla_loss(n, dd))
fc = fit_chinchilla(Ns, Ds, Ls)
print(f"Chinchilla's published law on 36 exact points → E = {fc.E:.3f}, A = {fc.A:.1f}, B = {fc.B:.1f}, "
      f"α = {fc.alpha:.3f}, β = {fc.beta:.3f}")
assert abs(fc.alpha - 0.34) < 1e-3 and abs(fc.beta - 0.28) < 1e-3 and abs(fc.E - 1.69) < 1e-3

bad = fit_power_law([1e10, 2e10, 4e10, 8e10, 1.6e11], [2.0, 2.1, 2.3, 2.2, 2.6])  # loss rises with compute
print(f"points whose loss rises: ok = {bad.ok} — {bad.message}")
assert not bad.ok

# %% [markdown]
# ## 3 · Experiment: predict a bigger run before training it
#
# The sweep: GPT-2-style models with 2 layers, context 64, widths $d$ = 16, 24 and 32, each trained
# for 500 steps of 16 × 64 characters of the embedded corpus with one recipe (AdamW, learning rate
# 3e-3 after a 20-step warm-up, then constant — so every checkpoint is a valid point: a model of $N$
# parameters after $D$ tokens, $C = (6N + 12LTd)\,D$). Seeded: the numbers are the same on every run.
# The **frontier** (the lowest loss reached at each compute) is what $L(C)$ describes.

# %%
from lmlab.course.experiments import ch10_scaling as exp

t0 = time.perf_counter()
runs = exp.run_sweep()  # d = 16, 24, 32 with SWEEP's settings
sweep_seconds = time.perf_counter() - t0
pts = exp.all_points(runs)
span = math.log10(max(p["C"] for p in pts) / min(p["C"] for p in pts))
print(f"{len(runs)} runs, {len(pts)} checkpoints in {sweep_seconds:.0f} s; compute from {pts[0]['C']:.2e} to {pts[-1]['C']:.2e} FLOPs")
for r in runs:
    print(f"  d={r['d_model']:>3}: N = {r['N']:>6,} ({r['N_nonemb']:>6,} without embeddings), final loss {r['points'][-1]['loss']:.3f}")

# %% [markdown]
# **The planned run** is wider ($d$ = 48, twice the parameters of $d$ = 32) and trains for 600
# steps. Before it exists, we fit the frontier of the small runs and print what it will reach —
# with a 90 % bootstrap interval (refits on resampled points; the points are checkpoints of the *same*
# runs, which the bootstrap treats as independent — they are not, so the interval is too narrow) — and, as a second opinion,
# Chinchilla's $L(N, D)$ fitted on every checkpoint, which also knows the planned run's $N$ and $D$.

# %%
S = exp.SWEEP
big_cfg = exp.sweep_config(S["big"])
D_big = S["big_steps"] * S["batch_size"] * S["context_length"]
C_big = scaling.flops_per_token(big_cfg) * D_big
N_big = scaling.count_params(big_cfg)
pred = exp.predict_run(runs, C_big)
pred_nd = exp.predict_run_chinchilla(runs, N_big, D_big)
assert pred["ok"], pred["message"]
print(f"Planned: d = {S['big']}, N = {N_big:,}, D = {D_big:,} tokens, C = {C_big:.2e} FLOPs "
      f"({pred['extrapolation']:.1f}× the largest compute fitted; the fit spans {pred['decades']:.1f} decades)")
print(f"L(C) = {pred['fit'].a:.3g}·C^{pred['fit'].b:.3f} + {pred['fit'].c:.3f} on {len(pred['points'])} frontier points")
print(f"PREDICTION (before training), L(C):    {pred['prediction']:.3f}  [{pred['low']:.3f}, {pred['high']:.3f}]")
if pred_nd["ok"]:
    print(f"PREDICTION (before training), L(N, D): {pred_nd['prediction']:.3f}  [{pred_nd['low']:.3f}, {pred_nd['high']:.3f}]")
else:
    print(f"L(N, D) gave no prediction: {pred_nd['message']}")

# %%
from lmlab.course.widgets import Prediction

guess_fit = Prediction("Where will the planned run's measured loss land against L(C)'s 90 % interval printed above?",
                       ["inside the interval", "below it (better than the fit)", "above it (worse than the fit)"],
                       description="big run")
guess_fit

# %%
t0 = time.perf_counter()
big = exp.train_run(S["big"], S["big_steps"], **{k: v for k, v in S.items() if k not in ("sizes", "steps", "big", "big_steps")})
big_seconds = time.perf_counter() - t0
actual = big["points"][-1]["loss"]
print(f"Trained the planned run in {big_seconds:.0f} s: final validation loss {actual:.3f}")
score = exp.score_prediction(pred, actual)
print("L(C):    " + score["sentence"])
score_nd = exp.score_prediction(pred_nd, actual)
print("L(N, D): " + score_nd["sentence"])
if actual < pred["fit"].c:
    last = [p for p in pred["points"] if p["C"] >= pred["points"][-1]["C"] / 10]
    print(f"The planned run went below the fitted irreducible loss c = {pred['fit'].c:.3f}. Over its last decade the small "
          f"runs' frontier fell only from {last[0]['loss']:.2f} to {last[-1]['loss']:.2f} nats (a plateau the tiny models pass "
          "through), so the fit expected the loss to level off — and the bigger run kept falling.")
all_pts = exp.all_points(runs + [big])
print(f"The whole sweep spans {math.log10(max(p['C'] for p in all_pts) / min(p['C'] for p in all_pts)):.1f} decades of training compute.")

# %%
print(guess_fit.reveal("inside the interval" if score["inside"] else
                       "below it (better than the fit)" if actual < pred["low"] else "above it (worse than the fit)"))

# %%
exp.sweep_figure(runs, pred, big).show()

# %% [markdown]
# What could make the prediction miss? The frontier's top end has no bigger model beside it (the
# best model at that compute may be one we did not train, so the envelope bends up too early); the
# interval covers the fit's uncertainty from these points, not the noise of a single seeded run;
# one learning rate for every width is a confound (the best rate shrinks with width); and tiny
# character models still pass through a plateau (roughly where a bigram model sits; the frontier above
# shows where in this run) that no power law describes. And this is **one seed** and a short
# extrapolation: the planned run is 2× the parameters and 2–3× the compute of the largest small run,
# where GPT-4's report predicted across about 10⁴× in compute — a calculation that can disagree, but a
# weak test of the method. $L(N, D)$ knows the planned run's actual shape, $L(C)$ assumes it is compute-optimal.
#
# **How many decades does a fit need?** The same prediction from fits on parts of the frontier.

# %%
subsets = exp.subset_predictions(runs, C_big)
for r in subsets:
    if r["ok"]:
        print(f"{r['name']:<24}{r['n']:>3} points, {r['decades']:.1f} decades → {r['prediction']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
              f"  error {(actual - r['prediction']) / actual:+.1%}")
    else:
        print(f"{r['name']:<24}{r['n']:>3} points → no usable fit ({r['message']})")
good = [r for r in subsets if r["ok"]]
widths = {r["name"]: r["high"] - r["low"] for r in good}
if "all points" in widths and len(widths) > 1:
    widest = max(widths, key=widths.get)
    print(f"The widest interval comes from '{widest}' ({widths[widest]:.3f} nats, vs {widths['all points']:.3f} from all points); "
          f"predictions range over {max(r['prediction'] for r in good) - min(r['prediction'] for r in good):.3f} nats across subsets.")
exp.subset_figure(subsets, actual).show()

# %% [markdown]
# **IsoFLOP view.** The same runs, sliced at fixed compute: for each budget, which width reached the
# lowest loss? (Each run's loss is interpolated between its checkpoints; the planned run is included;
# at the largest budgets only the runs that got that far take part.)

# %%
every = runs + [big]
lo = max(r["points"][0]["C"] for r in every)  # every run has reached this compute ...
hi = max(r["points"][-1]["C"] for r in runs)  # ... and at least two runs reach this one
levels = [lo * (hi / lo) ** (i / 3) for i in range(3)] + [hi]
iso = exp.isoflop(every, levels)
for row in iso:
    print(f"C = {row['C']:.2e}: " + ", ".join(f"d={x['d_model']} {x['loss']:.3f}" for x in row["runs"])
          + f" → best d = {row['best']['d_model']} (N = {row['best']['N']:,})")
bests = [row["best"]["N"] for row in iso]
print("The best size " + ("grows" if bests[-1] > bests[0] else "does not grow") + " with compute here "
      f"({bests[0]:,} → {bests[-1]:,} parameters from {iso[0]['C']:.1e} to {iso[-1]['C']:.1e} FLOPs).")
exp.isoflop_figure(iso).show()

# %% [markdown]
# **What does "N" count?** Kaplan et al. counted parameters *without* embeddings; Chinchilla counted
# all of them. In our tiny models the embedding table is a large share, so the choice can move the
# answer (the next cell measures by how much). We fit Chinchilla's law to every checkpoint twice and
# read off tokens per parameter at the planned run's compute.

# %%
tp = exp.tokens_per_param(every, C_big)
share = 1 - big["N_nonemb"] / big["N"]
print(f"Embeddings are {share:.0%} of the planned run's {big['N']:,} parameters "
      f"({1 - runs[0]['N_nonemb'] / runs[0]['N']:.0%} of d={runs[0]['d_model']}'s); at LLaMA-7B scale, "
      f"{(n7b['embedding'] + n7b['output']) / n7b['total']:.0%}.")
for key, row in tp.items():
    if row["ok"]:
        print(f"N = {row['label']:<25}: α = {row['fit'].alpha:.2f}, β = {row['fit'].beta:.2f} → N_opt = {row['N']:,.0f}, "
              f"D_opt = {row['D']:,.0f}, {row['tokens_per_param']:.0f} tokens per parameter")
    else:
        print(f"N = {row['label']}: no usable fit ({row['message']})")
if tp["N"]["ok"] and tp["N_nonemb"]["ok"]:
    ratio = tp["N_nonemb"]["tokens_per_param"] / tp["N"]["tokens_per_param"]
    print(f"Counting without embeddings changes the tokens-per-parameter answer by {ratio:.2f}× — a rule like "
          "'20 tokens per parameter' means nothing until you say which N.")

# %% [markdown]
# ### Widget: compute-budget explorer
#
# Pick a budget and a constant set: the isoFLOP curve $L(N, C/6N)$ (every way to spend $C$) and its
# minimum, with $N_{opt}$, $D_{opt}$ and the predicted loss.

# %%
budget_explorer = FigureExplorer(
    make_figure=exp.budget_figure,
    controls={
        "log10_compute": FloatSlider(value=23.8, min=18, max=26, step=0.1, description="log10 C (FLOPs)"),
        "constants": Dropdown(options=list(scaling.CONSTANT_SETS), value="Chinchilla (published)", description="constants"),
    },
    caption="N_opt = G (C/6)^(β/(α+β)), D_opt = C / (6 N_opt). Published vs Epoch AI's constants disagree by ~5× on tokens/parameter.",
)
budget_explorer

# %% [markdown]
# ### Widget: fit explorer
#
# Which runs may the fit use, and from which compute on? The prediction and its interval for the
# planned run update; the purple curve is the planned run as it was really trained.

# %%
fit_explorer = FigureExplorer(
    make_figure=lambda use16, use24, use32, min_log10_c: exp.fit_explorer_figure(
        runs, big, {16: use16, 24: use24, 32: use32}, min_log10_c),
    controls={
        "use16": Checkbox(value=True, description="use d=16"),
        "use24": Checkbox(value=True, description="use d=24"),
        "use32": Checkbox(value=True, description="use d=32"),
        "min_log10_c": FloatSlider(value=9.0, min=9.0, max=10.8, step=0.2, description="fit from log10 C ≥"),
    },
    caption="Fewer runs or a narrower compute range: watch the interval widen and the prediction drift.",
)
fit_explorer

# %% [markdown]
# ## 4 · Exercises
#
# Open [`exercises/10_scaling.ipynb`](../exercises/10_scaling.ipynb). You will write, and check in
# the notebook as you go:
# - `flops_per_token`: $6N + 12LTd$, graded against `FlopCounterMode` on real training steps;
# - `fit_power_law`: fit $aC^b + c$ and recover known constants from synthetic data;
# - `compute_optimal`: Chinchilla's closed-form $N_{opt}$, $D_{opt}$ (≈ 93 vs ≈ 18 tokens/parameter);
# - `llama_params`: the parameter count of a LLaMA-style config in closed form (LLaMA-7B: 6,738,415,616),
#   a hand count graded against `scaling.param_counts` of lmlab's own LLaMA (`llama_config`).
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/10_scaling.ipynb`.
#
# ## 5 · Summary and further reading
#
# - Training costs $6N$ FLOPs per token plus $12LTd$ for attention; for narrow models at long
#   contexts the attention term is a large share, and FLOP counters can silently miss it.
# - A power law with an irreducible term, fitted robustly (Huber on log-loss, many starts,
#   bootstrap), turns small runs into a prediction with an interval — printed here before the run.
# - How far a fit extrapolates depends on how many decades it saw; one decade is not enough.
# - Chinchilla's closed form depends on its constants: the rounded published ones say ~93 tokens per
#   parameter at its compute, Epoch AI's replication ~18; and "N" must say whether embeddings count.
# - Reading: Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training* (cited by title, as the seed note names it: it gives no section numbers); Kaplan et al., *Scaling
#   Laws for Neural Language Models* (2020); Henighan et al., *Scaling Laws for Autoregressive
#   Generative Modeling* (2020); Hoffmann et al., *Training Compute-Optimal Large Language Models*
#   (2022, Chinchilla); OpenAI, *GPT-4 Technical Report* (2023, §3 Predictable Scaling); Besiroglu
#   et al., *Chinchilla Scaling: A replication attempt* (2024).
