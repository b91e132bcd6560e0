"""Lesson 06's experiments and figures (``lessons/06_long_context``), importable so tests run the same code.

- :func:`train_base`: a tiny RoPE model trained once at a short context ``L``.
- :func:`method_changes`, :func:`length_experiment`, :func:`length_figure`: the model evaluated at
  ``1×..8×`` its trained length with no trick, position interpolation, NTK, dynamic NTK, YaRN,
  truncation, a sliding window and a Λ window (sinks + window), with and without a short fine-tune.
- :func:`sink_decode`, :func:`sink_figure`: token-by-token decoding with
  :class:`lmlab.infer.long_context.SinkKVCache` (bounded memory), checked against the Λ-masked full forward.
- :func:`pcw_experiment`: parallel context windows (positions reused per segment).
- :func:`fact_batch`, :func:`knn_experiment`: a synthetic "key → value" fact stated far before it is
  asked, answered through a kNN memory vs local attention alone.
- :func:`wavelength_figure`, :func:`lambda_figure`: the two widgets' figures.

The comparison of the bounded-memory methods with full attention, and their cost, is in
:mod:`lmlab.course.experiments.ch06_compare`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from lmlab.course.experiments.attention_probe import attention_maps
from lmlab.infer.long_context import SinkKVCache, lambda_mask, parallel_context_logits
from lmlab.model.memory import memorize_segments, reset_memory
from lmlab.model.positions.rope_scaling import scaled_rope_frequencies
from lmlab.model import GPT, ModelConfig
from lmlab.model.positions.encodings import rope_frequencies
from lmlab.train.config import TrainConfig
from lmlab.train.loop import evaluate_lengths, lm_loss, seed_everything, train
from lmlab.course.widgets import mask_heatmap, style_figure
from lmlab.data.text import CharTokenizer, char_data, sample_batch

__all__ = [
    "METHODS", "WAVELENGTH_METHODS", "Base", "train_base", "method_changes", "fine_tune", "length_experiment",
    "length_figure", "sink_decode", "sink_figure", "pcw_experiment", "fact_batch",
    "knn_experiment", "wavelength_figure", "lambda_figure", "lambda_stats",
    "attention_mass_by_key", "sink_mass_figure",
]

METHODS = ("no trick", "PI (linear)", "NTK-aware", "dynamic NTK", "YaRN", "truncation (ReRoPE)",
           "sliding window", "Λ (sinks + window)", "Λ + truncation (LM-Infinite)")
WAVELENGTH_METHODS = ("PI (linear)", "NTK-aware", "dynamic NTK", "YaRN")


# ---------------------------------------------------------------------------------------------
# The base model, trained once at a short context
# ---------------------------------------------------------------------------------------------


@dataclass
class Base:
    model: GPT
    tok: CharTokenizer
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    context_length: int
    seconds: float


def train_base(context_length: int = 64, steps: int = 300, batch_size: int = 32, d_model: int = 64, n_layers: int = 2,
               n_heads: int = 4, lr: float = 3e-3, seed: int = 0) -> Base:
    """Lesson 00's tiny GPT with RoPE (head size ``d_model / n_heads``), trained at ``context_length``."""
    tok, train_ids, val_ids = char_data()
    seed_everything(seed)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                            n_layers=n_layers, n_heads=n_heads, position="rope"))
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=None, seed=seed, progress=False)
    h = train(model, train_ids, config=config)
    return Base(model, tok, train_ids, val_ids, context_length, h.seconds)


def method_changes(method: str, trained_length: int, factor: float, n_sink: int = 4) -> dict:
    """The ``GPT.with_config`` changes that switch ``method`` on for a model trained at ``trained_length``
    and meant to read ``factor`` times more."""
    L = trained_length
    table = {
        "no trick": {},
        "PI (linear)": {"rope_scaling": {"type": "linear", "factor": factor}},
        "NTK-aware": {"rope_scaling": {"type": "ntk", "factor": factor}},
        # factor 1: the plain base up to L, then base·(n/L)^(d/(d-2)) for the current length n
        "dynamic NTK": {"rope_scaling": {"type": "dynamic_ntk", "factor": 1.0, "original_context_length": L}},
        "YaRN": {"rope_scaling": {"type": "yarn", "factor": factor, "original_context_length": L}},
        "truncation (ReRoPE)": {"rope_scaling": {"type": "truncate", "window": L // 2}},
        "sliding window": {"attention": "sliding_window", "window": L},
        "Λ (sinks + window)": {"attention": "sliding_window", "window": L - n_sink, "n_sink": n_sink},
        # LM-Infinite: the sinks sit far away, so their distance is also clipped to what training saw
        "Λ + truncation (LM-Infinite)": {"attention": "sliding_window", "window": L - n_sink, "n_sink": n_sink,
                                         "rope_scaling": {"type": "truncate", "window": L - 1}},
    }
    if method not in table:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return table[method]


def fine_tune(model: GPT, train_ids: torch.Tensor, length: int, steps: int = 30, batch_size: int = 8, lr: float = 1e-3,
              seed: int = 1, **changes) -> tuple[GPT, float]:
    """A copy of ``model`` with ``changes`` (e.g. ``rope_scaling``) trained ``steps`` more steps at ``length``.
    Returns ``(copy, seconds)``; the original is not touched."""
    longer = model.with_config(context_length=length, **changes)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=None, seed=seed, progress=False)
    h = train(longer, train_ids, config=config)
    return longer, h.seconds


def length_experiment(base: Base, lengths=(64, 128, 256, 512), factor: float = 4.0, methods=METHODS,
                      fine_tuned=("no trick", "PI (linear)", "NTK-aware", "YaRN"), ft_steps: int = 30, ft_batch: int = 8,
                      eval_batch: int = 16, eval_batches: int = 3) -> dict:
    """Loss at every evaluation length, per method (no fine-tune), then per fine-tuned method
    (``ft_steps`` steps at ``factor × L`` tokens). Every row also records the loss at the trained
    length ``L`` itself: what the trick costs on short text."""
    L = base.context_length
    ft_length = int(factor * L)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        losses = evaluate_lengths(base.model, base.val_ids, lengths, batch_size=eval_batch, n_batches=eval_batches,
                                  **method_changes(method, L, factor))
        rows.append({"method": method, "fine_tuned": False, "losses": losses, "seconds": time.perf_counter() - t0})
    for method in fine_tuned:
        tuned, seconds = fine_tune(base.model, base.train_ids, ft_length, ft_steps, ft_batch, **method_changes(method, L, factor))
        losses = evaluate_lengths(tuned, base.val_ids, lengths, batch_size=eval_batch, n_batches=eval_batches)
        rows.append({"method": method, "fine_tuned": True, "losses": losses, "seconds": seconds})
    for r in rows:
        r["name"] = r["method"] + (f" + {ft_steps}-step fine-tune" if r["fine_tuned"] else "")
        r["short"] = r["losses"][L] if L in r["losses"] else float("nan")
        r["longest"] = r["losses"][max(lengths)]
    return {"rows": rows, "lengths": list(lengths), "trained_length": L, "factor": factor, "ft_length": ft_length,
            "ft_steps": ft_steps}


def length_figure(result: dict) -> go.Figure:
    """Loss against evaluation length, one line per method (dashed: fine-tuned)."""
    fig = go.Figure()
    for r in result["rows"]:
        fig.add_scatter(x=result["lengths"], y=[r["losses"][n] for n in result["lengths"]], name=r["name"],
                        mode="lines+markers", line=dict(dash="dash" if r["fine_tuned"] else "solid"))
    L = result["trained_length"]
    fig.add_vline(x=L, line=dict(color="grey", dash="dot"), annotation_text=f"trained length {L}")
    fig.add_vline(x=result["ft_length"], line=dict(color="grey", dash="dot"), annotation_text=f"fine-tune length {result['ft_length']}",
                  annotation_position="bottom right")
    fig.update_xaxes(type="log", title="evaluation length (tokens)", tickvals=result["lengths"])
    fig.update_yaxes(title="validation loss (nats/char)")
    return style_figure(fig, "Loss against evaluation length, per long-context method", width=820, height=480)


# ---------------------------------------------------------------------------------------------
# Λ-shaped attention with a bounded cache
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sink_decode(model: GPT, ids: torch.Tensor, n_sink: int = 4, window: int = 60, every: int = 16) -> dict:
    """Feed ``ids (T,)`` one token at a time through a Λ-shaped copy of ``model`` with a bounded
    :class:`SinkKVCache`; record the tokens held (vs a full cache's ``t``) every ``every`` steps and
    the largest logit difference from one Λ-masked forward over the whole sequence."""
    T = len(ids)
    lam = model.with_config(context_length=T, attention="sliding_window", window=window, n_sink=n_sink).eval()
    cache = SinkKVCache(lam.config.n_layers, n_sink, window)  # forward_with_cache decodes with it
    steps, held, logits = [], [], []
    for t in range(T):
        out, _ = lam.forward_with_cache(ids[None, t:t + 1], cache)  # (1, 1, V)
        logits.append(out)
        if (t + 1) % every == 0 or t == T - 1:
            steps.append(t + 1)
            held.append(len(cache))
    full = lam(ids[None])  # (1, T, V): the Λ mask over all T tokens at once
    c = lam.config
    bytes_per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4  # K and V, fp32
    return {"steps": steps, "held": held, "capacity": n_sink + window, "bytes_per_token": bytes_per_token,
            "max_abs_diff": float((torch.cat(logits, 1) - full).abs().max()), "T": T,
            "positions_kept": cache.positions(0).tolist()}


def sink_figure(result: dict) -> go.Figure:
    kib = result["bytes_per_token"] / 1024
    fig = go.Figure()
    fig.add_scatter(x=result["steps"], y=[kib * s for s in result["steps"]], name="full KV cache", mode="lines+markers")
    fig.add_scatter(x=result["steps"], y=[kib * h for h in result["held"]], name="SinkKVCache (sinks + window)", mode="lines+markers")
    fig.update_xaxes(title="tokens decoded")
    fig.update_yaxes(title="KV cache (KiB, fp32, all layers)")
    return style_figure(fig, "Decoding memory: full cache vs Λ-shaped (sink) cache", width=640, height=380)


# ---------------------------------------------------------------------------------------------
# Parallel context windows
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def pcw_experiment(model: GPT, ids: torch.Tensor, n_segments: int = 4, segment_length: int = 24, task_length: int = 16,
                   n_samples: int = 16, seed: int = 0) -> dict:
    """Loss on ``task_length`` tokens that follow ``n_segments`` segments of text, read three ways:
    no context at all; the segments in parallel (positions ``0..n-1`` reused per segment); the
    segments one after another (positions up to ``n_segments·n + task``, past the trained length).
    Also checks that swapping the segments' order leaves the logits unchanged."""
    gen = torch.Generator().manual_seed(seed)
    N = n_segments * segment_length + task_length
    longer = model.with_config(context_length=max(N, model.config.context_length)).eval()
    losses = {"task alone": [], "parallel windows": [], "sequential (past L)": []}
    swap_diff = 0.0
    for _ in range(n_samples):
        start = int(torch.randint(0, len(ids) - N - 1, (1,), generator=gen))
        seq = ids[start:start + N + 1]
        segs = [seq[i * segment_length:(i + 1) * segment_length] for i in range(n_segments)]
        task, target = seq[N - task_length:N], seq[N - task_length + 1:N + 1]
        pcw = parallel_context_logits(longer, segs, task)  # (1, task, V)
        losses["parallel windows"].append(lm_loss(pcw, target[None]).item())
        losses["task alone"].append(lm_loss(longer(task[None]), target[None]).item())
        losses["sequential (past L)"].append(lm_loss(longer(seq[None, :N])[:, -task_length:], target[None]).item())
        swap_diff = max(swap_diff, float((parallel_context_logits(longer, segs[::-1], task) - pcw).abs().max()))
    means = {k: sum(v) / len(v) for k, v in losses.items()}
    return {"loss": means, "max_position_parallel": segment_length + task_length - 1, "max_position_sequential": N - 1,
            "swap_max_abs_diff": swap_diff, "n_samples": n_samples}


# ---------------------------------------------------------------------------------------------
# kNN memory on a task that needs a fact from far back
# ---------------------------------------------------------------------------------------------


def fact_vocab(n_keys: int, n_values: int, n_filler: int) -> dict:
    """Token ids: filler ``0..F-1``; one token per fact "key k has value v" (``fact0 + k·n_values + v``,
    also the answer); one question token "k?" per key (``query0 + k``)."""
    fact0 = n_filler
    query0 = fact0 + n_keys * n_values
    return {"fact0": fact0, "query0": query0, "size": query0 + n_keys}


def fact_batch(batch: int, n_segments: int = 4, segment_length: int = 16, n_keys: int = 8, n_values: int = 8,
               n_filler: int = 16, n_facts: int = 4, generator: torch.Generator | None = None):
    """Sequences of ``n_segments × segment_length`` tokens. The first half of segment 0 states
    ``n_facts`` facts ("key k has value v", one token each, distinct keys, among random filler).
    The second half of segment 0 asks each of them back once, in random order: a question token
    "k?" whose next token is the fact's token; so does the second half of the LAST segment.
    Everything else is filler. A question is answered by finding the fact with the same key.

    Returns ``x (B, N)``, ``y (B, N)`` (next tokens), ``where (B, N)`` bool: the answer positions,
    and ``far (B, N)`` bool: the answers in the last segment (beyond a ``segment_length`` window)."""
    v = fact_vocab(n_keys, n_values, n_filler)
    N, S = n_segments * segment_length, segment_length
    if not 1 <= n_facts <= min(n_keys, S // 4):
        raise ValueError(f"n_facts must be in [1, min(n_keys, segment_length // 4) = {min(n_keys, S // 4)}], got {n_facts}")
    x = torch.randint(0, n_filler, (batch, N + 1), generator=generator)
    where = torch.zeros(batch, N + 1, dtype=torch.bool)
    far = torch.zeros(batch, N + 1, dtype=torch.bool)
    for b in range(batch):
        keys = torch.randperm(n_keys, generator=generator)[:n_facts].tolist()
        facts = [v["fact0"] + k * n_values + int(torch.randint(0, n_values, (1,), generator=generator)) for k in keys]
        slots = torch.randperm(S // 2, generator=generator)[:n_facts].tolist()  # facts in the first half of segment 0
        for fact, s in zip(facts, slots):
            x[b, s] = fact
        for seg_start, is_far in ((0, False), (N - S, True)):
            for j, i in enumerate(torch.randperm(n_facts, generator=generator).tolist()):  # each fact asked once
                pos = seg_start + S // 2 + 2 * j
                x[b, pos], x[b, pos + 1] = v["query0"] + keys[i], facts[i]
                where[b, pos + 1] = True
                far[b, pos + 1] = is_far
    return x[:, :-1], x[:, 1:], where[:, 1:], far[:, 1:]


def _fact_accuracy(logits: torch.Tensor, y: torch.Tensor, where: torch.Tensor) -> float:
    return float((logits.argmax(-1)[where] == y[where]).float().mean())


def knn_experiment(steps: int = 120, batch_size: int = 32, segment_length: int = 16, n_segments: int = 4, top_k: int = 4,
                   n_keys: int = 8, n_values: int = 8, d_model: int = 32, n_heads: int = 1, lr: float = 1e-2, seed: int = 0,
                   eval_batch: int = 256) -> dict:
    """Train a one-layer model whose attention also retrieves from a kNN memory of past segments
    (:func:`lmlab.model.memory.memorize_segments`, context = one segment of ``segment_length`` tokens)
    on :func:`fact_batch`. Then answer accuracy on the far questions (the fact is in segment 0, the
    question in the last one) with the memory, and with the same weights reading their local
    window only. No positions (``position="none"``): memory keys carry no position, as in
    Memorizing Transformers, and a fact is found by content."""
    gen = seed_everything(seed)
    voc = fact_vocab(n_keys, n_values, 16)
    cfg = ModelConfig(vocab_size=voc["size"], context_length=segment_length, d_model=d_model, n_layers=1, n_heads=n_heads,
                      position="none", knn_memory={"layer": 0, "top_k": top_k, "size": n_segments * segment_length})
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, where, _ = fact_batch(batch_size, n_segments, segment_length, n_keys, n_values, generator=gen)
        logits = memorize_segments(model, x, segment_length)  # (B, N, V)
        loss = F.cross_entropy(logits[where], y[where])  # only the answers are predictable; filler is noise
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    x, y, where, far = fact_batch(eval_batch, n_segments, segment_length, n_keys, n_values,
                                  generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        with_memory = memorize_segments(model, x, segment_length)  # (B, N, V)
        reset_memory(model)
        local = torch.cat([model(x[:, i:i + segment_length]) for i in range(0, x.size(1), segment_length)], 1)  # (B, N, V)
    near = where & ~far
    return {"far_with_memory": _fact_accuracy(with_memory, y, far), "far_local_only": _fact_accuracy(local, y, far),
            "near_local_only": _fact_accuracy(local, y, near), "chance": 1 / n_values, "seconds": seconds,
            "top_k": top_k, "memory_size": model.blocks[0].attn.memory.size, "segment_length": segment_length,
            "distance": (n_segments - 1) * segment_length, "gate": torch.sigmoid(model.blocks[0].attn.gate).tolist()}


# ---------------------------------------------------------------------------------------------
# Widgets
# ---------------------------------------------------------------------------------------------


def _scaling(method: str, factor: float, trained_length: int) -> tuple[dict, int | None]:
    if method == "PI (linear)":
        return {"type": "linear", "factor": factor}, None
    if method == "NTK-aware":
        return {"type": "ntk", "factor": factor}, None
    if method == "dynamic NTK":  # evaluated at the target length s·L
        return {"type": "dynamic_ntk", "factor": 1.0, "original_context_length": trained_length}, int(factor * trained_length)
    if method == "YaRN":
        return {"type": "yarn", "factor": factor, "original_context_length": trained_length}, None
    raise ValueError(f"method must be one of {WAVELENGTH_METHODS}, got {method!r}")


def wavelength_figure(method: str, factor: float, head_dim: int = 16, base: float = 10000.0,
                      trained_length: int = 64) -> tuple[go.Figure, str]:
    """Wavelength ``2π/θ_i`` (tokens per full turn) of every RoPE pair, plain and after ``method``."""
    plain = rope_frequencies(head_dim, base)  # (hs/2,)
    scaling, seq_len = _scaling(method, float(factor), trained_length)
    scaled, attention_factor = scaled_rope_frequencies(head_dim, base, scaling, seq_len)
    pairs = list(range(head_dim // 2))
    wl_plain = (2 * math.pi / plain).tolist()
    wl_scaled = (2 * math.pi / scaled).tolist()
    target = factor * trained_length
    fig = go.Figure()
    fig.add_scatter(x=pairs, y=wl_plain, name="plain RoPE", mode="lines+markers")
    fig.add_scatter(x=pairs, y=wl_scaled, name=method, mode="lines+markers")
    fig.add_scatter(x=[0, pairs[-1]], y=[trained_length] * 2, name=f"trained length L = {trained_length}", mode="lines",
                    line=dict(color="grey", dash="dot"))
    fig.add_scatter(x=[0, pairs[-1]], y=[target] * 2, name=f"target length s·L = {target:g}", mode="lines",
                    line=dict(color="black", dash="dash"))
    fig.update_xaxes(title="pair i (0 = fastest)")
    fig.update_yaxes(type="log", title="wavelength 2π/θᵢ (tokens per turn)")
    style_figure(fig, f"RoPE wavelengths: {method}, s = {factor:g}, d = {head_dim}, base = {base:g}", width=700, height=440)
    ratio = [a / b for a, b in zip(wl_scaled, wl_plain)]
    unseen = sum(w > trained_length for w in wl_plain)
    note = (f"stretch per pair: fastest ×{ratio[0]:.2f}, slowest ×{ratio[-1]:.2f}; {unseen} of {len(pairs)} plain pairs never "
            f"complete a turn within L" + (f"; YaRN temperature factor {attention_factor:.3f}" if method == "YaRN" else ""))
    return fig, note


def lambda_stats(T: int, n_sink: int, window: int) -> dict:
    m = lambda_mask(T, n_sink, window)
    kept = int(m.sum())
    return {"mask": m, "kept": kept, "of_causal": kept / (T * (T + 1) // 2), "cache": min(T, n_sink + window)}


def attention_mass_by_key(model: GPT, ids: torch.Tensor, T: int, batch_size: int = 8, n_batches: int = 2,
                          seed: int = 7) -> list[float]:
    """The attention each key *position* ``j`` receives, relative to uniform (a query at ``i`` sees
    ``i + 1`` keys; weight × (i + 1) = 1 for uniform), averaged over layers and the queries ``i >= j``,
    on random ``T``-token windows. An attention sink shows as a spike at position 0."""
    model = model.eval()
    visible = torch.arange(1, T + 1, dtype=torch.float32)[:, None]  # (T, 1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    total = torch.zeros(T)
    gen = torch.Generator().manual_seed(seed)
    n = 0
    for _ in range(n_batches):
        x, _ = sample_batch(ids, batch_size, T, generator=gen)
        for w in attention_maps(model, x):  # (T, T) per layer
            total += ((w * visible) * causal).sum(0) / causal.sum(0)
            n += 1
    return (total / n).tolist()


def sink_mass_figure(mass: list[float]) -> go.Figure:
    fig = go.Figure()
    fig.add_bar(x=list(range(len(mass))), y=mass, marker_color=["#d62728"] + ["#1f77b4"] * (len(mass) - 1))
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray", annotation_text="uniform")
    fig.update_xaxes(title="key position")
    fig.update_yaxes(title="attention received ÷ uniform")
    return style_figure(fig, "The trained base model: attention each key position receives", height=340)


def lambda_figure(T: int, n_sink: int, window: int) -> tuple[go.Figure, str]:
    s = lambda_stats(T, n_sink, window)
    fig = mask_heatmap(s["mask"], f"Λ-shaped mask: {n_sink} sinks + window {window} (T = {T})")
    note = (f"{s['kept']} pairs kept = {100 * s['of_causal']:.1f}% of the causal matrix; a decoder's cache holds "
            f"{s['cache']} tokens instead of {T}")
    return fig, note
