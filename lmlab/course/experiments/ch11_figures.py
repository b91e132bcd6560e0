"""Lesson 11's figures and its two widgets' figures (``lessons/11_mixed_precision``).

- :func:`format_explorer`: a value's bits in every format, its nearest neighbours and relative
  error, and each format's subnormal / normal / overflow regions on a log axis.
- :func:`scale_lab`: a dynamic loss scale over training, where a step overflows when
  ``scale x (largest gradient)`` passes FP16's 65504 or when an inf is injected; lmlab's
  :class:`~lmlab.train.loss_scaling.DynamicLossScaler` next to ``torch.amp.GradScaler``'s trajectory.
- :func:`sum_figure`, :func:`underflow_figure`, :func:`curves_figure`, :func:`memory_figure`.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lmlab.train.loss_scaling import DynamicLossScaler, gradscaler_trajectory
from lmlab.train.precision import FORMAT_NAMES, bit_fields, decode, encode, format_info, get_format
from lmlab.argcheck import check_int, check_number
from lmlab.course.widgets import style_figure

__all__ = ["bits_string", "format_explorer", "parse_steps", "scale_lab", "sum_figure", "underflow_figure",
           "curves_figure", "memory_figure", "COLORS"]

COLORS = {"fp32": "#1f77b4", "tf32": "#17becf", "fp16": "#d62728", "bf16": "#2ca02c", "fp8_e5m2": "#9467bd",
          "fp8_e4m3": "#8c564b", "bf16_autocast": "#2ca02c", "fp16_no_scaling": "#ff7f0e",
          "fp16_scaled_master": "#d62728", "fp16_no_master": "#7f7f7f"}


def bits_string(value: float, fmt: str) -> str:
    """``value``'s nearest ``fmt`` pattern as ``sign exponent mantissa`` bit groups."""
    f = get_format(fmt)
    b = encode(float(value), f)
    s, e, m = (int(t) for t in bit_fields(b, f))
    return f"{s} {e:0{f.exponent_bits}b} {m:0{f.mantissa_bits}b}"


def _neighbours(value: float, fmt: str) -> tuple[float, float, float]:
    """(stored value, next smaller and next larger representable magnitude around it)."""
    f = get_format(fmt)
    b = encode(abs(float(value)), f)
    stored = decode(b, f)
    lower = decode(b - 1, f) if b > 0 else 0.0
    upper = decode(b + 1, f) if b < f.max_bits else math.inf
    return stored, lower, upper


def format_explorer(value: float = 0.1, fmt: str = "fp16"):
    """The widget figure: each format's subnormal and normal ranges (log10 of magnitudes), the value,
    and for ``fmt`` the nearest representable neighbours; the note gives bits and relative errors."""
    value = check_number(value, "value", "format_explorer")
    f = get_format(fmt)
    x = abs(value)
    fig = go.Figure()
    rows = []
    for name in FORMAT_NAMES:
        info = format_info(name)
        lo, mid, hi = (math.log10(info[k]) for k in ("smallest_subnormal", "smallest_normal", "max"))
        width = 4 if name == f.name else 2
        fig.add_trace(go.Scatter(x=[lo, mid], y=[name, name], mode="lines", line=dict(color="#bbbbbb", width=8 * width // 2),
                                 name="subnormal" if name == "fp32" else None, showlegend=name == "fp32", legendgroup="sub"))
        fig.add_trace(go.Scatter(x=[mid, hi], y=[name, name], mode="lines", line=dict(color=COLORS[name], width=8 * width // 2),
                                 name="normal", showlegend=name == "fp32", legendgroup="normal"))
        stored, _, _ = _neighbours(value, name)
        err = abs(stored - x) / x if x and math.isfinite(stored) else (0.0 if stored == x else math.inf)
        rows.append(f"{name}: {bits_string(value, name)} → {stored:.6g} (rel. error {err:.1e})")
    if x > 0:
        fig.add_vline(x=math.log10(x), line=dict(color="black", dash="dash"))
        stored, lower, upper = _neighbours(value, f.name)
        pts = [v for v in (lower, stored, upper) if 0 < v < math.inf]
        fig.add_trace(go.Scatter(x=[math.log10(v) for v in pts], y=[f.name] * len(pts), mode="markers",
                                 marker=dict(color="black", size=10, symbol="line-ns-open"), name=f"{f.name} neighbours"))
    fig.update_xaxes(title="log10 |value|  (left of a bar: flushed to 0; right: overflow)", range=[-46, 40])
    style_figure(fig, f"{value:g} in every format (thick: {f.name})", height=360)
    stored, lower, upper = _neighbours(value, f.name)
    note = (f"{f.name} stores {value:g} as {'-' if value < 0 else ''}{stored:.8g}; neighbours {lower:.8g} and {upper:.8g}. "
            + " | ".join(rows))
    return fig, note


def parse_steps(text: str) -> list[int]:
    """``"5, 6, 40"`` → ``[5, 6, 40]`` (blank → ``[]``); a friendly ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"inject must be a string of step numbers like '5, 40', got {text!r}")
    try:
        return sorted({int(tok) for tok in text.replace(";", ",").split(",") if tok.strip()})
    except ValueError:
        raise ValueError(f"inject must list step numbers separated by commas, like '5, 40', got {text!r}") from None


def scale_lab(init_scale_log2: int = 16, growth_interval: int = 20, grad_max_log2: int = -4, inject: str = "60, 61",
              steps: int = 150):
    """The loss-scale lab's figure: both scalers' scale per step (log2) and the skipped steps."""
    init_scale_log2 = check_int(init_scale_log2, "init_scale_log2", "scale_lab", minimum=-10, maximum=40)
    steps = check_int(steps, "steps", "scale_lab")
    growth_interval = check_int(growth_interval, "growth_interval", "scale_lab")
    if not isinstance(inject, str):
        raise ValueError(f"inject must be a string of step numbers like '5, 40', got {inject!r}")
    tokens = [tok.strip() for tok in inject.replace(";", ",").split(",") if tok.strip()]
    ignored = [tok for tok in tokens if not tok.isdigit()]  # typed by a learner: skip what is not a step number
    injected = {int(tok) for tok in tokens if tok.isdigit()}
    gmax = 2.0 ** grad_max_log2
    ours = DynamicLossScaler(init_scale=2.0 ** init_scale_log2, growth_interval=growth_interval)
    script = []
    for t in range(steps):  # a step overflows when the scaled gradient passes FP16's largest value
        bad = t in injected or ours.scale * gmax > 65504.0
        script.append(bad)
        ours.update(bad)
    ref = gradscaler_trajectory(script, init_scale=2.0 ** init_scale_log2, growth_interval=growth_interval)
    same = ref["scales"] == ours.history and ref["skipped"] == ours.skipped
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(range(steps)), y=[math.log2(s) for s in ref["scales"]], name="torch GradScaler",
                             line=dict(color="#bbbbbb", width=6)))
    fig.add_trace(go.Scatter(x=list(range(steps)), y=[math.log2(s) for s in ours.history], name="lmlab DynamicLossScaler",
                             line=dict(color="#d62728", width=2)))
    fig.add_trace(go.Scatter(x=ours.skipped, y=[math.log2(ours.history[i]) for i in ours.skipped], mode="markers",
                             marker=dict(symbol="x", size=9, color="black"), name="skipped step (inf/NaN)"))
    fig.add_hline(y=math.log2(65504.0 / gmax), line=dict(dash="dot", color="#555"),
                  annotation_text="overflow above: 65504 / largest gradient")
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="log2(scale) after the step")
    style_figure(fig, "Dynamic loss scaling: grow after clean runs, halve and skip on overflow", height=380)
    note = (f"{len(ours.skipped)} of {steps} steps skipped; final scale 2^{math.log2(ours.scale):.0f}. "
            f"lmlab and GradScaler trajectories {'identical' if same else 'DIFFER'}."
            + (f" Ignored (not step numbers): {', '.join(map(repr, ignored))}." if ignored else ""))
    return fig, note


def sum_figure(sums: dict) -> go.Figure:
    """Running totals of 0.01 added once per step, one line per format."""
    fig = go.Figure()
    for name, totals in sums.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(totals) + 1)), y=totals, name=f"{name}: {totals[-1]:.6g}",
                                 line=dict(color=COLORS.get(name))))
    fig.update_xaxes(title="additions of 0.01")
    fig.update_yaxes(title="running total")
    return style_figure(fig, "Adding 0.01 a thousand times (exact: 10)", height=360)


def underflow_figure(u: dict) -> go.Figure:
    """Left: FP32 gradient magnitudes (log2) against FP16's limits. Right: the share of gradient
    entries FP16 flushes to zero at each loss scale (real and simulated FP16), inf marked."""
    import torch

    fig = make_subplots(rows=1, cols=2, subplot_titles=("FP32 gradient magnitudes", "zeroed by FP16 vs loss scale"))
    for key, color, label in (("param_grad_abs", "#1f77b4", "parameter grads"), ("activation_grad_abs", "#ff7f0e", "activation grads")):
        v = u[key]
        v = torch.log2(v[v > 0]).clamp(min=-60)
        counts = torch.histc(v, bins=60, min=-60, max=0)
        fig.add_trace(go.Bar(x=torch.linspace(-59.5, -0.5, 60).tolist(), y=counts.tolist(), name=label, marker_color=color,
                             opacity=0.6), row=1, col=1)
    for x, text in ((-24, "2^-24 smallest subnormal"), (-14, "2^-14 smallest normal")):
        fig.add_vline(x=x, line=dict(dash="dash", color="#d62728"), row=1, col=1)
    lg = [math.log2(s) for s in u["scales"]]
    for kind, color in (("real", "#d62728"), ("simulated", "#555555")):
        fig.add_trace(go.Scatter(x=lg, y=[100 * f for f in u[kind]], name=f"{kind} FP16", mode="lines+markers",
                                 line=dict(color=color, dash="solid" if kind == "real" else "dot")), row=1, col=2)
        bad = [x for x, inf in zip(lg, u[kind + "_inf"]) if inf]
        fig.add_trace(go.Scatter(x=bad, y=[0] * len(bad), mode="markers", marker=dict(symbol="x", size=12, color=color),
                                 name=f"{kind}: inf/NaN (step skipped)"), row=1, col=2)
    fig.update_xaxes(title="log2 |gradient|  (dashed: FP16 limits)", row=1, col=1)
    fig.update_xaxes(title="log2(loss scale)", row=1, col=2)
    fig.update_yaxes(title="entries", type="log", row=1, col=1)
    fig.update_yaxes(title="% of non-zero FP32 entries that became 0", row=1, col=2)
    return style_figure(fig, "Gradient underflow in FP16, and what loss scaling does about it", width=820, height=400)


def curves_figure(runs: dict, smooth: int = 5) -> go.Figure:
    """Mean training loss over seeds per recipe (running mean over ``smooth`` steps)."""
    fig = go.Figure()
    for recipe, seeds in runs.items():
        n = min(len(r["losses"]) for r in seeds)
        mean = [sum(r["losses"][i] for r in seeds) / len(seeds) for i in range(n)]
        sm = [sum(mean[max(0, i - smooth + 1):i + 1]) / len(mean[max(0, i - smooth + 1):i + 1]) for i in range(n)]
        fig.add_trace(go.Scatter(x=list(range(1, n + 1)), y=sm, name=recipe, line=dict(color=COLORS.get(recipe))))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title=f"training loss (nats, mean over seeds, {smooth}-step running mean)")
    return style_figure(fig, "One tiny GPT trained four ways", height=380)


def memory_figure(mem: dict) -> go.Figure:
    """Stacked bytes per parameter per recipe (weights, gradients, master, optimizer state)."""
    rows = mem["rows"]
    fig = go.Figure()
    for part, color in (("weights", "#1f77b4"), ("grads", "#ff7f0e"), ("master", "#2ca02c"), ("optimizer_state", "#9467bd")):
        fig.add_trace(go.Bar(x=list(rows), y=[r[part] for r in rows.values()], name=part, marker_color=color))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="bytes per parameter (measured)")
    return style_figure(fig, "What a parameter costs, by recipe", height=360)
