# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Exercises: the tour
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/exercises/00_tour.ipynb)
#
# The tiny GPT of [lesson 00](../lessons/00_tour.ipynb), written by you: the data pipeline and the loss,
# then the model itself — one attention head, then the whole GPT, checked logit for logit against `lmlab.GPT`.
#
# | # | exercise | points | time |
# |---|---|---|---|
# | 1 | `causal_mask(T)`: what a causal decoder lets each token see | 2 | 5 min |
# | 2 | `prefix_lm_mask(T, prefix_len)`: the prefix decoder's mask | 2 | 5 min |
# | 3 | `CharTokenizer`: text to ids and back | 3 | 10 min |
# | 4 | `cross_entropy(logits, targets)`: the training loss by hand | 2 | 10 min |
# | 5 | `sample_batch(...)`: random windows and their shifted targets | 2 | 10 min |
# | 6 | `attention_head(x, w_q, w_k, w_v)`: one causal, scaled attention head | 3 | 15 min |
# | 7 | `gpt_forward(state, idx, n_heads)`: the whole GPT forward from `lmlab.GPT`'s weights | 5 | 30 min |
#
# **How it works.** Each docstring says what to build, the shapes, and gives a hint. Stuck? Above
# each check cell, three collapsed hints open one at a time: the idea, then shapes and steps, then a
# code outline (never the answer). The table's time column is how long each exercise should take. Replace the
# `raise NotImplementedError(...)` line with your code, run the cell, then run the check cell under
# it: ✅ passed, ❌ failed (which case, expected vs got, a hint), or ⏳ not implemented yet. A check
# never stops the notebook. The last cell shows your score; in a terminal,
# `lmlab grade exercises/00_tour.ipynb` grades the whole notebook.

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
# ## 1 · The causal mask (2 points)
#
# A causal decoder (GPT, LLaMA) lets token *i* attend to tokens 0 … *i* and never to the future.
# lmlab's convention: a boolean `(T_query, T_key)` matrix, `True` = may attend.

# %%
def causal_mask(T: int) -> torch.Tensor:
    """The causal attention mask for a sequence of ``T`` tokens.

    Returns a ``(T, T)`` tensor of dtype ``torch.bool`` where ``mask[i, j]`` is True when query
    token ``i`` may attend to key token ``j``, i.e. when ``j <= i``.

    Hint: ``torch.ones(T, T, dtype=torch.bool)`` and ``torch.tril``.
    """
    raise NotImplementedError("mask[i, j] is True when key j is not after query i: the lower triangle, diagonal included.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# In a causal decoder a token may look at itself and at every earlier token, never at a later one. Row i of the mask is query i, column j is key j.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# The result is (T, T) of dtype bool, True exactly where the key is not after the query. Either compare a column of positions (T, 1) with a row (1, T) by broadcasting, or keep the lower triangle of an all-True (T, T) matrix.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# i = torch.arange(T)
# return ...  # i as a row compared with i as a column: (T, T) bool
# ```
#
# </details>

# %%
check("00.causal_mask", causal_mask)

# %% [markdown]
# ## 2 · The prefix-LM mask (2 points)
#
# A prefix decoder (U-PaLM, GLM) reads a prefix bidirectionally, then generates causally: the first
# `prefix_len` tokens see each other in both directions; every later token sees the whole prefix
# and the tokens before it.

# %%
def prefix_lm_mask(T: int, prefix_len: int) -> torch.Tensor:
    """The prefix-LM attention mask: ``(T, T)``, dtype ``torch.bool``, True = may attend.

    ``mask[i, j]`` is True when ``j <= i`` (causal) or when both ``i`` and ``j`` are in the prefix
    (``i, j < prefix_len``). ``prefix_len`` is in ``[0, T]``; 0 gives the causal mask, ``T`` full
    attention.

    Hint: start from the causal mask and switch on the block ``[:prefix_len, :prefix_len]``.
    """
    raise NotImplementedError("start from the causal mask, then let the prefix block [:prefix_len, :prefix_len] see itself in both directions.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A prefix decoder reads its prefix (the prompt) in both directions and generates the rest causally: prefix tokens see each other both ways, later tokens see the whole prefix and their own past.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Start from the (T, T) causal mask. The top-left prefix_len x prefix_len block becomes all True; nothing else changes (rows after the prefix already see every earlier key). prefix_len = 0 gives the causal mask back.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# mask = ...  # the causal mask, (T, T) bool
# ...  # open up the prefix block
# return mask
# ```
#
# </details>

# %%
check("00.prefix_lm_mask", prefix_lm_mask)

# %% [markdown]
# ## 3 · A character tokenizer (3 points)
#
# One token per distinct character; ids follow the **sorted** characters, so the same text always
# gives the same vocabulary.

# %%
class CharTokenizer:
    """A character-level tokenizer built from ``text``.

    Attributes and methods:
        chars: the sorted list of distinct characters of ``text``.
        stoi: dict character -> id (its position in ``chars``).
        vocab_size: ``len(chars)`` (a property).
        encode(s): list of ints, one id per character of ``s``.
        decode(ids): the string for a list of ids (``decode(encode(s)) == s``).

    Hint: ``sorted(set(text))``; a dict comprehension over ``enumerate``; ``"".join``.
    """

    def __init__(self, text: str):
        raise NotImplementedError("the vocabulary is every distinct character of the text, in sorted order; encode and decode are two look-ups, one in each direction.")

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError("the vocabulary is every distinct character of the text, in sorted order; encode and decode are two look-ups, one in each direction.")

    def encode(self, s: str) -> list[int]:
        raise NotImplementedError("the vocabulary is every distinct character of the text, in sorted order; encode and decode are two look-ups, one in each direction.")

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError("the vocabulary is every distinct character of the text, in sorted order; encode and decode are two look-ups, one in each direction.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A character tokenizer gives each distinct character of the training text one id. Sorting the characters makes the ids reproducible: the same text always gives the same vocabulary.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# __init__: chars is the sorted list of distinct characters; stoi maps a character to its index in chars. vocab_size is how many there are. encode(str) gives one id per character; decode(list of ids) gives the string back, so decode(encode(s)) == s.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# self.chars = ...  # sorted, distinct
# self.stoi = ...  # character -> its index
#
# # vocab_size:
# return ...
#
# # encode(s):
# return [... for ch in s]
#
# # decode(ids):
# return "".join(...)
# ```
#
# </details>

# %%
check("00.CharTokenizer", CharTokenizer)

# %% [markdown]
# ## 4 · Next-token cross-entropy by hand (2 points)
#
# $\mathcal{L} = -\frac{1}{BT}\sum_{b,t} \log \mathrm{softmax}(z_{b,t})_{y_{b,t}}$ — the number every
# training step of the course minimises. Compute it without `F.cross_entropy`; the check compares
# with it, also for huge logits, where a naive `exp` overflows.

# %%
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats.

    Args:
        logits: ``(B, T, V)`` float tensor, unnormalised scores over the vocabulary.
        targets: ``(B, T)`` int64 tensor of the correct next-token ids.

    Returns:
        a 0-dim tensor (autograd must flow through it) equal to ``F.cross_entropy`` on the
        flattened inputs.

    Hint: log-softmax is the logits minus their ``torch.logsumexp`` over the vocabulary; ``gather``
    picks the target's entry.
    """
    raise NotImplementedError("turn the logits into log-probabilities in a numerically stable way, pick the target's entry at every position, and average the negatives.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Cross-entropy is the average of -log p(target) over all positions. Computing log-softmax as the logits minus their log-sum-exp avoids overflow in exp for large logits.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# logits (B, T, V) -> log-probabilities (B, T, V): subtract the log-sum-exp over the last dim, kept as (B, T, 1) so it broadcasts. Pick the target's entry at each (b, t) with gather along the last dim (targets reshaped to (B, T, 1)), giving (B, T). Return minus the mean: a 0-dim tensor.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# log_probs = ...  # (B, T, V)
# picked = log_probs.gather(-1, ...).squeeze(-1)  # (B, T)
# return ...
# ```
#
# </details>

# %%
check("00.cross_entropy", cross_entropy)

# %% [markdown]
# ## 5 · A batch of next-token pairs (2 points)
#
# Training reads random windows of the token stream. The target of position *t* is the token at
# *t + 1*, so `y` is `x` shifted left by one.

# %%
def sample_batch(ids: torch.Tensor, batch_size: int, context_length: int, generator: torch.Generator):
    """Random windows of ``ids`` (1-D) as next-token pairs.

    Returns ``x, y``, each ``(batch_size, context_length)`` with the dtype of ``ids``: row ``b`` of
    ``x`` is ``ids[s : s + context_length]`` for a random start ``s`` and row ``b`` of ``y`` is
    ``ids[s + 1 : s + context_length + 1]``. Every start that leaves room for ``y`` must be
    possible. Draw the starts with ``generator`` so that a seeded generator gives the same batch.

    Hint: ``torch.randint(high, (batch_size,), generator=generator)``; index ``ids`` with a ``(B, T)``
    tensor of positions (each start plus ``0 .. context_length - 1``).
    """
    raise NotImplementedError("draw batch_size random starts with the generator (leave room for the window and one more token); y is the same window one token later.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# A language model learns to predict the next token, so a training example is a window of text x and the same window shifted one token later, y. Random windows give varied batches; the generator makes them reproducible.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# starts: batch_size integers in [0, len(ids) - context_length), drawn with torch.randint and generator=generator (B,). Adding arange(context_length) (T,) to starts[:, None] gives a (B, T) index tensor; x is ids at those indices, y is ids one position later.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# starts = torch.randint(..., (batch_size,), generator=...)  # (B,)
# idx = ...  # (B, T): every start plus 0..T-1
# x, y = ..., ...
# return x, y
# ```
#
# </details>

# %%
check("00.sample_batch", sample_batch)

# %% [markdown]
# ## 6 · One attention head (3 points)
#
# The third rung of the lesson's ladder. `x` is `(B, T, C)`; `w_q`, `w_k`, `w_v` are `(hs, C)`, laid out like
# an `nn.Linear`'s weight (so the query is `x @ w_q.T`). Each position's output is a weighted average of the
# values of positions $0..t$, with weights $\mathrm{softmax}(q k^\top / \sqrt{hs})$ — the future masked out.
# Write it with matrix products and `torch.softmax` (not `F.scaled_dot_product_attention`: that is what the
# grader compares you with).

# %%
def attention_head(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """``x (B, T, C)``, weights ``(hs, C)`` -> ``(B, T, hs)``: causal, scaled dot-product attention."""
    raise NotImplementedError("scores between every query and every key, scaled, with the future hidden, turned into weights that sum to 1 per query.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# Attention is a weighted average of values, where the weight of key j for query i grows with q_i . k_j. A causal decoder must give the future zero weight, and dividing the scores by sqrt(head size) keeps softmax from saturating.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# q, k, v = x @ w.T for each weight: (B, T, hs). Scores q @ k^T: (B, T, T), divide by sqrt(hs). Fill the entries above the diagonal with -inf, softmax over the last dim (the keys), multiply by v: (B, T, hs).
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# q, k, v = ...
# scores = q @ k.transpose(-2, -1) / ...
# mask = torch.ones(T, T, dtype=torch.bool).tril()
# scores = scores.masked_fill(~mask, float("-inf"))
# return torch.softmax(scores, dim=...) @ v
# ```
#
# </details>

# %%
check("00.attention_head", attention_head)

# %% [markdown]
# ## 7 · The whole GPT (5 points)
#
# The last rung: `lmlab.GPT`'s default model as one function of its weights. `state` is
# `lmlab.GPT(cfg).state_dict()` (print its keys and shapes); `idx` is `(B, T)` token ids. Token embedding plus
# learned position embedding; then each block, **pre-LN**: `x = x + attn(norm1(x))`, `x = x + ffn(norm2(x))`
# (LayerNorm with eps 1e-5; `attn.qkv` produces q, k, v side by side; `n_heads` heads of `C // n_heads`; causal
# attention; `attn.proj`; the MLP is `ffn.up`, exact GELU, `ffn.down`); a final LayerNorm; the output layer
# `lm_head.weight` (tied to the token embedding, no bias). You may use `F.scaled_dot_product_attention` or your
# `attention_head`'s maths. The grader loads random weights into `lmlab.GPT` and compares the logits.

# %%
import torch.nn.functional as F


def gpt_forward(state: dict, idx: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``lmlab.GPT`` state dict, ``idx (B, T)`` -> logits ``(B, T, V)``, equal to ``lmlab.GPT``'s."""
    raise NotImplementedError("embed tokens and positions, run every block (attention then MLP, each as a pre-LN residual branch), final norm, tied output layer.")


# %% [markdown]
# <details><summary>Hint 1 · the idea</summary>
#
# lmlab.GPT's default model is GPT-2's: token + learned position embeddings, a stack of pre-LN blocks (x = x + attn(norm1(x)); x = x + ffn(norm2(x))), a final LayerNorm, and an output layer that reuses the token embedding.
#
# </details>
#
# <details><summary>Hint 2 · shapes and steps</summary>
#
# Print state's keys and shapes first. Per block i: LayerNorm with blocks.i.norm1.weight/.bias (eps 1e-5); one F.linear with attn.qkv gives q, k, v side by side (3C outputs); split into n_heads heads of C // n_heads; causal attention per head; join the heads and apply attn.proj; then norm2, ffn.up, exact GELU, ffn.down.
#
# </details>
#
# <details><summary>Hint 3 · code outline</summary>
#
# ```python
# x = ...  # token embeddings of idx + position embeddings of 0..T-1: (B, T, C)
# for i in ...:  # every block
#     h = F.layer_norm(x, (C,), ...)
#     q, k, v = F.linear(h, ...).split(C, dim=2)
#     ...  # heads: view(B, T, nh, hs).transpose(1, 2)
#     x = x + ...
# return F.linear(F.layer_norm(x, ...), state["lm_head.weight"])
# ```
#
# </details>

# %%
check("00.gpt_forward", gpt_forward)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/00_tour.ipynb` prints in a terminal.

# %%
check_all("00")
