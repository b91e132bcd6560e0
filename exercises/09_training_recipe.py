# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Exercises: the training recipe
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/09_training_recipe.ipynb)
#
# Five pieces of the training recipe of [lesson 09](../lessons/09_training_recipe.ipynb), written by you.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | `AdamW`: a `torch.optim.Optimizer` with decoupled weight decay | 4 | 20 min |
# | 2 | `warmup_cosine(...)`: linear warm-up, cosine decay, flat after the end | 2 | 10 min |
# | 3 | `clip_grad_norm(...)`: clip all gradients by their global norm | 2 | 10 min |
# | 4 | `SpikeDetector`: a rolling z-score of the loss and the gradient norm | 3 | 15 min |
# | 5 | `train_loop(...)`: a whole training loop, graded by its loss trajectory | 4 | 20 min |
#
# **How it works.** Each docstring says what to build and gives a hint. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/09_training_recipe.ipynb` grades the whole notebook.

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
import statistics
from collections import deque

import torch

from lmlab.grading import check, check_all

torch.set_num_threads(1)

# %% [markdown]
# ## 1 · AdamW (4 points)
#
# Per parameter $p$ with gradient $g$, at its $t$-th step ($t = 1, 2, \dots$):
# $$p \leftarrow p\,(1 - \eta\lambda), \quad m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,$$
# $$p \leftarrow p - \eta\, \frac{m / (1 - \beta_1^t)}{\sqrt{v / (1 - \beta_2^t)} + \epsilon}.$$
# The weight decay $\lambda$ is **decoupled**: it shrinks the weight directly and never enters $g$,
# $m$ or $v$ (adding $\lambda p$ to the gradient is L2 regularisation — a different method under Adam).
# Build it as a `torch.optim.Optimizer`: the base class stores `self.param_groups` (each a dict with
# `"params"` and its own `"lr"`, `"betas"`, …) and `self.state[p]`, a dict per parameter.

# %%
class AdamW(torch.optim.Optimizer):
    """AdamW, equal to ``torch.optim.AdamW(amsgrad=False)``.

    ``__init__(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)`` passes the defaults
    to ``super().__init__(params, dict(lr=..., betas=..., eps=..., weight_decay=...))``.
    ``step()`` updates every parameter that has a ``.grad`` (skip the others), under ``torch.no_grad()``.

    Hint: keep ``step``, ``exp_avg`` and ``exp_avg_sq`` in ``self.state[p]`` (create them on the first step).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        raise NotImplementedError("per parameter: p *= 1 - lr*wd first (decoupled: not in the gradient); m, v moving averages; divide each by (1 - beta**t) with t counted per parameter in self.state; skip parameters whose grad is None.")


# %%
check("09.AdamW", AdamW)

# %% [markdown]
# ## 2 · Warm-up + cosine (2 points)
#
# $$\eta(t) = \begin{cases} \eta_{\max}\, t / w & t < w \\
# \eta_{\min} + (\eta_{\max} - \eta_{\min})\, \tfrac12\left(1 + \cos\left(\pi\,\frac{t - w}{T - w}\right)\right) & w \le t < T \\
# \eta_{\min} & t \ge T \end{cases}$$
#
# With max 1, min 0.1, warm-up 7 and total 21: `0, .142857, …, 1 (t = 7), …, .55 (t = 14), …, .1 (t = 21), .1, .1, .1`.
# The last case matters: torch's and transformers' schedulers keep following the cosine after the
# end, so the learning rate *rises again* if you train longer than planned.

# %%
def warmup_cosine(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate after ``step`` updates (``step = 0`` is before the first one).

    Hint: compare ``step`` with ``warmup`` and ``total`` before computing anything.
    """
    raise NotImplementedError("three cases: step < warmup (linear from 0), warmup <= step < total (cosine from max_lr to min_lr over total - warmup steps), and step >= total.")


# %%
check("09.warmup_cosine", warmup_cosine)

# %% [markdown]
# ## 3 · Gradient clipping by global norm (2 points)
#
# Treat all gradients as one long vector: $\lVert g \rVert = \sqrt{\sum_i \lVert g_i \rVert^2}$. If
# it exceeds `max_norm`, scale **every** gradient by the same $c = \text{max\_norm} / (\lVert g \rVert + 10^{-6})$
# (so the update keeps its direction); otherwise leave them alone. Return the norm *before*
# clipping — training logs it.

# %%
def clip_grad_norm(parameters, max_norm: float):
    """Clip ``p.grad`` of every parameter in ``parameters`` (a list) in place; return the total norm before.

    Hint: parameters whose ``.grad`` is None take no part.
    """
    raise NotImplementedError("the norm of ALL gradients together (sqrt of the sum of every squared entry); one coefficient min(1, max_norm / (norm + 1e-6)) for every gradient; skip parameters whose grad is None.")


# %%
check("09.clip_grad_norm", clip_grad_norm)

# %% [markdown]
# ## 4 · A loss-spike detector (3 points)
#
# OLMo's skip-step optimizer calls a step a spike when its loss (or gradient norm) is more than
# `threshold` standard deviations above the mean of the recent past:
# $z = (x - \bar{x}) / s$ over the last `window` **good** steps ($s$ the sample standard deviation,
# `statistics.stdev`). Spikes are not added to the window — otherwise one spike would inflate $s$
# and hide the next. Only upward jumps count, and nothing is a spike until `min_history` good steps
# have been seen.

# %%
class SpikeDetector:
    """``SpikeDetector(window, threshold, min_history)``; ``check(loss, grad_norm)`` -> True for a spike.

    Hint: two ``deque(maxlen=window)`` of good values.
    """

    def __init__(self, window: int = 128, threshold: float = 6.0, min_history: int = 32):
        self.window, self.threshold, self.min_history = window, threshold, min_history
        self.losses, self.grad_norms = deque(maxlen=window), deque(maxlen=window)

    def check(self, loss: float, grad_norm: float) -> bool:
        raise NotImplementedError("z = (x - mean) / stdev over the last `window` GOOD steps (statistics.stdev), for the loss and the gradient norm; a spike when either z > threshold (upward only); add only non-spikes to the window; nothing is a spike before min_history good steps.")


# %%
check("09.SpikeDetector", SpikeDetector)

# %% [markdown]
# ## 5 · A whole training loop (4 points)
#
# Put it together. The grader trains a tiny GPT with your loop at a fixed seed and compares every
# training loss and every validation loss with `lmlab.train.train`'s (same recipe), so follow it
# exactly:
#
# 1. `gen = seed_everything(seed)` (seeds everything and returns the data generator);
# 2. an AdamW (yours from exercise 1, or `torch.optim.AdamW`) over `param_groups(model, 0.1)` (decay on
#    matrices only) with `betas=(0.9, 0.95)`;
# 3. for `t = 1 … steps`: set every group's `"lr"` to `warmup_cosine(t, lr, 0.1 * lr, warmup, steps)`;
#    `x, y = sample_batch(train_ids, batch_size, model.config.context_length, generator=gen)`;
#    loss `lm_loss(model(x), y)`; zero the grads, backward, clip to 1.0, step; record `loss.item()`;
# 4. when `t % eval_every == 0` or `t == steps`: record `evaluate(model, val_ids, batch_size, 4)`.
#
# Return `{"train_loss": [...], "val_loss": [...]}`. (Call `model.train()` before the loop.)

# %%
from lmlab.data import sample_batch
from lmlab.optim import param_groups
from lmlab.train import evaluate, lm_loss, seed_everything


def train_loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed):
    """Train ``model`` with the lesson's recipe; return ``{"train_loss": [...], "val_loss": [...]}``.

    Hint: write the schedule's lr into every ``opt.param_groups`` entry before the step.
    """
    raise NotImplementedError("gen = seed_everything(seed); AdamW(param_groups(model, 0.1), betas=(0.9, 0.95)); for t in 1..steps: set every group's lr to warmup_cosine(t, lr, 0.1 * lr, warmup, steps), sample a batch, forward, loss, zero_grad, backward, clip to 1.0, step; evaluate every eval_every steps and at the last.")


# %%
check("09.train_loop", train_loop)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/09_training_recipe.ipynb` prints in a terminal.

# %%
check_all("09")
