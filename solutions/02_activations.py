# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Exercises: activation functions
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/02_activations.ipynb)
#
# Six pieces of the feed-forward block of [lesson 02](../lessons/02_activations.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | warm-up: `swish(x, beta)`: x · sigmoid(βx) | 1 |
# | 2 | warm-up: `gelu_tanh(x)`: GPT-2's tanh approximation of GeLU | 1 |
# | 3 | `swiglu_ffn(x, w_gate, w_value, w_down)`: a SwiGLU feed-forward pass | 3 |
# | 4 | warm-up: `glu_hidden_size(plain_hidden, multiple_of)`: the 2/3 rule | 1 |
# | 5 | warm-up: `ffn_num_parameters(d_model, hidden, kind, bias)`: counting an FFN's parameters | 1 |
# | 6 | `class SwiGLU`: your FFN as a module, swapped into the model and trained | 2 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/02_activations.ipynb` grades the whole notebook.

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

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · Swish (1 point, warm-up)
#
# $\mathrm{Swish}_\beta(x) = x\,\sigma(\beta x)$. β = 1 is SiLU (`F.silu`), β = 0 the line x/2,
# β → ∞ ReLU. Write it with `torch.sigmoid` (not `F.silu`: the check compares with it).

# %%
def swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Swish: ``x * sigmoid(beta * x)``, element-wise.

    Args:
        x: a float tensor of any shape.
        beta: a float (0 gives ``x / 2``; 1 gives SiLU).

    Returns:
        a tensor of ``x``'s shape. Autograd must flow through it.

    Hint: Swish multiplies x by a sigmoid of beta times x.
    """
    ### BEGIN SOLUTION
    return x * torch.sigmoid(beta * x)
    ### END SOLUTION


# %%
check("02.swish", swish)

# %% [markdown]
# ## 2 · GeLU, the tanh approximation (1 point, warm-up)
#
# GeLU is $x\,\Phi(x)$ with $\Phi$ the normal CDF. GPT-2 (and BERT's original code) used
#
# $$\mathrm{GeLU}(x) \approx \tfrac12\,x\,\Bigl(1 + \tanh\bigl(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\bigr)\Bigr).$$
#
# The check compares with `F.gelu(x, approximate="tanh")` to 1e-9 in float64, so the exact erf
# GeLU (which differs by up to 5e-4) does not pass.

# %%
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GeLU with the tanh approximation, element-wise, in ``x``'s dtype.

    Hint: GPT-2's tanh approximation of x·Phi(x): a tanh of a cubic polynomial in x (the constant 0.044715
    is in the paper).
    """
    ### BEGIN SOLUTION
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    ### END SOLUTION


# %%
check("02.gelu_tanh", gelu_tanh)

# %% [markdown]
# ## 3 · A SwiGLU feed-forward pass (3 points)
#
# LLaMA's MLP: $\mathrm{FFN}(x) = \bigl(\mathrm{SiLU}(x W_{\text{gate}}^\top) \otimes x W_{\text{value}}^\top\bigr) W_{\text{down}}^\top$.
# The weights come in `nn.Linear`'s layout, `(out_features, in_features)`, and there are no biases.
# The activation goes on the **gate** only; the value passes through linearly.

# %%
def swiglu_ffn(x: torch.Tensor, w_gate: torch.Tensor, w_value: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """A SwiGLU FFN forward pass.

    Args:
        x: ``(..., d)`` — any number of leading dimensions, e.g. ``(B, T, d)``.
        w_gate: ``(h, d)``, the gate projection (LLaMA's ``w1`` / ``gate_proj``).
        w_value: ``(h, d)``, the value projection (``w3`` / ``up_proj``).
        w_down: ``(d, h)``, the output projection (``w2`` / ``down_proj``).

    Returns:
        ``(..., d)``: ``silu(x @ w_gate.T) * (x @ w_value.T)``, then ``@ w_down.T``.

    Hint: weights are in nn.Linear's (out, in) layout, so x @ w.T (or F.linear); silu goes on the gate only,
    then multiply by the value and project down.
    """
    ### BEGIN SOLUTION
    gate = F.silu(F.linear(x, w_gate))  # (..., h)
    value = F.linear(x, w_value)  # (..., h)
    return F.linear(gate * value, w_down)  # (..., d)
    ### END SOLUTION


# %%
check("02.swiglu_ffn", swiglu_ffn)

# %% [markdown]
# ## 4 · The 2/3 rule (1 point, warm-up)
#
# A gated FFN has three $d \times h$ matrices where a plain FFN has two, so to keep the parameter
# count it uses $\tfrac23$ of the plain hidden size, rounded **up** to a multiple of `multiple_of`
# (LLaMA: 256). LLaMA-7B: $d = 4096$, plain $4d = 16384$ → 10922.67 → **11008**.

# %%
def glu_hidden_size(plain_hidden: int, multiple_of: int = 8) -> int:
    """Hidden size of a gated FFN with about the parameters of a plain FFN of ``plain_hidden``.

    Two thirds of ``plain_hidden`` (truncated to an int), rounded up to a multiple of ``multiple_of``, and never below
    ``multiple_of``. Returns an ``int``.

    Hint: three matrices instead of two: shrink the hidden size by the ratio that keeps the parameter count,
    then round up to the multiple.
    """
    ### BEGIN SOLUTION
    hidden = int(2 * plain_hidden / 3)
    return max(multiple_of, multiple_of * math.ceil(hidden / multiple_of))
    ### END SOLUTION


# %%
check("02.glu_hidden_size", glu_hidden_size)

# %% [markdown]
# ## 5 · Counting an FFN's parameters (1 point, warm-up)
#
# Plain (`relu`, `gelu`): an up projection $d \to h$ and a down projection $h \to d$. Gated
# (`swiglu`, `geglu`): a gate and a value projection $d \to h$ each, and the down projection.
# With `bias=True` every projection has a bias of its output size.

# %%
def ffn_num_parameters(d_model: int, hidden: int, kind: str, bias: bool = True) -> int:
    """The number of parameters of a feed-forward block (weights, plus biases if ``bias``).

    ``kind`` is ``"relu"``, ``"gelu"`` (two matrices) or ``"swiglu"``, ``"geglu"`` (three).

    Hint: a plain FFN has an up (d x h) and a down (h x d) matrix; a gated one adds a second up matrix; each
    matrix's bias has its output size.
    """
    ### BEGIN SOLUTION
    n_up = 2 if kind in ("swiglu", "geglu") else 1  # gated: gate and value
    weights = n_up * d_model * hidden + hidden * d_model
    biases = n_up * hidden + d_model if bias else 0
    return weights + biases
    ### END SOLUTION


# %%
check("02.ffn_num_parameters", ffn_num_parameters)

# %% [markdown]
# ## 6 · Swap your SwiGLU into the model and train (2 points)
#
# Make your `swiglu_ffn` a module with LLaMA's (Hugging Face's) layer names, then put it in every block:
# `lmlab.model.registry.register_ffn("my_swiglu", SwiGLU, gated=True)` makes `ModelConfig(activation="my_swiglu")`
# valid (with the gated 2/3 hidden size). The check copies lmlab's weights into your three projections:
# same logits, and the same losses after 8 Adam steps (tolerance 1e-4).

# %%
class SwiGLU(nn.Module):
    """LLaMA's feed-forward block.

    ``SwiGLU(d_model, hidden)``: three ``nn.Linear(..., bias=False)`` layers, ``gate_proj`` and
    ``up_proj`` (``d_model -> hidden``) and ``down_proj`` (``hidden -> d_model``).
    ``forward(x (B, T, d_model))`` returns ``(B, T, d_model)``: the SwiGLU FFN of exercise 3, with these layers'
    weights.

    Hint: your ``swiglu_ffn`` already does the maths; an ``nn.Linear``'s ``.weight`` is ``(out, in)``.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)  # w1: goes through SiLU
        self.up_proj = nn.Linear(d_model, hidden, bias=False)  # w3: the value, linear
        self.down_proj = nn.Linear(hidden, d_model, bias=False)  # w2
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return swiglu_ffn(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)  # (B, T, d)
        ### END SOLUTION


# %%
check("02.SwiGLU", SwiGLU)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/02_activations.ipynb` prints in a terminal.

# %%
check_all("02")
