# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Exercises: position embeddings
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/03_positions.ipynb)
#
# Five pieces of [lesson 03](../lessons/03_positions.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `sinusoidal_embedding(n_positions, d_model)`: the Transformer's fixed table | 2 |
# | 2 | `apply_rope(x, positions, base)`: RoPE in the half-split layout | 3 |
# | 3 | `alibi_slopes(n_heads)`: ALiBi's per-head slopes, for any number of heads | 2 |
# | 4 | `relative_position_bucket(...)`: T5's bucket of a relative position | 3 |
# | 5 | `class RotaryEmbedding`: your RoPE as a module, swapped into the model and trained | 2 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/03_positions.ipynb` grades the whole notebook.
#
# Conventions: T = tokens, d = model or head dimension, nh = heads. Positions are integers from 0.

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

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · The sinusoidal table (2 points)
#
# $PE_{p,2i} = \sin\!\big(p / 10000^{2i/d}\big)$ and $PE_{p,2i+1} = \cos\!\big(p / 10000^{2i/d}\big)$ for
# pair $i = 0, \dots, d/2 - 1$. Sine in the even columns, cosine in the odd ones, both of the *same*
# angle. Careful with the exponent: it is $2i/d$ where $i$ counts *pairs* (equivalently $j/d$ where
# $j = 2i$ is the even column).

# %%
def sinusoidal_embedding(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed sinusoidal position table.

    Args:
        n_positions: number of positions T (rows), positions 0..T-1; d_model: even embedding size.

    Returns:
        ``(n_positions, d_model)`` float32 tensor: column ``2i`` holds ``sin(p / 10000 ** (2i / d_model))``,
        column ``2i + 1`` the cosine of the same angle.

    Hint: one frequency per pair of columns, falling geometrically from 1 to 1/10000; the pair holds the
    sine and the cosine of position times frequency.
    """
    ### BEGIN SOLUTION
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d/2,)
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, d/2)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe  # (T, d)
    ### END SOLUTION


# %%
check("03.sinusoidal_embedding", sinusoidal_embedding)

# %% [markdown]
# ## 2 · RoPE, half-split layout (3 points)
#
# RoPE rotates each pair of dimensions of a query or key at position $m$ by the angle $m\,\theta_i$,
# $\theta_i = \text{base}^{-2i/d}$. In the **half-split** layout (GPT-NeoX, Hugging Face's LLaMA) pair $i$
# is $(x_i, x_{i + d/2})$, *not* $(x_{2i}, x_{2i+1})$ (that is the interleaved layout of the paper):
#
# $$x'_i = x_i \cos m\theta_i - x_{i+d/2} \sin m\theta_i, \qquad x'_{i+d/2} = x_i \sin m\theta_i + x_{i+d/2} \cos m\theta_i.$$

# %%
def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding, half-split layout.

    Args:
        x: ``(..., T, d)`` queries or keys (``d`` even); positions: ``(T,)`` integer tensor, the position of
        each of the T rows; base: RoPE's base.

    Returns:
        A new ``(..., T, d)`` tensor (do not change ``x`` in place).

    Hint: rotate each pair of features (the half-split layout pairs feature i with i + d/2) by an angle that
    is the position times that pair's frequency; a 2-D rotation mixes the pair with a cos and a sin.
    """
    ### BEGIN SOLUTION
    d = x.size(-1)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    angles = positions.float()[:, None] * theta[None, :]  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]  # (..., T, d/2) each: pair i is (x1[i], x2[i])
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., T, d)
    ### END SOLUTION


# %%
check("03.apply_rope", apply_rope)

# %% [markdown]
# ## 3 · ALiBi slopes (2 points)
#
# Head $h$ of $n$ subtracts $m_h \cdot \text{distance}$ from its scores. For $n$ a power of two the slopes
# are the geometric sequence that starts at $2^{-8/n}$ with ratio $2^{-8/n}$ (8 heads: $\tfrac12, \tfrac14,
# \dots, \tfrac1{256}$). Otherwise (the reference code of Press et al.): with $p$ the largest power of two
# below $n$, take the $p$ slopes of the $p$-head sequence, then *every other* slope of the $2p$-head
# sequence (its 1st, 3rd, 5th, ...) for the remaining $n - p$ heads.

# %%
def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes.

    Args:
        n_heads: int ``>= 1``.

    Returns:
        ``(n_heads,)`` float tensor.

    Hint: for a power-of-two head count the slopes are a geometric sequence; for other counts ALiBi's code
    combines the sequences of two powers of two (read the paper's footnote or its reference code).
    """
    ### BEGIN SOLUTION
    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(p) + geometric(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes)  # (nh,)
    ### END SOLUTION


# %%
check("03.alibi_slopes", alibi_slopes)

# %% [markdown]
# ## 4 · T5's relative position bucket (3 points)
#
# `relative_position = key position - query position`. **Bidirectional**: half of the buckets
# ($n = $ `num_buckets // 2`) for each direction; keys *after* the query ($\text{rel} > 0$) add $n$, and
# the distance is $|\text{rel}|$. **Causal**: all buckets look back: distance $= \max(-\text{rel}, 0)$
# (later keys go to bucket 0; the mask hides them anyway). Then, with $\text{max\_exact} = n // 2$:
# a distance below `max_exact` is its own bucket; a larger one goes to
#
# $$\text{max\_exact} + \left\lfloor \frac{\ln(\text{dist} / \text{max\_exact})}{\ln(\text{max\_distance} / \text{max\_exact})}\,(n - \text{max\_exact}) \right\rfloor,$$
#
# capped at $n - 1$.

# %%
def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """T5's bucket of each relative position.

    Args:
        relative_position: integer tensor of any shape, ``key position - query position``.
        bidirectional: True for an encoder (both directions), False for a causal decoder.
        num_buckets, max_distance: as in T5 (defaults 32 and 128).

    Returns:
        An integer (``torch.long``) tensor of the same shape.

    Hint: first decide which half (bidirectional) and a distance that is never negative; then the near
    distances are exact buckets and the far ones follow the log formula above, capped at the last bucket.
    """
    ### BEGIN SOLUTION
    ret = torch.zeros_like(relative_position, dtype=torch.long)
    n = num_buckets
    if bidirectional:
        n //= 2
        ret += (relative_position > 0).long() * n  # keys after the query: the upper half
        dist = relative_position.abs()
    else:
        dist = torch.clamp(-relative_position, min=0)  # distance back to the key
    max_exact = n // 2
    large = max_exact + (torch.log(dist.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (n - max_exact)).long()
    large = torch.clamp(large, max=n - 1)
    return ret + torch.where(dist < max_exact, dist.long(), large)
    ### END SOLUTION


# %%
check("03.relative_position_bucket", relative_position_bucket)

# %% [markdown]
# ## 5 · Swap your RoPE into the model and train (2 points)
#
# Make your `apply_rope` a module like Hugging Face's `LlamaRotaryEmbedding`, then let every layer
# rotate its queries and keys with it: `lmlab.model.registry.register_rope("my_rope", RotaryEmbedding)` makes
# `ModelConfig(position="my_rope")` valid (the model calls `RotaryEmbedding(head_dim, rope_base)` and
# then `rope(q, positions)`, `rope(k, positions)`). The check: lmlab's logits from the same weights,
# and the same losses after 8 Adam steps (tolerance 1e-4).

# %%
class RotaryEmbedding(nn.Module):
    """RoPE as a module.

    ``RotaryEmbedding(head_dim, base=10000.0)``; ``forward(x (..., T, head_dim), positions (T,))``
    returns ``x`` rotated at ``positions`` in the half-split layout (a new tensor, same shape).

    Hint: keep ``base`` on the module; ``forward`` reuses your ``apply_rope`` with it.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        ### BEGIN SOLUTION
        self.head_dim, self.base = head_dim, base
        ### END SOLUTION

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return apply_rope(x, positions, self.base)  # (..., T, head_dim)
        ### END SOLUTION


# %%
check("03.RotaryEmbedding", RotaryEmbedding)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/03_positions.ipynb` prints in a terminal.

# %%
check_all("03")
