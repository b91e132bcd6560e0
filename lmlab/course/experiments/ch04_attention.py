"""Lesson 04's experiments and figures (``lessons/04_attention``), importable so tests run the same code.

- :func:`local_attention`, :func:`cost_experiment`: full attention's time and score-matrix memory
  grow as T², a sliding window computed block by block grows as T.
- :func:`mask_fraction`, :func:`pattern_mask`, :func:`mask_figure`: what each sparse pattern lets a
  token see, and the fraction of the full (causal) matrix it keeps.
- :func:`kv_heads_experiment`: MHA vs GQA vs MQA on the tiny model (validation loss, KV-cache size)
  and :func:`decode_attention_time`: one decode step's attention against a long cache, per ``n_kv_heads``.
- :func:`online_softmax_trace`, :func:`tiled_figure`: the tiled (FlashAttention) algorithm step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmlab.model.attention import attention, global_local_mask, sliding_window_mask, strided_mask
from lmlab.data.text import char_data
from lmlab.infer.tiled_attention import online_softmax_merge  # re-exported: the reference lives in the core
from lmlab.infer.kv_cache import kv_cache_bytes
from lmlab.data.masks import causal_mask
from lmlab.model import GPT, ModelConfig
from lmlab.train.loop import seed_everything
from lmlab.course.experiments.sweeps import Sweep, train_sweep
from lmlab.course.experiments.timing import log_log_slope as slope, min_time
from lmlab.course.widgets import mask_heatmap, style_figure

__all__ = [
    "PATTERNS", "min_time", "local_attention", "cost_experiment", "cost_figure", "pattern_mask", "mask_fraction",
    "mask_figure", "KVHeadsResult", "kv_heads_experiment", "decode_attention", "decode_attention_time",
    "kv_heads_figure", "online_softmax_merge", "online_softmax_trace", "tiled_figure", "slope",
]

PATTERNS = ("full (causal)", "sliding window", "strided", "global + local")


# ---------------------------------------------------------------------------------------------
# The quadratic cost, and a sliding window that avoids it
# ---------------------------------------------------------------------------------------------


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal sliding-window attention computed block by block: ``(B, nh, T, hs) -> (B, nh, T, hs)``.

    Queries in blocks of ``window`` rows; each block only needs keys ``i0 - window + 1 .. i1 - 1``, so
    each score tile is ``window x 2 window`` and the total work is ``O(T · window)``, not ``O(T²)``.
    """
    T = q.size(2)
    out = torch.empty_like(q)
    for i0 in range(0, T, window):
        i1 = min(i0 + window, T)
        j0 = max(0, i0 - window + 1)
        qpos = torch.arange(i0, i1)[:, None]  # (bq, 1)
        kpos = torch.arange(j0, i1)[None, :]  # (1, bk)
        mask = (kpos <= qpos) & (qpos - kpos < window)  # (bq, bk)
        out[:, :, i0:i1] = attention(q[:, :, i0:i1], k[:, :, j0:i1], v[:, :, j0:i1], mask)
    return out


def cost_experiment(lengths=(256, 512, 1024, 2048), window: int = 64, heads: int = 4, head_dim: int = 32,
                    repeats: int = 3, seed: int = 0) -> dict:
    """Time full causal attention and block-wise sliding-window attention as T grows; the size of the
    full score matrix; exponents p of time ~ T^p from a log-log fit."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for T in lengths:
        q, k, v = (torch.randn(1, heads, T, head_dim, generator=g) for _ in range(3))
        mask = causal_mask(T)
        with torch.no_grad():
            t_full = min_time(lambda: attention(q, k, v, mask), repeats)
            t_local = min_time(lambda: local_attention(q, k, v, window), repeats)
        rows.append({"T": T, "full_s": t_full, "local_s": t_local,
                     "score_matrix_bytes": heads * T * T * 4,  # fp32 (nh, T, T) scores, and again for the weights
                     "local_fraction": float(sliding_window_mask(T, window).float().mean())})
    Ts = [r["T"] for r in rows]
    return {"rows": rows, "window": window,
            "full_exponent": slope(Ts, [r["full_s"] for r in rows]),
            "local_exponent": slope(Ts, [r["local_s"] for r in rows]),
            "memory_exponent": slope(Ts, [r["score_matrix_bytes"] for r in rows])}


def cost_figure(result: dict) -> go.Figure:
    rows = result["rows"]
    Ts = [r["T"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("time of one forward (ms)", "full score matrix (MiB, fp32)"))
    fig.add_scatter(x=Ts, y=[1e3 * r["full_s"] for r in rows], name=f"full causal (slope {result['full_exponent']:.2f})",
                    mode="lines+markers", row=1, col=1)
    fig.add_scatter(x=Ts, y=[1e3 * r["local_s"] for r in rows],
                    name=f"sliding window {result['window']} (slope {result['local_exponent']:.2f})", mode="lines+markers", row=1, col=1)
    fig.add_scatter(x=Ts, y=[r["score_matrix_bytes"] / 2**20 for r in rows], name="scores (nh, T, T)", mode="lines+markers",
                    row=1, col=2)
    for c in (1, 2):
        fig.update_xaxes(type="log", title="T (tokens)", row=1, col=c)
        fig.update_yaxes(type="log", row=1, col=c)
    return style_figure(fig, "Attention cost against sequence length (log-log)", width=820, height=380)


# ---------------------------------------------------------------------------------------------
# Sparse patterns
# ---------------------------------------------------------------------------------------------


def pattern_mask(pattern: str, T: int, window: int = 4, stride: int = 4, n_global: int = 2) -> torch.Tensor:
    """The causal ``(T, T)`` bool mask of ``pattern`` (one of :data:`PATTERNS`)."""
    if pattern == "full (causal)":
        return causal_mask(T)
    if pattern == "sliding window":
        return sliding_window_mask(T, window)
    if pattern == "strided":
        return strided_mask(T, stride)
    if pattern == "global + local":
        return global_local_mask(T, n_global, window)
    raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")


def mask_fraction(mask: torch.Tensor) -> dict:
    """Kept pairs, as a fraction of all T² pairs and of the causal T(T+1)/2 pairs."""
    T = mask.size(0)
    kept = int(mask.sum())
    return {"kept": kept, "of_full": kept / (T * T), "of_causal": kept / (T * (T + 1) // 2),
            "mean_keys_per_query": kept / T}


def mask_figure(pattern: str, T: int, window: int, stride: int, n_global: int = 2) -> tuple[go.Figure, str]:
    mask = pattern_mask(pattern, T, window, stride, n_global)
    f = mask_fraction(mask)
    fig = mask_heatmap(mask, f"{pattern}: who sees whom (T = {T})")
    note = (f"{f['kept']} of {T * T} pairs kept: {100 * f['of_full']:.1f}% of the full matrix, "
            f"{100 * f['of_causal']:.1f}% of the causal one; {f['mean_keys_per_query']:.1f} keys per query on average")
    return fig, note


# ---------------------------------------------------------------------------------------------
# MHA vs GQA vs MQA
# ---------------------------------------------------------------------------------------------


@dataclass
class KVHeadsResult:
    rows: list  # one dict per n_kv_heads: name, n_kv_heads, params, val_loss (mean at its best LR), best_lr, kv bytes
    sweep: Sweep | None = None  # every (variant, LR, seed) final validation loss


def kv_heads_experiment(kv_heads=(4, 2, 1), steps: int = 120, seeds=(0, 1, 2), lrs=(3e-3, 1e-2), d_model: int = 32,
                        n_layers: int = 2, n_heads: int = 4, context_length: int = 32, batch_size: int = 16) -> KVHeadsResult:
    """Train lesson 00's tiny GPT once per (``n_kv_heads``, LR, seed): same data order and validation
    windows per seed, so :meth:`Sweep.verdict` can compare variants with a paired test at every LR."""
    names = {nkv: f"{'MHA' if nkv == n_heads else 'MQA' if nkv == 1 else 'GQA'} ({nkv} KV head{'s' if nkv > 1 else ''})"
             for nkv in kv_heads}
    sweep = train_sweep({names[nkv]: dict(n_kv_heads=nkv) for nkv in kv_heads}, lrs, seeds, steps=steps,
                        batch_size=batch_size, base=dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                                         context_length=context_length))
    rows = []
    for nkv in kv_heads:
        name = names[nkv]
        best = sweep.best_lr(name)
        rows.append({"name": name, "n_kv_heads": nkv, "params": sweep.parameters[name], "val_loss": sweep.mean(name, best),
                     "best_lr": best, "kv_bytes_per_token": kv_cache_bytes(n_layers, nkv, d_model // n_heads, 1, 2)})
    return KVHeadsResult(rows, sweep)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One decode step of grouped-query attention without copying the cache:
    ``q (B, nh, 1, hs)``, ``k, v (B, nkv, T, hs)`` -> ``(B, nh, 1, hs)``. Query heads are grouped
    ``(B, nkv, n_rep, hs)`` so that each cached K/V head is read once for its ``n_rep`` queries."""
    B, nh, _, hs = q.shape
    nkv = k.size(1)
    qg = q.reshape(B, nkv, nh // nkv, hs)  # (B, nkv, n_rep, hs): head h uses K/V head h // n_rep
    w = torch.softmax(qg @ k.transpose(-2, -1) / math.sqrt(hs), dim=-1)  # (B, nkv, n_rep, T)
    return (w @ v).reshape(B, nh, 1, hs)  # (B, nh, 1, hs)


def decode_attention_time(kv_heads=(16, 4, 1), n_heads: int = 16, head_dim: int = 64, T: int = 4096, batch: int = 4,
                          repeats: int = 5, seed: int = 0) -> list[dict]:
    """Attention-only decode step against a cache of ``T`` tokens: time and cache bytes read (fp32)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for nkv in kv_heads:
        q = torch.randn(batch, n_heads, 1, head_dim, generator=g)
        k = torch.randn(batch, nkv, T, head_dim, generator=g)
        v = torch.randn(batch, nkv, T, head_dim, generator=g)
        with torch.no_grad():
            decode_attention(q, k, v)  # warm-up
            t = min_time(lambda: decode_attention(q, k, v), repeats)
        rows.append({"n_kv_heads": nkv, "step_ms": 1e3 * t, "bytes_read": (k.numel() + v.numel()) * 4})
    return rows


def kv_heads_figure(result: KVHeadsResult, decode_rows: list[dict]) -> go.Figure:
    names = [r["name"] for r in result.rows]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("val. loss at each one's best LR", "KV cache bytes / token (fp16)",
                                                        "decode-step attention (ms)"))
    fig.add_bar(x=names, y=[r["val_loss"] for r in result.rows], row=1, col=1, showlegend=False)
    fig.add_bar(x=names, y=[r["kv_bytes_per_token"] for r in result.rows], row=1, col=2, showlegend=False)
    fig.add_bar(x=[f"{r['n_kv_heads']} KV heads" for r in decode_rows], y=[r["step_ms"] for r in decode_rows], row=1, col=3,
                showlegend=False)
    lo = min(r["val_loss"] for r in result.rows)
    fig.update_yaxes(range=[lo - 0.1, max(r["val_loss"] for r in result.rows) + 0.05], row=1, col=1)
    return style_figure(fig, "MHA vs GQA vs MQA", width=820, height=380)


# ---------------------------------------------------------------------------------------------
# The tiled algorithm: online softmax
# ---------------------------------------------------------------------------------------------


def online_softmax_trace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int,
                         causal: bool = True) -> dict:
    """Run the tiled algorithm on one head (``q, k, v: (T, hs)``) and record every tile step:
    which tile, the running max ``m`` and sum ``l`` of the query tile's rows after it. Also the final
    output and its largest difference from the full softmax."""
    T, hs = q.shape
    out = torch.empty_like(q)
    steps = []
    s_full = q @ k.T / math.sqrt(hs)  # (T, T), only to report the final values
    if causal:
        s_full = s_full.masked_fill(~causal_mask(T), float("-inf"))
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        m = torch.full((i1 - i0,), float("-inf"))
        l = torch.zeros(i1 - i0)
        acc = torch.zeros(i1 - i0, v.size(1))
        k_end = min(T, i1) if causal else T
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, T)
            s = q[i0:i1] @ k[j0:j1].T / math.sqrt(hs)  # (bq, bk)
            if causal:
                s = s.masked_fill(torch.arange(j0, j1)[None, :] > torch.arange(i0, i1)[:, None], float("-inf"))
            m_t = s.amax(dim=-1)
            p = torch.exp(s - m_t[:, None])
            m, l, acc = online_softmax_merge(m, l, acc, m_t, p.sum(-1), p @ v[j0:j1])
            steps.append({"q_tile": (i0, i1), "k_tile": (j0, j1), "m": m.tolist(), "l": l.tolist()})
        out[i0:i1] = acc / l[:, None]
    final_m = s_full.amax(dim=-1)
    final_l = torch.exp(s_full - final_m[:, None]).sum(-1)
    ref = torch.softmax(s_full, dim=-1) @ v
    return {"T": T, "block_q": block_q, "block_k": block_k, "causal": causal, "steps": steps, "out": out,
            "final_m": final_m.tolist(), "final_l": final_l.tolist(), "max_abs_diff": float((out - ref).abs().max())}


def tiled_figure(trace: dict, step: int) -> tuple[go.Figure, str]:
    """Left: the T x T score matrix as tiles (done, current, not yet, skipped). Right: the running max
    and sum of the current query tile's rows against their final values."""
    T, bq, bk = trace["T"], trace["block_q"], trace["block_k"]
    step = max(0, min(step, len(trace["steps"]) - 1))
    st = trace["steps"][step]
    done = {(s["q_tile"], s["k_tile"]) for s in trace["steps"][:step]}
    all_tiles = {(s["q_tile"], s["k_tile"]) for s in trace["steps"]}
    grid = torch.zeros(T, T)  # 0 never computed (causal skip), 1 pending, 2 done, 3 current
    for i0 in range(0, T, bq):
        for j0 in range(0, T, bk):
            key = ((i0, min(i0 + bq, T)), (j0, min(j0 + bk, T)))
            val = 3 if key == (st["q_tile"], st["k_tile"]) else 2 if key in done else 1 if key in all_tiles else 0
            grid[i0:i0 + bq, j0:j0 + bk] = val
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5],
                        subplot_titles=("tiles of QKᵀ (rows: queries, cols: keys)", "query tile rows: running m and l"))
    fig.add_heatmap(z=grid.tolist(), zmin=0, zmax=3, showscale=False, row=1, col=1,
                    colorscale=[[0, "#ffffff"], [0.33, "#ffffff"], [0.34, "#e5e5e5"], [0.6, "#e5e5e5"],
                                [0.61, "#9ecae1"], [0.9, "#9ecae1"], [0.91, "#d62728"], [1, "#d62728"]])
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    i0, i1 = st["q_tile"]
    rows = list(range(i0, i1))
    fig.add_scatter(x=rows, y=st["m"], mode="markers+lines", name="running max m", row=1, col=2)
    fig.add_scatter(x=rows, y=trace["final_m"][i0:i1], mode="lines", line=dict(dash="dot"), name="final max", row=1, col=2)
    fig.add_scatter(x=rows, y=st["l"], mode="markers+lines", name="running sum l", row=1, col=2)
    fig.add_scatter(x=rows, y=[fl * math.exp(fm - m) for fl, fm, m in zip(trace["final_l"][i0:i1], trace["final_m"][i0:i1], st["m"])],
                    mode="lines", line=dict(dash="dot"), name="final sum (at this m)", row=1, col=2)
    fig.update_xaxes(title="query position", row=1, col=2)
    style_figure(fig, f"step {step + 1} of {len(trace['steps'])}: Q tile {st['q_tile']} × K tile {st['k_tile']}",
                 width=820, height=420)
    last = st["k_tile"][1] >= min(T, i1) if trace["causal"] else st["k_tile"][1] >= T
    gap = max(abs(a - b) for a, b in zip(st["m"], trace["final_m"][i0:i1]))
    note = (f"red = this tile, blue = done, grey = still to do, white = skipped (causal). "
            f"{'Last key tile of this query tile: m equals the final max' if last else 'Not the last key tile yet'}"
            f" (largest gap {gap:.3g}). Final output vs full softmax: max |diff| = {trace['max_abs_diff']:.2e}")
    return fig, note
