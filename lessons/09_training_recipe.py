# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · The training recipe: AdamW, Adafactor, warm-up + cosine, clipping, spikes, checkpoints
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/09_training_recipe.ipynb)
#
# **Goals**
# - Build **AdamW** and **Adafactor** as `torch.optim.Optimizer`s and check them against torch's;
#   see why Adafactor's factored second moment saves memory.
# - Build the **warm-up + cosine** schedule (decay to 10 %, flat after the end — torch's and
#   transformers' versions rise again), **global-norm clipping** and a **batch-size ramp**.
# - Change one setting at a time on a tiny model — warm-up, β2, clipping, weight decay, optimizer,
#   batch ramp — and let paired seeds say what is measurable at this scale.
# - Inject a **loss spike** on purpose, detect it (a rolling z-score, as OLMo), roll back and skip
#   batches (PaLM), and write **checkpoints that resume bit-identically**.

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
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from ipywidgets import FloatLogSlider, FloatSlider, IntSlider

from lmlab.course.doctor import doctor
from lmlab.course.widgets import FigureExplorer

info = doctor()  # versions, device, and whether widgets will render
torch.set_num_threads(1)  # one thread: the same numbers on every laptop

# %% [markdown]
# ## 1 · The idea
#
# The survey's recipe for pretraining large models, shared by GPT-3, PaLM, BLOOM and LLaMA:
#
# | setting | typical value | why |
# |---|---|---|
# | optimizer | AdamW, $\beta_1 = 0.9$, $\beta_2 = 0.95$, $\epsilon = 10^{-8}$ (PaLM: Adafactor *without* factorisation, i.e. Adam-like second moments, β1 = 0.9, PaLM §5; T5: factored Adafactor) | per-weight step sizes; β2 = 0.95 forgets old gradient scales faster than 0.999 |
# | schedule | linear warm-up (0.1–0.5 % of steps), cosine decay to 10 % of the peak | Adam's second moment is unreliable in the first steps |
# | batch | ramped up (GPT-3: 32k tokens → 3.2M over the first 4–12B tokens) | small noisy batches are fine early |
# | clipping | global gradient norm 1.0 | one bad batch cannot throw the weights far |
# | weight decay | 0.1, decoupled (on matrices, not on norms or biases) | |
# | spikes | PaLM: ~20 spikes in a run; restart ~100 steps earlier and skip 200–500 batches. OPT: lower the LR. GLM-130B: shrink the embedding gradient (α = 0.1). OLMo: skip a step whose loss or grad norm is > 6σ over a 128-step window | |
#
# AdamW updates each weight $p$ with gradient $g$ at its $t$-th step:
# $$p \leftarrow p(1-\eta\lambda),\quad m \leftarrow \beta_1 m + (1-\beta_1)g,\quad v \leftarrow \beta_2 v + (1-\beta_2)g^2,\quad
# p \leftarrow p - \eta\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)}+\epsilon}.$$

# %%
from lmlab.course.experiments.ch09_figures import schedule_figure

fig, note = schedule_figure(warmup=10, total=60, min_frac=0.1, past=40)
fig.show()
print(note)

# %% [markdown]
# ## 2 · Build it
#
# ### AdamW, one tensor at a time
#
# One step for one tensor: shrink the weights by `lr * weight_decay` first (decoupled: the gradient never
# sees the decay), update both moments, correct their bias with the step count `t` (from 1), then step by
# `lr` times the corrected first moment over the root of the corrected second plus `eps`. lmlab's
# `adamw_update_` does just that (you write the whole optimizer in exercise 09.1), checked against
# `torch.optim.AdamW`.

# %%
from lmlab.train.optim import adamw_update_

gen = torch.Generator().manual_seed(0)
w = torch.randn(4, 3, generator=gen)
mine, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
ref = nn.Parameter(w.clone())
torch_opt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
for t in range(1, 51):
    g = torch.randn(4, 3, generator=gen)
    adamw_update_(mine, g, m, v, t, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref.grad = g.clone()
    torch_opt.step()
torch.testing.assert_close(mine, ref.detach(), rtol=1e-5, atol=1e-6)
print(f"50 AdamW steps, one tensor == torch.optim.AdamW (max diff {(mine - ref.detach()).abs().max():.1e}) ✔")

# %% [markdown]
# `lmlab.train.optim.AdamW` is the same update as a `torch.optim.Optimizer` (parameter groups, state
# dicts), written op for op like torch's CPU code path. We check it on a small model for 1,000 steps,
# and `lmlab.train.optim.Adafactor` against `torch.optim.Adafactor` on a matrix and a vector.

# %%
from lmlab.train.optim import Adafactor, AdamW, clip_grad_norm, state_bytes_for


def run_optimizer(make, steps, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    opt = make(net.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


a = run_optimizer(lambda ps: AdamW(ps, lr=3e-3, weight_decay=0.1), 1000)
b = run_optimizer(lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1), 1000)
print(f"lmlab AdamW vs torch after 1,000 steps: max diff {(a - b).abs().max():.1e}")
assert (a - b).abs().max() <= 1e-6
for shape in ((12, 20), (17,)):
    p1 = nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(0)))
    p2 = nn.Parameter(p1.detach().clone())
    o1, o2 = Adafactor([p1], lr=1e-2), torch.optim.Adafactor([p2], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        p1.grad = torch.randn(*shape, generator=g)
        p2.grad = p1.grad.clone()
        o1.step()
        o2.step()
    diff = (p1 - p2).abs().max().item()
    assert diff <= 1e-6
    print(f"lmlab Adafactor vs torch.optim.Adafactor on a {shape} parameter, 200 steps: max diff {diff:.1e}")

# %% [markdown]
# **Why Adafactor exists.** Adam keeps two full copies of every weight ($m$ and $v$). Adafactor
# keeps, for an $n \times m$ matrix, only the row means $R$ and column means $C$ of $g^2$ and rebuilds
# $\hat v = R\,C / \mathrm{mean}(R)$ — $n + m$ numbers.

# %%
shape = (4096, 11008)  # one FFN matrix of LLaMA-7B
adamw_bytes, ada_bytes = state_bytes_for(shape, "adamw"), state_bytes_for(shape, "adafactor")
print(f"optimizer state for one {shape[0]}×{shape[1]} fp32 matrix: AdamW {adamw_bytes:,} bytes ({adamw_bytes / 2**20:.0f} MiB), "
      f"Adafactor {ada_bytes:,} bytes ({ada_bytes / 2**10:.0f} KiB): {adamw_bytes / ada_bytes:,.0f}× less")
from lmlab.course.experiments.ch09_recipe import optimizer_memory

mem = optimizer_memory()  # measured on real optimizer state after one step of the lesson's tiny model
print(f"the lesson's tiny GPT ({mem['tiny_params_bytes']:,} bytes of weights): AdamW state {mem['tiny_adamw']:,} bytes, "
      f"Adafactor state {mem['tiny_adafactor']:,} bytes ({mem['tiny_adamw'] / mem['tiny_adafactor']:.1f}× less; its "
      "vectors — biases, norm gains — keep a full second moment)")

# %% [markdown]
# ### Clipping, the schedule, the embedding-gradient shrink

# %%
from lmlab.train.schedule import warmup_cosine
from lmlab.train.spikes import shrink_embedding_gradient

ps = [nn.Parameter(torch.randn(5, 4)) for _ in range(2)]
qs = [nn.Parameter(p.detach().clone()) for p in ps]
for p, q in zip(ps, qs):
    p.grad = torch.randn(p.shape, generator=gen) * 3
    q.grad = p.grad.clone()
n1, n2 = clip_grad_norm(ps, 1.0), torch.nn.utils.clip_grad_norm_(qs, 1.0)
assert torch.equal(n1, n2) and all(torch.equal(p.grad, q.grad) for p, q in zip(ps, qs))
print(f"clip_grad_norm == torch.nn.utils.clip_grad_norm_: norm {n1:.3f} before, "
      f"{torch.sqrt(sum((p.grad ** 2).sum() for p in ps)):.3f} after ✔")

reference = [0, .142857, .285714, .428571, .571429, .714286, .857143, 1, .988718, .955436, .901824, .830570, .745248,
             .650134, .55, .449866, .354752, .269430, .198176, .144564, .111282, .1, .1, .1, .1]
ours = [warmup_cosine(t, 1.0, 0.1, 7, 21) for t in range(25)]
assert max(abs(x - y) for x, y in zip(ours, reference)) < 1e-6
print("warmup_cosine(t, max 1, min 0.1, warm-up 7, total 21), t = 0..24:", ", ".join(f"{x:.3g}" for x in ours), "✔")

emb = torch.randn(3, 4, requires_grad=True)
out = shrink_embedding_gradient(emb, 0.1)
(out * 2).sum().backward()
assert torch.allclose(out, emb) and torch.allclose(emb.grad, torch.full_like(emb, 0.2))
print("GLM-130B shrink emb*0.1 + emb.detach()*0.9: same forward value, gradient exactly 0.1× ✔")

# %% [markdown]
# ### Checkpoints that resume exactly
#
# `lmlab.train.loop.train` with `TrainConfig(checkpoint_path=..., checkpoint_every=k)` writes model, optimizer, step,
# data position and every RNG state atomically (temp file + rename). We "crash" a run at step 25,
# resume from its step-20 checkpoint and compare every later loss with an uninterrupted run — bit for
# bit. (`tests/test_checkpoint.py` does it with a real `SIGKILL`.)

# %%
from lmlab.data.text import char_data
from lmlab.course.experiments.ch09_recipe import tiny_gpt
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train

tok, train_ids, val_ids = char_data()
small = dict(d_model=16, n_layers=1, n_heads=2, context_length=16)
kw = dict(steps=40, batch_size=8, lr=1e-2, schedule="cosine", warmup=5, eval_every=None, progress=False)
uninterrupted = train(tiny_gpt(0, **small, dropout=0.1), train_ids, config=TrainConfig(**kw))


def crash_at_25(step, loss):
    if step == 25:
        raise KeyboardInterrupt("simulated crash")


with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "last.pt"
    try:
        train(tiny_gpt(0, **small, dropout=0.1), train_ids,
              config=TrainConfig(checkpoint_path=path, checkpoint_every=10, callback=crash_at_25, **kw))
    except KeyboardInterrupt:
        pass
    resumed = train(tiny_gpt(7, **small, dropout=0.1), train_ids,
                    config=TrainConfig(checkpoint_path=path, checkpoint_every=10, resume=True, **kw))
assert resumed.train_loss == uninterrupted.train_loss
print(f"crashed at step 25, resumed from step 20: all {len(resumed.train_loss)} losses identical to the uninterrupted run "
      f"(last {resumed.train_loss[-1]:.6f}) ✔")

# %% [markdown]
# ## 3 · Experiment: one setting at a time
#
# A tiny GPT (2 layers, width 32, ~30k parameters, 32-character context) trains for 80 steps of 16
# windows at a **high** peak learning rate ($10^{-2}$), with the baseline recipe: warm-up 10 + cosine
# to 10 %, AdamW (0.9, 0.95), clipping 1.0, weight decay 0.1. Each variant changes one setting; three
# seeds (same initialisation and batches per seed) and a paired t-test decide whether the difference
# is larger than the seed noise. Adafactor runs at its own learning rate (0.1: a *relative* step,
# multiplied by each weight's RMS), picked from 0.01 / 0.1 / 1 on seed 0 — a tuning confound in its
# favour. The batch ramp (4 → 16 windows over the first half of the sequences) runs more steps to see
# the same number of tokens.

# %%
from lmlab.course.widgets import Prediction

guess_warmup = Prediction("At peak LR 1e-2, 3 seeds: what does removing the 10 warm-up steps do to the final loss?",
                          ["worse without warm-up", "within the seed noise", "better without warm-up", "a run diverges"],
                          description="no warm-up")
guess_warmup

# %%
from lmlab.course.experiments.ch09_recipe import compare_settings
from lmlab.course.experiments.ch09_figures import settings_figure

settings = compare_settings(seeds=(0, 1, 2))
print(f"{'variant':<16}" + "".join(f"{'seed ' + str(s):>10}" for s in settings.seeds) + f"{'diverged':>10}")
for name, losses in settings.losses.items():
    print(f"{name:<16}" + "".join(f"{v:>10.3f}" for v in losses) + f"{settings.diverged[name]:>10}")
print(f"(unigram baseline {settings.unigram:.3f}: a model that ignores context)")
settings_figure(settings).show()

# %%
for name in settings.comparisons:
    print(settings.sentence(name))
by_outcome = {o: [n for n, c in settings.comparisons.items() if c is not None and c.outcome == o]
              for o in ("supports", "contradicts", "undetermined")}
print(f"\nThe seed's claims, {len(settings.comparisons)} tested at once (Holm-corrected), margin 0.02 nats: "
      f"supported: {', '.join(by_outcome['supports']) or 'none'}; contradicted: {', '.join(by_outcome['contradicts']) or 'none'}; "
      f"undetermined: {', '.join(by_outcome['undetermined']) or 'none'}. "
      "The seed's claims are about models 10^4–10^7 times larger, trained 10^4 times longer: an undetermined verdict "
      "here is not evidence either way, only a statement about this scale. Confound: the batch ramp sees the same tokens "
      "in more optimizer steps than the baseline, so 'equal' for it mixes the ramp with the extra steps.")

# %%
no_warmup = settings.comparisons["no warm-up"]
print(guess_warmup.reveal("a run diverges" if no_warmup is None else
                          {"baseline": "worse without warm-up", "no warm-up": "better without warm-up",
                           None: "within the seed noise"}[no_warmup.better]))

# %% [markdown]
# ### β2 when the gradients are spiky
#
# β2 sets how fast Adam's second moment $v$ forgets: 0.999 averages over ~1,000 steps, 0.95 over ~20.
# When a gradient suddenly grows, a slow $v$ still reflects the old, small gradients, so the update
# $m / \sqrt{v}$ is briefly too large. We make the gradients spiky with batches of 4 windows instead
# of 16 (much noisier, heavier-tailed gradients) and compare the two β2 over the same three seeds.

# %%
spiky = compare_settings(("β2 = 0.999",), seeds=(0, 1, 2), batch_size=4)
grad_spread = [max(h.grad_norm[20:]) / (sum(h.grad_norm[20:]) / len(h.grad_norm[20:])) for h in spiky.histories["baseline"]]
print(f"batches of 4: the largest gradient norm after step 20 is {min(grad_spread):.1f}–{max(grad_spread):.1f}× the mean")
print(f"final losses, β2 = 0.95: {', '.join(f'{v:.3f}' for v in spiky.losses['baseline'])}; "
      f"β2 = 0.999: {', '.join(f'{v:.3f}' for v in spiky.losses['β2 = 0.999'])}")
print(spiky.sentence("β2 = 0.999"))

# %% [markdown]
# ### Warm-up and the peak learning rate
#
# The survey's reason for warm-up is stability at a high peak rate. A small sweep (one seed: a map,
# not a verdict): final validation loss against the peak LR, with and without 10 warm-up steps.

# %%
from lmlab.course.experiments.ch09_recipe import lr_sweep
from lmlab.course.experiments.ch09_figures import sweep_figure

sweep = lr_sweep(lrs=(3e-3, 1e-2, 3e-2, 6e-2), warmups=(0, 10), seed=0)
print(f"{'peak lr':>8}{'no warm-up':>12}{'warm-up 10':>12}")
for i, lr in enumerate(sweep["lrs"]):
    print(f"{lr:>8g}{sweep['losses'][0][i]:>12.3f}{sweep['losses'][10][i]:>12.3f}")
sweep_figure(sweep).show()
diverged = {w: [lr for lr, v in zip(sweep["lrs"], ls) if not math.isfinite(v) or v > sweep["unigram"]] for w, ls in sweep["losses"].items()}
best = {w: sweep["lrs"][min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else math.inf)] for w, ls in sweep["losses"].items()}
print(f"Diverged (inf/NaN or worse than unigram): without warm-up at {diverged[0] or 'no LR'}, with warm-up at {diverged[10] or 'no LR'}. "
      f"Best peak LR: {best[0]:g} without, {best[10]:g} with warm-up.")
print("Warm-up prevented a divergence here." if set(diverged[0]) - set(diverged[10]) else
      "No run diverged without warm-up at these rates: with global clipping at 1.0 and Adam's per-weight normalisation "
      "a 30k-parameter model survives them — the instability warm-up guards against grows with depth and width "
      "(lesson 01 showed a deep post-LN model stalling at 3e-3).")

# %% [markdown]
# ## 4 · Experiment: a loss spike, caught and rolled back
#
# We jolt the learning rate ×30 for the batch of step 71 (an update that throws the weights far, as a
# bad batch can) in a run at a constant LR $10^{-2}$. The detector (window 50, 6σ, from 30 good steps
# on) watches the loss and the gradient norm; on a spike the loop rolls back to the older of its last
# two in-memory snapshots (every 10 steps) and skips 10 batches — PaLM's remedy, at 1/10 scale.
#
# **A demonstration, not a test of where spikes come from.** The spike here is *injected* into one
# update, so "rolling back and skipping recovers" is built in. PaLM (§5.1) found the opposite of "spikes
# are bad data": replaying the same batches from an earlier checkpoint did *not* spike — spikes arise from
# the data *together with* the parameter state, and skipping works because it changes that pairing.

# %%
from lmlab.course.experiments.ch09_recipe import final_loss, spike_experiment
from lmlab.course.experiments.ch09_figures import spike_figure

spike = spike_experiment(jolt_step=71, factor=30.0, window=50, threshold=6.0, min_history=30, skip_batches=10, steps=120,
                         margin=0.05)
spike_figure(spike).show()
jump = max(spike.hurt.train_loss[spike.jolt_step:spike.jolt_step + 5]) - spike.clean.train_loss[spike.jolt_step]
print(f"jolt at step {spike.jolt_step}: the unprotected run's loss jumps by {jump:.2f} nats; in the protected run the "
      f"detector fired at step(s) {spike.healed.spikes} (the first loss measured after the jolted update)")
for rb in spike.healed.rollbacks:
    print(f"  rollback at step {rb['step']} → back to step {rb['to_step']}, skipped {rb['skipped_batches']} batches")
c, h, r = final_loss(spike.clean), final_loss(spike.hurt), final_loss(spike.healed)
print(f"final validation loss: clean {c:.3f}, spike without handling {h:.3f}, rolled back {r:.3f}")
print("(A demonstration of the mechanism, 1 seed: the spike was injected, so the rollback's success is by design.)")
print(("Recovered" if spike.recovered else "Not recovered")
      + f": the rolled-back run ends {abs(r - c):.3f} nats from the clean run (stated margin {spike.margin}); "
      + f"the unprotected run is {h - c:+.3f} nats off.")
assert spike.detected_at is not None and spike.jolt_step <= spike.detected_at <= spike.jolt_step + 2

# %% [markdown]
# ## 5 · Widgets
#
# ### Schedule explorer
#
# Warm-up, planned total and the minimum as a fraction of the peak; the course's clamped schedule
# against torch's `SequentialLR(LinearLR, CosineAnnealingLR)` and transformers'
# `get_cosine_with_min_lr_schedule_with_warmup`, with the region after the planned end shaded.

# %%
schedule_explorer = FigureExplorer(
    make_figure=lambda warmup, total, min_frac, past: schedule_figure(warmup, total, min_frac, past),
    controls={
        "warmup": IntSlider(value=10, min=0, max=50, description="warm-up steps"),
        "total": IntSlider(value=60, min=10, max=200, step=5, description="planned total"),
        "min_frac": FloatSlider(value=0.1, min=0.0, max=0.5, step=0.05, description="min lr / peak"),
        "past": IntSlider(value=40, min=0, max=200, step=10, description="steps past the end"),
    },
    caption="Shaded: training longer than planned. The clamped schedule stays at its minimum; the others climb back.",
)
schedule_explorer

# %% [markdown]
# ### Spike lab
#
# A smaller model (1 layer, width 16) so that each change retrains three runs in about a second: the
# jolt's step and size, the detector's window and threshold, and how many batches to skip.

# %%
from lmlab.course.experiments.ch09_figures import spike_lab_figure

spike_lab = FigureExplorer(
    make_figure=spike_lab_figure,
    controls={
        "jolt_step": IntSlider(value=45, min=25, max=80, description="jolt at step"),
        "factor": FloatLogSlider(value=30, base=10, min=0.5, max=2.5, step=0.25, description="jolt × lr"),
        "window": IntSlider(value=30, min=10, max=60, step=5, description="detector window"),
        "threshold": FloatSlider(value=6.0, min=2.0, max=12.0, step=0.5, description="threshold (σ)"),
        "skip_batches": IntSlider(value=10, min=0, max=40, step=5, description="batches skipped"),
    },
    caption="Green: clean. Red: the jolt, unhandled. Blue: rollback + skip (× marks the steps a rollback undid).",
)
spike_lab

# %% [markdown]
# ## 6 · Exercises
#
# [`exercises/09_training_recipe.ipynb`](../exercises/09_training_recipe.ipynb): build **AdamW** as a
# `torch.optim.Optimizer` (checked against torch's; L2 instead of decoupled decay and a missing bias
# correction fail), the **warm-up + cosine** schedule (off-by-one warm-up and an unclamped end fail),
# **global-norm clipping** (per-parameter clipping fails), the **spike detector**, and a **whole
# training loop**, graded by training a tiny model at a fixed seed and comparing every loss with
# `lmlab.train.loop.train`'s.
#
# ## 7 · Summary and further reading
#
# - lmlab's training loop is now made of its own parts; its defaults reproduce the earlier loop's
#   losses bit for bit. Each recipe setting is a field of `lmlab.train.config.TrainConfig`, the one
#   argument `lmlab.train.loop.train` takes besides the model and the data; each policy (batch ramp,
#   schedule, spike rollback, checkpoints, non-finite losses) is a small named piece of
#   `lmlab.train.policies` / `lmlab.train.spikes` that the loop calls at its point of the step.
# - Loshchilov & Hutter, *Decoupled Weight Decay Regularization* (AdamW), 2019.
# - Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, 2018.
# - Brown et al., *Language Models are Few-Shot Learners* (GPT-3: β2 0.95, warm-up, cosine to 10 %, batch ramp), 2020.
# - Chowdhery et al., *PaLM* (loss spikes: rollback ~100 steps and skip 200–500 batches), 2022.
# - Zhang et al., *OPT* (lowering the LR after divergence), 2022; Zeng et al., *GLM-130B* (embedding-gradient shrink), 2022.
# - Groeneveld et al., *OLMo* (skip steps whose loss or gradient norm is a > 6σ outlier), 2024.
