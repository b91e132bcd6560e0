# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Decoding strategies: greedy, beam search, temperature, top-k, top-p
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/07_decoding.ipynb)
#
# **Goals**
# - Turn a model's next-token distribution into text five ways: greedy, temperature sampling,
#   top-k, top-p (nucleus) and beam search with a length penalty.
# - Measure whether greedy decoding repeats itself on open-ended text, as the seed says, and what
#   sampling and two repetition controls do about it.
# - Measure what beam search buys (the seed: a higher sequence probability) and what it costs (the
#   seed: short, blank text), and how the length penalty changes that.
# - Watch temperature go from greedy (t → 0) to uniform (t → ∞), and top-k / top-p adapt (or not)
#   to a confident and a flat distribution.

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

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from ipywidgets import FloatSlider, IntSlider, Text

import lmlab
from lmlab.infer import decoding
from lmlab.course.doctor import doctor
from lmlab.course.widgets import style_figure

info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# A causal decoder is trained to give $P(x_i \mid x_{<i})$. *Decoding* is how we turn that
# distribution into text, one token at a time.
#
# - **Greedy search** takes the most likely token: $x_i = \arg\max_x P(x \mid x_{<i})$. Cheap and
#   often fine, but locally best choices can miss a better whole sentence, and on open-ended text
#   greedy output tends to loop (Holtzman et al., ICLR 2020).
# - **Beam search** keeps the $K$ best partial sequences and extends all of them each step
#   ($K = 1$ is greedy). It maximises $\log P(y) = \sum_i \log P(y_i \mid y_{<i})$, a sum of negative
#   terms, so it favours *short* outputs; a **length penalty** divides by $|y|^{\alpha}$ to compensate.
#   That is Hugging Face's form, the one lmlab uses; GNMT (Wu et al., 2016) divides by
#   $\left(\frac{5 + |y|}{6}\right)^{\alpha}$ instead. Either way the penalty only matters between
#   hypotheses of *different* lengths: the running beams of a step all have the same length, so it is
#   applied to **finished** hypotheses (a beam that chose EOS), which wait in a list of the $K$ best
#   until no running beam can beat them.
# - **Sampling** draws $x_i \sim P(x \mid x_{<i})$, reshaped first by
#   - **temperature**: $P(x_j) = \dfrac{\exp(l_j / t)}{\sum_{j'} \exp(l_{j'} / t)}$ ($t \to 0$:
#     greedy, $t = 1$: the model, $t \to \infty$: uniform);
#   - **top-k**: keep the $k$ most likely tokens;
#   - **top-p** (nucleus): keep the smallest set of most likely tokens whose probability reaches $p$.
#
#   The kept probabilities are renormalised to sum to 1. lmlab always applies them in the order
#   temperature → top-k → top-p (as Hugging Face does).
#
# The figure shows a toy distribution over six tokens at three temperatures.

# %%
toy_logits = torch.tensor([3.0, 2.2, 1.5, 0.6, 0.0, -1.0])  # (V=6,)
fig = go.Figure()
for t in (0.5, 1.0, 2.0):
    fig.add_bar(x=[f"token {i}" for i in range(6)], y=F.softmax(toy_logits / t, dim=-1).tolist(), name=f"t = {t}")
fig.update_yaxes(title="probability")
style_figure(fig, "softmax(logits / t): low t sharpens, high t flattens", height=340).show()

# %% [markdown]
# ## 2 · Build it: naive versions, then lmlab's, checked against torch
#
# Each filter sets the logits of removed tokens to $-\infty$ (probability 0 after softmax), so they
# compose and `softmax` renormalises for free.

# %%
def temperature_naive(logits, t):
    return logits / t  # softmax(logits / t)


def top_k_naive(logits, k):
    kth_best = sorted(logits.tolist(), reverse=True)[k - 1]
    return torch.tensor([x if x >= kth_best else -math.inf for x in logits.tolist()])  # ties at the k-th keep more!


def top_p_naive(logits, p):
    probs = F.softmax(logits, dim=-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])  # most likely first
    out, mass = [-math.inf] * len(probs), 0.0
    for i in order:
        if mass >= p:  # the tokens before already reach p: stop
            break
        out[i], mass = logits[i].item(), mass + probs[i]  # keep it (the one that crosses p too)
    return torch.tensor(out)


z = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 2  # (V=50,): no ties
torch.testing.assert_close(F.softmax(decoding.apply_temperature(z, 0.7), -1), F.softmax(temperature_naive(z, 0.7), -1))
torch.testing.assert_close(decoding.top_k_filter(z, 5), top_k_naive(z, 5))
torch.testing.assert_close(decoding.top_p_filter(z, 0.9), top_p_naive(z, 0.9))
# Trusted references: torch.topk gives the same 5 tokens; t = 0 keeps only torch.argmax.
assert set(torch.isfinite(decoding.top_k_filter(z, 5)).nonzero().flatten().tolist()) == set(torch.topk(z, 5).indices.tolist())
assert torch.isfinite(decoding.apply_temperature(z, 0)).nonzero().item() == z.argmax().item()
print("naive temperature / top-k / top-p agree with lmlab.infer.decoding ✔")

# Ties: lmlab's top-k keeps exactly k (lower ids first), the naive threshold keeps every tie.
tied = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0])
print("top-2 of", tied.tolist(), "→ lmlab keeps", torch.isfinite(decoding.top_k_filter(tied, 2)).sum().item(),
      "tokens, the naive threshold keeps", torch.isfinite(top_k_naive(tied, 2)).sum().item())

# %% [markdown]
# ## 3 · The model: lesson 00's tiny GPT
#
# We train the same character-level GPT as in lesson 00 (800 steps, seed 0, about 30 s on 2 CPU cores). A
# character model has **no end-of-sequence token**, so for beam search we pick a natural one: the
# **newline** `"\n"`. "The model ended its line" is where a sentence-like output stops, and it is a
# single token (`"\n\n"`, a paragraph break, would be two).

# %%
from lmlab.course.experiments.ch00_tour import train_tiny_gpt

run = train_tiny_gpt(steps=800, seed=0)
model, tok = run.model, run.tokenizer
corpus = lmlab.load_corpus()
print(f"validation loss {run.val_loss:.3f} nats/char (unigram baseline {run.unigram_loss:.3f})")
EOS = tok.stoi["\n"]
print(f"vocabulary {tok.vocab_size} characters; EOS = newline, id {EOS}")

# %% [markdown]
# ## 4 · Experiment: temperature, top-k and top-p on a confident and a flat distribution
#
# Two contexts: after `"the functio"` a model that has learned English should be nearly sure the next
# character is `n`; after `"The "` almost any letter could start the next word. The next cell prints
# how sure this model is in each.

# %%
from lmlab.course.experiments.ch07_decoding import kept_by_filters, temperature_figure, temperature_sweep

contexts = {"confident: 'the functio'": "the functio", "flat: 'The '": "The "}
logits = {name: decoding.next_token_logits(model, torch.tensor(tok.encode(p))) for name, p in contexts.items()}
temperatures = [0.001, 0.01, 0.1, 0.3, 1, 3, 10, 100, 1000]
sweep = temperature_sweep(logits, temperatures)
log_v = math.log(tok.vocab_size)
for name, z in logits.items():
    top = F.softmax(z, dim=-1).topk(3)
    print(f"{name:<26} most likely next: " + ", ".join(f"{tok.decode([int(i)])!r} {float(p):.1%}" for p, i in zip(top.values, top.indices)))
temperature_figure(sweep, temperatures, tok.vocab_size).show()

# %%
# t = 0 is greedy, exactly: sampling at temperature 0 gives the greedy text.
prompt = torch.tensor(tok.encode("The "))
greedy_text = decoding.generate(model, prompt, 100, "greedy")
t0_text = decoding.generate(model, prompt, 100, "sample", temperature=0.0, generator=torch.Generator().manual_seed(1))
same = torch.equal(greedy_text, t0_text)
print(f"sampling at t = 0 {'reproduces' if same else 'differs from'} greedy decoding over 100 characters.")
for name, s in sweep.items():
    falls = all(a <= b + 1e-9 for a, b in zip(s["entropy"], s["entropy"][1:]))
    print(f"{name:<26} entropy {'rises steadily' if falls else 'does not rise steadily'} with t: "
          f"{s['entropy'][0]:.3f} nats at t = {temperatures[0]} (top token {s['top_prob'][0]:.1%}) → "
          f"{s['entropy'][-1]:.3f} at t = {temperatures[-1]} ({s['entropy'][-1] / log_v:.1%} of uniform)")
low = max(s["entropy"][0] for s in sweep.values())
high = min(s["entropy"][-1] for s in sweep.values())
print(f"Verdict: t → 0 {'is' if low < 0.01 else 'is not yet'} greedy (entropy ≤ {low:.3f} nats, one token left); "
      f"t → ∞ {'is' if high / log_v > 0.99 else 'is not yet'} uniform ({high:.3f} of {log_v:.3f} nats).")
assert same and low < high

# %%
tables = {name: kept_by_filters(z) for name, z in logits.items()}
print(f"{'filter':<12}" + "".join(f"{name:>34}" for name in tables))
for i, row in enumerate(next(iter(tables.values()))):
    print(f"{row['filter']:<12}" + "".join(f"{t[i]['kept']:>12} kept, {t[i]['mass']:>6.1%} of mass" for t in tables.values()))
conf, flat = tables.values()
p9 = next(i for i, r in enumerate(conf) if r["filter"] == "top-p = 0.9")
k5 = next(i for i, r in enumerate(conf) if r["filter"] == "top-k = 5")
print(f"top-p adapts: at p = 0.9 it keeps {conf[p9]['kept']} token(s) on the confident distribution and "
      f"{flat[p9]['kept']} on the flat one. top-k does not: k = 5 keeps 5 on both, holding "
      f"{conf[k5]['mass']:.1%} vs {flat[k5]['mass']:.1%} of the probability"
      + (" — on the flat one it cuts off real options." if flat[k5]["mass"] < 0.8 else "."))

# %% [markdown]
# ## 5 · Experiment: does greedy decoding repeat itself?
#
# The seed's claim: greedy search can produce awkward or *repeated* text in open-ended generation.
# We continue four prompts by 200 characters with each strategy (sampling strategies: 3 samples per
# prompt, seeded) and measure the **fraction of repeated 4-grams**: $1 - \frac{\#\text{distinct
# 4-grams}}{\#\text{4-grams}}$ — 0 if no 4 characters ever repeat, near 1 for a loop. The dashed line
# is the same measure on real 200-character windows of the validation text (the docs repeat words
# and indentation too). We also print the model's own log-probability per generated character.
# Two repetition controls work on greedy decoding: the **repetition penalty** in Hugging Face's form
# (divide a positive logit of an already-seen token by 1.3, multiply a negative one — CTRL itself,
# Keskar et al. 2019, divides every seen token's logit by θ whatever its sign, which would *raise* a
# negative one; the sign rule is Hugging Face's) and **no-repeat n-gram blocking** (forbid any token
# that would repeat a 4-gram).

# %%
from lmlab.course.widgets import Prediction

guess_greedy = Prediction("Does greedy decoding repeat more of its 4-grams than every sampling strategy?",
                          ["yes, greedy repeats the most", "no, a sampler repeats as much or more"], description="greedy")
guess_greedy

# %%
from lmlab.course.experiments.ch07_decoding import repetition_experiment, repetition_figure

rep = repetition_experiment(model, tok, corpus.val, samples=3, max_new_tokens=200, seed=0)
print(f"{'strategy':<34}{'repeated 4-grams':>17}{'log p / char':>14}")
for name, rate in rep.mean.items():
    print(f"{name:<34}{rate:>17.3f}{rep.logprob[name]:>14.2f}")
print(f"{'real text (validation)':<34}{rep.real_text:>17.3f}")
repetition_figure(rep).show()

# %%
sampling = {k: v for k, v in rep.mean.items() if not k.startswith("greedy")}
greedy_rate = rep.mean["greedy"]
most_repetitive = max(sampling, key=sampling.get)
if greedy_rate > max(sampling.values()):
    print(f"Reproduced: greedy repeats {greedy_rate:.0%} of its 4-grams, {greedy_rate / sampling[most_repetitive]:.1f}× the most "
          f"repetitive sampler ({most_repetitive}, {sampling[most_repetitive]:.0%}) and {greedy_rate / rep.real_text:.1f}× real text "
          f"({rep.real_text:.0%}) — although the model rates greedy text as far more likely "
          f"({rep.logprob['greedy']:.2f} vs {rep.logprob[most_repetitive]:.2f} nats/char).")
else:
    print(f"Not reproduced: greedy repeats {greedy_rate:.0%} of its 4-grams, no more than {most_repetitive} ({sampling[most_repetitive]:.0%}).")
penalty = rep.mean["greedy + repetition penalty 1.3"]
print(f"Repetition penalty 1.3: {greedy_rate:.2f} → {penalty:.2f} "
      + ("(it helps)." if penalty < greedy_rate - 0.05 else
         "(no help here: in a character model every letter has been seen, so the penalty hits all of them "
         "nearly alike, and the loop is made of spaces)."))
print(f"No-repeat 4-gram blocking: {rep.mean['greedy + no repeated 4-gram']:.2f} (zero by construction), "
      f"at {rep.logprob['greedy + no repeated 4-gram']:.2f} nats/char instead of {rep.logprob['greedy']:.2f}.")
print("\ngreedy:", repr(rep.examples["greedy"][:140]))
print("top-p :", repr(rep.examples["top-p = 0.9"][:140]))

# %%
print(guess_greedy.reveal("yes, greedy repeats the most" if greedy_rate > max(sampling.values()) else
                          "no, a sampler repeats as much or more"))

# %% [markdown]
# ## 6 · Experiment: beam size and length penalty
#
# Beam search with the newline as EOS, up to 60 new characters, the same four prompts, beam sizes
# 1 → 32, without a length penalty ($\alpha = 0$: the raw $\log P$) and with $\alpha = 1$ (log-probability
# per character). The search stops with the **exact** rule (`early_stopping="never"`): only when no
# running beam, even at the longest length it could reach, can beat the worst of the $K$ finished
# hypotheses. (The cheaper heuristic compares at the current length and can stop before a longer,
# better hypothesis; with it, one beam and $\alpha = 1$ would be plain greedy decoding — with the exact
# rule, one beam may keep going past greedy's first EOS.) Four numbers per setting, averaged over
# prompts: the **score** the search maximises, the **length** of the best output, and two signs of
# degenerate text: its **blank fraction** (share of spaces / line breaks, EOS excluded) and its
# fraction of **repeated 4-grams** (the measure of section 4).

# %%
guess_beam = Prediction("Without a length penalty, how long is the best output of 32 beams, against 1 beam's?",
                        ["less than half as long", "shorter, but not by half", "as long or longer"], description="32 beams")
guess_beam

# %%
from lmlab.course.experiments.ch07_decoding import beam_experiment, beam_figure

beams = beam_experiment(model, tok, beam_sizes=(1, 2, 4, 8, 16, 32), length_penalties=(0.0, 1.0), max_new_tokens=60)
print(f"{'α':>4}{'beams':>7}{'score':>9}{'log P':>9}{'length':>8}{'blank':>7}{'repeat':>8}   first prompt's output")
for r in beams:
    print(f"{r['length_penalty']:>4g}{r['beams']:>7}{r['score']:>9.2f}{r['logprob']:>9.2f}{r['length']:>8.1f}"
          f"{r['blank']:>7.2f}{r['repeat']:>8.2f}   {r['texts'][0]!r}")
beam_figure(beams).show()

# %%
def series(lp, key):
    return [r[key] for r in beams if r["length_penalty"] == lp]


sizes = series(0.0, "beams")
score0, len0, len1, score1 = series(0.0, "score"), series(0.0, "length"), series(1.0, "length"), series(1.0, "score")
blank1, repeat1 = series(1.0, "blank"), series(1.0, "repeat")
rises = all(b >= a - 1e-6 for a, b in zip(score0, score0[1:]))
print(f"No length penalty: log P of the best output {'rises' if rises else 'does not rise steadily'} with the beam "
      f"({score0[0]:.1f} at 1 beam → {score0[-1]:.1f} at {sizes[-1]}), and its length goes "
      f"{len0[0]:.1f} → {len0[-1]:.1f} characters"
      + (" — the seed's 'beam search prefers short outputs', reproduced." if len0[-1] < 0.5 * len0[0] else
         " — not the large shortening the seed describes."))
longer = sum(b > a for a, b in zip(len0[1:], len1[1:]))
print(f"Length penalty α = 1: longer output than α = 0 at {longer} of {len(sizes) - 1} beam sizes > 1 "
      f"(at {sizes[-1]} beams: {len1[-1]:.1f} vs {len0[-1]:.1f} characters).")
small = [i for i, k in enumerate(sizes) if k <= 4]  # the seed's usual beam sizes (3-6) and below
large = [i for i, k in enumerate(sizes) if k >= 16]
worse = [name for name, v in (("blank fraction", blank1), ("repeated 4-grams", repeat1))
         if min(v[i] for i in large) > max(v[i] for i in small) + 0.05]
print(f"Larger beams with α = 1: the score goes {score1[0]:.2f} → {score1[-1]:.2f} nats/char; blank fraction "
      f"{blank1[0]:.2f} → {blank1[-1]:.2f}, repeated 4-grams {repeat1[0]:.2f} → {repeat1[-1]:.2f}. "
      + (f"At ≥ 16 beams the {' and the '.join(worse)} {'are' if len(worse) > 1 else 'is'} higher than at any beam size ≤ 4: "
         "very large beams hurt here — a better search for a flawed objective." if worse else
         "Neither measure is clearly worse at ≥ 16 beams than at every beam size ≤ 4: no clear sign here that very "
         "large beams hurt."))

# %%
print(guess_beam.reveal("less than half as long" if len0[-1] < 0.5 * len0[0] else
                        "shorter, but not by half" if len0[-1] < len0[0] else "as long or longer"))

# %% [markdown]
# ## 7 · Widgets
#
# ### Next-token explorer
#
# Type a prompt, move temperature, top-k (0 = off) and top-p (1 = off). Grey bars: the model's
# distribution over the 20 most likely next characters; blue bars: what sampling draws from after
# the filters (renormalised); a red outline with no fill marks a removed character. Under the plot:
# how many characters survive and a sampled continuation with these settings.

# %%
from lmlab.course.experiments.ch07_decoding import beam_tree, beam_tree_figure, next_token_figure
from lmlab.course.widgets import FigureExplorer

next_token_explorer = FigureExplorer(
    make_figure=lambda prompt, temperature, top_k, top_p: next_token_figure(model, tok, prompt, temperature, top_k, top_p),
    controls={
        "prompt": Text(value="The ", description="prompt"),
        "temperature": FloatSlider(value=1.0, min=0.0, max=3.0, step=0.05, description="temperature"),
        "top_k": IntSlider(value=0, min=0, max=tok.vocab_size, description="top-k (0 = off)"),
        "top_p": FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1 = off)"),
    },
    caption="Temperature reshapes first, then top-k, then top-p; the kept probabilities are renormalised.",
)
next_token_explorer

# %% [markdown]
# ### Beam-search tree
#
# Each column is a step. For every running beam the tree shows its three most likely next
# characters; the kept hypotheses are coloured by their log-probability so far, pruned ones are grey.
# Labels: the character and $\log P$ of the hypothesis. Try 1 beam (greedy) against 4.

# %%
beam_explorer = FigureExplorer(
    make_figure=lambda prompt, num_beams, steps: beam_tree_figure(beam_tree(model, tok, prompt or "The ", num_beams, steps)),
    controls={
        "prompt": Text(value="The ", description="prompt"),
        "num_beams": IntSlider(value=3, min=1, max=6, description="beams"),
        "steps": IntSlider(value=6, min=1, max=10, description="steps"),
    },
    caption="The best final beam is exactly what lmlab.infer.decoding.beam_search returns (no EOS, no length penalty).",
)
beam_explorer

# %% [markdown]
# ## 8 · Exercises
#
# Open [`exercises/07_decoding.ipynb`](../exercises/07_decoding.ipynb). You will write, and check in
# the notebook as you go:
# - `softmax_with_temperature`: the temperature softmax, with t = 0 as greedy and no overflow at tiny t;
# - `top_k_filter`: exactly k tokens, ties to the lower id;
# - `top_p_filter`: the nucleus, keeping the token that crosses p;
# - `beam_step`: one step of beam search — expand, finish the EOS candidates with the length penalty,
#   keep the running beams and the best finished scores, and decide with the exact rule when it is done;
# - `repetition_penalty`: CTRL's penalty on tokens already generated, with Hugging Face's sign rule.
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/07_decoding.ipynb`.
#
# ## 9 · Summary and further reading
#
# - Greedy decoding is the $t \to 0$ end of sampling; section 4 measured how often it loops compared
#   with real text and with the samplers (the verdict printed there is this run's).
# - Beam search maximises $\log P$, which favours short outputs; a length penalty (applied to finished
#   hypotheses) counters that; section 6 measured whether very wide beams find degenerate
#   high-probability text on this model.
# - Top-k keeps a fixed number of tokens; top-p keeps a fixed probability mass and so adapts to how
#   sure the model is.
# - Reading: Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training*,
#   subsection *Decoding Strategy* (cited by title, as the seed note names it: the note gives no
#   section numbers); Holtzman et
#   al., *The Curious Case of Neural Text Degeneration* (ICLR 2020, top-p); Fan et al., *Hierarchical
#   Neural Story Generation* (2018, top-k); Keskar et al., *CTRL* (2019, repetition penalty); Wu et
#   al., *Google's Neural Machine Translation System* (2016, length penalty); Meister et al., *If Beam
#   Search is the Answer, What was the Question?* (2020); Stahlberg & Byrne, *On NMT Search Errors and
#   Model Errors: Cat Got Your Tongue?* (2019, the empty output is often the most probable one).
