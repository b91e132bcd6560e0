# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Inference efficiency: the KV cache and PagedAttention
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lmlab-course/lmlab/blob/main/lessons/08_inference.ipynb)
#
# **Goals**
# - Split generation into **prefill** (the prompt, in one pass) and **decode** (one token per step),
#   and measure why the two phases cost so differently per token.
# - Build a **KV cache**: keep every layer's keys and values so that a new token costs one short
#   step instead of a pass over the whole sequence — and check it gives the same logits.
# - Compute the cache's **memory** for real models (LLaMA-2-13B, LLaMA-2-70B with GQA) and see why
#   fewer K/V heads (MQA/GQA) matter.
# - Store the cache in fixed-size **blocks** (PagedAttention, vLLM) and measure how much memory a
#   contiguous reservation wastes compared with blocks.

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
import time

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from ipywidgets import Dropdown, IntSlider

from lmlab.infer import decoding
from lmlab.course.doctor import doctor
from lmlab.infer.kv_cache import KVCache, decode_step, kv_cache_bytes
from lmlab.infer.paged import BlockManager, PagedKVCache, paged_attention
from lmlab.course.widgets import FigureExplorer, style_figure

info = doctor()  # versions, device, and whether widgets will render

# %% [markdown]
# ## 1 · The idea
#
# A causal decoder generates one token at a time, and token $t$'s keys and values
# $k_t = x_t W_K,\ v_t = x_t W_V$ (in every layer) never change afterwards: later tokens cannot
# influence earlier ones. Recomputing them at every step is wasted work. A **KV cache** keeps them:
#
# - **prefill**: run the whole prompt of $P$ tokens in one forward pass, filling the cache. Big
#   matrix multiplies — the hardware is busy computing (*compute-bound*).
# - **decode**: for each new token, compute only its own $q, k, v$, append $k, v$ to the cache and
#   attend over all cached keys: $\mathrm{out} = \mathrm{softmax}\!\left(q K_{\le t}^\top / \sqrt{d_h}\right) V_{\le t}$.
#   One row of work, but every weight and the whole cache must be *read* for it (*memory-bound*).
#
# With the cache, token $T+1$ costs $\approx 2N + 4 L d T$ FLOPs ($N$ parameters, $L$ layers, width
# $d$): linear in $T$ with a small slope. Without it, the whole sequence is recomputed:
# $\approx 2N(T+1) + 2Ld(T+1)^2$ — and a whole generation becomes cubic instead of quadratic.
#
# The price is memory. Per token, the cache holds
# $$\text{bytes} = 2 \times L \times n_{kv} \times d_h \times \text{bytes per value}$$
# (the 2 is K *and* V; $n_{kv}$ the key/value heads, fewer than the query heads with MQA/GQA).
# Serving systems used to reserve the maximum length for every request up front; **PagedAttention**
# stores the cache in blocks of a few tokens, allocated on demand, like virtual-memory pages.

# %%
steps = list(range(1, 9))
fig = go.Figure()
fig.add_bar(x=steps, y=[t for t in steps], name="no cache: tokens run through the model")
fig.add_bar(x=steps, y=[4] + [1] * 7, name="KV cache: prefill 4, then 1 per step")
fig.update_xaxes(title="generation step (prompt of 4 tokens at step 1)")
fig.update_yaxes(title="tokens computed this step")
style_figure(fig, "Work per step: recompute everything vs prefill + decode", height=340).show()

# %% [markdown]
# ## 2 · Build it: one decode step, then lmlab's cache, checked against a full pass
#
# A naive decode step for one attention layer appends the new key and value to the cached ones
# along the token axis, then attends with the new query over all of them: no mask, every cached key is
# in the past. lmlab's `decode_step` does exactly that (you write your own in exercise 08.2). The
# trusted reference is `F.scaled_dot_product_attention` over the whole sequence with a causal
# mask: its last row must equal the step.

# %%
g = torch.Generator().manual_seed(0)
B, nh, T, hs = 2, 4, 10, 16
q_all, k_all, v_all = (torch.randn(B, nh, T + 1, hs, generator=g) for _ in range(3))  # (B, nh, T+1, hs)
out, k_c, v_c = decode_step(k_all[:, :, :T], v_all[:, :, :T], q_all[:, :, T:], k_all[:, :, T:], v_all[:, :, T:])
reference = F.scaled_dot_product_attention(q_all, k_all, v_all, is_causal=True)[:, :, -1:]  # (B, nh, 1, hs)
torch.testing.assert_close(out, reference)
print(f"decode step == last row of full causal attention (max diff {(out - reference).abs().max():.1e}) ✔")

# %% [markdown]
# lmlab's `KVCache` preallocates `(layers, B, n_kv, max_len, head_dim)` for K and for V and writes
# new tokens in place (no `torch.cat` copying the whole cache every step). `GPT.forward_with_cache`
# takes only the *new* tokens. We check on a tiny untrained GPT (untrained is fine: we test
# equality and time, not quality) that prefill + 20 decode steps give the same logits as the plain
# forward pass over the whole sequence, and that the cache's bytes match the formula.

# %%
from lmlab.course.experiments.ch08_inference import tiny_model

model = tiny_model(d_model=128, n_layers=4, n_heads=4, context_length=512, seed=0)
cfg = model.config
ids = torch.randint(cfg.vocab_size, (1, 52), generator=torch.Generator().manual_seed(1))  # (1, 52)
with torch.no_grad():
    logits, cache = model.forward_with_cache(ids[:, :32], KVCache.for_model(model))  # prefill 32 tokens -> (1, 32, V)
    steps_logits = [logits]
    for t in range(32, 52):  # decode: one token per step -> (1, 1, V)
        steps_logits.append(model.forward_with_cache(ids[:, t:t + 1], cache)[0])
    full = model(ids)  # (1, 52, V): no cache
torch.testing.assert_close(torch.cat(steps_logits, dim=1), full, atol=1e-4, rtol=1e-4)
print(f"prefill 32 + 20 decode steps == one full forward pass (max diff {(torch.cat(steps_logits, 1) - full).abs().max():.1e}) ✔")
formula = kv_cache_bytes(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, cache.length, 4)
assert cache.used_bytes == formula == 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 52 * 4
print(f"cache holds {cache.length} tokens: {cache.used_bytes:,} bytes used = 2 × {cfg.n_layers} layers × {cfg.n_kv_heads} heads "
      f"× {cfg.head_dim} × 52 tokens × 4 bytes; reserved {cache.nbytes:,} bytes for its {cache.max_len}-token capacity")

# %% [markdown]
# **PagedAttention.** The same K/V can live in blocks of `block_size` tokens scattered over a
# shared pool. A sequence's **block table** maps its logical block $i$ (tokens $i \cdot bs$ to
# $(i+1) \cdot bs - 1$) to a physical block, so token position $p$ lives at
# `(table[p // bs], p % bs)`. `paged_attention` reads K/V block by block through the table; it must
# equal attention on the contiguous cache.

# %%
paged = PagedKVCache(n_layers=1, n_kv_heads=nh, head_dim=hs, n_blocks=8, block_size=4)
other = paged.new_sequence()  # another request takes block 0 first, so ours is scattered
paged.append(other, torch.randn(1, nh, 3, hs, generator=g), torch.randn(1, nh, 3, hs, generator=g))
seq = paged.new_sequence()
paged.append(seq, k_all[0, None], v_all[0, None])  # (L=1, nh, T+1, hs): 11 tokens -> 3 blocks
table = paged.manager.block_table(seq)
p = 9
block, offset = table[p // 4], p % 4
assert torch.equal(paged.k_pool[0, block, :, offset], k_all[0, :, p])  # the lookup finds token 9's key
paged_out = paged.attention(q_all[0, :, -1:], seq, layer=0)  # (nh, 1, hs)
torch.testing.assert_close(paged_out, reference[0])
print(f"block table {table}: token {p} is in physical block {block} at offset {offset}; "
      f"paged attention == contiguous attention ✔")

# %% [markdown]
# ## 3 · Experiment: prefill and decode cost differently
#
# The claim: prefill and decode have different costs. We prefill a 256-token prompt, then decode 32
# tokens one at a time, on one CPU thread, and compare FLOPs per token (from the formula above) with
# measured time per token (best of 3 repeats).

# %%
from lmlab.course.experiments.ch08_inference import prefill_decode_experiment

torch.set_num_threads(1)  # one thread: reproducible ratios on a shared machine
pd = prefill_decode_experiment(model, prompt_len=256, decode_steps=32, repeats=3)
print(f"{'phase':<10}{'FLOPs / token':>15}{'ms / token':>12}{'GFLOP/s achieved':>19}")
print(f"{'prefill':<10}{pd['prefill_flops_per_token']:>15,.0f}{1e3 * pd['prefill_s_per_token']:>12.3f}{pd['prefill_flops_per_s'] / 1e9:>19.1f}")
print(f"{'decode':<10}{pd['decode_flops_per_token']:>15,.0f}{1e3 * pd['decode_s_per_token']:>12.3f}{pd['decode_flops_per_s'] / 1e9:>19.1f}")
flop_ratio = pd["decode_flops_per_token"] / pd["prefill_flops_per_token"]
time_ratio = pd["decode_s_per_token"] / pd["prefill_s_per_token"]
print(f"Per token, decode needs {flop_ratio:.2f}× the FLOPs of prefill but takes {time_ratio:.0f}× the time: "
      + ("reproduced — prefill runs the prompt as one big matrix multiply and keeps the hardware busy, decode "
         "runs tiny (1-row) multiplies and mostly waits on memory and per-call overhead."
         if time_ratio > 3 * flop_ratio else "not reproduced here: the two phases cost about the same per FLOP."))

# %% [markdown]
# **Memory: which phase needs more?** The seed says prefill takes much more memory than decode, and
# this lesson says decode is memory-*bandwidth*-bound. Both can hold, because they are about different
# things. We measure each phase's **peak working memory** (the bytes of the tensors it creates that are
# alive at once; weights and the pre-allocated cache excluded, `X.PeakLiveBytes`) and the **bytes it
# must read** per FLOP: every step reads all the weights and the filled cache.

# %%
from lmlab.course.experiments.ch08_inference import prefill_decode_memory

mem = prefill_decode_memory(model, prompt_len=256)
print(f"peak working memory: prefill of 256 tokens {mem['prefill_peak_bytes'] / 2**20:.2f} MiB, one decode step "
      f"{mem['decode_peak_bytes'] / 2**10:.1f} KiB ({mem['prefill_peak_bytes'] / max(mem['decode_peak_bytes'], 1):.0f}× less); "
      f"weights {mem['weight_bytes'] / 2**20:.2f} MiB and cache {mem['cache_bytes'] / 2**20:.2f} MiB are read by both")
print(f"FLOPs per byte read: prefill {mem['prefill_flops_per_byte_read']:.1f}, decode {mem['decode_flops_per_byte_read']:.2f}")
print("Both lines are calculations more than experiments: a prefill of 256 tokens holds 256 tokens' activations "
      "against decode's one, so its peak working memory is larger by construction; and both phases read the same "
      "weights and cache, so the FLOPs-per-byte ratio is just the ratio of their FLOPs. What they do show is the "
      f"survey's real point: decode reads {(mem['weight_bytes'] + mem['cache_bytes']) / 2**20:.2f} MiB for ONE token, "
      f"prefill the same bytes for {mem['prompt_len']} — incremental decoding is memory-bandwidth-bound (low "
      "arithmetic intensity; Pope et al. 2022). The seed's 'prefill takes much more memory' is true of working memory "
      "and beside the point: the cost of serving is decode's memory *traffic*.")

# %% [markdown]
# ## 4 · Experiment: does the cache make one new token cheap, and how does its cost grow?
#
# For context lengths $T$ from 32 to 511 we time how long token $T+1$ takes with the cache (one
# step on a cache of $T$ tokens) and without it (a forward pass over all $T+1$ tokens), best of 3,
# and check both give the same logits.

# %%
from lmlab.course.experiments.ch08_inference import fit_slope, step_cost_experiment, step_cost_figure

sc = step_cost_experiment(model, lengths=(32, 64, 128, 256, 384, 511), repeats=3)
print(f"{'T':>5}{'cached ms':>11}{'recompute ms':>14}{'speed-up':>10}{'cached FLOPs':>14}{'recompute FLOPs':>17}")
for T, c, r, fc, fr in zip(sc["lengths"], sc["cached_s"], sc["recompute_s"], sc["cached_flops"], sc["recompute_flops"]):
    print(f"{T:>5}{1e3 * c:>11.2f}{1e3 * r:>14.2f}{r / c:>9.1f}×{fc:>14,}{fr:>17,}")
step_cost_figure(sc).show()

# %%
assert sc["max_logit_diff"] < 1e-3
T0, T1 = sc["lengths"][0], sc["lengths"][-1]
cached_growth = sc["cached_s"][-1] / sc["cached_s"][0]
recompute_growth = sc["recompute_s"][-1] / sc["recompute_s"][0]
flop_slope = fit_slope(sc["lengths"], sc["cached_flops"]) * T1 / sc["cached_flops"][-1]
print(f"Same logits with and without the cache (max diff {sc['max_logit_diff']:.1e}).")
print(f"From T = {T0} to {T1} ({T1 / T0:.0f}× more context): one cached step gets {cached_growth:.1f}× slower, "
      f"a full recompute {recompute_growth:.1f}× slower. The cached step's FLOPs grow linearly in T "
      f"(the attention term is {flop_slope:.0%} of them at T = {T1}).")
speedup = sc["recompute_s"][-1] / sc["cached_s"][-1]
print(("Reproduced" if speedup > 3 and recompute_growth > 2 * cached_growth else "Not reproduced")
      + f": at T = {T1} the cache makes a new token {speedup:.1f}× faster, and the gap widens with T.")

# %%
# Whole generations: lmlab.infer.decoding.generation with and without the cache (greedy, same tokens).
prompt = torch.randint(cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
for n_new in (64, 256):
    outs, times = {}, {}
    for use_cache in (True, False):
        def run(use_cache=use_cache):
            outs[use_cache] = decoding.generate(model, prompt, n_new, "greedy", use_cache=use_cache)
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        times[use_cache] = best
    assert torch.equal(outs[True], outs[False])
    print(f"{n_new:>4} new tokens: cache {times[True]:.2f} s, recompute {times[False]:.2f} s → {times[False] / times[True]:.1f}× faster, same text")

# %% [markdown]
# ## 5 · How big is the cache for real models?
#
# The cache formula for published shapes (16-bit values). LLaMA-2-70B uses **grouped-query
# attention** with 8 K/V heads shared by 64 query heads; with one K/V head per query head (MHA) it
# would be 8× larger.

# %%
from lmlab.course.experiments.ch08_inference import PRESETS, cache_bytes_for, kv_memory_figure

print(f"{'model':<24}{'L':>4}{'heads':>7}{'K/V heads':>11}{'bytes/token':>13}{'at 8,192 tokens':>18}")
for name, p in PRESETS.items():
    per_token = cache_bytes_for(name, 1)
    print(f"{name:<24}{p['n_layers']:>4}{p['n_heads']:>7}{p['n_kv_heads']:>11}{per_token:>13,}{cache_bytes_for(name, 8192) / 2**30:>14.2f} GiB")
b13 = cache_bytes_for("LLaMA-2-13B", 8192)
b70 = cache_bytes_for("LLaMA-2-70B (GQA-8)", 1)
b70_mha = cache_bytes_for("LLaMA-2-70B (GQA-8)", 1, n_kv_heads=64)
print(f"LLaMA-2-13B at 8,192 tokens: {b13:,} bytes ({'matches' if b13 == 6_710_886_400 else 'differs from'} the reference 6,710,886,400).")
print(f"LLaMA-2-70B: {b70:,} bytes per token with GQA-8 ({'matches' if b70 == 327_680 else 'differs from'} 327,680); "
      f"{b70_mha:,} without GQA, {b70_mha / b70:.0f}× more. A batch of 32 requests at 4,096 tokens: "
      f"{cache_bytes_for('LLaMA-2-70B (GQA-8)', 4096, 32) / 1e9:.0f} GB with GQA, "
      f"{cache_bytes_for('LLaMA-2-70B (GQA-8)', 4096, 32, n_kv_heads=64) / 1e9:.0f} GB without.")
assert b13 == 6_710_886_400 and b70 == 327_680

# %% [markdown]
# ### Widget: KV-cache memory calculator
#
# Pick a model, context length, batch size, precision and number of K/V heads. The dotted lines are
# MHA / GQA-8 / MQA for that model; the black dot is your setting; the dashed line one 80 GB GPU.

# %%
memory_explorer = FigureExplorer(
    make_figure=kv_memory_figure,
    controls={
        "preset": Dropdown(options=list(PRESETS), value="LLaMA-2-13B", description="model"),
        "context": IntSlider(value=8192, min=512, max=131072, step=512, description="context (tokens)"),
        "batch": IntSlider(value=1, min=1, max=128, description="batch"),
        "precision": Dropdown(options=["fp32", "fp16 / bf16", "int8", "int4"], value="fp16 / bf16", description="precision"),
        "kv_heads": Dropdown(options=["preset", "MHA", "GQA-8", "MQA"], value="preset", description="K/V heads"),
    },
    caption="bytes = 2 (K and V) × layers × K/V heads × head_dim × tokens × batch × bytes per value.",
)
memory_explorer

# %% [markdown]
# ## 6 · Experiment: how much memory do contiguous reservation and blocks waste?
#
# 256 running requests with ShareGPT-like lengths (log-normal, mean 161 prompt and 338 output
# tokens, as in the vLLM paper), each caught at a random point of its generation.
# **Contiguous**: every request reserved the model's maximum, 2,048 slots, when it arrived (it cannot
# know its output length). **Paged**: a request holds $\lceil \text{length} / bs \rceil$ blocks, so
# only its last block is partly empty.

# %% [markdown]
# **Predict, then run.** What fraction of the contiguous reservation holds no token at all?

# %%
from lmlab.course.widgets import Prediction

predict_waste = Prediction("What fraction of the contiguous reservation holds no token?",
                           ["under 10%", "10–40%", "40–70%", "over 70%"], description="wasted")
predict_waste

# %%
from lmlab.course.experiments.ch08_inference import waste_experiment, waste_figure

waste = waste_experiment(n_requests=256, max_len=2048, block_sizes=(1, 4, 8, 16, 32, 64, 128), seed=0)
print(f"{waste['n_requests']} requests, mean prompt {waste['mean_prompt']:.0f} and output {waste['mean_output']:.0f} tokens; "
      f"{waste['real_tokens']:,} tokens in the caches right now")
print(f"contiguous: {waste['contiguous_slots']:>8,} slots, waste {waste['contiguous_waste']:.1%}")
for bs, slots, w in zip(waste["block_sizes"], waste["paged_slots"], waste["paged_waste"]):
    print(f"paged bs={bs:<4}{slots:>8,} slots, waste {w:.1%}")
waste_figure(waste).show()

# %%
w16 = waste["paged_waste"][waste["block_sizes"].index(16)]
print(f"Contiguous reservation wastes {waste['contiguous_waste']:.0%} of the cache "
      + ("(≥ 60%, as vLLM reports: only 20–38% of it holding real tokens). " if waste["contiguous_waste"] >= 0.6 else "(less than vLLM's ≥ 60%). ")
      + f"Paged blocks of 16 waste {w16:.1%} "
      + ("(< 4%, as vLLM reports)." if w16 < 0.04 else "(not under 4% here).")
      + " A calculation from the simulated lengths, not a measurement: reserving max_len for every request fixes the "
        "contiguous waste once the length distribution is chosen, and paged waste is at most one block per request."
      + f" Bigger blocks waste more ({waste['paged_waste'][-1]:.0%} at {waste['block_sizes'][-1]}), tiny blocks mean more "
        "table lookups: vLLM's default is 16.")
print(f"The same memory as the contiguous reservation holds {waste['contiguous_slots'] / waste['paged_slots'][3]:.1f}× "
      "as many requests when paged — a bigger batch, and that is where vLLM's throughput gain comes from.")
cw = waste["contiguous_waste"]
measured_bin = "under 10%" if cw < 0.1 else "10–40%" if cw < 0.4 else "40–70%" if cw < 0.7 else "over 70%"
print(f"measured waste {cw:.0%}: " + predict_waste.reveal(measured_bin))

# %% [markdown]
# ### Widget: block tables growing and forking
#
# Three sequences in a pool of 16 blocks of 4 tokens: A and B start, grow, A is **forked** into C
# (parallel sampling: C shares all of A's blocks, nothing is copied), C's first new token triggers
# **copy-on-write** of the shared, partly filled last block, B finishes and its blocks return to the
# free list. Move the step slider.

# %%
from lmlab.course.experiments.ch08_inference import SCRIPT, block_table_figure

block_explorer = FigureExplorer(
    make_figure=block_table_figure,
    controls={
        "steps": IntSlider(value=6, min=0, max=len(SCRIPT), description="step"),
        "block_size": IntSlider(value=4, min=1, max=8, description="block size"),
    },
    caption="Left: each sequence's block table (→ physical block, tokens filled / block size). Right: the pool.",
)
block_explorer

# %% [markdown]
# ## 7 · Exercises
#
# Open [`exercises/08_inference.ipynb`](../exercises/08_inference.ipynb). You will write, and check
# in the notebook as you go:
# - `kv_cache_bytes`: the cache size from layers, heads, K/V heads, head size, tokens and precision;
# - `decode_step`: append one token's K and V to the cache and attend over it;
# - `blocks_needed`: how many blocks of `block_size` tokens hold `n` tokens;
# - `locate_token`: physical block and offset of a token position through a block table;
# - `generate_with_cache`: the whole generation loop on a KV cache: prefill, then filter → sample → append one token a step.
#
# Grade the whole notebook from a terminal with `lmlab grade exercises/08_inference.ipynb`.
#
# ## 8 · Summary and further reading
#
# - Prefill handles the prompt in one compute-heavy pass; decode produces one token per step and reads
#   all the weights and the cache for each token (few FLOPs per byte: bandwidth-bound). The seed says
#   prefill needs much more working memory than decode; section 3 measured both phases' peak memory
#   and FLOPs per byte on this machine.
# - The KV cache keeps every layer's K and V, so a new token costs a forward step of one token plus
#   attention over the cache, linear in the context; without it each token recomputes everything.
# - The cache costs $2 L n_{kv} d_h$ values per token: 6.7 GB for LLaMA-2-13B at 8K tokens; GQA/MQA
#   cut it by the ratio of query to K/V heads.
# - Reserving the maximum length per request wastes whatever the request does not use; blocks of a
#   few tokens waste only the unfilled end of each request's last block (section 6 measured both on
#   a set of request lengths), and forks share blocks with copy-on-write.
# - Reading: Zhao et al., *A Survey of Large Language Models* (2023), section *Pre-training*,
#   subsection *Decoding Strategy*, its "decoding efficiency issues" (cited by title, as the seed
#   note names it: the note gives no section numbers); Pope et al.,
#   *Efficiently Scaling Transformer Inference* (2022, prefill vs decode, memory-bound decode);
#   Shazeer, *Fast Transformer Decoding: One Write-Head is All You Need* (2019, MQA); Ainslie et
#   al., *GQA* (2023); Kwon et al., *Efficient Memory Management for Large Language Model Serving
#   with PagedAttention* (SOSP 2023, vLLM); Touvron et al., *Llama 2* (2023).
