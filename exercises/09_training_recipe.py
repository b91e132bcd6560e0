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
# | 1 | `AdamW`: a `torch.optim.Optimizer` with decoupled weight decay | 4 | 25 min |
# | 2 | `warmup_cosine(...)`: linear warm-up, cosine decay, flat after the end | 2 | 10 min |
# | 3 | `clip_grad_norm(...)`: clip all gradients by their global norm | 2 | 10 min |
# | 4 | `SpikeDetector`: a rolling z-score of the loss and the gradient norm | 3 | 15 min |
# | 5 | `train_loop(...)`: a whole training loop, graded by its loss trajectory | 4 | 25 min |
#
# **How it works.** Each docstring says what to build and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
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

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

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
        raise NotImplementedError("per parameter: decoupled weight decay, then Adam's two moving averages with bias correction; the step count lives in self.state[p]; skip parameters without a gradient.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# AdamW (Loshchilov & Hutter) is Adam with the weight decay taken out of the gradient: the parameter shrinks by lr * wd directly, so the decay is not rescaled by Adam's per-coordinate step. m and v are moving averages of the gradient and its square; dividing by 1 - beta ** t corrects their start at zero.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# In step(): for each group read lr, betas, eps and weight_decay; for each p with a gradient, take self.state[p] (empty the first time: create step 0 and zero tensors m, v shaped like p) and count the step. Then, in place: p <- p * (1 - lr * wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; m_hat = m / (1 - b1 ** t), v_hat = v / (1 - b2 ** t); p <- p - lr * m_hat / (sqrt(v_hat) + eps).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# for group in ...:  # every parameter group
#     lr, (b1, b2), eps, wd = ...
#     for p in ...:  # its parameters
#         if p.grad is None:
#             continue
#         state = self.state[p]
#         if not state:
#             ...  # step 0, zero m and v
#         ...  # count the step
#         ...  # decay, moments, bias correction, update (in place)
# ```
#
# </details>

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
    """The learning rate of update number ``step`` (updates count from 1; ``step = 0``, before training, gives 0
    during warm-up). A training loop calls it with ``t = 1 … total`` for its t-th update, so the first update
    already moves the weights and the last one (``t = total``) runs at ``min_lr``.

    Hint: compare ``step`` with ``warmup`` and ``total`` before computing anything.
    """
    raise NotImplementedError("three cases: step < warmup (linear from 0), warmup <= step < total (cosine from max_lr to min_lr over total - warmup steps), and step >= total.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# The usual LLM schedule: the learning rate rises linearly from 0 during the warm-up, then follows half a cosine from max_lr down to min_lr (10% of max in LLaMA and BLOOM) at the last step, and stays there.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# step < warmup: linear, max_lr * step / warmup. step >= total: min_lr. In between: progress goes from 0 (end of warm-up) to 1 (total); the cosine factor (1 + cos(pi * progress)) / 2 goes from 1 to 0; scale it into [min_lr, max_lr].
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# if step < warmup:
#     return ...
# if step >= total:
#     return min_lr
# progress = ...
# return min_lr + ...
# ```
#
# </details>

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
    raise NotImplementedError("one norm over all the gradients together and one scale factor for all of them (never above 1); skip parameters without a gradient.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Clipping by global norm (max_norm = 1.0 in most LLM recipes) rescales the whole gradient when its norm is too large, keeping its direction. It limits the damage a single bad batch can do.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# total = the square root of the sum, over every gradient, of the sum of its squared entries (accumulate in float64 for accuracy). One coefficient min(1, max_norm / (total + 1e-6)) multiplies every .grad in place. Return total, the norm before clipping, as a tensor.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# grads = [...]  # the .grad of each parameter that has one
# total = ...  # one norm for all of them
# coef = ...
# for g in grads:
#     ...  # in place
# return total
# ```
#
# </details>

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
# have been seen (`min_history >= 2`: a sample standard deviation needs two values). A constant history
# has $s = 0$: a value above its mean is then a spike ($z = +\infty$), an equal or lower one is not.

# %%
class SpikeDetector:
    """``SpikeDetector(window, threshold, min_history)``; ``check(loss, grad_norm)`` -> True for a spike.

    ``min_history < 2`` raises ValueError. A constant history (standard deviation 0) flags any value above it.

    Hint: two ``deque(maxlen=window)`` of good values.
    """

    def __init__(self, window: int = 128, threshold: float = 6.0, min_history: int = 32):
        if min_history < 2:
            raise ValueError(f"min_history must be >= 2 (a sample standard deviation needs two values), got {min_history}")
        self.window, self.threshold, self.min_history = window, threshold, min_history
        self.losses, self.grad_norms = deque(maxlen=window), deque(maxlen=window)

    def check(self, loss: float, grad_norm: float) -> bool:
        raise NotImplementedError("compare the new loss and gradient norm with the recent good steps (a z-score, upward only); a spike never enters the history.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Loss spikes (PaLM, OLMo) are detected by comparing the newest value with the recent past: a z-score above a threshold means 'far above what is normal here'. Spiky steps stay out of the history, so one spike does not hide the next.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# self.losses and self.grad_norms hold the last `window` good values (a deque with maxlen does that). Once min_history of them are stored: for the loss and for the gradient norm, z = (x - mean) / stdev of its own history (statistics.fmean, statistics.stdev); a spike if either z > threshold (upward only). A constant history has stdev 0: then a value above the mean is a spike and any other is not (no division). If it is not a spike, remember both values. Return the verdict. The constructor refuses min_history < 2 (ValueError).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# spike = False
# if len(self.losses) >= ...:
#     for x, past in ...:  # the loss with its history, then the grad norm with its
#         z = ...
#         spike = ...
# if not spike:
#     ...  # remember both values
# return spike
# ```
#
# </details>

# %%
check("09.SpikeDetector", SpikeDetector)

# %% [markdown]
# ## 5 · A whole training loop (4 points)
#
# Put it together. The grader trains a tiny GPT with your loop at a fixed seed and compares every
# training loss and every validation loss with `lmlab.train.loop.train`'s (same recipe), so follow it
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
from lmlab.data.text import sample_batch
from lmlab.train.optim import param_groups
from lmlab.train.loop import evaluate, lm_loss, seed_everything


def train_loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed):
    """Train ``model`` with the lesson's recipe; return ``{"train_loss": [...], "val_loss": [...]}``.

    Hint: write the schedule's lr into every ``opt.param_groups`` entry before the step.
    """
    raise NotImplementedError("this chapter's recipe in one loop: seeded batches, AdamW with decay groups, the warm-up + cosine lr set every step, clipping at 1.0, and an evaluation every eval_every steps.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A pretraining loop: set this step's learning rate, sample a batch, forward, loss, backward, clip, optimizer step. Evaluating on held-out data every few steps shows whether the model generalizes; fixing the seed makes two runs comparable.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# seed_everything with the seed returns the generator for the batches. Optimizer: torch.optim.AdamW over param_groups(model, 0.1) (decay on matrices only), lr=lr, betas (0.9, 0.95). For t = 1..steps: each group's 'lr' is warmup_cosine at step t with max lr, min 10% of it, warmup, and steps as the total; a batch from sample_batch(train_ids, batch_size, context_length, generator=gen); loss = lm_loss of the model's logits; zero_grad, backward, clip_grad_norm_ to 1.0, step; record loss.item(). When t is a multiple of eval_every or the last step, record evaluate(model, val_ids, batch_size, 4).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# gen = ...  # seed everything, keep the generator
# opt = ...  # AdamW over param_groups(model, 0.1)
# for t in ...:  # steps counted from 1
#     ...  # this step's lr in every group
#     x, y = ...
#     ...  # forward, loss, zero_grad, backward, clip, step
#     ...  # record the train loss; evaluate when it is time
# return {"train_loss": ..., "val_loss": ...}
# ```
#
# </details>

# %%
check("09.train_loop", train_loop)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/09_training_recipe.ipynb` prints in a terminal.

# %%
check_all("09")
