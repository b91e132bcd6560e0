# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Activation functions: GeLU, Swish, GLU, SwiGLU, GeGLU
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/02_activations.ipynb)
#
# **Goals**
# - Draw ReLU, GeLU and Swish and their derivatives, and *measure* the seed's four claims about
#   Swish: no cap above, a small dip below zero (so it is not monotonic), smooth everywhere.
# - See Swish's limits: β = 0 is the line x/2, β = 1 is SiLU, β → ∞ is ReLU.
# - Build a gated FFN (GLU, SwiGLU, GeGLU) and count its parameters: +50 % at the same hidden size,
#   and the 2/3 rule that brings it back to a plain FFN's budget (LLaMA's 11008).
# - Train the same tiny GPT with ReLU, GeLU, SwiGLU and GeGLU at matched parameters over several
#   seeds, and decide from the numbers whether the differences are larger than the seed noise.

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
import torch.nn as nn
import torch.nn.functional as F
from ipywidgets import FloatSlider, SelectMultiple

import lmlab
from lmlab.model.ffn import FeedForward, geglu, gelu, glu, glu_hidden_size, silu, swiglu, swish
from lmlab.course.doctor import doctor

info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# Every transformer block ends with a position-wise feed-forward network (FFN): project up to a
# hidden size $h$ (usually $4d$), apply a non-linearity, project back down. The survey's note:
# **GeLU** is the common choice, while **GLU variants such as SwiGLU** are used for better quality,
# at the price of about 50 % more FFN parameters at the same hidden size.
#
# $$\mathrm{ReLU}(x) = \max(0, x) \qquad \mathrm{GeLU}(x) = x\,\Phi(x) \approx \tfrac12 x\Bigl(1 + \tanh\bigl(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\bigr)\Bigr)$$
#
# $$\mathrm{Swish}_\beta(x) = x\,\sigma(\beta x) \qquad (\beta = 1:\ \text{SiLU})$$
#
# A **gated linear unit** multiplies one linear projection by an activation of another:
#
# $$\mathrm{GLU}(x) = (xV + c) \otimes \sigma(xW + b), \quad \mathrm{SwiGLU}(x) = (xV) \otimes \mathrm{Swish}_1(xW), \quad \mathrm{GeGLU}(x) = (xV) \otimes \mathrm{GeLU}(xW)$$
#
# and a gated FFN is $\mathrm{FFN}(x) = \bigl(\mathrm{SwiGLU}(x)\bigr) W_2$ — **three** $d \times h$
# matrices ($W$, $V$, $W_2$) where a plain FFN has two. The figure: each function (left) and its
# derivative (right), the derivative computed by autograd.

# %%
from lmlab.course.experiments.ch02_activations import (
    SWISH_RELU_GAP, activation_curves, compare_activations, compare_figure, comparison_figure, comparison_verdicts, curves_figure,
    ffn_parameter_table, swish_figure, swish_properties,
)

curves_figure(["ReLU", "GeLU", "Swish β=1 (SiLU)", "sigmoid (GLU's gate)"]).show()

# %% [markdown]
# ## 2 · Build it
#
# ### GeLU and Swish, naive → lmlab → torch
#
# Exact GeLU straight from its formula, then lmlab's versions, all checked against torch's built-ins
# (the trusted reference). GPT-2's tanh approximation and Swish you write yourself in the exercises.

# %%
x = torch.linspace(-6, 6, 1001)


def gelu_naive(x):  # x * Phi(x), Phi the standard normal CDF
    return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))


torch.testing.assert_close(gelu_naive(x), F.gelu(x))
torch.testing.assert_close(gelu(x), F.gelu(x))
torch.testing.assert_close(gelu(x, "tanh"), F.gelu(x, approximate="tanh"))
torch.testing.assert_close(swish(x, 1.0), F.silu(x))
torch.testing.assert_close(silu(x), F.silu(x))
print("naive formulas, lmlab and torch agree ✔")
print(f"largest gap between exact GeLU and its tanh approximation: {(F.gelu(x) - F.gelu(x, approximate='tanh')).abs().max():.1e}")

# %% [markdown]
# ### The seed's claims about Swish, measured
#
# The seed lists four properties of Swish (β = 1): **(1)** no cap above 0, **(2)** below 0 it goes
# to 0 but keeps some information, **(3)** it is differentiable, **(4)** it is *not* monotonic.
# `swish_properties` measures each on a fine grid of $[-8, 8]$ (derivatives by autograd); ReLU is
# the contrast.

# %%
p = swish_properties(1.0)
relu_slope = torch.tensor(activation_curves(["ReLU"], torch.linspace(-8, 8, 16001))["ReLU"]["dy"])
relu_jump = float(relu_slope.diff().abs().max())  # ReLU's slope jumps from 0 to 1 at x = 0
print(f"(1) unbounded above : Swish(8) = {p['value_at_hi']:.4f} (≈ 8: no cap, like ReLU)")
print(f"(2) dip below zero  : minimum {p['min_value']:.4f} at x = {p['argmin']:.3f}; "
      f"Swish(-3) = {float(swish(torch.tensor(-3.0))):.4f} where ReLU(-3) = 0")
print(f"(3) smooth          : the slope changes by at most {p['max_derivative_jump']:.1e} between grid points "
      f"(ReLU's jumps by {relu_jump:.0f} at 0)")
print(f"(4) non-monotonic   : smallest slope {p['min_derivative']:.4f} < 0 → monotonic = {p['monotonic']}")
assert p["value_at_hi"] > 7.99 and p["min_value"] < -0.27 and not p["monotonic"] and p["max_derivative_jump"] < 1e-2

# %% [markdown]
# ### Swish's limits: β = 0, 1, ∞
#
# $\sigma(0) = \tfrac12$, so **β = 0 gives the line x/2**. As β grows, $\sigma(\beta x)$ becomes a
# step and Swish becomes **ReLU**; the dip has depth $0.2785/\beta$, which is also the largest
# distance to ReLU. The numbers below are measured, the bound is the formula.

# %%
print(f"{'β':>6} {'max |Swish - x/2|':>18} {'max |Swish - ReLU|':>19} {'0.2785/β':>9}  min slope")
for beta in [0.0, 0.5, 1.0, 2.0, 10.0, 100.0]:
    q = swish_properties(beta)
    bound = SWISH_RELU_GAP / beta if beta else math.inf
    print(f"{beta:>6g} {q['max_gap_to_half_x']:>18.4f} {q['max_gap_to_relu']:>19.4f} {bound:>9.4f}  {q['min_derivative']:+.4f}")
    assert q["max_gap_to_relu"] <= bound + 1e-6
assert swish_properties(0.0)["max_gap_to_half_x"] == 0.0  # β = 0: exactly x/2
assert swish_properties(100.0)["max_gap_to_relu"] < 0.003  # β → ∞: ReLU

# %% [markdown]
# Notice that the smallest slope is the same ≈ −0.0998 for every β > 0: larger β squeezes the dip
# horizontally (and makes it shallower) but never removes it — Swish is non-monotonic for any β > 0.
#
# ### GLU, SwiGLU and GeGLU: two projections, one gate
#
# lmlab's gated functions take both projections concatenated, like `torch.nn.functional.glu`:
# for $z = [a, b]$ they return $a \otimes \mathrm{act}(b)$. We check GLU against `F.glu`, then
# build a LLaMA-style SwiGLU FFN from three `nn.Linear`s and check lmlab's fused `FeedForward`
# (one up-projection matrix holding both) against it.

# %%
z = torch.randn(4, 10)  # (batch, 2 * hidden)
a, b = z.chunk(2, dim=-1)  # value, gate: (4, 5) each
torch.testing.assert_close(glu(z), F.glu(z))  # a * sigmoid(b)
torch.testing.assert_close(swiglu(z), a * F.silu(b))
torch.testing.assert_close(geglu(z), a * F.gelu(b))


class SwiGLUNaive(nn.Module):
    """LLaMA's MLP: w2(silu(w1 x) * w3 x), three separate matrices, no biases."""

    def __init__(self, d_model, hidden):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)  # gate
        self.w3 = nn.Linear(d_model, hidden, bias=False)  # value
        self.w2 = nn.Linear(hidden, d_model, bias=False)  # down

    def forward(self, x):  # (B, T, d) -> (B, T, d)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


d_model, hidden = 32, 88
naive = SwiGLUNaive(d_model, hidden)
fused = FeedForward(d_model, hidden, "swiglu", bias=False)
with torch.no_grad():  # up = [value; gate]: rows [:hidden] are w3, rows [hidden:] are w1
    fused.up.weight.copy_(torch.cat([naive.w3.weight, naive.w1.weight]))
    fused.down.weight.copy_(naive.w2.weight)
xb = torch.randn(2, 5, d_model)  # (B, T, d)
torch.testing.assert_close(fused(xb), naive(xb))
print(f"lmlab's fused SwiGLU FFN = three nn.Linear's ✔  output {tuple(fused(xb).shape)}")

# %% [markdown]
# ### Parameters: +50 % at equal hidden size, and the 2/3 rule
#
# A plain FFN has $2dh$ weights, a gated one $3dh$. To spend the same budget a gated FFN uses
# $h' = \tfrac23 h$, rounded up to a hardware-friendly multiple (LLaMA: 256). The table counts real
# modules (biases off, as in LLaMA), for LLaMA-7B's $d = 4096$ and for this lesson's tiny model.

# %%
for d, multiple in [(4096, 256), (32, 8)]:
    rows = ffn_parameter_table(d, multiple_of=multiple)
    print(f"d_model = {d}, plain hidden 4·d = {4 * d}")
    for r in rows:
        print(f"  {r['ffn']:<38} hidden {r['hidden']:>6}  {r['matrices']} matrices  {r['parameters']:>12,}  ({r['vs_plain']:+.1%})")
    assert abs(rows[1]["vs_plain"] - 0.5) < 1e-12  # same hidden size: exactly +50 %
    assert abs(rows[2]["vs_plain"]) < 0.05  # 2/3 rule: within a few % of the plain FFN
assert glu_hidden_size(4 * 4096, 256) == 11008  # LLaMA-7B's intermediate_size
print("LLaMA-7B's FFN hidden size 11008 is the 2/3 rule rounded up to a multiple of 256 ✔")

# %% [markdown]
# ## 3 · Experiment: does SwiGLU train better at equal parameters?
#
# The claim (Shazeer 2020, and the reason PaLM and LLaMA use it): at the same parameter count, a
# SwiGLU or GeGLU FFN reaches a lower loss than ReLU or GeLU. We train the same tiny GPT
# (2 layers, d = 32, context 32, 200 steps, about 2.5 s a run) four times: ReLU and GeLU with
# $h = 128$, SwiGLU and GeGLU with the matched $h = 88$ — and repeat with 4 seeds. A seed fixes the
# initialisation and the training batches, and all runs are scored on the same validation windows,
# so runs with the same seed form a **pair**: their difference is the activation's effect plus noise.
# A paired t-test says whether the mean difference is larger than the seed-to-seed noise.

# %% [markdown]
# **Predict, then run.** At matched parameters, 200 steps and 4 seeds: will the paired test find SwiGLU better than
# GeLU, GeLU better, or no difference beyond the seed noise?

# %%
from lmlab.course.widgets import Prediction

predict_swiglu = Prediction("At matched parameters, does the paired test find SwiGLU or GeLU better?",
                            ["SwiGLU better", "GeLU better", "not resolved"])
predict_swiglu

# %%
comparison = compare_activations(seeds=(0, 1, 2, 3), steps=200, d_model=32)
print(comparison.table())
print(f"({len(comparison.activations) * len(comparison.seeds)} runs in {comparison.seconds:.0f} s)")

# %%
comparison_figure(comparison).show()

# %%
ranking = sorted(comparison.activations, key=comparison.mean)
print("ranking by mean final loss (lower is better):", " < ".join(ranking))
spread = max(comparison.std(a) for a in comparison.activations)
gap = comparison.mean(ranking[-1]) - comparison.mean(ranking[0])
print(f"best-to-worst gap {gap:.3f} nats; largest seed-to-seed std {spread:.3f} nats\n")
MARGIN = 0.02  # nats: the smallest gap we would care about (Shazeer's SwiGLU vs GeLU gap was ~0.04)
verdicts = {v["activation"]: v for v in comparison_verdicts(comparison, against="gelu", margin=MARGIN,
                                                            claims={"relu": "worse", "swiglu": "better", "geglu": "better"})}
for v in verdicts.values():
    print(v["sentence"])
sw = verdicts["swiglu"]
claim = {"supports": "SUPPORTED here: SwiGLU beats GeLU at matched parameters beyond the seed noise.",
         "contradicts": (f"CONTRADICTED here ({sw['comparison'].reason})."),
         "undetermined": (f"UNDETERMINED at this scale: SwiGLU − GeLU = {sw['mean_diff']:+.3f} nats, 95 % CI "
                          f"[{sw['ci95'][0]:+.3f}, {sw['ci95'][1]:+.3f}]; this design detects only gaps ≥ {sw['mde']:.3f} "
                          f"nats, while the gap the paper reports is ~0.04.")}[sw["outcome"]]
print("\nThe claim 'SwiGLU trains better than GeLU at equal parameters' is", claim)
print(f"Confounds: every run used one learning rate ({comparison.settings['lr']:g}); a gated FFN may prefer another step "
      "size, so this verdict is about that LR, not the best each activation can do (lessons 01 and 04 sweep the LR). "
      f"'Matched' parameters are matched only up to rounding: SwiGLU's FFN has {comparison.ffn_hidden['swiglu']} hidden units "
      f"vs GeLU's {comparison.ffn_hidden['gelu']}, {comparison.parameters['swiglu']:,} vs {comparison.parameters['gelu']:,} "
      f"parameters ({100 * (comparison.parameters['swiglu'] / comparison.parameters['gelu'] - 1):+.1f} %).")
outcome = ("SwiGLU better" if sw["better"] == "swiglu" else "GeLU better") if sw["significant"] else "not resolved"
print(predict_swiglu.reveal(outcome))

# %% [markdown]
# **Reading the result honestly.** The gains reported for gated FFNs are small — in Shazeer's
# paper about 0.04–0.05 in log-perplexity (SwiGLU 1.944 vs GeLU 1.983 and ReLU 1.997) after 65,536
# steps of a T5-base-sized model — and a 30k-parameter
# character model after 200 steps is a very different regime: the loss is still falling quickly, so
# differences in initial speed and seed-to-seed noise dominate. Whatever the verdict above says,
# it was computed from these runs; a larger model, more steps and more seeds are what it takes to
# resolve a gap of a few hundredths of a nat. Things to try (each costs more time): raise `steps`
# to 800, or `seeds` to 8, and rerun the two cells above.
#
# ## 4 · Widgets
#
# **Swish's β.** Slide β from 0 (the line x/2) through 1 (SiLU) to large values (ReLU). The note
# under the plot gives the measured dip, the smallest slope and the distance to each limit.

# %%
from lmlab.course.widgets import FigureExplorer

swish_explorer = FigureExplorer(
    make_figure=lambda beta: swish_figure(beta),
    controls={"beta": FloatSlider(value=1.0, min=0.0, max=20.0, step=0.1, description="β")},
    caption="Left: Swish and its two limits (dashed ReLU, dotted x/2). Right: the derivative; ReLU's is a step.",
)
swish_explorer

# %% [markdown]
# **Compare activations.** Pick several (Ctrl/Cmd-click) and a range. The note says which dip
# below zero and which are monotonic.

# %%
from lmlab.course.experiments.ch02_activations import ACTIVATION_FUNCTIONS

compare_explorer = FigureExplorer(
    make_figure=lambda names, x_range: compare_figure(names, x_range),
    controls={
        "names": SelectMultiple(options=list(ACTIVATION_FUNCTIONS), value=["ReLU", "GeLU", "Swish β=1 (SiLU)"],
                                rows=len(ACTIVATION_FUNCTIONS), description="activations"),
        "x_range": FloatSlider(value=5.0, min=1.0, max=10.0, step=0.5, description="x from -r to r"),
    },
    caption="GeLU and Swish both dip below zero; the GLU gate (sigmoid) never does and is bounded.",
)
compare_explorer

# %%
# The widgets are wired: moving a control redraws the figure (checked here without a browser).
before = swish_explorer.figure.data[-1].y
swish_explorer.controls["beta"].value = 5.0
assert swish_explorer.figure.data[-1].y != before
swish_explorer.controls["beta"].value = 1.0

# %% [markdown]
# ## 5 · Exercises
#
# Open [`exercises/02_activations.ipynb`](../exercises/02_activations.ipynb). You will write, and
# check in the notebook as you go:
# - `swish(x, beta)` (checked against `F.silu` and both limits),
# - `gelu_tanh(x)`, GPT-2's tanh approximation (checked against `F.gelu(approximate="tanh")`),
# - `swiglu_ffn(x, w_gate, w_value, w_down)`, a SwiGLU FFN forward pass (checked against `nn.Linear`s),
# - `glu_hidden_size(plain_hidden, multiple_of)`, the 2/3 rule (checked against LLaMA's sizes),
# - `ffn_num_parameters(d_model, hidden, kind, bias)` (checked against real modules),
# - `class SwiGLU`, LLaMA's FFN as a module, swapped into lmlab's model (`lmlab.model.registry.register_ffn`) and trained.
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/02_activations.ipynb`.
#
# ## 6 · Summary and further reading
#
# - GeLU and Swish are smooth ReLUs: unbounded above, a small negative dip (non-monotonic), a
#   continuous derivative. Swish's β interpolates between the line x/2 (β = 0) and ReLU (β → ∞);
#   its distance to ReLU is at most 0.2785/β.
# - A gated FFN multiplies a value projection by an activated gate projection: three matrices, so
#   +50 % parameters at the same hidden size; the 2/3 rule (rounded up) restores the budget.
# - Whether SwiGLU helps is an empirical claim; at this tiny scale the measured verdict is printed
#   above, next to the seed noise that decides whether it means anything.
# - Reading: Hendrycks & Gimpel, *Gaussian Error Linear Units (GELUs)* (2016); Ramachandran, Zoph
#   & Le, *Searching for Activation Functions* (Swish, 2017); Elfwing et al., *Sigmoid-Weighted
#   Linear Units* (SiLU, 2017); Dauphin et al., *Language Modeling with Gated Convolutional
#   Networks* (GLU, 2017); Shazeer, *GLU Variants Improve Transformer* (2020); Touvron et al.,
#   *LLaMA* (2023); Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training*, subsection *Detailed Configuration* (cited by title, as the seed note names it: it gives no section numbers).
