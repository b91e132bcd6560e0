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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/solutions/00_tour.ipynb)
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
    ### BEGIN SOLUTION
    i = torch.arange(T)
    return i[None, :] <= i[:, None]  # (T, T): key j <= query i
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    mask = torch.ones(T, T, dtype=torch.bool).tril()  # causal part
    mask[:prefix_len, :prefix_len] = True  # the prefix sees itself both ways
    return mask
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        ### END SOLUTION

    @property
    def vocab_size(self) -> int:
        ### BEGIN SOLUTION
        return len(self.chars)
        ### END SOLUTION

    def encode(self, s: str) -> list[int]:
        ### BEGIN SOLUTION
        return [self.stoi[ch] for ch in s]
        ### END SOLUTION

    def decode(self, ids: list[int]) -> str:
        ### BEGIN SOLUTION
        return "".join(self.chars[i] for i in ids)
        ### END SOLUTION


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
    ### BEGIN SOLUTION
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, T, V)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -picked.mean()
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    starts = torch.randint(len(ids) - context_length, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(context_length)  # (T,)
    x = ids[starts[:, None] + offsets]  # (B, T)
    y = ids[starts[:, None] + offsets + 1]  # (B, T): one token later
    return x, y
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T  # (B, T, hs)
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5  # (B, T, T)
    T = x.size(1)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, T, hs)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    C = state["tok_emb.weight"].shape[1]
    n_layers = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    B, T = idx.shape

    def norm(x, name):
        return F.layer_norm(x, (C,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    x = state["tok_emb.weight"][idx] + state["pos_emb.weight"][:T]  # (B, T, C)
    for i in range(n_layers):
        p = f"blocks.{i}."
        q, k, v = F.linear(norm(x, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, n_heads, C // n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        h = F.gelu(F.linear(norm(x, p + "norm2"), state[p + "ffn.up.weight"], state[p + "ffn.up.bias"]))
        x = x + F.linear(h, state[p + "ffn.down.weight"], state[p + "ffn.down.bias"])
    return F.linear(norm(x, "final_norm"), state["lm_head.weight"])  # (B, T, V)
    ### END SOLUTION


# %%
check("00.gpt_forward", gpt_forward)

# %% [markdown]
# ## Your score
#
# The same table as `lmlab grade exercises/00_tour.ipynb` prints in a terminal.

# %%
check_all("00")
