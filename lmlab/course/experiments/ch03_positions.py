"""Lesson 03's experiments and figures (``lessons/03_positions``), importable so tests run the same code.

- :func:`permutation_check`: attention (and the whole model) without positions and without a mask is
  permutation-equivariant; a causal mask or any position scheme breaks the symmetry.
- :func:`sinusoidal_figure`, :func:`bucket_table`: the sinusoidal table and T5's buckets.
- :func:`extrapolation_experiment`: a tiny model per position scheme, trained at context ``L`` and
  evaluated at ``L, 2L, 4L`` (:func:`lmlab.train.loop.evaluate_lengths`), plus the loss at every position of
  a ``4L`` window; :func:`extrapolation_figure` and :func:`extrapolation_verdicts`.
- :func:`rope_figure` and :func:`bias_figure`: the lesson's two widgets (RoPE rotation explorer,
  ALiBi / T5 bias against distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from lmlab.course.experiments.attention_probe import attention_maps
from lmlab.course.stats import holm, paired_comparison
from lmlab.course.widgets import style_figure
from lmlab.data.text import char_data, sample_batch
from lmlab.model import GPT, ModelConfig
from lmlab.model.positions.encodings import (POSITIONS, alibi_slopes, apply_rope, relative_position_bucket, rope_frequencies,
                         sinusoidal_embedding)
from lmlab.train.config import TrainConfig
from lmlab.train.loop import evaluate_lengths, seed_everything, train

__all__ = [
    "SCHEMES", "permutation_check", "sinusoidal_figure", "bucket_table", "ExtrapolationResult",
    "extrapolation_experiment", "loss_by_position", "extrapolation_figure", "extrapolation_verdicts",
    "t5_learned_bias", "attention_by_distance", "attention_distance_figure", "rope_figure", "bias_figure",
]

SCHEMES = ("none", "sinusoidal", "learned", "t5", "rope", "alibi")
assert set(SCHEMES) == set(POSITIONS)


# ---------------------------------------------------------------------------------------------
# Permutation equivariance
# ---------------------------------------------------------------------------------------------


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@torch.no_grad()
def permutation_check(T: int = 12, d_model: int = 32, n_heads: int = 4, seed: int = 0, sharpen: float = 20.0) -> dict:
    """Shuffle the tokens and compare: is ``f(P x) == P f(x)``?

    Returns the largest relative difference ``|f(Px) - P f(x)| / |f(x)|`` for plain attention (one
    head, random weights) without and with a causal mask, for the whole GPT with every
    ``position`` scheme, bidirectional (an all-True mask) and causal, and for the last token of a
    one-layer causal GPT without positions when only the tokens before it are shuffled. ``sharpen`` multiplies the q/k/v
    weights so that attention is far from uniform at initialisation (uniform attention would be
    order-blind for a trivial reason).
    """
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an int >= 2, got {T!r}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(T, generator=g)
    x = torch.randn(T, d_model, generator=g)  # (T, C)
    wq, wk, wv = (torch.randn(d_model, d_model, generator=g) / math.sqrt(d_model) * 3 for _ in range(3))

    def attn(x, causal):  # one head, (T, C) -> (T, C)
        return F.scaled_dot_product_attention((x @ wq)[None], (x @ wk)[None], (x @ wv)[None], is_causal=causal)[0]

    out = {"perm": perm.tolist(),
           "attention, no mask": _relative_change(attn(x, False)[perm], attn(x[perm], False)),
           "attention, causal mask": _relative_change(attn(x, True)[perm], attn(x[perm], True))}
    idx = torch.randint(0, 64, (1, T), generator=g)  # (1, T) token ids
    full = torch.ones(T, T, dtype=torch.bool)  # bidirectional: every token sees every token
    model_rows = {}
    for position in SCHEMES:
        seed_everything(seed)
        model = GPT(ModelConfig(vocab_size=64, context_length=T, d_model=d_model, n_layers=2, n_heads=n_heads,
                                position=position)).eval()
        for block in model.blocks:
            block.attn.qkv.weight.mul_(sharpen)
        if position == "t5":  # the T5 table starts near 0: give it values so that it matters
            model.position.t5.relative_attention_bias.weight.normal_(0, 1.0, generator=g)
        a, b = model(idx, attn_mask=full)[0], model(idx[:, perm], attn_mask=full)[0]  # (T, V)
        c, d = model(idx)[0], model(idx[:, perm])[0]  # causal (the model's default)
        model_rows[position] = {"bidirectional": _relative_change(a[perm], b), "causal": _relative_change(c[perm], d)}
    out["model"] = model_rows
    seed_everything(seed)  # causal, one layer, no positions: the LAST token sees a set, not a sequence
    one = GPT(ModelConfig(vocab_size=64, context_length=T, d_model=d_model, n_layers=1, n_heads=n_heads, position="none")).eval()
    one.blocks[0].attn.qkv.weight.mul_(sharpen)
    prefix = torch.cat([torch.randperm(T - 1, generator=g), torch.tensor([T - 1])])  # shuffle all but the last token
    out["causal, 1 layer, last token"] = _relative_change(one(idx)[0, -1], one(idx[:, prefix])[0, -1])
    return out


# ---------------------------------------------------------------------------------------------
# Sinusoidal table and T5 buckets
# ---------------------------------------------------------------------------------------------


def sinusoidal_figure(n_positions: int = 64, d_model: int = 48) -> go.Figure:
    """Heatmap of the sinusoidal table: rows = positions, columns = dimensions (sin, cos pairs)."""
    pe = sinusoidal_embedding(n_positions, d_model)  # (T, C)
    fig = go.Figure(go.Heatmap(z=pe.tolist(), colorscale="RdBu", zmin=-1, zmax=1, colorbar=dict(title="value")))
    fig.update_yaxes(autorange="reversed", title="position p")
    fig.update_xaxes(title="dimension (2i = sin, 2i+1 = cos)")
    return style_figure(fig, f"Sinusoidal position table ({n_positions} positions × {d_model} dims)", width=640, height=440)


def bucket_table(num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = False, up_to: int = 200) -> list[dict]:
    """T5's buckets for the distances ``0..up_to`` back (causal) as runs: one row per bucket with the
    distances it covers (``first``, ``last``) and how many (``width``)."""
    d = torch.arange(up_to + 1)
    buckets = relative_position_bucket(-d, bidirectional, num_buckets, max_distance).tolist()  # keys d tokens back
    rows = []
    for dist, b in enumerate(buckets):
        if rows and rows[-1]["bucket"] == b:
            rows[-1]["last"] = dist
            rows[-1]["width"] += 1
        else:
            rows.append({"bucket": b, "first": dist, "last": dist, "width": 1})
    return rows


# ---------------------------------------------------------------------------------------------
# Train at L, evaluate at L, 2L, 4L
# ---------------------------------------------------------------------------------------------


@dataclass
class ExtrapolationResult:
    L: int
    lengths: list[int]
    rows: list[dict]  # scheme, params, train_seconds, losses {length: mean over seeds}, losses_per_seed {length: [..]},
    #                   per_position (4L, mean), per_seed, error
    models: dict = field(repr=False, default_factory=dict)  # the first seed's model per scheme
    seeds: list[int] = field(default_factory=lambda: [0])


@torch.no_grad()
def loss_by_position(model: GPT, ids: torch.Tensor, T: int, batch_size: int = 16, n_batches: int = 8, seed: int = 1234) -> list[float]:
    """Mean next-token loss at each position ``0..T-1`` of random ``T``-token windows (a model trained at a
    shorter context is first copied with ``context_length=T`` by :meth:`GPT.with_config`)."""
    longer = model.with_config(context_length=max(T, model.config.context_length)).eval()
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(T)
    for _ in range(n_batches):
        x, y = sample_batch(ids, batch_size, T, generator=gen)  # (B, T) each
        logits = longer(x)  # (B, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
        total += loss.mean(0)
    return (total / n_batches).tolist()


def extrapolation_experiment(schemes=SCHEMES, L: int = 32, steps: int = 300, seeds=(0,), d_model: int = 48,
                             n_layers: int = 2, n_heads: int = 4, batch_size: int = 16, lr: float = 3e-3,
                             factors=(1, 2, 4), eval_batches: int = 8, learned_rows: int | None = None,
                             seed: int | None = None) -> ExtrapolationResult:
    """Train one tiny character GPT per (position scheme, seed) at context ``L`` (same data, steps) and
    evaluate each at ``L·factors`` and at every position of a ``L·max(factors)`` window.

    The learned table gets ``learned_rows`` rows (default ``L·max(factors)``): trained on length-``L``
    windows, rows ``L..`` never receive a gradient and keep their initial values (shrunk only by
    AdamW's weight decay), so the claim
    "learned positions cannot go past the trained length" is *measured* (the loss past ``L``) instead
    of being an error the code raises. With ``learned_rows=L`` the model cannot run past ``L``: its
    lengths beyond are ``nan`` and the error is kept. ``seed`` (one int) is the old spelling of ``seeds``.
    """
    for s in schemes:
        if s not in SCHEMES:
            raise ValueError(f"schemes must be drawn from {SCHEMES}, got {s!r}")
    seeds = [int(seed)] if seed is not None else [int(x) for x in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct ints, got {seeds}")
    tok, train_ids, val_ids = char_data()
    lengths = [L * f for f in factors]
    rows_learned = learned_rows if learned_rows is not None else max(lengths)
    rows, models = [], {}
    for scheme in schemes:
        runs = []
        for sd in seeds:
            seed_everything(sd)
            extra = dict(n_positions=rows_learned) if scheme == "learned" else {}
            model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=L, d_model=d_model, n_layers=n_layers,
                                    n_heads=n_heads, position=scheme, **extra))
            config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=None, seed=sd, progress=False)
            h = train(model, train_ids, config=config)
            losses = evaluate_lengths(model, val_ids, lengths, batch_size=batch_size, n_batches=eval_batches)
            error = None
            try:
                per_position = loss_by_position(model, val_ids, max(lengths), batch_size, eval_batches)
            except ValueError as err:  # learned positions with a table of L rows: no row for position L
                per_position, error = None, str(err)
            runs.append((model, h, losses, per_position, error))
            models.setdefault(scheme, model)
        n = len(runs)
        per_pos = None if any(r[3] is None for r in runs) else [sum(r[3][i] for r in runs) / n for i in range(max(lengths))]
        rows.append({"scheme": scheme, "params": runs[0][0].num_parameters(), "train_seconds": sum(r[1].seconds for r in runs),
                     "losses": {m: sum(r[2][m] for r in runs) / n for m in lengths},
                     "losses_per_seed": {m: [r[2][m] for r in runs] for m in lengths}, "per_position": per_pos,
                     "per_seed": [r[3] for r in runs], "error": runs[0][4]})
    return ExtrapolationResult(L, lengths, rows, models, seeds)


def extrapolation_verdicts(result: ExtrapolationResult, tol: float = 0.05) -> dict:
    """Per scheme, from the numbers: ``"cannot run"`` past L, ``"degrades"``, ``"holds"`` or ``"undetermined"``.

    ``inside``: the loss on positions ``L/2..L-1`` of a 4L window, ``beyond``: on positions past ``L``.
    The claim tested is "the loss past L is worse than inside L", with the shared verdict helper
    (:func:`lmlab.course.stats.paired_comparison`, ``comparison``; margin ``tol`` nats), Holm-corrected
    over the schemes: *supports* -> ``"degrades"``; *contradicts* (the loss past L is shown to be within
    ±``tol`` of inside L, or better) -> ``"holds"``; otherwise ``"undetermined"``. With one seed the noise
    is not measured, so nothing is decided."""
    L = result.L
    out, pending = {}, []
    for r in result.rows:
        if r["per_position"] is None:
            out[r["scheme"]] = {"verdict": "cannot run", "inside": float("nan"), "beyond": float("nan"), "comparison": None}
            continue
        per_seed = [p for p in r.get("per_seed") or [r["per_position"]] if p is not None]
        ins = [sum(p[L // 2:L]) / (L - L // 2) for p in per_seed]
        bey = [sum(p[L:]) / (len(p) - L) for p in per_seed]
        inside, beyond = sum(ins) / len(ins), sum(bey) / len(bey)
        seeds = result.seeds if len(result.seeds) == len(per_seed) else None
        cmp = paired_comparison(bey, ins, "past L", "inside L", claim="worse", margin=tol, seeds=seeds)
        out[r["scheme"]] = {"inside": inside, "beyond": beyond}
        pending.append((r["scheme"], cmp))
    for (scheme, _), cmp in zip(pending, holm([c for _, c in pending])):
        out[scheme].update(comparison=cmp, verdict={"supports": "degrades", "contradicts": "holds",
                                                    "undetermined": "undetermined"}[cmp.outcome])
    return out


def extrapolation_figure(result: ExtrapolationResult) -> go.Figure:
    """Left: mean validation loss against the evaluation length. Right: loss at each position of a 4L window."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean loss of a window vs its length",
                                                        f"loss at each position (window of {max(result.lengths)})"))
    colors = dict(zip(SCHEMES, ("#7f7f7f", "#ff7f0e", "#2ca02c", "#9467bd", "#1f77b4", "#d62728")))
    for r in result.rows:
        c = colors[r["scheme"]]
        ys = [r["losses"][n] for n in result.lengths]
        fig.add_scatter(x=result.lengths, y=[None if math.isnan(y) else y for y in ys], mode="lines+markers",
                        name=r["scheme"], line=dict(color=c), legendgroup=r["scheme"], row=1, col=1)
        if r["per_position"] is not None:
            fig.add_scatter(x=list(range(len(r["per_position"]))), y=r["per_position"], mode="lines", name=r["scheme"],
                            line=dict(color=c, width=1.5), legendgroup=r["scheme"], showlegend=False, row=1, col=2)
    for col in (1, 2):
        fig.add_vline(x=result.L, line=dict(dash="dot", color="black"), row=1, col=col)
    fig.update_xaxes(title="evaluation length (tokens)", type="log", tickvals=result.lengths, row=1, col=1)
    fig.update_xaxes(title="position in the window", row=1, col=2)
    fig.update_yaxes(title="loss (nats/char)", row=1, col=1)
    return style_figure(fig, f"Trained at L = {result.L}, evaluated further (dotted: L)", width=820, height=420)


@torch.no_grad()
def attention_by_distance(model: GPT, ids: torch.Tensor, T: int, batch_size: int = 8, n_batches: int = 2,
                          seed: int = 99) -> list[float]:
    """The trained model's attention on the key ``d`` tokens back, for ``d = 0..T-1``, *relative to
    uniform* (a query at position ``i`` sees ``i + 1`` keys; its weight times ``i + 1`` is 1 for
    uniform attention), averaged over layers, heads and the queries that have such a key, on random
    ``T``-token windows.

    The weights come from :func:`lmlab.course.experiments.attention_probe.attention_maps` (recomputed from
    what each layer hands to SDPA), so this works for every scheme (RoPE's rotated q/k, ALiBi's and
    T5's float biases)."""
    longer = model.with_config(context_length=max(T, model.config.context_length)).eval()
    total, count = torch.zeros(T), torch.zeros(T)
    dist = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T): i - j
    ok = dist >= 0
    visible = torch.arange(1, T + 1, dtype=torch.float32)[:, None]  # query i sees i + 1 keys
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        x, _ = sample_batch(ids, batch_size, T, generator=gen)
        for w in attention_maps(longer, x):  # (T, T) per layer
            w = w * visible  # relative to uniform over the visible keys
            total.index_add_(0, dist[ok], w[ok])
            count.index_add_(0, dist[ok], torch.ones(int(ok.sum())))
    return (total / count.clamp(min=1)).tolist()


def attention_distance_figure(curves: dict[str, list[float]], L: int) -> go.Figure:
    """Mean attention weight against distance (log-log), one line per scheme; dotted: the trained length."""
    colors = dict(zip(SCHEMES, ("#7f7f7f", "#ff7f0e", "#2ca02c", "#9467bd", "#1f77b4", "#d62728")))
    fig = go.Figure()
    for scheme, ys in curves.items():
        fig.add_scatter(x=list(range(1, len(ys))), y=ys[1:], mode="lines", name=scheme, line=dict(color=colors.get(scheme)))
    fig.add_vline(x=L, line=dict(dash="dot", color="black"))
    fig.update_xaxes(type="log", title="distance back (tokens)")
    fig.update_yaxes(type="log", title="attention weight ÷ uniform")
    return style_figure(fig, "Trained models: attention against distance (dotted: trained length L)", height=380)


def t5_learned_bias(model: GPT, up_to: int = 160) -> torch.Tensor:
    """The trained T5 bias ``(n_heads, up_to + 1)`` for a key ``0..up_to`` tokens back."""
    if model.config.position != "t5":
        raise ValueError(f"model must use position='t5', got {model.config.position!r}")
    with torch.no_grad():
        bias = model.position.t5(torch.tensor([up_to]), torch.arange(up_to, -1, -1))  # (1, nh, 1, up_to + 1): keys d back
    return bias[0, :, 0]  # (nh, up_to + 1): entry d is the key d tokens back


# ---------------------------------------------------------------------------------------------
# Widgets
# ---------------------------------------------------------------------------------------------


def rope_figure(position: int, base: float, head_dim: int = 32, pairs=(0, 2, 6), max_distance: int = 128,
                seed: int = 0) -> tuple[go.Figure, str]:
    """RoPE explorer. Left: pairs ``pairs`` of a vector rotated to ``position`` (the trail shows
    positions ``0..position``). Middle: the wavelength ``2π/θ_i`` of every pair. Right: ``q·k`` of a
    fixed q and k after RoPE, against their distance, for this base."""
    if not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be an int >= 0, got {position!r}")
    if any(not 0 <= i < head_dim // 2 for i in pairs):
        raise ValueError(f"pairs must be pair indices in 0..{head_dim // 2 - 1} (head_dim {head_dim}), got {pairs!r}")
    inv_freq = rope_frequencies(head_dim, base)  # (hs/2,)
    fig = make_subplots(rows=1, cols=3, column_widths=[0.34, 0.3, 0.36],
                        subplot_titles=(f"pairs rotated to position {position}", "wavelength of each pair (tokens)",
                                        "q·k after RoPE vs distance"))
    circle = torch.linspace(0, 2 * math.pi, 73)
    for n, i in enumerate(pairs):
        angles = torch.arange(position + 1) * inv_freq[i]  # (position + 1,): the angle at positions 0..position
        r = 1.0 - 0.25 * n  # one radius per pair so the circles do not overlap
        color = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")[n % 4]
        fig.add_scatter(x=(r * circle.cos()).tolist(), y=(r * circle.sin()).tolist(), mode="lines", line=dict(color="#dddddd", width=1),
                        hoverinfo="skip", showlegend=False, row=1, col=1)
        fig.add_scatter(x=(r * angles.cos()).tolist(), y=(r * angles.sin()).tolist(), mode="markers", marker=dict(color=color, size=4),
                        opacity=0.5, showlegend=False, row=1, col=1)
        fig.add_scatter(x=[0, r * math.cos(float(angles[-1]))], y=[0, r * math.sin(float(angles[-1]))], mode="lines+markers",
                        line=dict(color=color, width=3), name=f"pair {i}: θ = {float(inv_freq[i]):.3g} rad/token", row=1, col=1)
    fig.update_xaxes(range=[-1.1, 1.1], row=1, col=1)
    fig.update_yaxes(range=[-1.1, 1.1], scaleanchor="x", row=1, col=1)
    wavelengths = (2 * math.pi / inv_freq).tolist()
    fig.add_bar(x=list(range(head_dim // 2)), y=wavelengths, name="wavelength", showlegend=False, marker_color="#9467bd", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title="pair i", row=1, col=2)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(head_dim, generator=g)
    k = q + 0.3 * torch.randn(head_dim, generator=g)  # a key that matches the query well
    dist = torch.arange(max_distance + 1)
    qr = apply_rope(q.expand(max_distance + 1, head_dim), dist + position, base=base)  # query at position + d
    kr = apply_rope(k[None], torch.tensor([position]), base=base)  # key at position
    dots = (qr * kr).sum(-1)  # (max_distance + 1,)
    fig.add_scatter(x=dist.tolist(), y=dots.tolist(), mode="lines", name="q·k", showlegend=False, line=dict(color="#1f77b4"),
                    row=1, col=3)
    fig.update_xaxes(title="distance m − n", row=1, col=3)
    style_figure(fig, f"RoPE, head_dim {head_dim}, base {base:.3g}", width=820, height=430)
    fig.update_layout(legend=dict(orientation="h", y=-0.25), margin=dict(t=90, b=110), height=470)
    longest = wavelengths[-1]
    note = (f"The slowest pair turns once every {longest:,.0f} tokens, the fastest every {wavelengths[0]:.1f}; "
            f"q·k at distance 0: {float(dots[0]):.2f}, at {max_distance}: {float(dots[-1]):.2f} "
            f"(the same curve for every starting position: it depends on m − n only).")
    return fig, note


def bias_figure(n_heads: int, num_buckets: int, max_distance: int) -> tuple[go.Figure, str]:
    """Left: ALiBi's bias ``-slope_h · d`` per head against the distance ``d``. Right: T5's (causal)
    bucket of every distance: exact up to ``num_buckets // 2``, log-spaced up to ``max_distance``."""
    max_exact = num_buckets // 2
    if max_distance <= max_exact:
        raise ValueError(f"max_distance must be > num_buckets // 2 = {max_exact}, got {max_distance}")
    up_to = max(160, max_distance + 32)
    d = torch.arange(up_to + 1)
    slopes = alibi_slopes(n_heads)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"ALiBi bias, {n_heads} heads", f"T5 bucket ({num_buckets} buckets, causal)"))
    for h in range(n_heads):
        fig.add_scatter(x=d.tolist(), y=(-slopes[h] * d).tolist(), mode="lines", name=f"head {h}: slope {float(slopes[h]):.3g}",
                        showlegend=n_heads <= 8, row=1, col=1)
    fig.update_yaxes(title="bias added to the score", range=[-20, 0.5], row=1, col=1)
    buckets = relative_position_bucket(-d, False, num_buckets, max_distance)  # (up_to + 1,) keys d tokens back
    fig.add_scatter(x=d.tolist(), y=buckets.tolist(), mode="lines", line=dict(shape="hv", color="#9467bd"), name="bucket",
                    showlegend=False, row=1, col=2)
    fig.add_vline(x=max_exact, line=dict(dash="dot", color="#2ca02c"), row=1, col=2)
    fig.add_vline(x=max_distance, line=dict(dash="dot", color="#d62728"), row=1, col=2)
    for c in (1, 2):
        fig.update_xaxes(title="distance back (tokens)", row=1, col=c)
    fig.update_yaxes(title="bucket", row=1, col=2)
    style_figure(fig, "Relative biases against distance", width=820, height=440)
    fig.update_layout(legend=dict(orientation="h", y=-0.25), margin=dict(t=90, b=110), height=480)
    first_last = int((buckets == num_buckets - 1).nonzero()[0])
    n_log = len(set(buckets[max_exact:first_last].tolist()))
    s0, s1 = float(slopes[0]), float(slopes[-1])
    note = (f"T5: distances 0..{max_exact - 1} get one bucket each (green line); the {first_last - max_exact} distances "
            f"{max_exact}..{first_last - 1} share {n_log} log-spaced buckets; every distance from {first_last} on, "
            f"including all past max_distance = {max_distance} (red line), shares bucket {num_buckets - 1}. "
            f"ALiBi: a key 10 tokens back is weighted by e^(-{10 * s0:.3g}) = {math.exp(-10 * s0):.2g} in the steepest head, "
            f"{math.exp(-10 * s1):.2g} in the gentlest.")
    return fig, note
