"""Lesson 08's experiments and figures (``lessons/08_inference``), importable so tests run the same code.

- :func:`tiny_model`: an untrained lmlab GPT (timings and equalities need no training).
- :func:`prefill_decode_experiment`: prefill vs decode, FLOPs and measured time per token.
- :func:`step_cost_experiment`: the time of one new token at growing context, with the KV cache
  (a short step whose cost grows slowly) and without (the whole sequence recomputed every step);
  :func:`step_cost_figure`.
- :data:`PRESETS`, :func:`cache_bytes_for`, :func:`kv_memory_figure`: the KV-cache size
  calculator for real model shapes (the widget's figure).
- :func:`waste_experiment`, :func:`waste_figure`: contiguous reservation vs paged blocks.
- :func:`block_scenario`, :func:`block_table_figure`: a few sequences growing and forking in a
  :class:`lmlab.infer.paged.BlockManager` (the block-table widget's figure).
- the graded exercises' references live in the core: :func:`lmlab.infer.kv_cache.decode_step`,
  :func:`lmlab.infer.paged.blocks_needed`, :func:`lmlab.infer.paged.locate_token` (re-exported here).
"""

from __future__ import annotations

import math
import time

import torch.utils._python_dispatch  # noqa: F401  (PeakLiveBytes)
import torch.utils._pytree  # noqa: F401

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmlab.infer.kv_cache import KVCache, decode_step, kv_cache_bytes  # noqa: F401 (decode_step: re-exported)
from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config
from lmlab.infer.paged import BlockManager, blocks_needed, locate_token, sample_request_lengths, simulate_waste  # noqa: F401
from lmlab.course.experiments.timing import fit_slope, min_time
from lmlab.course.widgets import style_figure

__all__ = [
    "tiny_model", "forward_flops", "min_time", "fit_slope",
    "prefill_decode_experiment", "PeakLiveBytes", "prefill_decode_memory", "step_cost_experiment", "step_cost_figure",
    "PRESETS", "PRECISIONS", "cache_bytes_for", "kv_memory_figure",
    "waste_experiment", "waste_figure",
    "block_scenario", "block_table_figure",
    "decode_step", "blocks_needed", "locate_token",
]


# ---------------------------------------------------------------------------------------------
# The model and a stopwatch
# ---------------------------------------------------------------------------------------------


def tiny_model(d_model: int = 128, n_layers: int = 4, n_heads: int = 4, context_length: int = 512,
               vocab_size: int = 256, n_kv_heads: int | None = None, seed: int = 0) -> GPT:
    """An untrained lmlab GPT in eval mode (seeded)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model,
                      n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads)
    return GPT(cfg).eval()


def forward_flops(model: GPT, n_new: int, n_cached: int = 0) -> int:
    """Approximate FLOPs of a forward pass over ``n_new`` tokens given ``n_cached`` earlier ones:
    ``2 x (non-embedding parameters) x n_new`` for the matrix multiplies, plus the attention
    scores and weighted sum, ``2 x 2 x layers x d_model x (keys seen)`` per new token."""
    cfg = model.config
    n_params = sum(p.numel() for n, p in model.named_parameters() if "emb" not in n)
    n_params += cfg.vocab_size * cfg.d_model  # the output layer (tied to the embedding) still multiplies
    keys = sum(n_cached + i + 1 for i in range(n_new))  # causal: new token i sees n_cached + i + 1 keys
    return 2 * n_params * n_new + 4 * cfg.n_layers * cfg.d_model * keys


# ---------------------------------------------------------------------------------------------
# Experiment 1: prefill vs decode
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def prefill_decode_experiment(model: GPT, prompt_len: int = 256, decode_steps: int = 32,
                              repeats: int = 3, seed: int = 0) -> dict:
    """Prefill a ``prompt_len``-token prompt in one pass, then decode ``decode_steps`` tokens one at
    a time. Returns FLOPs and the best-of-``repeats`` time, per token, for both phases."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompt = torch.randint(V, (1, prompt_len), generator=g)  # (1, P)
    new = torch.randint(V, (1, decode_steps), generator=g)  # (1, D): fixed tokens, so only the cost matters

    def prefill():
        return model.forward_with_cache(prompt, KVCache.for_model(model))[1]

    t_prefill = min_time(prefill, repeats)

    def decode():
        cache = prefill()
        t0 = time.perf_counter()
        for i in range(decode_steps):
            model.forward_with_cache(new[:, i:i + 1], cache)  # (1, 1) each step
        return time.perf_counter() - t0

    t_decode = min(decode() for _ in range(repeats))
    f_prefill = forward_flops(model, prompt_len)
    f_decode = sum(forward_flops(model, 1, prompt_len + i) for i in range(decode_steps))
    return {
        "prompt_len": prompt_len, "decode_steps": decode_steps,
        "prefill_s": t_prefill, "decode_s": t_decode,
        "prefill_s_per_token": t_prefill / prompt_len, "decode_s_per_token": t_decode / decode_steps,
        "prefill_flops_per_token": f_prefill / prompt_len, "decode_flops_per_token": f_decode / decode_steps,
        "prefill_flops_per_s": f_prefill / t_prefill, "decode_flops_per_s": f_decode / t_decode,
    }


class PeakLiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the tensors created inside the ``with`` block that are alive at once (CPU or any
    device): every op's fresh output storage is counted until its tensor is freed. Tensors made before
    the block (weights, a pre-allocated KV cache) are not counted: this is the *working* memory."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._ptrs = 0, 0, set()

    def _free(self, ptr: int, n: int) -> None:
        if ptr in self._ptrs:
            self._ptrs.discard(ptr)
            self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() for x in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(x, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ptr, n = st.data_ptr(), st.nbytes()
                if n and ptr not in self._ptrs and ptr not in inputs:  # a view / in-place result is no new memory
                    self._ptrs.add(ptr)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr, n)
        return out


@torch.no_grad()
def prefill_decode_memory(model: GPT, prompt_len: int = 256, seed: int = 0) -> dict:
    """Peak working memory of prefilling ``prompt_len`` tokens vs of one decode step after it, and the
    bytes each phase must *read* per token (the weights, plus the cache for decode).

    Both are true at once: prefill's peak is far larger (activations and attention scores for every
    prompt token at once), while decode's is tiny — but each decode step reads every weight and the
    whole cache for one token's FLOPs, so its FLOPs per byte read (arithmetic intensity) is low:
    memory-*bandwidth*-bound, not memory-*capacity*-bound."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompt = torch.randint(V, (1, prompt_len), generator=g)  # (1, P)
    nxt = torch.randint(V, (1, 1), generator=g)  # (1, 1)
    model.eval()
    cache = KVCache.for_model(model)  # pre-allocated before measuring: the cache is counted separately
    with PeakLiveBytes() as pre:
        model.forward_with_cache(prompt, cache)
    with PeakLiveBytes() as dec:
        model.forward_with_cache(nxt, cache)
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    filled_cache = kv_cache_bytes(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, prompt_len, 4)
    f_pre, f_dec = forward_flops(model, prompt_len), forward_flops(model, 1, prompt_len)
    return {
        "prompt_len": prompt_len, "prefill_peak_bytes": pre.peak, "decode_peak_bytes": dec.peak,
        "weight_bytes": weight_bytes, "cache_bytes": filled_cache,
        "prefill_flops_per_byte_read": f_pre / (weight_bytes + filled_cache),
        "decode_flops_per_byte_read": f_dec / (weight_bytes + filled_cache),
    }


# ---------------------------------------------------------------------------------------------
# Experiment 2: the cost of one new token, with and without the cache
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def step_cost_experiment(model: GPT, lengths=(32, 64, 128, 256, 384, 511), repeats: int = 3, seed: int = 0) -> dict:
    """For each context length T: the time to produce token T+1 (a) with the KV cache (one
    ``(1, 1)`` step on a cache of T tokens) and (b) without (a forward pass over all T+1 tokens),
    best of ``repeats``; plus each one's FLOPs and a check that both give the same logits."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    ids = torch.randint(V, (1, max(lengths) + 1), generator=g)  # (1, T_max + 1)
    cached, recompute, f_cached, f_recompute, max_diff = [], [], [], [], 0.0
    for T in lengths:
        cache = model.forward_with_cache(ids[:, :T], KVCache.for_model(model))[1]  # prefill T tokens
        step_logits = None

        def step():
            nonlocal step_logits
            cache.lengths = [T] * cache.n_layers  # rewind: overwrite the same slot every repeat
            step_logits = model.forward_with_cache(ids[:, T:T + 1], cache)[0][0, -1]  # (V,)

        cached.append(min_time(step, repeats))
        full_logits = None

        def full():
            nonlocal full_logits
            full_logits = model(ids[:, :T + 1])
            full_logits = (full_logits[0] if isinstance(full_logits, tuple) else full_logits)[0, -1]  # (V,)

        recompute.append(min_time(full, repeats))
        max_diff = max(max_diff, float((step_logits - full_logits).abs().max()))
        f_cached.append(forward_flops(model, 1, T))
        f_recompute.append(forward_flops(model, T + 1))
    return {"lengths": list(lengths), "cached_s": cached, "recompute_s": recompute,
            "cached_flops": f_cached, "recompute_flops": f_recompute, "max_logit_diff": max_diff}


def step_cost_figure(result: dict) -> go.Figure:
    T = result["lengths"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("measured time of one new token", "FLOPs of one new token"))
    for key, fkey, name, color in (("recompute_s", "recompute_flops", "no cache: recompute all T+1 tokens", "#d62728"),
                                   ("cached_s", "cached_flops", "KV cache: one token, T cached", "#3b6fb6")):
        fig.add_scatter(x=T, y=[1e3 * s for s in result[key]], mode="lines+markers", name=name, line_color=color, row=1, col=1)
        fig.add_scatter(x=T, y=result[fkey], mode="lines+markers", name=name, line_color=color, showlegend=False, row=1, col=2)
    fig.update_xaxes(title="tokens already in the context (T)")
    fig.update_yaxes(title="milliseconds", row=1, col=1)
    fig.update_yaxes(title="FLOPs", type="log", row=1, col=2)
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return style_figure(fig, "Producing token T+1: with and without the KV cache", width=820, height=420)


# ---------------------------------------------------------------------------------------------
# The KV-cache calculator
# ---------------------------------------------------------------------------------------------

def _cache_shape(cfg: ModelConfig) -> dict:
    return dict(n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim)


# name -> (layers, query heads, K/V heads, head_dim). Published configurations; the LLaMAs are the
# flavors of lmlab's LLaMA preset (lmlab.model.llama.LLAMA_FLAVORS).
PRESETS: dict[str, dict] = {
    "LLaMA-2-7B": _cache_shape(llama_config("llama2_7b")),
    "LLaMA-2-13B": _cache_shape(llama_config("llama2_13b")),
    "LLaMA-2-70B (GQA-8)": _cache_shape(llama_config("llama2_70b")),
    "Mistral-7B (GQA-8)": dict(n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128),
    "GPT-3 175B": dict(n_layers=96, n_heads=96, n_kv_heads=96, head_dim=128),
    "lmlab tiny (d128, L4)": dict(n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32),
}
PRECISIONS: dict[str, float] = {"fp32": 4, "fp16 / bf16": 2, "int8": 1, "int4": 0.5}


def cache_bytes_for(preset: str, n_tokens: int, batch: int = 1, precision: str = "fp16 / bf16",
                    n_kv_heads: int | None = None) -> int:
    """:func:`lmlab.infer.kv_cache.kv_cache_bytes` for a named preset (``n_kv_heads`` overrides its K/V heads)."""
    p = PRESETS[preset]
    kv = p["n_kv_heads"] if n_kv_heads is None else n_kv_heads
    return kv_cache_bytes(p["n_layers"], kv, p["head_dim"], n_tokens, PRECISIONS[precision], batch=batch)


def kv_memory_figure(preset: str, context: int, batch: int, precision: str, kv_heads: str = "preset"):
    """Memory of the KV cache against context length for MHA / GQA-8 / MQA / the chosen setting,
    with a marker at ``context``. ``kv_heads``: ``preset``, ``MHA``, ``GQA-8`` or ``MQA``."""
    p = PRESETS[preset]
    options = {"MHA": p["n_heads"], "GQA-8": min(8, p["n_heads"]), "MQA": 1}
    chosen = p["n_kv_heads"] if kv_heads == "preset" else options[kv_heads]
    xs = sorted({int(x) for x in torch.logspace(7, 17, 41, base=2).tolist()} | {context})
    fig = go.Figure()
    for name, kv in options.items():
        fig.add_scatter(x=xs, y=[cache_bytes_for(preset, x, batch, precision, kv) / 2**30 for x in xs],
                        mode="lines", name=f"{name} ({kv} K/V heads)", line=dict(dash="dot"))
    gib = cache_bytes_for(preset, context, batch, precision, chosen) / 2**30
    fig.add_scatter(x=[context], y=[gib], mode="markers", marker=dict(size=12, color="black"), name="your setting")
    for mem, label in ((80, "one 80 GB GPU"),):
        fig.add_hline(y=mem * 1e9 / 2**30, line_dash="dash", line_color="gray", annotation_text=label)
    fig.update_xaxes(title="context length (tokens)", type="log")
    fig.update_yaxes(title="KV cache (GiB)", type="log")
    per_token = cache_bytes_for(preset, 1, 1, precision, chosen)
    note = (f"{preset}, {chosen} K/V heads, {precision}: {per_token:,} bytes per token; "
            f"{context:,} tokens × batch {batch} = {cache_bytes_for(preset, context, batch, precision, chosen):,} bytes "
            f"= {gib:.2f} GiB")
    return style_figure(fig, f"KV cache of {preset} (batch {batch}, {precision})", width=720, height=420), note


# ---------------------------------------------------------------------------------------------
# Experiment 3: memory waste, contiguous vs paged
# ---------------------------------------------------------------------------------------------


def waste_experiment(n_requests: int = 256, max_len: int = 2048, block_sizes=(1, 4, 8, 16, 32, 64, 128), seed: int = 0) -> dict:
    """Waste of a batch of running requests (ShareGPT-like lengths) for a contiguous reservation of
    ``max_len`` per request and for paged blocks of each size."""
    prompt, output = sample_request_lengths(n_requests, seed=seed, max_len=max_len)
    rows = [simulate_waste(prompt, output, max_len=max_len, block_size=bs, seed=seed) for bs in block_sizes]
    return {"block_sizes": list(block_sizes), "contiguous_waste": rows[0]["contiguous_waste"],
            "paged_waste": [r["paged_waste"] for r in rows], "real_tokens": rows[0]["real_tokens"],
            "contiguous_slots": rows[0]["contiguous_slots"], "paged_slots": [r["paged_slots"] for r in rows],
            "n_requests": n_requests, "max_len": max_len,
            "mean_prompt": float(prompt.float().mean()), "mean_output": float(output.float().mean())}


def waste_figure(result: dict) -> go.Figure:
    labels = [f"contiguous ({result['max_len']} reserved)"] + [f"paged, block {b}" for b in result["block_sizes"]]
    waste = [result["contiguous_waste"]] + result["paged_waste"]
    colors = ["#d62728"] + ["#3b6fb6"] * len(result["block_sizes"])
    fig = go.Figure(go.Bar(x=labels, y=waste, marker_color=colors, text=[f"{w:.1%}" for w in waste], textposition="outside"))
    fig.add_hline(y=0.04, line_dash="dash", line_color="gray", annotation_text="4% (vLLM)")
    fig.update_yaxes(title="KV-cache slots holding no token", range=[0, 1.05], tickformat=".0%")
    fig.update_xaxes(tickangle=-25)
    return style_figure(fig, f"Memory waste of {result['n_requests']} running requests", width=720, height=420)


# ---------------------------------------------------------------------------------------------
# The block-table widget: sequences growing and forking
# ---------------------------------------------------------------------------------------------

# The script: (action, sequence, argument). "new" starts a sequence with a prompt of n tokens;
# "fork" makes sequence b share a's blocks (parallel sampling); "append" adds n tokens; "free" ends one.
SCRIPT = (
    ("new", "A", 5), ("new", "B", 3), ("append", "A", 2), ("append", "B", 4),
    ("fork", "A", "C"), ("append", "C", 1), ("append", "A", 3), ("append", "B", 2),
    ("append", "C", 4), ("free", "B", None), ("append", "A", 3), ("append", "C", 3),
)


def block_scenario(steps: int, block_size: int = 4, n_blocks: int = 16) -> dict:
    """Run the first ``steps`` actions of :data:`SCRIPT` on a :class:`lmlab.infer.paged.BlockManager`;
    return the block tables, lengths, reference counts and the last action."""
    m = BlockManager(n_blocks, block_size)
    ids: dict[str, int] = {}
    last = "empty pool"
    for action, name, arg in SCRIPT[:steps]:
        if action == "new":
            ids[name] = m.allocate()
            m.append(ids[name], arg)
            last = f"new sequence {name} with a {arg}-token prompt"
        elif action == "fork":
            ids[arg] = m.fork(ids[name])
            last = f"fork {name} → {arg} (shares all of {name}'s blocks)"
        elif action == "append":
            before = m.block_table(ids[name])
            m.append(ids[name], arg)
            after = m.block_table(ids[name])
            cow = [f"{b}→{a}" for b, a in zip(before, after) if a != b]
            last = f"append {arg} token(s) to {name}" + (f" (copy-on-write of block {', '.join(cow)})" if cow else "")
        elif action == "free":
            m.free(ids.pop(name))
            last = f"free {name}"
    m.check_invariants()
    return {"tables": {n: m.block_table(i) for n, i in ids.items()}, "lengths": {n: m.lengths[i] for n, i in ids.items()},
            "ref_counts": list(m.ref_counts), "block_size": block_size, "n_blocks": n_blocks, "last": last,
            "num_free": m.num_free}


_SEQ_COLORS = {"A": "#3b6fb6", "B": "#2ca02c", "C": "#ff7f0e"}


def block_table_figure(steps: int, block_size: int = 4, n_blocks: int = 16):
    """Left: each sequence's logical blocks (its block table); right: the physical pool, each block
    coloured by its owner (shared blocks hatched grey) and labelled with the tokens it holds."""
    s = block_scenario(steps, block_size, n_blocks)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55],
                        subplot_titles=("block tables (logical → physical)", "physical block pool"))
    owners: dict[int, list[str]] = {}
    for row, (name, table) in enumerate(s["tables"].items()):
        n = s["lengths"][name]
        for i, b in enumerate(table):
            owners.setdefault(b, []).append(name)
            filled = min(block_size, n - i * block_size)
            fig.add_bar(x=[1], base=[i], y=[name], orientation="h", marker_color=_SEQ_COLORS.get(name, "#888"),
                        marker_line=dict(color="white", width=2), text=[f"→{b} ({filled}/{block_size})"],
                        textposition="inside", showlegend=False, hovertext=f"{name}: logical {i} → physical {b}", row=1, col=1)
    cols = 4
    xs, ys, colors, texts = [], [], [], []
    for b in range(n_blocks):
        xs.append(b % cols)
        ys.append(b // cols)
        who = owners.get(b, [])
        colors.append("#eeeeee" if not who else ("#999999" if len(who) > 1 else _SEQ_COLORS.get(who[0], "#888")))
        texts.append(f"{b}<br>{'+'.join(who) if who else 'free'}")
    fig.add_scatter(x=xs, y=ys, mode="markers+text", marker=dict(symbol="square", size=46, color=colors,
                    line=dict(color="black", width=1)), text=texts, textfont=dict(size=10), showlegend=False,
                    hoverinfo="text", row=1, col=2)
    fig.update_xaxes(title="logical block", dtick=1, row=1, col=1)
    fig.update_xaxes(visible=False, range=[-0.6, cols - 0.4], row=1, col=2)
    fig.update_yaxes(visible=False, autorange="reversed", range=[-0.6, n_blocks // cols + 0.4], row=1, col=2)
    fig.update_layout(barmode="overlay")
    used = n_blocks - s["num_free"]
    real = sum(s["lengths"].values())
    note = (f"step {steps}: {s['last']}. {used} of {n_blocks} blocks in use; the sequences hold {real} tokens "
            f"(a fork's shared prefix counts for each sequence, but is stored once); grey = shared by a fork.")
    return style_figure(fig, f"PagedAttention bookkeeping, block size {block_size}", width=820, height=380), note
