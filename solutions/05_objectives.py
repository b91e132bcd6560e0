# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Exercises: pretraining objectives
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/05_objectives.ipynb)
#
# Four pieces of the objectives of [lesson 05](../lessons/05_objectives.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `random_spans_noise_mask(...)`: T5's random noise spans, with `random_roll` | 3 |
# | 2 | `sentinel_fusion(tokens, noise_mask, vocab_size)`: the inputs and targets of span corruption | 2 |
# | 3 | `prefix_lm_example(tokens, prefix_len)`: inputs, targets, attention mask and loss mask of a prefix LM | 2 |
# | 4 | `ul2_example(...)`: one UL2 example with its mode token, for a decoder-only model | 3 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/05_objectives.ipynb` grades the whole notebook.

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

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · T5's noise mask (3 points)
#
# T5 decides *how much* before *where*: for a text of $L$ tokens, density $r$ and mean span $\mu$,
# $$n_\text{noise} = \mathrm{clip}(\mathrm{round}(L r),\ 1,\ L-1), \qquad n_\text{spans} = \max(1, \mathrm{round}(n_\text{noise} / \mu)).$$
# Then it splits the $n_\text{noise}$ noise tokens into $n_\text{spans}$ positive lengths at random
# (every split equally likely), does the same for the $L - n_\text{noise}$ other tokens, and
# interleaves them **non-noise first**: text, noise, text, noise, … — so the mask always ends
# with noise. For a short text that is one span at the very end, every time; `random_roll=True`
# rolls the finished mask by a uniform random offset (`torch.roll`).
#
# Python's `round` rounds half to even, like T5's `tf.round` (`round(4.5) == 4`). (In a corner like
# $L = 3$, $r = 0.5$, $\mu = 1$, keep $n_\text{spans}$ at most the number of non-noise tokens.)

# %%
def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float, seed: int,
                            random_roll: bool = False) -> torch.Tensor:
    """A ``(length,)`` bool tensor, True = noise, made of random spans.

    Args:
        length: tokens in the text (>= 2).
        noise_density: the share r of noise tokens, in (0, 1).
        mean_noise_span_length: mu, >= 1.
        seed: seed a ``torch.Generator`` with it (``manual_seed``) and draw every random number from it.
        random_roll: roll the mask by a random offset in ``[0, length)`` at the end.

    Hint: a random split of n items into k positive parts = k - 1 distinct cut points chosen among
    the n - 1 gaps between them (a random permutation of the gaps gives them in random order).
    """
    ### BEGIN SOLUTION
    g = torch.Generator().manual_seed(seed)
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = min(max(1, round(n_noise / mean_noise_span_length)), length - n_noise)

    def segment(n, k):
        cuts = sorted((torch.randperm(n - 1, generator=g)[:k - 1] + 1).tolist())
        bounds = [0] + cuts + [n]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    noise, text = segment(n_noise, n_spans), segment(length - n_noise, n_spans)
    mask = torch.zeros(length, dtype=torch.bool)
    pos = 0
    for keep, drop in zip(text, noise):
        mask[pos + keep:pos + keep + drop] = True
        pos += keep + drop
    if random_roll:
        mask = torch.roll(mask, int(torch.randint(length, (1,), generator=g)))
    return mask
    ### END SOLUTION


# %%
check("05.random_spans_noise_mask", random_spans_noise_mask)

# %% [markdown]
# ## 2 · Sentinel fusion (2 points)
#
# Each noise span becomes **one** sentinel in the inputs; the targets list, for each span, its
# sentinel and then its tokens. Sentinels count **down** from the top of the vocabulary: span $k$
# gets id `vocab_size - 1 - k` (T5's `<extra_id_0>` is 32099 of 32100). If the text ends with
# non-noise tokens, one more sentinel closes the targets. T5 paper, Figure 2:
#
# ```
# original: Thank you for inviting me to your party last week .
# inputs:   Thank you <X> me to your party <Y> week .
# targets:  <X> for inviting <Y> last <Z>
# ```

# %%
def sentinel_fusion(tokens: list[int], noise_mask: list[bool], vocab_size: int) -> tuple[list[int], list[int]]:
    """The inputs and targets of span corruption.

    Args:
        tokens: the text's ids (all below ``vocab_size`` minus the sentinels needed).
        noise_mask: one bool per token, True = noise.
        vocab_size: the vocabulary size; sentinel k is ``vocab_size - 1 - k``.

    Returns:
        ``(inputs, targets)``, two lists of ints. Even when the text *starts* with noise, target
        sentinel k comes right before span k.
    """
    ### BEGIN SOLUTION
    inputs, targets, k = [], [], 0
    for i, (t, noisy) in enumerate(zip(tokens, noise_mask)):
        starts = noisy and (i == 0 or not noise_mask[i - 1])
        if starts:
            inputs.append(vocab_size - 1 - k)
            targets.append(vocab_size - 1 - k)
            k += 1
        if noisy:
            targets.append(t)
        else:
            inputs.append(t)
    if not noise_mask[-1]:
        targets.append(vocab_size - 1 - k)
    return inputs, targets
    ### END SOLUTION


# %%
check("05.sentinel_fusion", sentinel_fusion)

# %% [markdown]
# ## 3 · The prefix-LM example (2 points)
#
# A decoder-only model reads `inputs = tokens[:-1]` and learns `targets = tokens[1:]`. A prefix LM
# lets the first `prefix_len` tokens see each other in both directions (the mask of lesson 00) and
# trains only the positions that predict a **suffix** token. Position $t$ predicts token $t+1$, so
# the first trained position is `prefix_len - 1`: it sees the prefix, and the token it predicts
# is outside it. A trained position inside the prefix block would *see its own answer*.

# %%
def prefix_lm_example(tokens: list[int], prefix_len: int) -> dict:
    """One prefix-LM training example, ``T = len(tokens) - 1``.

    Returns:
        ``{"inputs": (T,) long, "targets": (T,) long, "attn_mask": (T, T) bool (True = may attend),
        "loss_mask": (T,) bool (True = trained)}``.
    """
    ### BEGIN SOLUTION
    ids = torch.tensor(tokens)
    T = len(tokens) - 1
    attn = torch.ones(T, T, dtype=torch.bool).tril()
    attn[:prefix_len, :prefix_len] = True
    return {"inputs": ids[:-1], "targets": ids[1:], "attn_mask": attn, "loss_mask": torch.arange(T) >= prefix_len - 1}
    ### END SOLUTION


# %%
check("05.prefix_lm_example", prefix_lm_example)

# %% [markdown]
# ## 4 · One UL2 example (3 points)
#
# UL2 trains one model on R-denoisers (short spans, 15 %), X-denoisers (long spans or 50 %) and the
# S-denoiser (prefix LM). For a decoder-only model every example is a **prefix** (seen
# bidirectionally) and **targets** (causal, trained), and the prefix starts with the mode token:
#
# - `[R]`, `[X]`: prefix = `[mode] + inputs` of span corruption (exercise 2), targets = its targets;
# - `[S]`: the mask is a suffix; prefix = `[mode] + the text before it`, targets = the suffix, no sentinels.
#
# Then it is exercise 3 with a longer prefix.

# %%
def ul2_example(tokens: list[int], noise_mask: list[bool], mode: str, mode_ids: dict, vocab_size: int) -> dict:
    """One UL2 example for a decoder-only model.

    Args:
        tokens, noise_mask: the text and its noise (for ``"[S]"``: True on a suffix only).
        mode: ``"[R]"``, ``"[X]"`` or ``"[S]"``; ``mode_ids[mode]`` is its token id.
        vocab_size: sentinel k is ``vocab_size - 1 - k``.

    Returns:
        the dict of exercise 3 for the sequence ``prefix + targets``.
    """
    ### BEGIN SOLUTION
    if mode == "[S]":
        P = noise_mask.index(True)
        prefix, targets = [mode_ids[mode]] + tokens[:P], tokens[P:]
    else:
        inputs, targets = sentinel_fusion(tokens, noise_mask, vocab_size)
        prefix = [mode_ids[mode]] + inputs
    return prefix_lm_example(prefix + targets, len(prefix))
    ### END SOLUTION


# %%
check("05.ul2_example", ul2_example)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/05_objectives.ipynb` prints in a terminal.

# %%
check_all("05")
