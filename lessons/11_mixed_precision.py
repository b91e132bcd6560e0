# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Mixed precision: FP32, FP16, BF16 bit by bit, loss scaling and master weights
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/11_mixed_precision.ipynb)
#
# **Goals**
# - Read a float **bit by bit**: sign, exponent, mantissa; normal and subnormal numbers; build
#   `decode` and `encode` (round to nearest, ties to even) for FP32, FP16, BF16, TF32 and FP8, and
#   check them against torch on every FP16 and BF16 bit pattern.
# - See the trade-off the seed describes: **FP16** has more precision but a tiny range (it
#   overflows and underflows), **BF16** keeps FP32's range with less precision.
# - Build **dynamic loss scaling** (equal, step for step, to `torch.amp.GradScaler`) and an
#   optimizer wrapper with **FP32 master weights**, and train a tiny GPT four ways.
# - Count the **bytes per parameter** of each recipe (the ZeRO paper's 2 + 2 + 12 = 16) and see what
#   mixed precision saves and what it does not.

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

import torch
from ipywidgets import Dropdown, FloatText, IntSlider, Text

from lmlab.course.doctor import doctor
from lmlab.train.loss_scaling import DynamicLossScaler, MasterWeights, gradscaler_trajectory, scaler_trajectory
from lmlab.train.precision import (FORMAT_NAMES, FORMATS, autocast_report, decode, decode_fp16, encode, format_info, quantize,
                                   torch_bits)
from lmlab.course.stats import holm, paired_comparison
from lmlab.course.widgets import FigureExplorer

torch.set_num_threads(1)  # one thread: the same numbers and timings on a shared machine
info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# A binary float with $E$ exponent bits and $M$ mantissa bits stores a sign $s$, an exponent field
# $e$ and a mantissa field $m$. With the bias $b = 2^{E-1} - 1$:
#
# $$x = (-1)^s \cdot \Big(1 + \frac{m}{2^M}\Big) \cdot 2^{\,e - b} \quad (0 < e < 2^E - 1), \qquad
#   x = (-1)^s \cdot \frac{m}{2^M} \cdot 2^{\,1 - b} \quad (e = 0,\ \text{subnormal}),$$
#
# and the all-ones exponent means $\pm\infty$ ($m = 0$) or NaN. The exponent bits decide the
# **range**, the mantissa bits the **precision**: the gap after 1.0 is $2^{-M}$ (machine epsilon).
# FP16 spends 5 bits on the exponent and 10 on the mantissa; BF16 ("brain float") 8 and 7 — FP32's
# range with 8 significand bits against FP16's 11: machine epsilon $2^{-7}$ vs $2^{-10}$, so BF16's spacing
# is **8× coarser** (IEEE 754 binary16; Google's bfloat16 definition); it is simply the top half of an FP32.
#
# Mixed-precision training (Micikevicius et al., 2018) runs the matrix multiplies in 16 bits, keeps
# an FP32 **master copy** of the weights for the update, and, for FP16, multiplies the loss by a
# **scale** so that small gradients do not underflow to zero.

# %%
print(f"{'format':<10}{'bits':>5}{'E':>3}{'M':>4}{'bias':>6}{'max':>12}{'smallest normal':>17}{'smallest subnormal':>20}{'eps':>11}")
for name in FORMAT_NAMES:
    i = format_info(name)
    print(f"{name:<10}{i['bits']:>5}{i['exponent_bits']:>3}{i['mantissa_bits']:>4}{i['bias']:>6}{i['max']:>12.4g}"
          f"{i['smallest_normal']:>17.4g}{i['smallest_subnormal']:>20.4g}{i['eps']:>11.4g}")

# %% [markdown]
# ## 2 · Build it: decode and encode, checked against torch
#
# By hand first: the FP16 pattern `0 01111 0000000001` (0x3C01) has $e = 15$, $m = 1$, so it is
# $(1 + 2^{-10}) \cdot 2^{15 - 15}$ — the number right after 1.0. Then lmlab's `decode` on **all
# 65,536** FP16 and BF16 patterns against torch reinterpreting the same bits (`.view(dtype)`).

# %%
assert decode_fp16(0x3C01) == 1 + 2**-10 and decode_fp16(0x0001) == 2**-24  # lmlab's; yours is exercise 11.1
for name in ("fp16", "bf16"):
    patterns = torch.arange(2**16)
    ours = decode(patterns, name)  # (65536,) float64
    theirs = patterns.to(torch.int16).view(FORMATS[name].torch_dtype).double()  # the same bits, read by torch
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours), nan) and torch.equal(ours[~nan], theirs[~nan])
    print(f"{name}: all 65,536 patterns decode exactly as torch reads them ({int(nan.sum())} of them are NaN) ✔")

# %% [markdown]
# `encode` goes the other way with integer operations only: take the FP64 bits of $x$, shift its
# 53-bit significand right to the target's precision at $x$'s exponent (for subnormals: at the
# smallest normal exponent), and **round to nearest, ties to even** on the bits shifted out; a carry
# into the exponent happens by itself. The test sample mixes random magnitudes over the whole FP32
# range (subnormals and overflow included), every representable value, and every exact midpoint
# between neighbours (the ties).

# %%
g = torch.Generator().manual_seed(0)
for name in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2"):
    f = FORMATS[name]
    grid = decode(torch.arange(2**f.bits), name)
    finite = grid[torch.isfinite(grid)].sort().values
    ties = (finite[1:] + finite[:-1]) / 2  # exact midpoints: round-to-even decides them
    x = torch.cat([torch.randn(200_000, generator=g) * torch.exp2(torch.randint(-150, 128, (200_000,), generator=g).float()),
                   finite.float(), ties.float(), torch.tensor([math.inf, -math.inf, math.nan])])
    ours, theirs = decode(encode(x, name), name), decode(torch_bits(x.to(f.torch_dtype)), name)
    same = (ours == theirs) | (torch.isnan(ours) & torch.isnan(theirs))
    assert same.all()
    fast = quantize(x, name).double()  # the float-arithmetic fast path used for simulation: the same numbers
    assert same.all() and ((fast == ours) | (torch.isnan(fast) & torch.isnan(ours))).all()
    print(f"{name}: encode == x.to({f.torch_dtype}) on {len(x):,} values incl. {len(ties):,} ties ✔")
for name in ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"):
    ours, t = format_info(name), torch.finfo(FORMATS[name].torch_dtype)
    assert (ours["max"], ours["smallest_normal"], ours["eps"]) == (t.max, t.smallest_normal, t.eps)
print("format_info == torch.finfo (max, smallest normal, eps) for every format torch has ✔")
one = encode(1.0, "fp16")
print(f"FP16: 1 + 2^-11 encodes to {encode(1 + 2**-11, 'fp16'):#06x}, the same pattern as 1.0 ({one:#06x}): "
      f"1 + 2^-11 == 1 is {decode(encode(1 + 2**-11, 'fp16'), 'fp16') == 1.0} (a tie, rounded to the even mantissa); "
      f"torch agrees: {torch.tensor(1 + 2**-11).half().item() == 1.0}")

# %% [markdown]
# ## 3 · Experiment: FP16 overflows where BF16 does not; FP16 is more precise
#
# Two claims of the seed. **Range**: `exp` of a logit of 12 is 162,755, past FP16's 65,504; the
# variance of an activation of 300 (what LayerNorm computes) is 90,000. **Precision**: add 0.01 a
# thousand times, rounding after every addition. All with torch's own FP16 and BF16 arithmetic.

# %%
from lmlab.course.experiments.ch11_precision import overflow_examples, running_sum
from lmlab.course.experiments.ch11_figures import sum_figure

ov = overflow_examples()
for name, r in ov.items():
    print(f"{name:>5}: exp([8, 10, 12]) = {[round(v, 1) for v in r['exp']]}, naive softmax = {[round(v, 3) for v in r['softmax']]}, "
          f"mean(300²) = {r['mean_square']:g}")
fp16_over = not ov["fp16"]["exp_finite"] and not ov["fp16"]["mean_square_finite"]
bf16_ok = ov["bf16"]["exp_finite"] and ov["bf16"]["mean_square_finite"]
print(("Reproduced: FP16 overflows to inf (and the naive softmax to NaN) where BF16 stays finite."
       if fp16_over and bf16_ok else "Not reproduced: "
       + f"FP16 finite = {ov['fp16']['exp_finite']}, BF16 finite = {bf16_ok}."))

sums = {name: running_sum(0.01, 1000, name) for name in ("fp32", "tf32", "fp16", "bf16", "fp8_e5m2")}
sum_figure(sums).show()
final = {k: v[-1] for k, v in sums.items()}
print("final totals: " + ", ".join(f"{k} {v:.6g}" for k, v in final.items()))
stall = next(v for i, v in enumerate(sums["bf16"]) if i > 0 and v == sums["bf16"][i - 1])
print(("Reproduced" if abs(final["fp16"] - 10) < abs(final["bf16"] - 10) else "Not reproduced")
      + f": FP16 ends {abs(final['fp16'] - 10):.3f} from 10, BF16 {abs(final['bf16'] - 10):.3f} — BF16 stalls at {stall:g}, "
      f"where half its spacing ({format_info('bf16')['eps'] * stall / 2:.4g}) exceeds 0.01 and every addition rounds away.")
assert (round(final["fp32"], 4), round(final["fp16"], 3), final["bf16"]) == (10.0001, 9.953, 4.0)

# %% [markdown]
# ## 4 · Autocast: which op runs in which dtype
#
# `torch.autocast` keeps FP32 weights and casts per op: matrix multiplies in 16 bits, ops that need
# range or accumulate (softmax-cross-entropy, on CUDA also LayerNorm) in FP32. One training step of
# a tiny lmlab GPT, recording the dtype each aten op produced (on this machine's device, and on CUDA
# too when there is one). lmlab's `LayerNorm`/`RMSNorm` compute their statistics in FP32 internally
# and return the input's dtype, on every device — as LLaMA's RMSNorm does. Inside lmlab's GPT the
# norms read the residual stream, which stays FP32 under autocast (the embeddings are FP32 and
# `x + attn(...)` promotes to FP32), so they report FP32 outputs there; fed a BF16 tensor straight
# from a Linear, torch's own LayerNorm returns BF16 on the CPU but FP32 on CUDA (printed below).

# %%
from lmlab.course.experiments.ch11_precision import tiny_config
from lmlab.model import GPT
from lmlab.data.text import char_data, sample_batch

cfg = tiny_config()
_, train_ids, val_ids = char_data()
xb, yb = sample_batch(train_ids, 8, cfg.context_length, generator=torch.Generator().manual_seed(0))
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    torch.manual_seed(0)
    rep = autocast_report(GPT(cfg).to(dev), xb.to(dev), yb.to(dev), dev, torch.bfloat16)
    print(f"--- autocast({dev!r}, bfloat16): loss in {rep['loss']}")
    print("module outputs: " + ", ".join(f"{k} {'/'.join(v)}" for k, v in rep["modules"].items()))
    print("forward ops:    " + ", ".join(f"{k} {'/'.join(v)}" for k, v in rep["forward"].items()))
    ln = torch.nn.LayerNorm(cfg.d_model).to(dev)
    with torch.autocast(dev, dtype=torch.bfloat16):
        torch_ln = ln(torch.nn.Linear(cfg.d_model, cfg.d_model).to(dev)(torch.randn(2, cfg.d_model, device=dev))).dtype
    print(f"torch.nn.LayerNorm after a Linear under autocast on {dev}: {torch_ln} "
          + ("(CPU autocast leaves layer_norm in low precision)" if dev == "cpu" else "(CUDA autocast runs layer_norm in FP32)"))
assert "bfloat16" in rep["forward"].get("addmm", rep["forward"].get("mm", [])) and rep["loss"] == "float32"

from lmlab.model.norms import RMSNorm, rms_norm

xn = (torch.randn(64, 256) * 3).bfloat16()
exact = rms_norm(xn.float(), None, 1e-6).bfloat16()
naive = xn * torch.rsqrt((xn * xn).mean(-1, keepdim=True) + 1e-6)  # statistics in BF16
ours = RMSNorm(256)(xn)  # FP32 weight, BF16 input: statistics in FP32
print(f"RMSNorm on BF16 input: lmlab vs FP32-internal reference max diff {(ours.float() - exact.float()).abs().max():.1e}; "
      f"statistics in BF16 instead: {(naive.float() - exact.float()).abs().max():.1e}")
assert torch.equal(ours, exact)

# %% [markdown]
# ## 5 · Build it: dynamic loss scaling, equal to GradScaler
#
# Multiply the loss by $S$ before backward (every gradient is then $S$ times larger), divide the
# gradients by $S$ before the update. If any gradient is inf/NaN: skip the step, $S \leftarrow S/2$.
# After 2,000 clean steps in a row: $S \leftarrow 2S$. GradScaler's defaults start at $S = 65536$.
# A scripted sequence of clean and overflowing steps through lmlab's `DynamicLossScaler` and the real
# `torch.amp.GradScaler("cpu")`:

# %%
script = [False] * 7 + [True] + [False] * 3 + [True, True] + [False] * 9
for kw in (dict(init_scale=65536.0, growth_interval=4), dict(init_scale=3.3, growth_factor=1.7, backoff_factor=0.3, growth_interval=2)):
    ours, theirs = scaler_trajectory(script, **kw), gradscaler_trajectory(script, **kw)
    assert ours == theirs
    print(f"{kw}: scales {ours['scales'][:12]}..., skipped steps {ours['skipped']} — identical to GradScaler ✔")

# %% [markdown]
# ## 6 · Experiment: gradients underflow in FP16; scaling lifts them
#
# One batch of a tiny GPT (at initialisation), gradients computed in FP32, then in **real FP16**
# (`model.half()`, torch's CPU kernels) and in **simulated FP16** (FP32 tensors rounded to FP16 at
# every module boundary with lmlab's own `quantize`, which the training runs below use, because real
# FP16 arithmetic on a CPU is much slower than FP32: measured in the next cell). The share of gradient entries that are
# non-zero in FP32 but zero in FP16, for loss scales from $2^{-12}$ to $2^{24}$. A scale below 1
# stands in for a bigger batch: the loss is a mean over tokens, so per-token gradients shrink
# as 1/(tokens per batch) — the regime of real LLM batches of millions of tokens.

# %%
import time


def matmul_ms(dtype, repeats=10):  # one (128 × 256) @ (256 × 256) product on this CPU, in milliseconds
    x, w = torch.randn(128, 256).to(dtype), torch.randn(256, 256).to(dtype)
    x @ w
    t0 = time.perf_counter()
    for _ in range(repeats):
        x @ w
    return 1e3 * (time.perf_counter() - t0) / repeats


ms = {str(d).split(".")[-1]: matmul_ms(d) for d in (torch.float32, torch.float16, torch.bfloat16)}
print("measured on this CPU, one matmul: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
      + f" — FP16 is {ms['float16'] / ms['float32']:.0f}× slower than FP32 here (no FP16 kernels on most CPUs).")

# %%
from lmlab.course.experiments.ch11_precision import gradient_underflow
from lmlab.course.experiments.ch11_figures import underflow_figure

torch.manual_seed(0)
u = gradient_underflow(GPT(cfg), scales=[2.0**k for k in (-12, -8, -4, 0, 8, 16, 24)], batch_size=16)
underflow_figure(u).show()
print(f"{'scale':>8}{'real FP16 zeroed':>18}{'simulated':>11}{'inf?':>6}")
for s, r, sim, inf in zip(u["scales"], u["real"], u["simulated"], u["real_inf"]):
    print(f"{'2^' + str(int(math.log2(s))):>8}{r:>18.3%}{sim:>11.3%}{'yes' if inf else '':>6}")
i1 = u["scales"].index(1.0)
finite = [i for i, inf in enumerate(u["real_inf"]) if not inf]
best = min(finite, key=lambda i: u["real"][i])
print(f"Without scaling FP16 zeroes {u['real'][i1]:.3%} of the gradient entries here; at 1/4096 of the gradient size (a 4096× "
      f"bigger batch) {u['real'][0]:.1%}. Scaling by 2^{int(math.log2(u['scales'][best]))} brings it to {u['real'][best]:.3%}"
      + (f"; from 2^{int(math.log2(u['scales'][min(i for i, b in enumerate(u['real_inf']) if b)]))} on, gradients overflow to inf "
         "and the step must be skipped — the window dynamic scaling keeps inside." if any(u["real_inf"]) else "."))
print(f"The simulation agrees with real FP16 to within {max(abs(a - b) for a, b in zip(u['real'], u['simulated'])):.2%} (share of entries).")

# %% [markdown]
# ## 7 · Experiment: one tiny GPT trained four ways
#
# The same initial weights and batches per seed, AdamW (lr 3e-3, no clipping), 45 steps, 3 seeds:
# **FP32**; **BF16 autocast** (torch's CPU kernels); **FP16 without loss scaling** and **FP16 with
# dynamic loss scaling**, both with FP16 weights, activations and gradients (simulated, see above)
# and FP32 master weights and moments in lmlab's `MasterWeights`. Verdicts: a paired comparison of
# the final validation loss over seeds.

# %%
from lmlab.course.widgets import Prediction

guess_scaling = Prediction("45 steps, 3 seeds: does FP16 without loss scaling end with a worse loss than FP16 with scaling?",
                           ["worse without scaling", "within the seed noise", "better without scaling"],
                           description="no loss scaling")
guess_scaling

# %%
from lmlab.course.experiments.ch11_precision import train_recipe
from lmlab.course.experiments.ch11_figures import curves_figure

SEEDS, STEPS = (0, 1, 2), 45
runs = {r: [train_recipe(r, seed=s, steps=STEPS, cfg=cfg) for s in SEEDS]
        for r in ("fp32", "bf16_autocast", "fp16_no_scaling", "fp16_scaled_master")}
curves_figure(runs).show()
val = {r: [x["val_loss"] for x in v] for r, v in runs.items()}
zero = {r: sum(sum(x["zero_grad"]) / len(x["zero_grad"]) for x in v) / len(v) for r, v in runs.items()}
for r in runs:
    skipped = sum(len(x["skipped"]) for x in runs[r])
    print(f"{r:<20} val loss {sum(val[r]) / len(SEEDS):.4f}  zero gradient entries {zero[r]:.4%}  skipped steps {skipped}"
          f"  {sum(x['seconds'] for x in runs[r]) / len(SEEDS):.1f} s/run")
MARGIN = 0.02  # nats: the smallest loss difference we would care about
bf, noscale, scaled = holm([  # three claims at once: Holm-corrected
    paired_comparison(val["bf16_autocast"], val["fp32"], "BF16 autocast", "FP32", claim="equal", margin=MARGIN, seeds=SEEDS),
    paired_comparison(val["fp16_no_scaling"], val["fp16_scaled_master"], "FP16 without scaling", "FP16 with scaling",
                      claim="worse", margin=MARGIN, seeds=SEEDS),
    paired_comparison(val["fp16_scaled_master"], val["fp32"], "FP16 scaled + master", "FP32", claim="equal", margin=MARGIN,
                      seeds=SEEDS)])
for c in (bf, noscale, scaled):
    print(c.sentence)
fails = noscale.outcome == "supports"
print(("Reproduced: FP16 without loss scaling trains worse, and scaling rescues it."
       if fails else
       f"At this scale FP16 without loss scaling is not shown to fail: only {zero['fp16_no_scaling']:.3%} of gradient entries were zero "
       f"(FP32: {zero['fp32']:.4%}) — a tiny model's batch of {16 * cfg.context_length} tokens keeps most gradients above FP16's "
       f"floor. Section 6 shows where that changes: with per-token gradients {int(1 / u['scales'][0])}× smaller (far bigger "
       f"batches) {u['real'][0]:.0%} of them vanish without scaling.")
      + {"supports": " FP16 with scaling and master weights matches FP32 within the margin (equivalence shown).",
         "contradicts": f" FP16 with scaling is NOT equivalent to FP32 here ({scaled.reason}).",
         "undetermined": " Whether FP16 with scaling matches FP32 is undetermined at this scale (neither a difference "
                         "nor equivalence within the margin was shown)."}[scaled.outcome])

# %%
print(guess_scaling.reveal({"FP16 with scaling": "worse without scaling", "FP16 without scaling": "better without scaling",
                            None: "within the seed noise"}[noscale.better]))

# %% [markdown]
# ## 8 · Experiment: without a master copy, small updates round away
#
# In FP16, $1 + 2^{-11} = 1$: an update smaller than half the spacing at the weight vanishes. Adam's
# steps are about lr per weight. First the share of a model's weights that one step of size lr leaves
# unchanged once stored in each format; then, from each seed's trained FP16 model, 10 more steps at a
# late-training learning rate of 1e-5, with and without the FP32 master copy (both with loss scaling).

# %%
from lmlab.course.experiments.ch11_precision import update_rounding

ur = update_rounding(runs["fp32"][0]["model"])
print(f"{'lr':>8}" + "".join(f"{f:>8}" for f in ur["formats"]))
for i, lr in enumerate(ur["lrs"]):
    print(f"{lr:>8.0e}" + "".join(f"{ur[f][i]:>8.1%}" for f in ur["formats"]))
late = {r: [train_recipe(r, seed=s, steps=10, lr=1e-5, cfg=cfg, init_state=runs["fp16_scaled_master"][s]["state"], data_seed=100 + s)
            for s in SEEDS] for r in ("fp16_scaled_master", "fp16_no_master")}
start = [x["val_loss"] for x in runs["fp16_scaled_master"]]
gain = {r: [a - x["val_loss"] for a, x in zip(start, v)] for r, v in late.items()}
lost = sum(sum(x["lost_updates"]) / len(x["lost_updates"]) for x in late["fp16_no_master"]) / len(SEEDS)
changed = {r: sum(x["weights_changed"] for x in v) / len(v) for r, v in late.items()}
stall = paired_comparison(gain["fp16_no_master"], gain["fp16_scaled_master"], "no master copy", "FP32 master",
                          lower_is_better=False, claim="worse", margin=0.001, seeds=SEEDS)  # gains are ~1e-3 nats
print(f"late phase (lr 1e-5): without a master copy {lost:.0%} of the proposed updates rounded away each step, and "
      f"{changed['fp16_no_master']:.0%} of the FP16 weights moved at all in 10 steps (with the master: "
      f"{changed['fp16_scaled_master']:.0%}); validation loss improved by {sum(gain['fp16_no_master']) / 3:.4f} vs "
      f"{sum(gain['fp16_scaled_master']) / 3:.4f} nats.")
print(stall.sentence)
print(("Reproduced: without the master copy a large share of the updates is lost and training slows"
       if lost > 0.25 and stall.outcome == "supports" else
       f"Partly reproduced: {lost:.0%} of the updates are lost, but the effect on the loss is {stall.outcome} in 10 steps"
       if lost > 0.25 else "Not reproduced at this learning rate")
      + f". Early in training the steps are large: at lr 1e-3 only {ur['fp16'][ur['lrs'].index(1e-3)]:.1%} of the FP16 weights "
        f"would miss a step (BF16: {ur['bf16'][ur['lrs'].index(1e-3)]:.1%}); updates are lost late in training, once the learning rate has decayed.")

# %% [markdown]
# ## 9 · Memory: what a parameter costs
#
# Bytes per parameter measured from the tensors after one real AdamW step (weights, gradients,
# FP32 master copy, optimizer moments), and the activation bytes autograd saved for backward in one
# forward pass of 512 tokens.

# %%
from lmlab.course.experiments.ch11_precision import memory_per_parameter
from lmlab.course.experiments.ch11_figures import memory_figure

mem = memory_per_parameter(cfg)
print(f"{'recipe':<30}{'weights':>8}{'grads':>7}{'master':>8}{'Adam':>6}{'total':>7}{'activations saved':>19}")
for name, r in mem["rows"].items():
    print(f"{name:<30}{r['weights']:>8g}{r['grads']:>7g}{r['master']:>8g}{r['optimizer_state']:>6g}{r['total']:>7g}"
          f"{r['activation_bytes'] / 1e6:>16.2f} MB")
memory_figure(mem).show()
mixed = mem["rows"]["fp16 + fp32 master + AdamW"]
fp32 = mem["rows"]["fp32 + AdamW"]
print(f"Mixed precision with Adam: {mixed['weights']:g} + {mixed['grads']:g} + {mixed['master'] + mixed['optimizer_state']:g} = "
      f"{mixed['total']:g} bytes per parameter ({'= the ZeRO paper' if mixed['total'] == 16 else 'differs from the ZeRO paper'}'s "
      f"2 + 2 + 12), the same as FP32's {fp32['total']:g}: parameter memory is not what it saves. It saves activations "
      f"({mixed['activation_bytes'] / fp32['activation_bytes']:.0%} of FP32's here; BF16 autocast "
      f"{mem['rows']['bf16 autocast + AdamW']['activation_bytes'] / fp32['activation_bytes']:.0%}), bandwidth and the time of "
      f"16-bit matrix multiplies. Dropping the master copy and keeping moments in FP16 halves it to "
      f"{mem['rows']['pure fp16 + AdamW']['total']:g} — at the cost of section 8.")
assert mixed["total"] == 16 and (mixed["weights"], mixed["grads"]) == (2, 2)

# %% [markdown]
# ### Widget: number-format explorer
#
# Type a value and pick a format: the thick bar is that format's normal range (grey: subnormal),
# the dashed line your value, the ticks its nearest representable neighbours. The note gives its
# bits in every format and the relative error of storing it.

# %%
from lmlab.course.experiments.ch11_figures import format_explorer, scale_lab

format_widget = FigureExplorer(
    make_figure=format_explorer,
    controls={"value": FloatText(value=0.1, description="value"),
              "fmt": Dropdown(options=list(FORMAT_NAMES), value="fp16", description="format")},
    caption="Try 65504, 65520 (FP16 overflows), 1e-8 (an FP16 subnormal), 1e-40 (BF16 subnormal), 3.14159.",
)
format_widget

# %% [markdown]
# ### Widget: loss-scale lab
#
# A run whose largest gradient is $2^{g}$: a step overflows when scale × $2^{g}$ passes 65,504, or
# when you inject an inf at that step. Both lmlab's `DynamicLossScaler` (red) and torch's GradScaler
# (grey, underneath) follow the same script.

# %%
scale_widget = FigureExplorer(
    make_figure=scale_lab,
    controls={"init_scale_log2": IntSlider(value=16, min=0, max=30, description="log2 initial scale"),
              "growth_interval": IntSlider(value=20, min=1, max=100, description="growth interval"),
              "grad_max_log2": IntSlider(value=-4, min=-30, max=10, description="log2 largest grad"),
              "inject": Text(value="60, 61", description="inject inf at")},
    caption="GradScaler's defaults: 65536 (2^16), x2 every 2000 clean steps, x0.5 on inf/NaN.",
)
scale_widget

# %% [markdown]
# ## 10 · Exercises
#
# Open [`exercises/11_mixed_precision.ipynb`](../exercises/11_mixed_precision.ipynb). You will write:
# - `decode_fp16`: an FP16 bit pattern → its value (normal, subnormal, inf, NaN);
# - `fp32_to_bf16_bits`: FP32 → BF16 with round-to-nearest-even using integer bit operations;
# - `update_scale`: the dynamic loss scaler's update rule;
# - `master_weights_step`: one SGD step with FP32 master weights, loss-scaled FP16 gradients and a skip on overflow.
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/11_mixed_precision.ipynb`.
#
# ## 11 · Summary and further reading
#
# - A float is sign, exponent (range) and mantissa (precision). FP16: max 65504, eps 2⁻¹⁰; BF16:
#   FP32's range (3.4e38), eps 2⁻⁷. FP16 overflowed where BF16 did not; BF16 lost the 0.01 sum at 4.0.
# - Loss scaling moves gradients into FP16's range; dynamic scaling finds the largest safe scale by
#   halving on overflow and growing after clean runs (GradScaler's rule, reproduced exactly).
# - FP32 master weights keep updates that FP16 weights would round away; with Adam the state is
#   2 + 2 + 12 = 16 bytes per parameter — mixed precision saves activations and time, not parameter memory.
# - Reading: Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training*, subsection *Mixed Precision Training* (cited by title, as the seed note names it: it gives no section numbers); Micikevicius et al.,
#   *Mixed Precision Training* (ICLR 2018); Kalamkar et al., *A Study of BFLOAT16 for Deep Learning
#   Training* (2019); Rajbhandari et al., *ZeRO* (SC 2020); Micikevicius et al., *FP8 Formats for
#   Deep Learning* (2022); IEEE 754-2019.
