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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/05_objectives.ipynb)
#
# Four pieces of the objectives of [lesson 05](../lessons/05_objectives.ipynb), written by you.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | `random_spans_noise_mask(...)`: T5's random noise spans, with `random_roll` | 3 | 20 min |
# | 2 | `sentinel_fusion(tokens, noise_mask, vocab_size)`: the inputs and targets of span corruption | 2 | 15 min |
# | 3 | `prefix_lm_example(tokens, prefix_len)`: inputs, targets, attention mask and loss mask of a prefix LM | 2 | 10 min |
# | 4 | `ul2_example(...)`: one UL2 example with its mode token, for a decoder-only model | 3 | 15 min |
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
    raise NotImplementedError("noise = round(L·d) kept in [1, L-1]; spans = max(1, round(noise/μ)); split noise and non-noise tokens into that many positive parts at random; non-noise first; roll at the end.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# T5's span corruption hides about noise_density of the tokens in spans of average length mean_noise_span_length. The mask alternates kept text and noise, the same number of runs of each, text first.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# n_noise = round(L * density), kept in [1, L - 1]; n_spans = round(n_noise / mean span length), at least 1 (and at most the number of kept tokens). Split n_noise into n_spans positive lengths at random, then the non-noise tokens the same way (noise first: the checks follow that order of random draws). Lay the runs out as text, noise, text, noise, ... With random_roll, roll the finished mask by a random offset.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# g = ...  # a torch.Generator seeded with seed
# n_noise = ...
# n_spans = ...
#
# def segment(n, k):  # k positive parts that sum to n
#     cuts = ...  # k - 1 sorted cut points, from torch.randperm(n - 1, generator=g)
#     ...  # differences between consecutive bounds 0, cuts..., n
#
# noise, text = ..., ...  # noise first
# mask = ...  # all False, (length,)
# ...  # walk the (text, noise) pairs, set each noise run True
# return mask
# ```
#
# </details>

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
    raise NotImplementedError("Walk the mask run by run: a noise run becomes one sentinel in the inputs and 'sentinel + its tokens' in the targets; sentinel k is vocab_size-1-k.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Span corruption replaces each noise span in the inputs by one sentinel token; the targets list each sentinel followed by the tokens it hid. T5 takes sentinels from the top of the vocabulary: the first span gets vocab_size - 1, the next vocab_size - 2, ...
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Walk the tokens together with their mask values. When a noise run starts (noisy, and the previous token was not), the next sentinel goes into both inputs and targets. Noisy tokens go to the targets, the others to the inputs. If the text ends outside a noise run, the targets end with one more sentinel (T5's closing sentinel).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# inputs, targets = [], []
# k = 0  # the next sentinel's number
# for i, (t, noisy) in ...:  # each token with its mask value
#     if ...:  # a noise run starts here
#         ...  # its sentinel goes into both lists
#         k += 1
#     ...  # noisy -> targets, otherwise -> inputs
# if ...:
#     ...  # the closing sentinel
# return inputs, targets
# ```
#
# </details>

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
    raise NotImplementedError("inputs and targets are the sequence shifted by one; the attention mask is chapter 00's prefix-LM mask; the loss counts only the positions whose target is in the suffix.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A prefix LM reads its prefix in both directions and is trained only to generate what follows: the loss skips the positions that predict prefix tokens, so it learns from fewer tokens than a causal LM on the same text.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# T = len(tokens) - 1. inputs = every token but the last, targets = every token but the first: both (T,). attn_mask (T, T): causal, with the top-left prefix_len block all True. loss_mask (T,): position t predicts tokens[t + 1], so it is True when that token is in the suffix.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# T = len(tokens) - 1
# attn = ...  # causal (T, T), then open the prefix block
# loss_mask = ...  # (T,) bool: the target is a suffix token
# return {"inputs": ..., "targets": ..., "attn_mask": attn, "loss_mask": loss_mask}
# ```
#
# </details>

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
    raise NotImplementedError("prefix = [mode id] + (sentinel inputs, or for [S] the text before the suffix); then the targets; bidirectional over the prefix; train the target positions only.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# UL2 mixes denoisers: R (short spans, little noise), X (long spans or much noise) and S (prefix LM: continue the text). A mode token in front tells the model which task it is doing; everything before the targets is a bidirectional prefix.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# [R] and [X]: inputs and targets come from your sentinel_fusion, and the prefix is the mode id followed by those inputs. [S]: the suffix starts at the first True of the mask; the prefix is the mode id followed by the tokens before it, the targets are the rest. Then prefix + targets goes through your prefix_lm_example with prefix_len = len(prefix).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# if mode == "[S]":
#     P = ...  # where the suffix starts
#     prefix, targets = ..., ...
# else:
#     inputs, targets = ...
#     prefix = ...
# return prefix_lm_example(..., ...)
# ```
#
# </details>

# %%
check("05.ul2_example", ul2_example)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/05_objectives.ipynb` prints in a terminal.

# %%
check_all("05")
