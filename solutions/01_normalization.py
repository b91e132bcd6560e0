# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Exercises: normalization
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/01_normalization.ipynb)
#
# Five pieces of [lesson 01](../lessons/01_normalization.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `layer_norm(x, weight, bias, eps)`: re-centre and re-scale each token | 3 |
# | 2 | `rms_norm(x, weight, eps)`: re-scale only | 2 |
# | 3 | `pre_ln_block(x, attn, ffn, norm1, norm2)`: one pre-LN transformer layer | 2 |
# | 4 | warm-up: `deepnorm_constants(num_layers)`: DeepNet's α and β | 1 |
# | 5 | `class RMSNorm`: your norm as a module, swapped into the model and trained | 2 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/01_normalization.ipynb` grades the whole notebook.

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
import torch
import torch.nn as nn

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · LayerNorm (3 points)
#
# $$y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot g + b,\qquad \mu = \frac1d\sum_i x_i,\quad \sigma^2 = \frac1d\sum_i (x_i - \mu)^2$$
#
# over the **last** dimension only (each token by itself). Three classic slips: the wrong axis, the
# unbiased variance (`d - 1`), and ε outside the root. The check compares with `F.layer_norm`,
# including its gradients.

# %%
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension of ``x``.

    Args:
        x: ``(..., d)`` float tensor (any number of leading dimensions).
        weight, bias: ``(d,)`` tensors, the learned gain ``g`` and shift ``b``.
        eps: added to the variance *inside* the square root.

    Returns:
        a tensor of ``x``'s shape equal to ``F.layer_norm(x, (d,), weight, bias, eps)``.

    Hint: statistics per token, over its features only (keep the dims so they broadcast); which variance
    does torch's LayerNorm use, and where does eps go?
    """
    ### BEGIN SOLUTION
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1): biased, divide by d
    return (x - mean) / torch.sqrt(var + eps) * weight + bias  # (..., d)
    ### END SOLUTION


# %%
check("01.layer_norm", layer_norm)

# %% [markdown]
# ## 2 · RMSNorm (2 points)
#
# $$y = \frac{x}{\sqrt{\frac1d\sum_i x_i^2 + \epsilon}} \odot g$$
#
# No mean is subtracted and there is no bias (Gopher, Chinchilla, LLaMA). The check compares with
# `F.rms_norm`.

# %%
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension of ``x``.

    Args:
        x: ``(..., d)`` float tensor.
        weight: ``(d,)`` tensor, the learned gain ``g``.
        eps: added to the mean square *inside* the square root.

    Returns:
        a tensor of ``x``'s shape equal to ``F.rms_norm(x, (d,), weight, eps=eps)``.

    Hint: like LayerNorm without re-centring: scale each token by the root of its mean square.
    """
    ### BEGIN SOLUTION
    ms = x.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): mean square, nothing subtracted
    return x * torch.rsqrt(ms + eps) * weight  # (..., d)
    ### END SOLUTION


# %%
check("01.rms_norm", rms_norm)

# %% [markdown]
# ## 3 · A pre-LN block (2 points)
#
# GPT-2 and LLaMA normalize only what goes *into* each sub-layer (attention first, then the FFN);
# each sub-layer's output is added back to the residual stream, which itself passes through untouched.
#
# The parts are given to you as callables (attention, feed-forward, two norms); wire them.

# %%
def pre_ln_block(x: torch.Tensor, attn, ffn, norm1, norm2) -> torch.Tensor:
    """One pre-LN transformer layer.

    Args:
        x: ``(B, T, d)`` residual stream.
        attn, ffn: the two sub-layers, each a callable ``(B, T, d) -> (B, T, d)``.
        norm1, norm2: the norms in front of ``attn`` and ``ffn``, callables ``(B, T, d) -> (B, T, d)``.

    Returns:
        ``(B, T, d)``. Call each part exactly once.

    Hint: normalize only what enters a sub-layer, and add each sub-layer's output to the stream it read;
    the residual stream itself is never normalized. The FFN reads the stream after attention's update.
    """
    ### BEGIN SOLUTION
    h = x + attn(norm1(x))  # (B, T, d)
    return h + ffn(norm2(h))  # (B, T, d)
    ### END SOLUTION


# %%
check("01.pre_ln_block", pre_ln_block)

# %% [markdown]
# ## 4 · DeepNorm's constants (1 point, warm-up)
#
# DeepNet (Wang et al., 2022) keeps post-LN but up-weights the skip, $x \leftarrow \mathrm{LN}(\alpha x + f(x))$,
# and scales the sub-layers' initial weights by $\beta$. Both depend only on the depth $M$: read them from
# the paper's Table 1 (or Figure 2's pseudo-code), decoder-only column. $\alpha$ grows with depth, $\beta$ shrinks.

# %%
def deepnorm_constants(num_layers: int) -> tuple[float, float]:
    """DeepNet's ``(alpha, beta)`` for a decoder-only stack of ``num_layers`` layers.

    Returns a pair of floats ``(alpha, beta)``, DeepNet's decoder-only values for ``M = num_layers``.
    For 12 layers: about (2.21, 0.32).

    Hint: DeepNet's table, decoder-only column: both constants are quarter powers of a multiple of the
    number of layers (alpha grows with depth, beta shrinks).
    """
    ### BEGIN SOLUTION
    return (2 * num_layers) ** 0.25, (8 * num_layers) ** -0.25
    ### END SOLUTION


# %%
check("01.deepnorm_constants", deepnorm_constants)

# %% [markdown]
# ## 5 · Swap your RMSNorm into the model and train (2 points)
#
# Wrap your `rms_norm` in a module with a learned gain, then put it in every norm slot of lmlab's
# model: `lmlab.model.registry.register_norm("my_rmsnorm", RMSNorm)` makes `ModelConfig(norm="my_rmsnorm")`
# valid, and `ModelConfig.norm_eps` reaches your `eps`. The check builds the model twice from the same
# weights, once with lmlab's RMSNorm and once with yours: same logits, and the same losses after 8
# Adam steps (tolerance 1e-4).

# %%
class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, with a learned gain.

    ``RMSNorm(d_model, eps=1e-6)``: one parameter, ``weight`` of shape ``(d_model,)``, initialised to
    ones (no bias). ``forward(x (..., d_model))`` returns ``rms_norm(x, weight, eps)``, same shape.

    Hint: the gain is an ``nn.Parameter`` that starts at ones; keep ``eps`` on the module and use it in ``forward``.
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        ### BEGIN SOLUTION
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))  # (d,): a trained gain
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return rms_norm(x, self.weight, self.eps)  # (..., d)
        ### END SOLUTION


# %%
check("01.RMSNorm", RMSNorm)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/01_normalization.ipynb` prints in a terminal.

# %%
check_all("01")
