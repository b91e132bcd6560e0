# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · A tour: a tiny GPT end to end, and the choice of architecture
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/00_tour.ipynb)
#
# **Goals**
# - Turn text into tokens and tokens into next-token training pairs.
# - Build and train a tiny GPT (a *causal decoder*) on your laptop CPU in about 30 seconds.
# - Measure it against the best model that ignores context (the unigram baseline).
# - See, with masks, what the three transformer architectures let each token look at —
#   and why most large language models are causal decoders.

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
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from ipywidgets import Dropdown, IntSlider

import lmlab
from lmlab.course.doctor import doctor

info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# A language model assigns a probability to the next token given the ones before it. Training
# minimises the average *cross-entropy*
#
# $$\mathcal{L} = -\frac{1}{T}\sum_{t=1}^{T} \log p_\theta(x_t \mid x_{<t}),$$
#
# measured in nats per token. A model that ignores context can at best predict each token with its
# overall frequency: its loss is the entropy of the *unigram* distribution. Anything below that line
# means the model uses context.
#
# Transformers come in three shapes, and the difference is **what each token is allowed to attend to**:
#
# | architecture | examples | what token *i* sees |
# |---|---|---|
# | causal decoder | GPT, LLaMA, BLOOM | tokens 0 … *i* |
# | prefix decoder | U-PaLM, GLM-130B | the whole prefix, then tokens up to *i* |
# | encoder-decoder | T5, BART | encoder: the whole source; decoder: earlier targets + the whole source |
#
# We build the data pipeline, the masks and the model, train it, and then look at the masks.

# %% [markdown]
# ## 2 · Build it: text → tokens → training pairs
#
# The corpus ships with Python itself: the reference documentation behind `help("for")`. No download.

# %%
corpus = lmlab.load_corpus()
tok = lmlab.CharTokenizer(corpus.text)
print(f"{len(corpus.train):,} training characters, {len(corpus.val):,} validation characters")
print(f"vocabulary: {tok.vocab_size} characters")
print(repr(corpus.train[1000:1200]))

# %%
ids = tok.encode("def greet(name):")
print(ids)
assert tok.decode(ids) == "def greet(name):"  # encode → decode round-trips exactly

train_ids = torch.tensor(tok.encode(corpus.train))
val_ids = torch.tensor(tok.encode(corpus.val))

# %% [markdown]
# A training example is a window of the token stream, and its target is **the same window shifted by
# one**: position *t* learns to predict token *t + 1*. One window of *T* tokens gives *T* predictions.

# %%
x, y = lmlab.sample_batch(train_ids, batch_size=2, context_length=12, generator=torch.Generator().manual_seed(0))
print("x[0]:", repr(tok.decode(x[0])))
print("y[0]:", repr(tok.decode(y[0])))
assert torch.equal(x[0, 1:], y[0, :-1])  # y is x shifted left by one

# %% [markdown]
# ### The causal mask, naive and vectorised
#
# Attention scores form a $T \times T$ matrix (rows = the token doing the looking, columns = the
# token looked at). A causal decoder hides the future by masking every entry above the diagonal.
# In lmlab a mask is boolean and **True means "may attend"** — the same convention as
# `torch.nn.functional.scaled_dot_product_attention`.

# %%
def causal_mask_naive(T):
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):  # query
        for j in range(T):  # key
            mask[i, j] = j <= i
    return mask


T = 6
print(lmlab.causal_mask(T).int())
assert torch.equal(causal_mask_naive(T), lmlab.causal_mask(T))

# Check against the trusted reference: PyTorch's own causal attention (is_causal=True).
q, k, v = torch.randn(3, 1, 2, T, 8).unbind(0)  # each (B=1, nh=2, T, hs=8)
ours = F.scaled_dot_product_attention(q, k, v, attn_mask=lmlab.causal_mask(T))
reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
print("our mask gives the same attention as torch's is_causal=True ✔")

# %% [markdown]
# ### The model
#
# `lmlab.GPT` is a stack of transformer blocks built from small parts named in a `ModelConfig`
# (norm, where it goes, activation, position scheme, attention). Later chapters add options to the
# same config. Here: 2 layers, 4 heads, 64-dimensional embeddings, learned positions, pre-LN, GeLU.

# %%
cfg = lmlab.ModelConfig(vocab_size=tok.vocab_size, context_length=64, d_model=64, n_layers=2, n_heads=4)
print(cfg)
print(f"{lmlab.GPT(cfg).num_parameters():,} parameters")

# %% [markdown]
# ### Build the GPT, rung by rung
#
# `lmlab.GPT` has many options; the idea fits in a page. We climb a ladder of six next-token models, each
# one idea more than the last (`lmlab.model.minimal_gpt`), and train each for the same 150 steps:
#
# 1. **bigram**: the next character from the current one only — a $V \times V$ table;
# 2. **average the past**: position $t$ takes the mean of the embeddings of tokens $0..t$ — one matrix
#    product with a row-normalised lower-triangular matrix;
# 3. **one attention head**: the weights become data-dependent, $\mathrm{softmax}(q k^\top / \sqrt{d_h})$ with
#    the future masked out;
# 4. **multi-head**: several heads side by side, then a projection;
# 5. **one block**: pre-LN residual attention plus a pre-LN residual MLP;
# 6. **the GPT**: two blocks, a final norm, the output layer tied to the embedding.

# %%
import inspect

from lmlab.model import minimal_gpt

T = 5
w = torch.ones(T, T).tril()
print((w / w.sum(1, keepdim=True)).numpy().round(2))  # rung 2's weights: row t averages tokens 0..t
xs = torch.randn(1, T, 3)
torch.testing.assert_close((w / w.sum(1, keepdim=True)) @ xs, xs.cumsum(1) / torch.arange(1, T + 1).view(1, T, 1))

# %%
from lmlab.course.experiments.ch00_ladder import train_ladder

ladder = train_ladder(steps=150, seed=0)
for row in ladder:
    print(f"{row['rung']:<22} {row['parameters']:>6,} parameters   validation loss {row['val_loss']:.3f}")
best = min(ladder[1:], key=lambda r: r["val_loss"])
context_gain = ladder[1]["val_loss"] - ladder[2]["val_loss"]
print(f"Averaging the past is {context_gain:+.2f} nats/token better than the bigram; the best rung after 150 steps is "
      f"'{best['rung']}' ({best['val_loss']:.3f}). One seed: a ranking of single runs, not a verdict — gaps of a few "
      f"hundredths could flip with another seed.")
if best["rung"] != "GPT (2 blocks)":
    print("With only 150 steps the deeper models have not caught up yet: more layers need more steps "
          "(section 3 trains the GPT for 800). One learning rate for every rung is a confound.")

# %% [markdown]
# The last rung is the whole GPT. Here it is, about 60 lines — the same maths as `lmlab.GPT`'s
# default configuration:

# %%
source = inspect.getsource(minimal_gpt)
start, end = source.index("class CausalSelfAttention"), source.index("# --- end of the minimal GPT")
print(source[start:end])

# %% [markdown]
# And the proof that it *is* lmlab's model: load `lmlab.GPT`'s weights into it (the parameter names match)
# and compare the logits. Large random weights, so a mistake could not hide in the noise.

# %%
gpt = lmlab.GPT(cfg)
with torch.no_grad():
    for p in gpt.parameters():
        p.normal_(0, 0.5)
mini = minimal_gpt.MiniGPT(cfg)
mini.load_state_dict(gpt.state_dict())
probe_ids = torch.randint(cfg.vocab_size, (2, cfg.context_length), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    diff = (mini(probe_ids) - gpt(probe_ids)).abs().max().item()
print(f"largest logit difference, minimal GPT vs lmlab.GPT: {diff:.2e}")
assert diff < 1e-3

# %% [markdown]
# ## 3 · Experiment: does a tiny GPT learn to use context?
#
# The seed's claim to test: a causal decoder trained with the plain next-token objective learns a
# model of the text. We train for 800 steps (about 30 s on 2 CPU cores) and compare the validation
# loss with the unigram baseline.

# %%
from lmlab.course.widgets import Prediction

guess_context = Prediction("After 800 steps, how far below the unigram baseline does the tiny GPT's validation loss get?",
                           ["not below it", "less than 0.5 nats/token", "more than 0.5 nats/token"])
guess_context

# %%
from lmlab.course.experiments.ch00_tour import leakage_test, loss_figure, mask_figure, train_tiny_gpt, visibility

result = train_tiny_gpt(steps=800, seed=0)
print(f"unigram baseline      : {result.unigram_loss:.3f} nats/token")
print(f"tiny GPT (validation) : {result.val_loss:.3f} nats/token  ({result.history.seconds:.0f} s of training)")
gap = result.unigram_loss - result.val_loss
verdict = (f"The model beats the context-free baseline by {gap:.2f} nats/token: it uses context (one seed — a "
           f"measurement against a fixed baseline, not a paired verdict over seeds)."
           if gap > 0.5 else f"Only {gap:.2f} nats/token below the baseline: the model barely uses context.")
print(verdict)
assert result.val_loss < result.unigram_loss

# %%
print(guess_context.reveal("more than 0.5 nats/token" if gap > 0.5 else "less than 0.5 nats/token" if gap > 0 else "not below it"))

# %%
loss_figure(result).show()

# %% [markdown]
# ### Generate text
#
# Feed a prompt, sample the next character from the model's distribution, append, repeat. After 800
# steps on a laptop, look for what it has picked up: spelling, Python-ish punctuation, indentation?

# %%
prompt = torch.tensor(tok.encode("The "))
sample = lmlab.generate(result.model, prompt, max_new_tokens=200, strategy="sample", temperature=0.8,
                        generator=torch.Generator().manual_seed(0))
print(tok.decode(sample))

# %% [markdown]
# ### Does the causal mask really hide the future?
#
# Change one token and see which earlier outputs move. Under the causal mask none should; under a
# prefix-LM mask that covers the changed token, earlier prefix tokens can see it.

# %%
probe = torch.tensor(tok.encode("for item in items: total += item"))
position = 12
causal = leakage_test(result.model, probe, position)
prefix = leakage_test(result.model, probe, position, prefix_len=20)
print(f"causal mask : {causal['earlier_positions_changed']} of {position} earlier outputs changed")
print(f"prefix mask : {prefix['earlier_positions_changed']} of {position} earlier outputs changed (prefix of 20)")
assert causal["earlier_positions_changed"] == 0 and prefix["earlier_positions_changed"] > 0

# %% [markdown]
# ## 4 · Architecture choice: what each mask lets a token see
#
# The survey notes that most LLMs are causal decoders: trained only on next-token prediction they
# show strong zero/few-shot ability, they scale predictably, and they suit instruction and alignment
# tuning. One concrete reason is the **training signal**: a causal decoder gets a loss at *every*
# position, while a prefix decoder or an encoder-decoder only predicts the part after the
# prefix/source. The cell below is only that arithmetic (T positions against T − prefix + 1 for the prefix
# decoder, whose last prefix position predicts the first suffix token, and T − prefix targets for the
# encoder-decoder), read off the
# masks — not an experiment: whether the extra positions make a better model is a question for
# trained models, which chapter 05 (pretraining objectives) compares.
#
# The prefix decoder and the encoder-decoder have the same *visibility pattern* as drawn here, but
# they are not the same model. Besides whether the two parts share parameters, they differ in *what*
# the target reads: an encoder-decoder's cross-attention reads the encoder's **final** layer (one
# summary of the source, the same for every decoder layer), while a prefix LM's layer ℓ reads the
# prefix's states **at layer ℓ**, computed by the same weights as the targets'.

# %%
T, prefix_len = 64, 16
rows = {arch: visibility(arch, T, prefix_len) for arch in lmlab.data.masks.ARCHITECTURES}
for arch, v in rows.items():
    print(f"{arch:<16} sees {v['fraction_visible']:.0%} of all pairs, "
          f"{v['positions_with_loss']:>2}/{T} positions trained")
most_signal = max(rows, key=lambda a: rows[a]["positions_with_loss"])
print(f"Arithmetic, not a measurement: {most_signal} has a loss at {rows[most_signal]['positions_with_loss']} of {T} "
      f"positions, the prefix decoder at {T} − {prefix_len} + 1 = {T - prefix_len + 1}, the encoder-decoder at "
      f"{T} − {prefix_len} = {T - prefix_len}.")

# %% [markdown]
# ## 5 · Widget: explore the masks
#
# Pick an architecture and move the sliders. Blue = may attend. For the prefix decoder and the
# encoder-decoder the red dotted lines mark the end of the prefix (the source).

# %%
from lmlab.course.widgets import FigureExplorer

explorer = FigureExplorer(
    make_figure=lambda architecture, T, prefix_len: mask_figure(architecture, T, prefix_len),
    controls={
        "architecture": Dropdown(options=lmlab.data.masks.ARCHITECTURES, value="prefix decoder"),
        "T": IntSlider(value=12, min=2, max=32, description="sequence length"),
        "prefix_len": IntSlider(value=4, min=0, max=32, description="prefix length"),
    },
    caption="Rows are queries (the token looking), columns are keys (the token looked at).",
)
explorer

# %% [markdown]
# ## 6 · Exercises
#
# Open [`exercises/00_tour.ipynb`](../exercises/00_tour.ipynb). You will write, and check in the
# notebook as you go:
# - one causal attention head (masked and scaled), checked against `F.scaled_dot_product_attention`,
# - the whole GPT forward from lmlab's weights, checked logit for logit against `lmlab.GPT`,
# - the causal mask and the prefix-LM mask,
# - a character tokenizer's `encode` / `decode`,
# - the shifted (x, y) batch sampler,
# - the next-token cross-entropy by hand (it must equal `F.cross_entropy`).
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/00_tour.ipynb`.
#
# ## 7 · Summary and further reading
#
# - A language model is trained to predict the next token; the unigram entropy is the bar a model
#   must clear to show it uses context.
# - The three architectures differ in their attention masks (and the encoder-decoder also in what its
#   cross-attention reads); causal decoders get a loss at every position, by construction, and are
#   the default for LLMs.
# - Reading: Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training*, subsection *Architecture Choice* (cited by title, as the seed note names it: it gives no section numbers); Radford et al., *Language
#   Models are Unsupervised Multitask Learners* (GPT-2, 2019); Raffel et al., *Exploring the Limits of
#   Transfer Learning with a Unified Text-to-Text Transformer* (T5, 2020) — its Fig. 3 draws these
#   three masks; Wang et al., *What Language Model Architecture and Pretraining Objective Work Best
#   for Zero-Shot Generalization?* (2022); Karpathy, *nanoGPT*.
