# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Exercises: mixed precision
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/11_mixed_precision.ipynb)
#
# Four pieces of the mixed-precision machinery of [lesson 11](../lessons/11_mixed_precision.ipynb), written by you.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | `decode_fp16(bits)`: an FP16 bit pattern → its value | 2 | 10 min |
# | 2 | `fp32_to_bf16_bits(x)`: FP32 → BF16, round to nearest even, with integer bit operations | 3 | 15 min |
# | 3 | `update_scale(...)`: the dynamic loss scaler's update rule | 2 | 10 min |
# | 4 | `master_weights_step(...)`: one SGD step with FP32 master weights | 3 | 15 min |
#
# **How it works.** Each docstring says what to build and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/11_mixed_precision.ipynb` grades the whole notebook.

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
# ## 1 · Decode an FP16 bit pattern (2 points)
#
# FP16 is `s eeeee mmmmmmmmmm`: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits.
# - exponent field $e$ from 1 to 30: a **normal** number $(-1)^s (1 + m/2^{10})\, 2^{e - 15}$;
# - $e = 0$: a **subnormal** $(-1)^s (m / 2^{10})\, 2^{1 - 15}$ — no implicit 1, and the exponent is
#   the smallest normal one, $-14$ (so $m = 0$ gives $\pm 0$);
# - $e = 31$: $\pm\infty$ if $m = 0$, else NaN.
#
# Examples: `0x3C00` is 1.0, `0x7BFF` is 65504, `0x0001` is $2^{-24}$.

# %%
def decode_fp16(bits: int) -> float:
    """The value of the FP16 bit pattern ``bits`` (an int in [0, 65535]) as a Python float.

    Hint: ``bits >> 15``, ``(bits >> 10) & 0x1F``, ``bits & 0x3FF``.
    """
    raise NotImplementedError("split sign (1 bit), exponent (5), mantissa (10) with >> and &; treat exponent 0 and exponent 31 separately.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# An FP16 number is 1 sign bit, 5 exponent bits (bias 15) and 10 mantissa bits. A normal number is (1 + m / 1024) * 2 ** (e - 15); exponent 0 means subnormal (no implicit 1, exponent fixed at 1 - 15) and exponent 31 means inf or NaN.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# sign = bit 15; e = bits 10..14 (shift right by 10, mask 0x1F); m = the low 10 bits (mask 0x3FF). Test e == 31 first (m == 0: +-inf, otherwise NaN), then e == 0 (subnormal), otherwise normal. Return a Python float.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# sign = ...  # -1.0 or 1.0
# e, m = ..., ...
# if e == 0x1F:
#     return ...  # inf or NaN
# if e == 0:
#     return ...  # subnormal
# return ...  # normal
# ```
#
# </details>

# %%
check("11.decode_fp16", decode_fp16)

# %% [markdown]
# ## 2 · Round FP32 to BF16 with integer bit operations (3 points)
#
# BF16 is the top 16 bits of an FP32. Cutting off the low 16 bits **truncates** (rounds toward
# zero); round to nearest instead: look at the 16 bits you drop. More than half (`0x8000`) → round
# up, less → down, exactly half (a tie) → to the neighbour whose last kept bit is 0 (**even**).
# The classic trick: add `0x7FFF` plus the last kept bit, then shift right by 16 — a carry into the
# exponent is correct by itself (and rounding past the largest value gives inf).
#
# One trap: a NaN whose mantissa bits are all in the dropped half (e.g. `0x7F800001`) would become
# the inf pattern `0x7F80` — keep NaNs NaN.

# %%
def fp32_to_bf16_bits(x: torch.Tensor) -> torch.Tensor:
    """BF16 bit patterns (an integer tensor, values in [0, 65535], shape of ``x``) nearest to the FP32 ``x``.

    Use integer operations on ``x.view(torch.int32)`` (work in ``int64`` to avoid sign trouble);
    do not call ``x.to(torch.bfloat16)`` — that is what the grader compares with.
    """
    raise NotImplementedError("x.view(torch.int32) gives the bits; the lower 16 bits decide the rounding (more or less than half of 0x10000, and on a tie the lowest kept bit); NaNs need their own case.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# BF16 is the top half of FP32: the same sign and 8-bit exponent, 7 mantissa bits. Converting drops the low 16 bits with round-to-nearest-even, as .to(torch.bfloat16) does; a NaN must stay a (quiet) NaN.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# b = the 32-bit pattern as an unsigned number in int64 (view as int32, widen, mask with 0xFFFFFFFF). Round to nearest even: add 0x7FFF plus the lowest bit that will be kept (bit 16), then shift right by 16. A NaN (exponent all ones, mantissa not zero) instead keeps its top 16 bits with the quiet bit 0x40 set. torch.where chooses per element.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# b = ...  # (...,) the unsigned 32-bit pattern, int64
# rounded = ...  # round to nearest even, then >> 16
# is_nan = ...
# return torch.where(is_nan, ..., rounded)
# ```
#
# </details>

# %%
check("11.fp32_to_bf16_bits", fp32_to_bf16_bits)

# %% [markdown]
# ## 3 · The loss scaler's update rule (2 points)
#
# After every step, the dynamic loss scaler updates its scale from whether that step's gradients
# had an inf or NaN (`found_inf`) and how many clean steps in a row came before (`clean_steps`):
# - `found_inf`: the step was skipped; multiply the scale by `backoff_factor` and restart the count at 0;
# - otherwise: one more clean step; when the count reaches `growth_interval`, multiply the scale
#   by `growth_factor` and restart the count at 0.
#
# `torch.amp.GradScaler`'s defaults: 65536, ×2 every 2000 clean steps, ×0.5 on inf.

# %%
def update_scale(scale: float, clean_steps: int, found_inf: bool, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> tuple[float, int]:
    """Return ``(new_scale, new_clean_steps)`` after one step.

    Example: ``update_scale(65536.0, 1999, False)`` → ``(131072.0, 0)``.
    """
    raise NotImplementedError("two branches: an overflow shrinks the scale and forgets the clean run; a clean step counts, and only reaching the interval grows the scale (then the count starts again).")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Dynamic loss scaling (torch.amp.GradScaler) multiplies the loss by a scale so that small FP16 gradients do not underflow. If a step overflows, the scale was too big: shrink it (and skip the step). After growth_interval clean steps in a row, try a bigger one.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# found_inf: shrink by backoff_factor, and the clean run starts over at 0. Otherwise the clean run grows by one; when it reaches growth_interval, grow the scale by growth_factor and start the count over; otherwise the scale stays.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# if found_inf:
#     return ...
# clean_steps += 1
# if ...:
#     return ...  # grown scale, count back to 0
# return ...  # unchanged scale, the new count
# ```
#
# </details>

# %%
check("11.update_scale", update_scale)

# %% [markdown]
# ## 4 · One step with FP32 master weights (3 points)
#
# The model's parameters are FP16 (or BF16), and their gradients came from a loss multiplied by
# `scale`. Each parameter has an FP32 **master** copy. One SGD step:
# 1. each gradient → FP32, divided by `scale`;
# 2. if any of them is inf or NaN: change nothing and return `False` (the scaler will back off);
# 3. `master -= lr * grad` in FP32;
# 4. copy each master into its parameter (rounding to FP16/BF16), return `True`.
#
# Why the master: in FP16, $1 + 10^{-4}$ rounds back to 1. Updated in FP16 the weight never moves;
# in FP32 the small steps add up until the rounded weight changes too.

# %%
def master_weights_step(params: list[torch.Tensor], masters: list[torch.Tensor], lr: float, scale: float) -> bool:
    """One SGD step with FP32 master weights, in place; True if taken, False if skipped on inf/NaN.

    Args:
        params: low-precision tensors, each with a ``.grad`` of the same dtype (scaled by ``scale``).
        masters: FP32 tensors, one per parameter (same shapes).
        lr: the learning rate.
        scale: the loss scale the gradients carry.
    """
    raise NotImplementedError("gradients to FP32 and divided by scale first; check them all before changing anything; update the masters in FP32, then copy each master into its parameter (in place, under torch.no_grad()).")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Mixed-precision training keeps an FP32 master copy of every weight: tiny updates (lr * grad) that would vanish when added to an FP16 weight survive in FP32. The half-precision parameters are a rounded copy used for the forward and backward.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Under torch.no_grad(): unscale every gradient in FP32 (to float, then divide by scale). If any of them has an inf or a NaN, change nothing and return False (the scaler will lower the scale). Otherwise update each master by -lr * grad, copy each master into its parameter in place (copy_ rounds it), and return True.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# with torch.no_grad():
#     grads = ...  # FP32, unscaled
#     if ...:  # any non-finite entry
#         return False
#     for p, m, g in ...:
#         ...  # update the master, then copy it into p
# return True
# ```
#
# </details>

# %%
check("11.master_weights_step", master_weights_step)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/11_mixed_precision.ipynb` prints in a terminal.

# %%
check_all("11")
