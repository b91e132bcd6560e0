# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Exercises: predictable scaling
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/10_scaling.ipynb)
#
# Four pieces of [lesson 10](../lessons/10_scaling.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | warm-up: `flops_per_token(...)`: training FLOPs per token, attention included | 1 |
# | 2 | `fit_power_law(compute, loss)`: fit $L(C) = a C^b + c$ | 3 |
# | 3 | `compute_optimal(C, E, A, B, alpha, beta)`: Chinchilla's compute-optimal $N$ and $D$ | 2 |
# | 4 | `llama_params(...)`: the parameters of a LLaMA-style model | 2 |
#
# **How it works.** Each docstring says what to build and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/10_scaling.ipynb` grades the whole notebook.

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

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · FLOPs per token, with attention (1 point, warm-up)
#
# Training a weight costs one multiply-add (2 FLOPs) forward and two backward (the gradient with
# respect to the input and to the weight): **6 FLOPs per parameter per token**, $6N$. Attention adds
# work that no parameter counts: in each layer every token's query meets all $T$ keys ($QK^\top$) and
# the weights meet all $T$ values ($AV$), $2Td$ FLOPs each forward, three times that with backward.
# `n_params` here are the weights that multiply activations (every matrix, the output layer
# included; the embedding *lookup* costs nothing).

# %%
def flops_per_token(n_params: float, n_layers: int, context_length: int, d_model: int) -> float:
    """Training FLOPs (forward + backward) per token of a decoder with ``n_params`` matmul weights,
    ``n_layers`` layers of width ``d_model``, attending over ``context_length`` tokens.

    Hint: FLOPs per weight forward and backward, then attention's two matmuls per layer, forward and backward.
    """
    ### BEGIN SOLUTION
    return 6.0 * n_params + 12.0 * n_layers * context_length * d_model
    ### END SOLUTION


# %%
check("10.flops_per_token", flops_per_token)

# %% [markdown]
# ## 2 · Fit a power law with an irreducible term (3 points)
#
# GPT-4's report predicted the final loss of its big run by fitting $L(C) = a\,C^{b} + c$ to small
# runs ($b < 0$; $c$ is the loss no amount of compute removes). On log axes this is *not* a straight
# line — it bends towards $c$ — so a linear fit of $\log L$ on $\log C$ is wrong. Fit the three
# numbers with torch: a smooth loss on $\log L$, parameters that keep $a$ and $c$ positive, a
# well-scaled $\log C$, and several starting points.

# %%
def fit_power_law(compute: list[float], loss: list[float]) -> tuple[float, float, float]:
    """Fit ``loss ≈ a * compute**b + c`` and return ``(a, b, c)`` with ``a > 0``, ``b < 0``, ``c > 0``.

    ``compute`` may be anything from 1e2 to 1e25; there are at least 6 points.

    Hint: optimise (log a', b, log c) where a' is a at the centre of log C; L-BFGS from a few (b, c) starts.
    """
    ### BEGIN SOLUTION
    x = torch.tensor(compute, dtype=torch.float64).log()
    y = torch.tensor(loss, dtype=torch.float64).log()
    mu = x.mean()
    best = None
    for b0 in (-0.05, -0.2, -0.5, -1.0):
        for frac in (0.3, 0.8, 0.95):
            c0 = frac * min(loss)
            p = torch.tensor([math.log(max(math.exp(y.mean()) - c0, 1e-3)), b0, math.log(c0)], dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS([p], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                pred = torch.logaddexp(p[0] + p[1] * (x - mu), p[2])  # log(a' e^{b (x - mu)} + c)
                err = ((pred - y) ** 2).mean()
                err.backward()
                return err

            opt.step(closure)
            with torch.no_grad():
                err = float(((torch.logaddexp(p[0] + p[1] * (x - mu), p[2]) - y) ** 2).mean())
            if math.isfinite(err) and (best is None or err < best[0]):
                best = (err, p.detach().clone())
    la, b, lc = best[1].tolist()
    return math.exp(la - b * float(mu)), b, math.exp(lc)
    ### END SOLUTION


# %%
check("10.fit_power_law", fit_power_law)

# %% [markdown]
# ## 3 · Compute-optimal N and D (2 points)
#
# Chinchilla's parametric loss is $L(N, D) = E + A/N^{\alpha} + B/D^{\beta}$. With a budget of
# $C = 6ND$ FLOPs, which $N$ and $D$ minimise it? Substitute $D = C/(6N)$, set $dL/dN = 0$ and solve —
# the answer is a closed form (no search needed). With the published constants at Chinchilla's own
# compute ($6 \cdot 70\text{e}9 \cdot 1.4\text{e}12$) it gives about 93 tokens per parameter, not the
# famous 20.

# %%
def compute_optimal(compute: float, E: float, A: float, B: float, alpha: float, beta: float) -> tuple[float, float]:
    """``(N_opt, D_opt)`` minimising ``E + A / N**alpha + B / D**beta`` subject to ``6 * N * D == compute``.

    Hint: at the optimum alpha·A/N^alpha = beta·B/D^beta; write D through C and N and solve for N.
    """
    ### BEGIN SOLUTION
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (compute / 6) ** (beta / (alpha + beta))
    return N, compute / (6 * N)
    ### END SOLUTION


# %%
check("10.compute_optimal", compute_optimal)

# %% [markdown]
# ## 4 · The parameters of a LLaMA-style model (2 points)
#
# LLaMA's layers have **no biases**, **RMSNorm** (one weight vector of size $d$) before attention and
# before the FFN, a **SwiGLU** FFN (three $d \times d_{ff}$ matrices: gate, up, down), and **RoPE**
# (no position parameters). With grouped-query attention the key and value projections have
# `n_kv_heads * (d_model // n_heads)` outputs. After the last layer: one more RMSNorm and the output
# layer, which with `tie_embeddings` *is* the token embedding (one matrix, counted once).
# LLaMA-7B (vocabulary 32,000, $d$ 4,096, 32 layers, $d_{ff}$ 11,008, 32 heads): 6,738,415,616.

# %%
def llama_params(vocab_size: int, d_model: int, n_layers: int, d_ff: int, n_heads: int, n_kv_heads: int,
                 tie_embeddings: bool = False) -> int:
    """The number of parameters of a LLaMA-style decoder, as an ``int``.

    Hint: per layer attention (q, k, v, o), SwiGLU (3 matrices) and 2 norms; then embedding, final norm, output layer.
    """
    ### BEGIN SOLUTION
    kv = n_kv_heads * (d_model // n_heads)
    attention = d_model * d_model * 2 + 2 * d_model * kv  # q and o, then k and v
    ffn = 3 * d_model * d_ff
    per_layer = attention + ffn + 2 * d_model
    embeddings = vocab_size * d_model * (1 if tie_embeddings else 2)
    return n_layers * per_layer + d_model + embeddings
    ### END SOLUTION


# %%
check("10.llama_params", llama_params)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/10_scaling.ipynb` prints in a terminal.

# %%
check_all("10")
