"""Lesson 02's experiments and figures (``lessons/02_activations``), importable so tests run the same code.

- :func:`activation_curves`: each activation and its derivative (by autograd) on a grid.
- :func:`swish_properties`: the seed's claims about Swish, measured: unbounded above, a dip below
  zero (non-monotonic), smooth, and its limits at ``beta = 0`` (the line ``x / 2``) and
  ``beta -> inf`` (ReLU).
- :func:`ffn_parameter_table`: a gated FFN at equal hidden size (+50 %) and at matched parameters
  (the 2/3 rule).
- :func:`compare_activations`: a parameter-matched training comparison on a tiny GPT over several
  seeds, and :func:`comparison_verdicts`, which decides from the measured numbers whether each
  difference is larger than the seed-to-seed noise (a paired t-test).
- :func:`swish_figure`, :func:`compare_figure`, :func:`curves_figure`, :func:`comparison_figure`:
  the lesson's plots and the widgets' ``make_figure`` functions.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmlab.model.ffn import FFN_ACTIVATIONS, FeedForward, gelu, glu_hidden_size, swish
from lmlab.data.text import char_data
from lmlab.model import GPT, ModelConfig
from lmlab.train.config import TrainConfig
from lmlab.train.loop import History, seed_everything, train
from lmlab.course.stats import T_CRITICAL_95, holm, paired_comparison
from lmlab.course.widgets import style_figure

__all__ = [
    "ACTIVATION_FUNCTIONS", "SWISH_RELU_GAP", "activation_curves", "swish_properties", "ffn_parameter_table",
    "ActivationComparison", "compare_activations", "comparison_verdicts", "curves_figure", "swish_figure",
    "compare_figure", "comparison_figure", "T_CRITICAL_95", "COMPARED_KINDS",
]

COMPARED_KINDS = ("relu", "gelu", "swiglu", "geglu")  # lesson 02's comparison, in this order (keys of FFN_ACTIVATIONS)

# max over x of |swish(x, 1) - relu(x)|: the depth of the dip, reached at x = -1.2785 (so the gap
# to ReLU at any beta is this number / beta).
SWISH_RELU_GAP = 0.27846454276107374

# The element-wise activations the lesson draws (gated units multiply two projections and have no
# one-variable curve: their "activation" is the gate's curve).
ACTIVATION_FUNCTIONS = {
    "ReLU": torch.relu,
    "GeLU": lambda x: gelu(x),
    "GeLU (tanh approx.)": lambda x: gelu(x, "tanh"),
    "Swish β=1 (SiLU)": lambda x: swish(x, 1.0),
    "sigmoid (GLU's gate)": torch.sigmoid,
    "Swish β=0 (x/2)": lambda x: swish(x, 0.0),
    "Swish β=10": lambda x: swish(x, 10.0),
}

# T_CRITICAL_95 (re-exported from lmlab.course.stats): two-sided 95 % critical values of Student's t.


def _grid(lo: float = -5.0, hi: float = 5.0, n: int = 401) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64)


def _value_and_derivative(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (dy,) = torch.autograd.grad(y.sum(), x)  # element-wise function: d(sum y)/dx_i = f'(x_i)
    return y.detach(), dy


def activation_curves(names=None, x: torch.Tensor | None = None) -> dict[str, dict[str, list[float]]]:
    """``{name: {"x", "y", "dy"}}`` for the named :data:`ACTIVATION_FUNCTIONS` (derivatives by autograd)."""
    names = list(ACTIVATION_FUNCTIONS) if names is None else list(names)
    unknown = [n for n in names if n not in ACTIVATION_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown activation(s) {unknown}; choose from {list(ACTIVATION_FUNCTIONS)}")
    x = _grid() if x is None else x.to(torch.float64)
    out = {}
    for name in names:
        y, dy = _value_and_derivative(ACTIVATION_FUNCTIONS[name], x)
        out[name] = {"x": x.tolist(), "y": y.tolist(), "dy": dy.tolist()}
    return out


def swish_properties(beta: float, lo: float = -8.0, hi: float = 8.0, n: int = 16001) -> dict[str, float | bool]:
    """Measure Swish(x, beta) = x·sigmoid(beta·x) on a fine grid of [lo, hi].

    Returns the minimum and where it is (the dip below zero), the smallest derivative (negative
    means non-monotonic), the value at ``hi`` (no cap above: about ``hi``), the largest jump of the
    derivative between neighbouring grid points (smoothness: ReLU's jumps by 1), and the largest
    distances to ReLU and to the line x/2.
    """
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"swish_properties: beta must be a finite number >= 0, got {beta!r}")
    x = _grid(lo, hi, n)
    y, dy = _value_and_derivative(lambda t: swish(t, float(beta)), x)
    i = int(torch.argmin(y))
    return {
        "beta": float(beta),
        "min_value": float(y[i]),
        "argmin": float(x[i]),
        "min_derivative": float(dy.min()),
        "monotonic": bool((dy >= -1e-12).all()),
        "value_at_hi": float(y[-1]),
        "max_derivative_jump": float((dy[1:] - dy[:-1]).abs().max()),
        "max_gap_to_relu": float((y - torch.relu(x)).abs().max()),
        "max_gap_to_half_x": float((y - x / 2).abs().max()),
    }


def ffn_parameter_table(d_model: int, plain_hidden: int | None = None, multiple_of: int = 8, bias: bool = False) -> list[dict]:
    """Rows (counted on real :class:`FeedForward` modules) for a plain FFN and a gated one.

    ``plain_hidden`` defaults to ``4 * d_model``. The gated FFN appears twice: at the *same*
    hidden size (three matrices instead of two: +50 % without biases) and at the hidden size of
    the 2/3 rule, :func:`glu_hidden_size` (about the same parameters).
    """
    h = 4 * d_model if plain_hidden is None else plain_hidden
    h_glu = glu_hidden_size(h, multiple_of)
    rows = []
    for label, kind, hidden in (("GeLU FFN", "gelu", h), ("SwiGLU FFN, same hidden size", "swiglu", h),
                                (f"SwiGLU FFN, 2/3 rule (multiple of {multiple_of})", "swiglu", h_glu)):
        n = sum(p.numel() for p in FeedForward(d_model, hidden, kind, bias=bias).parameters())
        rows.append({"ffn": label, "kind": kind, "hidden": hidden, "matrices": 3 if FFN_ACTIVATIONS[kind].gated else 2, "parameters": n})
    base = rows[0]["parameters"]
    for r in rows:
        r["vs_plain"] = r["parameters"] / base - 1.0
    return rows


# --------------------------------------------------------------------------------------------
# The training comparison
# --------------------------------------------------------------------------------------------


@dataclass
class ActivationComparison:
    """Final validation losses of the same tiny GPT with each FFN kind, one per seed."""

    activations: list[str]
    seeds: list[int]
    final_loss: dict[str, list[float]]  # activation -> one final validation loss per seed
    parameters: dict[str, int]  # activation -> whole-model parameter count
    ffn_hidden: dict[str, int]
    histories: dict[str, list[History]] = field(default_factory=dict)
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def mean(self, act: str) -> float:
        return statistics.fmean(self.final_loss[act])

    def std(self, act: str) -> float:
        v = self.final_loss[act]
        return statistics.stdev(v) if len(v) > 1 else 0.0

    def table(self) -> str:
        """The side-by-side table the lesson prints."""
        head = f"{'activation':<8} {'FFN hidden':>10} {'parameters':>10}   {'final val loss':>16}   per seed"
        lines = [head, "-" * len(head)]
        for a in self.activations:
            per_seed = " ".join(f"{v:.3f}" for v in self.final_loss[a])
            lines.append(f"{a:<8} {self.ffn_hidden[a]:>10} {self.parameters[a]:>10,}   "
                         f"{self.mean(a):>7.3f} ± {self.std(a):.3f}   {per_seed}")
        return "\n".join(lines)


def compare_activations(activations=COMPARED_KINDS, seeds=(0, 1, 2, 3), steps: int = 200, d_model: int = 32,
                        n_layers: int = 2, n_heads: int = 4, context_length: int = 32, batch_size: int = 32,
                        lr: float = 3e-3, eval_batches: int = 20, max_chars: int | None = None,
                        progress: bool = False) -> ActivationComparison:
    """Train the same tiny GPT once per (activation, seed) and record the final validation loss.

    The FFN hidden size is left to :class:`ModelConfig`: ``4 * d_model`` for plain kinds and the
    parameter-matched ``glu_hidden_size(4 * d_model, 8)`` for gated ones. A seed fixes the
    initialisation and the order of the training batches, and every run is evaluated on the same
    validation windows, so runs with the same seed differ only by the activation (a *paired*
    comparison).
    """
    activations = list(activations)
    bad = [a for a in activations if a not in FFN_ACTIVATIONS]
    if bad or not activations:
        raise ValueError(f"compare_activations: activations must be a non-empty subset of {tuple(FFN_ACTIVATIONS)}, got {activations}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"compare_activations: seeds must be distinct ints, got {seeds}")
    tok, train_ids, val_ids = char_data(max_chars=max_chars)
    result = ActivationComparison(activations, seeds, {a: [] for a in activations}, {}, {}, {a: [] for a in activations},
                                  settings=dict(steps=steps, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                                context_length=context_length, batch_size=batch_size, lr=lr))
    start = time.perf_counter()
    for act in activations:
        for seed in seeds:
            seed_everything(seed)
            cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                              n_layers=n_layers, n_heads=n_heads, activation=act)
            model = GPT(cfg)
            config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=steps, eval_batches=eval_batches,
                                 seed=seed, progress=progress)
            hist = train(model, train_ids, val_ids, config=config)
            result.final_loss[act].append(hist.val_loss[-1])
            result.histories[act].append(hist)
            result.parameters[act] = model.num_parameters()
            result.ffn_hidden[act] = cfg.d_ff
    result.seconds = time.perf_counter() - start
    return result


def comparison_verdicts(result: ActivationComparison, against: str | None = None, *, margin: float | None = 0.02,
                        claims: dict[str, str] | None = None) -> list[dict]:
    """Compare every activation with ``against`` (default: the best mean) with the shared verdict helper
    (:func:`lmlab.course.stats.paired_comparison`: paired t-test + equivalence test against ``margin``
    nats), all comparisons Holm-corrected together (:func:`lmlab.course.stats.holm`).

    ``claims`` maps an activation to the claim tested about it against the reference (``"better"``,
    ``"worse"`` or ``"equal"``; default ``"better"``: the gated FFN papers' claim). Each dict holds the
    mean over seeds of (its loss - the reference's loss with the same seed), its standard error, t, the
    95 % interval, ``significant``, ``outcome`` (supports / contradicts / undetermined) and ``sentence``.
    """
    ref = against if against is not None else min(result.activations, key=result.mean)
    if ref not in result.final_loss:
        raise ValueError(f"comparison_verdicts: {ref!r} was not trained; have {result.activations}")
    claims = claims or {}
    others = [act for act in result.activations if act != ref]
    cs = holm([paired_comparison(result.final_loss[act], result.final_loss[ref], act, ref, margin=margin,
                                 claim=claims.get(act, "better"), seeds=result.seeds) for act in others])
    return [{"activation": act, "against": ref, "mean_diff": c.mean_diff, "se": c.se, "t": c.t, "critical": c.critical,
             "ci95": (c.ci_low, c.ci_high), "mde": c.mde, "margin": c.margin, "significant": c.significant,
             "better": c.better, "outcome": c.outcome, "comparison": c, "sentence": c.sentence}
            for act, c in zip(others, cs)]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _two_panels(title: str, height: int = 380) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("f(x)", "f′(x) (autograd)"), horizontal_spacing=0.1)
    fig.update_xaxes(title="x", zeroline=True)
    return style_figure(fig, title, width=820, height=height)


def curves_figure(names=None, x_range: tuple[float, float] = (-5.0, 5.0)) -> go.Figure:
    """Each named activation (left) and its derivative (right)."""
    curves = activation_curves(names, _grid(*x_range))
    fig = _two_panels("Activation functions and their derivatives")
    for i, (name, c) in enumerate(curves.items()):
        color = _COLORS[i % len(_COLORS)]
        fig.add_scatter(x=c["x"], y=c["y"], name=name, legendgroup=name, line=dict(color=color), row=1, col=1)
        fig.add_scatter(x=c["x"], y=c["dy"], name=name, legendgroup=name, showlegend=False, line=dict(color=color), row=1, col=2)
    return fig


def compare_figure(names: tuple[str, ...] = ("ReLU", "GeLU", "Swish β=1 (SiLU)"), x_range: float = 5.0) -> tuple[go.Figure, str]:
    """The selector widget: the chosen activations on [-x_range, x_range], and how much each dips below zero."""
    names = tuple(names) or ("ReLU",)
    fig = curves_figure(names, (-float(x_range), float(x_range)))
    parts = []
    for name, c in activation_curves(names, _grid(-8.0, 8.0, 16001)).items():
        y = torch.tensor(c["y"])
        dy = torch.tensor(c["dy"])
        parts.append(f"{name}: min {float(y.min()):+.3f}, " + ("monotonic" if bool((dy >= -1e-12).all()) else "non-monotonic"))
    return fig, "; ".join(parts)


def swish_figure(beta: float = 1.0, x_range: float = 5.0) -> tuple[go.Figure, str]:
    """The β-slider widget: Swish(x, β) and its derivative, with ReLU and x/2 (its two limits) dashed."""
    x = _grid(-x_range, x_range, 401)
    y, dy = _value_and_derivative(lambda t: swish(t, float(beta)), x)
    fig = _two_panels(f"Swish(x) = x·σ(βx), β = {beta:g}")
    xs = x.tolist()
    fig.add_scatter(x=xs, y=torch.relu(x).tolist(), name="ReLU (β → ∞)", line=dict(color="gray", dash="dash"), row=1, col=1)
    fig.add_scatter(x=xs, y=(x / 2).tolist(), name="x/2 (β = 0)", line=dict(color="gray", dash="dot"), row=1, col=1)
    fig.add_scatter(x=xs, y=(x > 0).double().tolist(), name="ReLU′", showlegend=False, line=dict(color="gray", dash="dash"), row=1, col=2)
    fig.add_scatter(x=xs, y=y.tolist(), name=f"Swish β={beta:g}", line=dict(color="#d62728", width=3), row=1, col=1)
    fig.add_scatter(x=xs, y=dy.tolist(), name=f"Swish′ β={beta:g}", line=dict(color="#1f77b4", width=3), row=1, col=2)
    fig.update_yaxes(range=[-1.0, x_range], row=1, col=1)
    fig.update_yaxes(range=[-0.3, 1.3], row=1, col=2)
    p = swish_properties(float(beta))
    if not p["monotonic"]:
        dip = f"dips to {p['min_value']:.3f} at x = {p['argmin']:.2f}; smallest slope {p['min_derivative']:.3f} (non-monotonic)"
    else:
        dip = "no dip: monotonic"
    note = (f"β = {beta:g}: {dip}; largest distance to ReLU {p['max_gap_to_relu']:.3f} "
            f"(bound 0.278/β = {SWISH_RELU_GAP / beta if beta > 0 else math.inf:.3f}); to x/2 {p['max_gap_to_half_x']:.3f} on [-8, 8]")
    return fig, note


def comparison_figure(result: ActivationComparison) -> go.Figure:
    """Final validation loss per activation: every seed as a dot, the mean ± std as a bar."""
    fig = go.Figure()
    acts = result.activations
    fig.add_bar(x=acts, y=[result.mean(a) for a in acts], name="mean over seeds",
                error_y=dict(type="data", array=[result.std(a) for a in acts]), marker_color="#9ecae1")
    for i, seed in enumerate(result.seeds):
        fig.add_scatter(x=acts, y=[result.final_loss[a][i] for a in acts], mode="markers+lines", name=f"seed {seed}",
                        line=dict(width=1, dash="dot"), marker=dict(size=8))
    lo = min(min(v) for v in result.final_loss.values())
    hi = max(max(v) for v in result.final_loss.values())
    pad = max(0.02, 0.3 * (hi - lo))
    fig.update_yaxes(title="final validation loss (nats / token)", range=[lo - pad, hi + pad])
    fig.update_xaxes(title="FFN activation (parameter-matched)")
    return style_figure(fig, f"Same tiny GPT, four FFNs, {len(result.seeds)} seeds each (lines join runs with the same seed)", height=420)
