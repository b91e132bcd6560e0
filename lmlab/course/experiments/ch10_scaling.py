"""Lesson 10's experiments and figures (``lessons/10_scaling``), importable so tests run the same code.

- :func:`train_run`: one tiny GPT on the embedded corpus, validation loss at geometric checkpoints
  (one constant learning rate after a short warm-up, so every checkpoint is a point ``(N, D, C, L)``);
- :func:`run_sweep`: the seeded sweep of sizes; :func:`all_points`, :func:`frontier` (the lower
  envelope of loss against compute, what ``L(C)`` describes);
- :func:`predict_run`: fit ``L(C) = a C^b + c`` on the sweep and predict a planned run's final loss
  with a bootstrap interval, before it is trained; :func:`score_prediction` the verdict after;
- :func:`subset_predictions`: the same prediction from fits on fewer decades / points;
- :func:`isoflop`: loss against N at fixed compute from the same runs; :func:`tokens_per_param`:
  Chinchilla's fit with N counted with or without embeddings;
- figures for the lesson and its two widgets (:func:`budget_figure`, :func:`fit_explorer_figure`).
"""

from __future__ import annotations

import math
import time

import plotly.graph_objects as go
import torch

from lmlab.data.text import char_data, sample_batch
from lmlab.model import GPT, ModelConfig
from lmlab.scaling.counting import CONSTANT_SETS, compute_optimal, count_params, flops_per_token, isoflop_curve, matmul_params
from lmlab.scaling.fit import bootstrap_chinchilla, bootstrap_power_law, fit_chinchilla
from lmlab.train.loop import evaluate, lm_loss, seed_everything
from lmlab.argcheck import check_int, check_positive
from lmlab.course.widgets import style_figure

__all__ = ["SWEEP", "sweep_config", "train_run", "run_sweep", "all_points", "frontier", "predict_run",
           "predict_run_chinchilla", "score_prediction", "subset_predictions", "isoflop", "tokens_per_param", "sweep_figure",
           "isoflop_figure", "subset_figure", "budget_figure", "fit_explorer_figure"]

# The lesson's sweep: ~15 s of small runs, then one planned run of ~10 s (one thread, 2-core laptop).
SWEEP = dict(sizes=(16, 24, 32), steps=500, big=48, big_steps=600, n_layers=2, n_heads=2, context_length=64,
             batch_size=16, lr=3e-3, warmup=20, n_checkpoints=8, first_checkpoint=20, eval_batches=8, seed=0)


def sweep_config(d_model: int, n_layers: int = 2, n_heads: int = 2, context_length: int = 64) -> ModelConfig:
    """The sweep's model family: GPT-2-style blocks of width ``d_model`` on the corpus' characters."""
    check_int(d_model, "d_model", "sweep_config", minimum=2)
    tok = char_data().tok
    return ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                       n_layers=n_layers, n_heads=n_heads)


def _checkpoints(first: int, steps: int, n: int) -> list[int]:
    if n == 1 or first >= steps:
        return [steps]
    return sorted({round(first * (steps / first) ** (i / (n - 1))) for i in range(n)})


def train_run(d_model: int, steps: int, *, n_layers: int = 2, n_heads: int = 2, context_length: int = 64,
              batch_size: int = 16, lr: float = 3e-3, warmup: int = 20, n_checkpoints: int = 8,
              first_checkpoint: int = 20, eval_batches: int = 8, seed: int = 0) -> dict:
    """Train one model with AdamW (constant ``lr`` after a linear warm-up) and evaluate the validation
    loss at ``n_checkpoints`` geometric steps. Returns the sizes and one point per checkpoint."""
    where = "train_run"
    check_int(steps, "steps", where)
    check_positive(lr, "lr", where)
    cfg = sweep_config(d_model, n_layers, n_heads, context_length)
    _, train_ids, val_ids = char_data()
    gen = seed_everything(seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    fpt, tokens_per_step = flops_per_token(cfg), batch_size * context_length
    marks = set(_checkpoints(first_checkpoint, steps, n_checkpoints))
    points, start = [], time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        x, y = sample_batch(train_ids, batch_size, context_length, generator=gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step in marks:
            D = step * tokens_per_step
            points.append(dict(step=step, D=D, C=fpt * D, loss=evaluate(model, val_ids, batch_size, eval_batches)))
            model.train()
    return dict(d_model=d_model, N=count_params(cfg), N_nonemb=count_params(cfg, exclude_embeddings=True),
                N_matmul=matmul_params(cfg), flops_per_token=fpt, steps=steps, points=points,
                seconds=time.perf_counter() - start)


def run_sweep(sizes=SWEEP["sizes"], steps: int = SWEEP["steps"], **kwargs) -> list[dict]:
    """:func:`train_run` for every width in ``sizes`` (same seed, same batches, same validation windows)."""
    sizes = [check_int(d, "sizes", "run_sweep", minimum=2) for d in sizes]
    defaults = {k: v for k, v in SWEEP.items() if k not in ("sizes", "steps", "big", "big_steps")}
    return [train_run(d, steps, **{**defaults, **kwargs}) for d in sizes]


def all_points(runs: list[dict]) -> list[dict]:
    """Every checkpoint of every run, with the run's sizes, sorted by compute."""
    pts = [dict(p, d_model=r["d_model"], N=r["N"], N_nonemb=r["N_nonemb"]) for r in runs for p in r["points"]]
    return sorted(pts, key=lambda p: p["C"])


def frontier(points: list[dict]) -> list[dict]:
    """The lower envelope: points no cheaper point beats (the best loss reached so far at each compute)."""
    out, best = [], math.inf
    for p in sorted(points, key=lambda p: p["C"]):
        if p["loss"] < best:
            out.append(p)
            best = p["loss"]
    return out


def predict_run(runs: list[dict], compute: float, *, n_boot: int = 100, level: float = 0.9, seed: int = 0,
                min_compute: float | None = None) -> dict:
    """Fit ``L(C)`` on the frontier of ``runs`` (checkpoints at ``C >= min_compute`` only, if given)
    and predict the loss at ``compute`` with a ``level`` bootstrap interval."""
    check_positive(compute, "compute", "predict_run")
    pts = frontier(all_points(runs))
    if min_compute is not None:
        pts = [p for p in pts if p["C"] >= check_positive(min_compute, "min_compute", "predict_run")]
    C, L = [p["C"] for p in pts], [p["loss"] for p in pts]
    if len(C) < 4:
        return dict(ok=False, message=f"only {len(C)} frontier points: a 3-parameter fit needs at least 4", points=pts, compute=compute)
    boot = bootstrap_power_law(C, L, at=compute, n_boot=n_boot, level=level, seed=seed)
    out = dict(points=pts, compute=compute, fit=boot["fit"], ok=boot["ok"] and "low" in boot, message=boot["message"],
               decades=math.log10(max(C) / min(C)), extrapolation=compute / max(C), n_failed=boot["n_failed"])
    if out["ok"]:
        out.update(prediction=boot["prediction"], low=boot["low"], high=boot["high"], level=level)
    return out


def predict_run_chinchilla(runs: list[dict], n_params: float, n_tokens: float, *, n_boot: int = 100,
                           level: float = 0.9, seed: int = 0) -> dict:
    """Fit Chinchilla's ``L(N, D)`` on every checkpoint of ``runs`` and predict the loss of a model of
    ``n_params`` trained on ``n_tokens`` (it need not be compute-optimal), with a bootstrap interval."""
    pts = all_points(runs)
    boot = bootstrap_chinchilla([p["N"] for p in pts], [p["D"] for p in pts], [p["loss"] for p in pts],
                                at=(n_params, n_tokens), n_boot=n_boot, level=level, seed=seed)
    out = dict(fit=boot["fit"], ok=bool(boot["ok"] and "low" in boot), message=boot["message"], n_failed=boot["n_failed"])
    if out["ok"]:
        out.update(prediction=boot["prediction"], low=boot["low"], high=boot["high"], level=level)
    return out


def score_prediction(pred: dict, actual: float, tolerance: float = 0.05) -> dict:
    """Compare a :func:`predict_run` prediction with the measured loss; the verdict is computed."""
    check_positive(actual, "actual", "score_prediction")
    if not pred.get("ok"):
        return dict(ok=False, sentence=f"No prediction to score: {pred.get('message')}")
    err = actual - pred["prediction"]
    rel = err / actual
    inside = pred["low"] <= actual <= pred["high"]
    close = abs(rel) <= tolerance
    width = pred["high"] - pred["low"]
    if inside and close:
        tail = " — the small runs predicted the big one."
    elif close:
        tail = " — close, but the interval was too narrow: it covers the fit's uncertainty, not a single run's noise."
    elif inside:
        tail = f" — inside only because the interval is wide ({width:.3f} nats): the fit did not pin the loss down."
    else:
        tail = " — the extrapolation failed here."
    sentence = (f"Predicted {pred['prediction']:.3f} [{pred['low']:.3f}, {pred['high']:.3f}], measured {actual:.3f}: "
                f"error {err:+.3f} nats ({rel:+.1%}). The measured loss is {'inside' if inside else 'outside'} the "
                f"{pred['level']:.0%} interval and {'within' if close else 'NOT within'} {tolerance:.0%} of the prediction" + tail)
    return dict(ok=True, error=err, rel_error=rel, inside=inside, within_tolerance=close, sentence=sentence)


def subset_predictions(runs: list[dict], compute: float, n_boot: int = 100) -> list[dict]:
    """The prediction at ``compute`` from fits on parts of the frontier: all of it, its last decade,
    its last half-decade, its first decade, and every other point (same bootstrap as :func:`predict_run`)."""
    pts = frontier(all_points(runs))
    top = pts[-1]["C"]
    subsets = {
        "all points": pts,
        "every other point": pts[::2] if pts[-1] in pts[::2] else pts[::2] + [pts[-1]],
        "last decade only": [p for p in pts if p["C"] >= top / 10],
        "last half-decade only": [p for p in pts if p["C"] >= top / 10 ** 0.5],
        "first decade only": [p for p in pts if p["C"] <= pts[0]["C"] * 10],
    }
    out = []
    for name, sub in subsets.items():
        row = dict(name=name, n=len(sub), decades=math.log10(sub[-1]["C"] / sub[0]["C"]) if sub else 0.0)
        if len(sub) < 4:
            row.update(ok=False, message=f"{len(sub)} points: too few for 3 parameters")
        else:
            b = bootstrap_power_law([p["C"] for p in sub], [p["loss"] for p in sub], at=compute, n_boot=n_boot)
            row.update(ok=bool(b["ok"] and "low" in b), message=b["message"])
            if row["ok"]:
                row.update(prediction=b["prediction"], low=b["low"], high=b["high"])
        out.append(row)
    return out


def _loss_at(run: dict, C: float) -> float | None:
    """A run's loss at compute ``C``, interpolated linearly in log C between checkpoints (None outside)."""
    pts = run["points"]
    for p, q in zip(pts, pts[1:]):
        if p["C"] <= C <= q["C"]:
            t = math.log(C / p["C"]) / math.log(q["C"] / p["C"])
            return p["loss"] + t * (q["loss"] - p["loss"])
    return None


def isoflop(runs: list[dict], levels) -> list[dict]:
    """For each compute level: every run's (interpolated) loss there, against N, and the best N."""
    out = []
    for C in levels:
        row = [dict(d_model=r["d_model"], N=r["N"], loss=_loss_at(r, C)) for r in runs]
        row = [x for x in row if x["loss"] is not None]
        if row:
            out.append(dict(C=C, runs=row, best=min(row, key=lambda x: x["loss"])))
    return out


def tokens_per_param(runs: list[dict], compute: float) -> dict:
    """Fit Chinchilla's L(N, D) on every checkpoint twice, with N = all parameters and N = non-embedding
    parameters, and give each fit's compute-optimal tokens per parameter at ``compute`` (C = 6ND)."""
    pts = all_points(runs)
    out = {}
    for key, label in (("N", "all parameters"), ("N_nonemb", "non-embedding parameters")):
        fit = fit_chinchilla([p[key] for p in pts], [p["D"] for p in pts], [p["loss"] for p in pts])
        row = dict(label=label, fit=fit, ok=fit.ok, message=fit.message)
        if fit.ok:
            row.update(compute_optimal(compute, fit.constants(label)))
        out[key] = row
    return out


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _curve(fit, lo: float, hi: float, n: int = 60) -> tuple[list[float], list[float]]:
    xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    return xs, fit.predict(xs)


def sweep_figure(runs: list[dict], pred: dict | None = None, big: dict | None = None) -> go.Figure:
    """Loss against compute (log-log): each run's checkpoints, the frontier, the fit and the prediction."""
    fig = go.Figure()
    for i, r in enumerate(runs):
        fig.add_scatter(x=[p["C"] for p in r["points"]], y=[p["loss"] for p in r["points"]], mode="lines+markers",
                        name=f"d={r['d_model']} (N={r['N']:,})", line=dict(color=_COLORS[i % 6], width=1))
    env = frontier(all_points(runs))
    fig.add_scatter(x=[p["C"] for p in env], y=[p["loss"] for p in env], mode="markers", name="frontier (fitted)",
                    marker=dict(symbol="circle-open", size=12, color="black"))
    if pred and pred.get("ok"):
        xs, ys = _curve(pred["fit"], env[0]["C"], pred["compute"] * 1.5)
        fig.add_scatter(x=xs, y=ys, mode="lines", name="fit a·C^b + c", line=dict(color="black", dash="dash"))
        fig.add_scatter(x=[pred["compute"]], y=[pred["prediction"]], mode="markers", name="prediction",
                        marker=dict(symbol="diamond", size=12, color="#d62728"),
                        error_y=dict(type="data", symmetric=False, array=[pred["high"] - pred["prediction"]],
                                     arrayminus=[pred["prediction"] - pred["low"]]))
    if big is not None:
        fig.add_scatter(x=[p["C"] for p in big["points"]], y=[p["loss"] for p in big["points"]], mode="lines+markers",
                        name=f"planned run d={big['d_model']} (trained after)", line=dict(color="#9467bd", width=2))
    fig.update_xaxes(type="log", title="training compute C (FLOPs, 6N + 12LTd per token)")
    fig.update_yaxes(type="log", title="validation loss (nats/char)")
    return style_figure(fig, "Small runs, their frontier, and the predicted big run", width=780, height=460)


def isoflop_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for i, row in enumerate(rows):
        c = _COLORS[i % 6]
        fig.add_scatter(x=[x["N"] for x in row["runs"]], y=[x["loss"] for x in row["runs"]], mode="lines+markers",
                        name=f"C = {row['C']:.1e}", line=dict(color=c))
        fig.add_scatter(x=[row["best"]["N"]], y=[row["best"]["loss"]], mode="markers", showlegend=False,
                        marker=dict(symbol="star", size=16, color=c), hovertext="minimum")
    fig.update_xaxes(type="log", title="parameters N")
    fig.update_yaxes(title="validation loss at that compute")
    return style_figure(fig, "IsoFLOP slices from the same runs (★ = best size at that compute)", height=420)


def subset_figure(rows: list[dict], actual: float | None = None) -> go.Figure:
    ok = [r for r in rows if r["ok"]]
    fig = go.Figure(go.Scatter(
        x=[r["prediction"] for r in ok], y=[f"{r['name']} ({r['n']} pts, {r['decades']:.1f} dec.)" for r in ok], mode="markers",
        error_x=dict(type="data", symmetric=False, array=[r["high"] - r["prediction"] for r in ok],
                     arrayminus=[r["prediction"] - r["low"] for r in ok]), marker=dict(size=10), name="prediction"))
    if actual is not None:
        fig.add_vline(x=actual, line=dict(color="#d62728", dash="dash"), annotation_text="measured")
    fig.update_xaxes(title="predicted loss of the big run (90 % bootstrap interval)")
    return style_figure(fig, "The same prediction from fits on less data", height=340)


def budget_figure(log10_compute: float, constants: str) -> tuple[go.Figure, str]:
    """The compute-budget explorer: the isoFLOP valley L(N, C/6N) and its closed-form minimum."""
    C = 10 ** check_positive(log10_compute, "log10_compute", "budget_figure")
    k = CONSTANT_SETS[constants] if constants in CONSTANT_SETS else constants
    curve = isoflop_curve(C, k)
    opt = curve["opt"]
    fig = go.Figure(go.Scatter(x=curve["N"], y=curve["loss"], mode="lines", name=f"L(N, C/6N), {constants}"))
    fig.add_scatter(x=[opt["N"]], y=[opt["loss"]], mode="markers", marker=dict(symbol="star", size=16), name="N_opt")
    fig.update_xaxes(type="log", title="parameters N")
    fig.update_yaxes(title="predicted loss")
    note = (f"C = {C:.2e} FLOPs → N_opt = {opt['N']:.3g}, D_opt = {opt['D']:.3g} tokens "
            f"({opt['tokens_per_param']:.1f} tokens/parameter), predicted loss {opt['loss']:.3f}")
    return style_figure(fig, f"IsoFLOP curve at C = 1e{log10_compute:.1f}", height=400), note


def fit_explorer_figure(runs: list[dict], big: dict, use: dict, min_log10_c: float, n_boot: int = 60) -> tuple[go.Figure, str]:
    """The fit explorer: fit only on the runs ticked in ``use`` ({d_model: bool}) above ``min_log10_c``."""
    chosen = [r for r in runs if use.get(r["d_model"], False)]
    C_big, actual = big["points"][-1]["C"], big["points"][-1]["loss"]
    pred = predict_run(chosen, C_big, n_boot=n_boot, min_compute=10 ** min_log10_c) if chosen else dict(ok=False, message="no run selected")
    fig = sweep_figure(chosen, pred if pred.get("ok") else None, big)
    if pred.get("ok"):
        note = (f"fit on {len(pred['points'])} frontier points ({pred['decades']:.1f} decades): predicted "
                f"{pred['prediction']:.3f} [{pred['low']:.3f}, {pred['high']:.3f}], measured {actual:.3f} "
                f"({(actual - pred['prediction']) / actual:+.1%})")
    else:
        note = f"no usable fit: {pred['message']}"
        fig.add_annotation(text="no usable fit: " + pred["message"][:60], xref="paper", yref="paper", x=0.5, y=0.95, showarrow=False)
    return fig, note
