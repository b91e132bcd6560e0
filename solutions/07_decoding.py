# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Exercises: decoding strategies
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/07_decoding.ipynb)
#
# Five pieces of the decoders of [lesson 07](../lessons/07_decoding.ipynb), written by you.
#
# | # | exercise | points |
# |---|---|---|
# | 1 | `softmax_with_temperature(logits, temperature)`: the temperature softmax, t = 0 included | 2 |
# | 2 | `top_k_filter(logits, k)`: keep exactly the k most likely tokens | 2 |
# | 3 | `top_p_filter(logits, p)`: keep the nucleus of probability p | 3 |
# | 4 | `beam_step(...)`: one step of beam search with finished hypotheses and a length penalty | 3 |
# | 5 | `repetition_penalty(logits, ids, penalty)`: CTRL's penalty on tokens already used | 2 |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/07_decoding.ipynb` grades the whole notebook.
#
# Conventions used throughout: logits are `(B, V)` float tensors (B rows, V tokens); a token that is
# filtered out gets the logit `-inf` (probability 0 after softmax); never change the inputs in place.

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
import torch.nn.functional as F

from lmlab.course.threads import apply_thread_policy
from lmlab.grading import check, check_all

apply_thread_policy()  # 1 torch thread on a 2-core laptop (`lmlab doctor` says why)

# %% [markdown]
# ## 1 · Softmax with temperature (2 points)
#
# $P(x_j) = \dfrac{\exp(l_j / t)}{\sum_{j'} \exp(l_{j'} / t)}$. Small $t$ sharpens the distribution,
# large $t$ flattens it; $t = 0$ is defined as greedy: all the probability on the most likely token.

# %%
def softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The next-token distribution at temperature ``temperature``.

    Args:
        logits: ``(B, V)`` float tensor (entries may be ``-inf``: those tokens get probability 0).
        temperature: a number ``>= 0``.

    Returns:
        ``(B, V)`` probabilities (each row sums to 1), same dtype as ``logits``: the softmax of
        ``logits / temperature``. For ``temperature == 0``: a one-hot row on the argmax (the *first*
        one if several tokens tie). Must not overflow for tiny temperatures such as 0.01.

    Hint: temperature rescales the logits, not the probabilities; t = 0 is the limit, so it needs its own
    case.
    """
    ### BEGIN SOLUTION
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)  # (B, V): greedy
    return torch.softmax(logits / temperature, dim=-1)  # divide BEFORE the softmax
    ### END SOLUTION


# %%
check("07.softmax_with_temperature", softmax_with_temperature)

# %% [markdown]
# ## 2 · Top-k filtering (2 points)
#
# Keep the $k$ largest logits of each row and set the others to $-\infty$. Exactly $k$ tokens survive:
# if several tokens tie at the $k$-th place, the lower token ids win (so that $k = 1$ is exactly greedy,
# like `argmax`). Beware `torch.topk`: it does not promise which of equal values it returns.

# %%
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``.

    Args:
        logits: ``(B, V)`` float tensor.
        k: int ``>= 1``; ``k >= V`` keeps everything.

    Returns:
        a new ``(B, V)`` tensor: kept entries unchanged, the others ``-inf``. Exactly ``min(k, V)``
        entries per row are kept; ties go to the lower token id. ``-inf`` entries stay ``-inf``.

    Hint: find the k largest per row (ties: the lower id wins, so sort stably), keep exactly those and make
    every other logit impossible.
    """
    ### BEGIN SOLUTION
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices  # (B, V): ties -> lower id first
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order[:, :k], True)  # (B, V)
    return logits.masked_fill(~keep, -math.inf)
    ### END SOLUTION


# %%
check("07.top_k_filter", top_k_filter)

# %% [markdown]
# ## 3 · Top-p (nucleus) filtering (3 points)
#
# Keep the smallest set of most likely tokens whose probability adds up to at least $p$. Walking down
# the tokens from the most likely, a token is kept while the mass of the tokens *before* it is still
# below $p$ — so the token that crosses $p$ is kept, and the most likely token always is.
#
# Example: probabilities 0.5, 0.3, 0.15, 0.05 and $p = 0.7$ keep the first two (0.5 < 0.7, so the 0.3
# token is kept, and 0.5 + 0.3 = 0.8 ≥ 0.7 stops there).

# %%
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``p``.

    Args:
        logits: ``(B, V)`` float tensor.
        p: a number in ``(0, 1]``; ``p = 1`` keeps everything.

    Returns:
        a new ``(B, V)`` tensor: kept entries unchanged, the others ``-inf``. Token ``i`` is kept when
        the total probability of the tokens ranked before it (ties: lower id first) is ``< p``.

    Hint: sorted by probability, keep tokens while the mass before them is still under p (the token that
    crosses p stays), then undo the sort.
    """
    ### BEGIN SOLUTION
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices  # (B, V)
    sorted_probs = probs.gather(-1, order)  # (B, V), descending
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V): mass of the better tokens
    keep_sorted = mass_before < p  # the crossing token has mass_before < p: kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to token order
    return logits.masked_fill(~keep, -math.inf)
    ### END SOLUTION


# %%
check("07.top_p_filter", top_p_filter)

# %% [markdown]
# ## 4 · One step of beam search, with finished hypotheses (3 points)
#
# Beam search keeps $K$ running hypotheses ("beams") of one prompt, each with the **sum** of its
# tokens' log-probabilities. All running beams have the same length, so they are ranked by that sum:
# a length penalty would divide every one of them by the same number and change nothing. The penalty
# matters where lengths differ — between **finished** hypotheses, the ones that chose EOS at
# different steps. One step:
#
# 1. **expand**: every beam $k$ times every token $v$ is a candidate with
#    $\text{sum}_{k,v} = \text{sum}_k + \log P(v \mid \text{beam}_k)$; walk the $2K$ best sums in order
#    (ties: lower flat index $k \cdot V + v$ first);
# 2. **finish**: an EOS candidate among the first $K$ becomes a finished hypothesis with score
#    $\text{sum} / (\text{length} + 1)^{\alpha}$ (EOS counts); an EOS ranked lower is dropped;
# 3. **run on**: every other candidate becomes a running beam, until $K$ run;
# 4. **keep** the $K$ best finished scores, and decide whether the search is **done**: no running beam
#    is left, or the finished list is full and its worst score is at least the best this step's best
#    sum could still score, at the longest length it could reach ($\text{max\_length}^{\alpha}$ when
#    $\alpha > 0$; a longer hypothesis only adds negative log-probabilities, so with $\alpha \le 0$ its
#    best is now, $(\text{length} + 1)^{\alpha}$). This is the exact rule: stopping when the worst
#    finished score beats the best sum at the *current* length is a cheaper heuristic that can stop
#    before a longer, better hypothesis.

# %%
def beam_step(sum_logprobs: torch.Tensor, next_logprobs: torch.Tensor, length: int, finished: list,
              num_beams: int, eos_id, length_penalty: float, max_length: int):
    """One step of beam search for one prompt: expand, finish EOS candidates, keep the running beams.

    Args:
        sum_logprobs: ``(K,)`` each running beam's sum of log-probabilities (each has ``length`` tokens).
        next_logprobs: ``(K, V)`` log-probabilities of the next token for each beam.
        length: int, the number of tokens generated so far by every running beam.
        finished: list of floats, the scores of the finished hypotheses so far (at most ``num_beams``).
        num_beams: K, how many beams run (and how many finished scores are kept).
        eos_id: the EOS token id, or ``None`` (then nothing finishes).
        length_penalty: the exponent alpha.
        max_length: the most tokens a hypothesis may have (``> length``).

    Returns:
        ``(beam_idx, token_idx, new_sums, finished, done)``: the running candidates kept, best sum
        first (parent beam and token as long tensors, their plain sums as a float tensor; at most
        ``num_beams``), the new list of the ``num_beams`` best finished scores (best first), and
        ``done`` (a bool).

    Hint: rank every continuation by its raw sum; an EOS among the best ``num_beams`` finishes (scored with
    the length penalty), the others keep running; stop once no running beam can still beat the worst
    finished score you keep.
    """
    ### BEGIN SOLUTION
    K, V = next_logprobs.shape
    cand = (sum_logprobs[:, None] + next_logprobs).flatten()  # (K*V,): plain sums, all of length + 1
    order = torch.sort(cand, descending=True, stable=True).indices[:2 * num_beams].tolist()
    scores, kept = list(finished), []
    for rank, i in enumerate(order):
        if i % V == eos_id:
            if rank < num_beams:  # only an EOS among the top K finishes
                scores.append(cand[i].item() / (length + 1) ** length_penalty)
        else:
            kept.append(i)
        if len(kept) == num_beams:
            break
    scores = sorted(scores, reverse=True)[:num_beams]
    idx = torch.tensor(kept, dtype=torch.long)
    reach = max_length if length_penalty > 0 else length + 1  # the best length still reachable
    done = not kept or (len(scores) == num_beams and scores[-1] >= cand[order[0]].item() / reach ** length_penalty)
    return idx // V, idx % V, cand[idx], scores, done
    ### END SOLUTION


# %%
check("07.beam_step", beam_step)

# %% [markdown]
# ## 5 · Repetition penalty (2 points)
#
# CTRL (Keskar et al., 2019) discourages tokens that already occur in the text: a seen token's logit
# is divided by the penalty if it is positive and multiplied by it if it is negative (either way it
# moves down for a penalty > 1). A token seen five times is penalised once, like a token seen once.

# %%
def repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Apply CTRL's repetition penalty.

    Args:
        logits: ``(B, V)`` next-token logits.
        ids: ``(B, T)`` long, the tokens so far of each row (prompt and generated).
        penalty: a number ``> 0``; ``1`` changes nothing, ``> 1`` discourages repeats.

    Returns:
        a new ``(B, V)`` tensor: for every token that occurs in row ``b`` of ``ids``, its logit divided
        by ``penalty`` if positive, multiplied by ``penalty`` otherwise; other logits unchanged.

    Hint: CTRL's penalty must make every seen token less likely, whatever the sign of its logit; leave the
    caller's tensor alone.
    """
    ### BEGIN SOLUTION
    seen = logits.gather(-1, ids)  # (B, T): logits of the tokens already used
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, ids, seen)  # a copy; duplicates write the same value
    ### END SOLUTION


# %%
check("07.repetition_penalty", repetition_penalty)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/07_decoding.ipynb` prints in a terminal.

# %%
check_all("07")
