# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Position embeddings: sinusoidal, learned, T5 bias, RoPE, ALiBi
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/03_positions.ipynb)
#
# **Goals**
# - See why a Transformer needs positions at all: attention without them (and without a mask) is
#   *permutation-equivariant* — shuffle the tokens and the outputs shuffle with them.
# - Build every classic scheme and check it against hand-computed values or a known property:
#   sinusoidal and learned absolute embeddings, T5's relative buckets, RoPE (both layouts, and the
#   complex-number form), ALiBi.
# - Train a tiny model with each scheme at context $L$ and evaluate it at $L$, $2L$, $4L$: which ones
#   cannot run, which degrade, which hold.
# - Explore RoPE's rotations and the relative biases against distance with two widgets.

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
from ipywidgets import FloatLogSlider, IntSlider

from lmlab.model.positions import encodings as P
from lmlab.course.doctor import doctor
from lmlab.course.experiments import ch03_positions as X
from lmlab.course.stats import paired_comparison
from lmlab.course.widgets import FigureExplorer

info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# Attention scores $q_i \cdot k_j$ depend on *what* tokens $i$ and $j$ are, never on *where* they are.
# Without extra information the model cannot tell "dog bites man" from "man bites dog". The schemes
# differ in where the position enters:
#
# | scheme | where | formula |
# |---|---|---|
# | sinusoidal (Vaswani et al. 2017) | added to the input | $PE_{p,2i} = \sin(p/10000^{2i/d})$, $PE_{p,2i+1} = \cos(p/10000^{2i/d})$ |
# | learned (GPT-2) | added to the input | a trained row $E_p$ per position $p < L$ |
# | T5 bias (Raffel et al. 2020) | added to the scores | $s_{ij} \mathrel{+}= b_h[\mathrm{bucket}(j - i)]$, learned |
# | RoPE (Su et al. 2021) | rotates $q$ and $k$ | pair $i$ of $q$ at position $m$ turns by $m\,\theta_i$, $\theta_i = 10000^{-2i/d}$ |
# | ALiBi (Press et al. 2022) | added to the scores | $s_{ij} \mathrel{-}= m_h\,(i - j)$, fixed slopes $m_h$ |
#
# RoPE's trick: rotating $q$ by angle $m\theta$ and $k$ by $n\theta$ leaves
# $\langle R_{m\theta} q, R_{n\theta} k\rangle = \langle q, R_{(n-m)\theta} k\rangle$: the score sees
# only the *difference* $n - m$.

# %% [markdown]
# ## 2 · Without positions, order is invisible
#
# Take attention with random weights and no mask, shuffle the input rows with a permutation $P$, and
# compare $f(Px)$ with $P f(x)$. Then the whole tiny GPT, with every position scheme, once with an
# all-True mask (bidirectional, like BERT) and once with its usual causal mask.
#
# Be precise about the causal case: the causal mask *itself* is positional — token $i$ sees exactly
# the tokens before it — so shuffling changes who sees whom, and the outputs are not a shuffle of
# each other even with no position scheme. What remains true there: in a one-layer model the last
# token's output depends only on the *set* of earlier tokens (shuffle them and it does not change).
# Equivariance is a statement about attention without a mask.

# %%
perm = X.permutation_check(T=12, seed=0)
print(f"permutation: {perm['perm']}")
print(f"plain attention, no mask:     max |f(Px) - P f(x)| / |f(x)| = {perm['attention, no mask']:.1e}")
print(f"plain attention, causal mask: max |f(Px) - P f(x)| / |f(x)| = {perm['attention, causal mask']:.2f}")
print(f"{'GPT position=':<16}{'bidirectional':>14}{'causal':>10}")
for name, r in perm["model"].items():
    print(f"{name:<16}{r['bidirectional']:>14.1e}{r['causal']:>10.2f}")
print(f"position='none', causal, 1 layer, earlier tokens shuffled: the last token's output changes by "
      f"{perm['causal, 1 layer, last token']:.1e}")
equivariant = [n for n, r in perm["model"].items() if r["bidirectional"] < 1e-5]
assert perm["attention, no mask"] < 1e-5 and equivariant == ["none"] and perm["causal, 1 layer, last token"] < 1e-5
print(f"Verdict: without a mask, {'only ' if len(equivariant) == 1 else ''}{', '.join(equivariant)} is permutation-equivariant "
      f"(differences at float32 rounding); every position scheme breaks the symmetry "
      f"(smallest change {min(r['bidirectional'] for n, r in perm['model'].items() if n != 'none'):.2f}), and so does the "
      f"causal mask on its own ({perm['model']['none']['causal']:.2f} for position='none').")

# %% [markdown]
# ## 3 · Build each scheme and check it
#
# ### 3.1 Sinusoidal (absolute, fixed)
#
# A loop straight from the formula first, then `lmlab.model.positions.encodings.sinusoidal_embedding`. Columns come in
# (sin, cos) pairs; pair $i$ is a clock turning once every $2\pi \cdot 10000^{2i/d}$ tokens, from one
# turn every $2\pi$ tokens (pair 0) to one every $2\pi \cdot 10000^{(d-2)/d}$ (the last pair, $i = d/2 - 1$;
# just under $2\pi \cdot 10000$). Because $PE_{p+k}$ is a fixed rotation of $PE_p$, the dot product
# $PE_p \cdot PE_{p+k}$ depends on $k$ only.

# %%
def sinusoidal_naive(n_positions, d):
    pe = torch.zeros(n_positions, d)
    for p in range(n_positions):
        for i in range(d // 2):
            pe[p, 2 * i] = math.sin(p / 10000 ** (2 * i / d))
            pe[p, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / d))
    return pe  # (T, C)


pe = P.sinusoidal_embedding(64, 48)  # (T=64, C=48)
torch.testing.assert_close(pe, sinusoidal_naive(64, 48), atol=1e-5, rtol=0)
gram = pe @ pe.T  # (T, T): PE_p · PE_q
shift_spread = max(float(gram.diagonal(k).std()) for k in range(1, 32))
assert shift_spread < 1e-4
print(f"loop = lmlab ✔; PE_p · PE_(p+k) is the same for every p (largest spread over p: {shift_spread:.1e}); "
      f"every row has norm √(d/2) = {float(pe.norm(dim=1).mean()):.2f}")
X.sinusoidal_figure(64, 48).show()

# %% [markdown]
# ### 3.2 Learned (absolute, trained)
#
# GPT-2 keeps one trained row per position. A table of $L$ rows has no row for position $L$: lmlab's
# table refuses with an explanation rather than an index error. That is a property of the code, not
# a test of the claim — the experiment below gives the table more rows than the training windows
# use, so the rows past $L$ exist but were never trained, and measures what they do.

# %%
table = P.LearnedPositionEmbedding(32, 8)
print("positions 0..31:", tuple(table(torch.arange(32)).shape))
try:
    table(torch.arange(40))
except ValueError as err:
    learned_error = str(err)
    print("positions 0..39: ValueError:", learned_error)
assert "cannot extrapolate" in learned_error

# %% [markdown]
# ### 3.3 T5's relative buckets
#
# T5 learns one scalar per (bucket, head) and adds it to the score of query $i$ and key $j$, where
# the bucket depends on $j - i$. Within a direction, half of the buckets are exact distances
# $0, \dots, \text{max\_exact}-1$ and the rest are log-spaced up to `max_distance`:
#
# $$\mathrm{bucket}(d) = \text{max\_exact} + \left\lfloor \frac{\ln(d / \text{max\_exact})}{\ln(\text{max\_distance} / \text{max\_exact})}\,(n - \text{max\_exact}) \right\rfloor, \text{ capped at } n - 1.$$
#
# Bidirectional (the T5 encoder) gives half of the buckets to keys after the query; causal (a
# decoder, and our GPT) uses all of them for keys before it. A scalar version with `math.log` checks
# lmlab's tensor version on every distance from -300 to 300.

# %%
def bucket_naive(rel, bidirectional=True, num_buckets=32, max_distance=128):
    n, offset = num_buckets, 0
    if bidirectional:
        n //= 2
        offset = n if rel > 0 else 0  # keys after the query: the upper half
        rel = abs(rel)
    else:
        rel = max(-rel, 0)  # distance back; keys after the query -> 0 (masked anyway)
    max_exact = n // 2
    if rel < max_exact:
        return offset + rel
    return offset + min(max_exact + int(math.log(rel / max_exact) / math.log(max_distance / max_exact) * (n - max_exact)), n - 1)


rel = torch.arange(-300, 301)  # key position - query position
for bidi in (True, False):
    for nb, md in ((32, 128), (16, 64), (8, 20)):
        assert P.relative_position_bucket(rel, bidi, nb, md).tolist() == [bucket_naive(r, bidi, nb, md) for r in rel.tolist()]
print("scalar formula = lmlab on distances -300..300, both directions, three settings ✔")
runs = X.bucket_table(num_buckets=32, max_distance=128, up_to=300)
print("causal, 32 buckets, max_distance 128:  bucket: distances back")
print("  " + "  ".join(f"{r['bucket']}: {r['first']}" + (f"-{r['last']}" if r["width"] > 1 else "") for r in runs))
exact = [r for r in runs if r["width"] == 1]
print(f"Verdict: {len(exact)} buckets hold one distance each (0..{exact[-1]['first']}): exact nearby; the widest shared bucket "
      f"before the last spans {max(r['width'] for r in runs[:-1])} distances; the last bucket holds every distance from "
      f"{runs[-1]['first']} on (here up to {runs[-1]['last']}, in fact forever): coarse far away.")

# %% [markdown]
# ### 3.4 RoPE
#
# The naive version builds the rotation matrix: block-diagonal, one $2\times 2$ block
# $\begin{pmatrix}\cos m\theta_i & -\sin m\theta_i\\ \sin m\theta_i & \cos m\theta_i\end{pmatrix}$ per pair.
# Which dimensions form a pair is a *layout* choice:
#
# - **interleaved** (the paper, GPT-J, Meta's LLaMA code): pair $i$ is $(x_{2i}, x_{2i+1})$;
# - **half-split** (GPT-NeoX, Hugging Face's LLaMA, `rotate_half`): pair $i$ is $(x_i, x_{i+d/2})$.
#
# Both are RoPE; a checkpoint trained with one gives garbage with the other unless the rows of
# $W_q, W_k$ are permuted (`interleaved_to_half`). Meta's code writes the same rotation as complex
# multiplication: $(x_{2i} + j x_{2i+1}) \cdot e^{j m \theta_i}$.

# %%
def rope_naive(x, positions, base=10000.0):  # x (T, d), interleaved pairs, by explicit matrices
    T, d = x.shape
    out = torch.empty_like(x)
    for t in range(T):
        R = torch.zeros(d, d)
        for i in range(d // 2):
            a = positions[t] * base ** (-2 * i / d)
            R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        out[t] = R @ x[t]
    return out


g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 10, 16, generator=g)  # (B, nh, T, hs)
pos = torch.arange(10)
inter = P.apply_rope(x, pos, layout="interleaved")
half = P.apply_rope(x, pos, layout="half")
torch.testing.assert_close(inter[0, 0], rope_naive(x[0, 0], pos.tolist()), atol=1e-5, rtol=0)
print("rotation matrices = apply_rope(layout='interleaved') ✔")
torch.testing.assert_close(P.apply_rope_complex(x, pos), inter, atol=1e-5, rtol=0)
print("complex multiplication = real rotation (interleaved) ✔")
torch.testing.assert_close(P.interleaved_to_half(inter), P.apply_rope(P.interleaved_to_half(x), pos, layout="half"), atol=1e-5, rtol=0)
assert torch.equal(P.half_to_interleaved(P.interleaved_to_half(x)), x)
print("interleaved_to_half(rope_interleaved(x)) = rope_half(interleaved_to_half(x)) ✔; the converters round-trip exactly ✔")
print(f"mixing the layouts up instead: max |difference| = {float((inter - half).abs().max()):.2f} (not a small error)")
norm_change = float((half.norm(dim=-1) - x.norm(dim=-1)).abs().max())
q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)


def score(m, n, layout="half"):  # <rope(q, m), rope(k, n)>
    return float(P.apply_rope(q[None], torch.tensor([m]), layout=layout) @ P.apply_rope(k[None], torch.tensor([n]), layout=layout).T)


pairs = [(3, 0), (10, 7), (103, 100), (1003, 1000)]  # all at distance 3
scores = [score(m, n) for m, n in pairs]
assert norm_change < 1e-5 and max(scores) - min(scores) < 1e-3
print(f"norms kept (largest change {norm_change:.1e}); q·k at (m, n) = {pairs}: {[round(s, 4) for s in scores]} — "
      f"the same: only m - n matters (at distance 0 instead: {score(3, 3):.4f})")

# %% [markdown]
# ### 3.5 ALiBi
#
# No embedding at all: head $h$ subtracts $m_h \cdot (i - j)$ from the score of a key $i - j$ tokens
# back. For $n$ heads (a power of two) the slopes are the geometric sequence starting at
# $2^{-8/n}$ with that ratio: 8 heads get $\tfrac12, \tfrac14, \dots, \tfrac1{256}$. For other head
# counts the reference code takes the $p$ slopes of the largest power of two $p < n$, then every
# other slope of the $2p$ sequence for the remaining $n - p$ heads.

# %%
assert P.alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
twelve = P.alibi_slopes(12)
by_hand = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]  # 16-head sequence 2^-0.5, 2^-1, 2^-1.5, ...: every other
torch.testing.assert_close(twelve, torch.tensor(by_hand))
print("8 heads:", [f"1/{round(1 / s)}" for s in P.alibi_slopes(8).tolist()])
print("12 heads:", [round(s, 4) for s in twelve.tolist()], "✔ (8 from the 8-head sequence, 4 from every other 16-head slope)")
bias = P.alibi_bias(8, 5)  # (1, nh, T, T)
print("head 0 (slope 1/2), 5 tokens (rows = queries; above the diagonal is masked out by the causal mask anyway):")
print(bias[0, 0])

# %% [markdown]
# ## 4 · Experiment: train at L, evaluate at 2L and 4L
#
# The seed's claims: *learned absolute embeddings cannot go past the trained length*; relative schemes
# generalise better. We train the same tiny character GPT (d = 32, 2 layers, 4 heads) with each of the
# six schemes and **3 seeds** (the same seeds, so the same batches, for every scheme), 200 steps at
# context $L = 32$, changing only `position`. The learned table has $4L$ rows: training on length-$L$
# windows never sends a gradient to rows $L \dots 4L-1$, which keep their initial values (shrunk a
# little by weight decay). Each model is then
# evaluated on windows of $L$, $2L$ and $4L$ characters (`lmlab.train.loop.evaluate_lengths` copies it
# with a longer `context_length`, same weights). A window's mean loss mixes positions the model was
# trained on with new ones, and more context usually *lowers* the loss; so the right plot also shows the
# loss at each position of a $4L$ window (mean over seeds). The claim tested for each scheme is "its loss
# past position $L$ is worse than on positions $L/2 \dots L-1$", by the shared verdict helper
# (`lmlab.course.stats.paired_comparison`, 3 seeds, margin 0.05 nats, Holm-corrected over the schemes):
# **degrades** when the difference is beyond the seed noise; **holds** only when the equivalence test
# shows the loss past $L$ within ±0.05 nats (or better); **undetermined** when neither is shown.

# %%
from ipywidgets import VBox
from lmlab.course.widgets import Prediction

guess_learned = Prediction("Trained at L = 32: does the learned table's loss past L degrade?",
                           ["degrades", "holds", "undetermined", "cannot run"],
                           description="learned")
guess_relative = Prediction("Of the two relative schemes RoPE and ALiBi, which hold past L?",
                            ["both", "RoPE only", "ALiBi only", "neither"], description="RoPE / ALiBi")
VBox([guess_learned, guess_relative])

# %%
ext = X.extrapolation_experiment(L=32, steps=200, seeds=(0, 1, 2), d_model=32)
L = ext.L
print(f"{'position':<11}{'params':>8}{'train s':>9}" + "".join(f"{'loss @' + str(n):>11}" for n in ext.lengths))
for r in ext.rows:
    print(f"{r['scheme']:<11}{r['params']:>8,}{r['train_seconds']:>9.1f}"
          + "".join(f"{r['losses'][n]:>11.3f}" if not math.isnan(r["losses"][n]) else f"{'cannot run':>11}" for n in ext.lengths))
X.extrapolation_figure(ext).show()

# %%
verdicts = X.extrapolation_verdicts(ext)
for name, v in verdicts.items():
    detail = ("no row for position 32: " + next(r["error"] for r in ext.rows if r["scheme"] == name).split(". ")[0]
              if v["verdict"] == "cannot run" else
              f"loss on positions {L // 2}..{L - 1}: {v['inside']:.3f}, past {L}: {v['beyond']:.3f} ({v['beyond'] - v['inside']:+.3f})")
    print(f"{name:<11}{v['verdict']:<13}{detail}")
    if v.get("comparison") is not None:
        print(f"{'':<23}{v['comparison'].sentence}")
holds = [n for n, v in verdicts.items() if v["verdict"] == "holds"]
degrades = [n for n, v in verdicts.items() if v["verdict"] == "degrades"]
open_ = [n for n, v in verdicts.items() if v["verdict"] == "undetermined"]
worst = max(degrades, key=lambda n: verdicts[n]["beyond"] - verdicts[n]["inside"]) if degrades else None
best_row, second_row = sorted(ext.rows, key=lambda r: r["losses"][L])[:2]
best_at_L = best_row["scheme"]
best_cmp = paired_comparison(best_row["losses_per_seed"][L], second_row["losses_per_seed"][L], best_at_L,
                             second_row["scheme"], margin=0.02, seeds=ext.seeds)
print("At L:", best_cmp.sentence)
lv = verdicts["learned"]
learned_text = ("cannot run past L" if lv["verdict"] == "cannot run" else
                f"with untrained rows past L {({'degrades': 'degrade, as claimed', 'holds': 'do NOT degrade (against the claim)'}).get(lv['verdict'], 'are undetermined at this scale')}"
                f" ({lv['beyond'] - lv['inside']:+.3f} nats past L)")
print(f"Verdict: learned positions {learned_text}. "
      f"Past L, {', '.join(holds) or 'no scheme'} {'holds' if len(holds) == 1 else 'hold'} and "
      f"{', '.join(degrades) or 'none'} {'degrades' if len(degrades) == 1 else 'degrade'}"
      + (f" (worst: {worst}, +{verdicts[worst]['beyond'] - verdicts[worst]['inside']:.2f} nats)" if worst else "")
      + (f"; undetermined: {', '.join(open_)}." if open_ else ".")
      + f" At L itself the lowest mean loss is {best_at_L}'s; against the runner-up, {second_row['scheme']}, it is "
      + {"supports": f"better beyond the seed noise (t = {best_cmp.t:+.1f})",
         "contradicts": f"not better by the 0.02-nat margin ({best_cmp.reason})",
         "undetermined": f"undetermined (t = {best_cmp.t:+.1f}): no ranking at L"}[best_cmp.outcome]
      + f" (at one learning rate, {3e-3:g}: a ranking confounded with the LR, which each scheme might like "
      "differently; the past-L verdicts compare each model with itself and do not have that confound).")

# %%
print(guess_learned.reveal(verdicts["learned"]["verdict"]))
rope_holds, alibi_holds = verdicts["rope"]["verdict"] == "holds", verdicts["alibi"]["verdict"] == "holds"
print(guess_relative.reveal({(True, True): "both", (True, False): "RoPE only", (False, True): "ALiBi only",
                             (False, False): "neither"}[rope_holds, alibi_holds]))

# %% [markdown]
# How to read these numbers (the verdict above says which case each scheme is in):
#
# - **Relative is not automatically length-proof.** RoPE only sees $m - n$, but a model trained at
#   $L$ never saw distances $\ge L$: its slow pairs never turned further than $L\theta_i$ radians, so
#   the angles past $L$ are new to it. Whether that is enough to make it degrade here is in the
#   verdict above; lesson 06 fixes exactly this (position interpolation, NTK, YaRN). ALiBi's penalty simply continues its straight
#   line, and far keys get almost no weight anyway.
# - **No positions is not nothing.** With a causal mask a model can still infer where it is (for
#   example from how spread out its attention is), and that implicit position also has to extrapolate.
# - **Untrained rows are not random rows.** The learned table starts at std 0.02, like the token
#   embeddings, so a row that never received a gradient adds almost nothing: past $L$ the learned model
#   is close to a model without positions there (compare its curve past $L$ with the no-positions one
#   in the right panel). The claim "cannot go past the trained length" is about the model having
#   learned nothing useful there, and the size of the jump is what the verdict measures.
# - **Scale matters for a table that is added.** The raw sinusoidal table has rows of norm
#   $\sqrt{d/2} \approx 4.9$, while GPT-2-style token embeddings start at $0.02\sqrt{d} \approx 0.14$:
#   added as it is, the position signal drowns the tokens. So `lmlab` adds `P.SINUSOIDAL_SCALE`
#   $= 0.02\sqrt{2}$ times the table, which starts both at the same size (try `P.SINUSOIDAL_SCALE = 1.0`
#   and re-run the experiment to see what the unscaled table costs the sinusoidal model). Vaswani
#   et al. reached the same balance the other way round (embeddings initialised larger and multiplied
#   by $\sqrt{d}$). The next cell prints the three norms.
# - **T5 is coarse far away.** Its trained bias can only change where the bucket changes; the next cell
#   counts where it does.

# %%
sin_model = ext.models["sinusoidal"]
d = sin_model.config.d_model
tok_norm = float(sin_model.tok_emb.weight.detach().norm(dim=1).mean())
raw_norm = float(P.sinusoidal_embedding(1, d).norm())
print(f"row norms: token embeddings {0.02 * math.sqrt(d):.2f} at init and {tok_norm:.2f} after training; "
      f"raw sinusoidal table {raw_norm:.2f}; the table as the model adds it {P.SINUSOIDAL_SCALE * raw_norm:.2f}")
t5_bias = X.t5_learned_bias(ext.models["t5"], up_to=4 * L)  # (nh, 4L + 1): the trained bias of a key d tokens back
steps = (t5_bias[:, 1:] != t5_bias[:, :-1]).any(0)  # (4L,): does the bias change from d to d + 1?
print(f"trained T5 bias: it changes at {int(steps[:15].sum())} of the 15 steps between distances 0..15 and at only "
      f"{int(steps[16:].sum())} of the {len(steps) - 16} steps from 16 to {4 * L} (the buckets are coarse there): "
      f"head 0 at d = 0, 1, 2, 20, 100: {[round(float(t5_bias[0, d]), 3) for d in (0, 1, 2, 20, 100)]}")

# %% [markdown]
# **Distance-sensitive nearby, coarse far away — in the trained models.** The bucket table shows what
# T5's bias *can* do; what the trained models *do* is in their attention. For every model of section 4
# (seed 0) we recompute each layer's attention weights on validation windows of $4L$ tokens and
# average the weight on the key $d$ tokens back, relative to uniform attention (1 = uniform). A slope
# per token of distance, $|\Delta \ln w| / \Delta d$, nearby ($d = 1 \to 8$) against far away
# ($d = L \to 4L-1$) says whether attention changes quickly close by and slowly far away.

# %%
from lmlab.data.text import char_data

_, _, val_ids = char_data()
curves = {s: X.attention_by_distance(m, val_ids, 4 * L) for s, m in ext.models.items()}
X.attention_distance_figure(curves, L).show()
for s, c in curves.items():
    near = abs(math.log(c[1]) - math.log(c[8])) / 7
    far = abs(math.log(c[L]) - math.log(c[4 * L - 1])) / (3 * L - 1)
    shape = "sensitive nearby, coarse far away" if near > 3 * far else "not sharper nearby than far away"
    print(f"{s:<11} weight ÷ uniform at d = 1, 8, L, 4L-1: {c[1]:.2f}, {c[8]:.2f}, {c[L]:.2f}, {c[4 * L - 1]:.2f}; "
          f"slope nearby {near:.3f} vs far {far:.4f} per token → {shape}")

# %% [markdown]
# ### Widget: RoPE rotation explorer
#
# Left: three pairs of dimensions of one vector rotated to `position` (the trail shows where it was at
# earlier positions): pair 0 spins fast, later pairs slowly. Middle: every pair's wavelength
# $2\pi/\theta_i$ in tokens — raise `base` and the slow pairs get slower. Right: $q \cdot k$ after RoPE
# for a key that matches the query, against the distance $m - n$: near distances give large, sharply
# varying scores; far away the pairs fall out of phase and the score wobbles around a small value.

# %%
rope_explorer = FigureExplorer(
    make_figure=lambda position, base: X.rope_figure(position, base),
    controls={
        "position": IntSlider(value=8, min=0, max=64, description="position m"),
        "base": FloatLogSlider(value=10000, base=10, min=1, max=6, step=0.5, description="base"),
    },
    caption="head_dim 32; pairs 0, 2 and 6 on the left. The right curve does not move with position: RoPE sees only m − n.",
)
rope_explorer

# %% [markdown]
# ### Widget: relative biases against distance
#
# Left: ALiBi's bias per head (change the number of heads: non-powers of two take every other slope
# of the next sequence). Right: T5's causal bucket of each distance: one per distance up to the
# green line, log-spaced up to `max_distance` (red line), then one shared bucket forever.

# %%
bias_explorer = FigureExplorer(
    make_figure=lambda n_heads, num_buckets, max_distance: X.bias_figure(n_heads, num_buckets, max_distance),
    controls={
        "n_heads": IntSlider(value=8, min=1, max=16, description="ALiBi heads"),
        "num_buckets": IntSlider(value=32, min=4, max=32, step=2, description="T5 num_buckets"),
        "max_distance": IntSlider(value=128, min=20, max=256, step=4, description="T5 max_distance"),
    },
    caption="T5's table is learned (one value per bucket and head); here only which distances share a bucket.",
)
bias_explorer

# %% [markdown]
# ## 5 · Exercises
#
# Open [`exercises/03_positions.ipynb`](../exercises/03_positions.ipynb). You will write, and check in
# the notebook as you go:
# - `sinusoidal_embedding`: the fixed table, with sin in even and cos in odd columns;
# - `apply_rope`: RoPE in the half-split layout (`rotate_half`);
# - `alibi_slopes`: including head counts that are not powers of two;
# - `relative_position_bucket`: T5's bucket, bidirectional and causal;
# - `class RotaryEmbedding`: your RoPE as a module, swapped into lmlab's model (`lmlab.model.registry.register_rope`) and trained.
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/03_positions.ipynb`.
#
# ## 6 · Summary and further reading
#
# - Attention without positions and without a mask is permutation-equivariant; a causal mask alone
#   already breaks that symmetry, and every position scheme breaks it too.
# - Absolute schemes add a vector per position to the input (sinusoidal: fixed; learned: a table
#   whose rows past the trained length are never trained). Relative schemes act on the scores: T5 (learned bias
#   per bucket: exact nearby, log-spaced far away), ALiBi (a fixed linear penalty), RoPE (rotations
#   whose dot products depend on $m - n$ only). Mind RoPE's two layouts.
# - A learned table of $L$ rows cannot run past the trained length at all; with more rows, the rows
#   past $L$ are untrained, and section 4 measured what that costs. Past $L$, the verdict printed there
#   says which schemes held up and which degraded in this run (over 3 seeds): the training length
#   still matters (lesson 06).
# - Reading: Vaswani et al., *Attention Is All You Need* (2017); Shaw et al., *Self-Attention with
#   Relative Position Representations* (2018); Raffel et al., *Exploring the Limits of Transfer Learning
#   with a Unified Text-to-Text Transformer* (T5, 2020); Su et al., *RoFormer: Enhanced Transformer with
#   Rotary Position Embedding* (2021); Press et al., *Train Short, Test Long: Attention with Linear
#   Biases* (ALiBi, 2022); Kazemnejad et al., *The Impact of Positional Encoding on Length
#   Generalization in Transformers* (2023); Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training*, subsection *Detailed Configuration* (cited by title, as the seed note names it: it gives no section numbers).
