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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/09_training_recipe.ipynb)
#
# Five pieces of the training recipe of [lesson 09](../lessons/09_training_recipe.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `AdamW`: a `torch.optim.Optimizer` with decoupled weight decay | 4 |
# | 2 | `warmup_cosine(...)`: linear warm-up, cosine decay, flat after the end | 2 |
# | 3 | `clip_grad_norm(...)`: clip all gradients by their global norm | 2 |
# | 4 | `SpikeDetector`: a rolling z-score of the loss and the gradient norm | 3 |
# | 5 | `train_loop(...)`: a whole training loop, graded by its loss trajectory | 4 |
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
        ### BEGIN SOLUTION
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)  # decoupled weight decay
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        ### END SOLUTION


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
    ### BEGIN SOLUTION
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
    coef = min(1.0, max_norm / (total.item() + 1e-6))
    for g in grads:
        g.mul_(coef)
    return total
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        spike = False
        if len(self.losses) >= self.min_history:
            for x, past in ((loss, self.losses), (grad_norm, self.grad_norms)):
                mean, s = statistics.fmean(past), statistics.stdev(past)
                z = (x - mean) / s if s > 0 else (math.inf if x > mean else 0.0)  # constant history: any rise is a spike
                spike = spike or z > self.threshold
        if not spike:
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)
        return spike
        ### END SOLUTION


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
    ### BEGIN SOLUTION
    gen = seed_everything(seed)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95))
    T = model.config.context_length
    train_loss, val_loss = [], []
    model.train()
    for t in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(t, lr, 0.1 * lr, warmup, steps)
        x, y = sample_batch(train_ids, batch_size, T, generator=gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_loss.append(loss.item())
        if t % eval_every == 0 or t == steps:
            val_loss.append(evaluate(model, val_ids, batch_size, 4))
    return {"train_loss": train_loss, "val_loss": val_loss}
    ### END SOLUTION


# %%
check("09.train_loop", train_loop)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/09_training_recipe.ipynb` prints in a terminal.

# %%
check_all("09")
