"""Lesson 09's figures and widget callbacks (``lessons/09_training_recipe``)."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from lmlab.train.schedule import torch_warmup_cosine, transformers_warmup_cosine, warmup_cosine
from lmlab.train.spikes import SpikeDetector
from lmlab.course.widgets import style_figure
from lmlab.course.experiments.ch09_recipe import SettingResult, SpikeResult, final_loss, spike_experiment

__all__ = ["schedule_figure", "settings_figure", "sweep_figure", "spike_figure", "spike_lab_figure", "LAB_MODEL"]

LAB_MODEL = dict(d_model=16, n_layers=1, n_heads=2, context_length=16)  # the spike lab retrains: keep it instant


def schedule_figure(warmup: int = 10, total: int = 60, min_frac: float = 0.1, past: int = 40):
    """The course's warm-up + cosine and torch's / transformers' versions, ``past`` steps beyond ``total``."""
    steps = total + past
    t = list(range(steps))
    ours = [warmup_cosine(s, 1.0, min_frac, min(warmup, total), total) for s in t]
    th = torch_warmup_cosine(steps, 1.0, min_frac, min(warmup, total), total)
    try:  # transformers is optional (lmlab[parity]); Colab has it, a lean Binder image may not
        tf = transformers_warmup_cosine(steps, 1.0, min_frac, min(warmup, total), total)
    except ImportError:
        tf = None
    fig = go.Figure()
    fig.add_vrect(x0=total, x1=steps - 1, fillcolor="#f6d5d5", opacity=0.5, line_width=0,
                  annotation_text="after the planned end: torch / transformers rise again", annotation_position="top left")
    fig.add_scatter(x=t, y=th, name="torch SequentialLR(LinearLR, CosineAnnealingLR)", line=dict(width=5, color="#9ecae1"))
    if tf is not None:
        fig.add_scatter(x=t, y=tf, name="transformers cosine_with_min_lr", line=dict(width=2, dash="dash", color="#e6550d"))
    fig.add_scatter(x=t, y=ours, name="lmlab warmup_cosine (clamped)", line=dict(width=2, color="#08306b"))
    fig.update_xaxes(title="optimizer step")
    fig.update_yaxes(title="learning rate / peak", range=[0, 1.05])
    worst = max(th[total:]) if past else min_frac
    note = (f"Up to step {total} all three agree (max difference {max(abs(a - b) for a, b in zip(ours[:total + 1], th[:total + 1])):.1e}); "
            f"{past} steps past the end torch is back at {worst:.2f} × peak, lmlab stays at {min_frac:.2f}."
            + ("" if tf is not None else " (transformers is not installed: its curve is left out.)"))
    return style_figure(fig, "Warm-up + cosine: three implementations", height=420), note


def settings_figure(result: SettingResult) -> go.Figure:
    """Final validation loss of every variant, one marker per seed, against the baseline's."""
    fig = go.Figure()
    names = list(result.losses)
    for i, seed in enumerate(result.seeds):
        ys = [result.losses[n][i] for n in names]
        fig.add_scatter(x=names, y=[None if not math.isfinite(v) else v for v in ys], mode="markers+lines",
                        name=f"seed {seed}", line=dict(width=1), marker=dict(size=9))
    fig.add_hline(y=result.unigram, line_dash="dash", line_color="gray", annotation_text="unigram baseline")
    fig.update_yaxes(title="final validation loss (nats / token)")
    return style_figure(fig, f"One setting changed at a time ({result.settings.get('steps')} steps, peak lr {result.settings.get('lr')})",
                        height=420)


def sweep_figure(sweep: dict) -> go.Figure:
    fig = go.Figure()
    for warmup, losses in sweep["losses"].items():
        fig.add_scatter(x=sweep["lrs"], y=[None if not math.isfinite(v) else v for v in losses], mode="lines+markers",
                        name=f"warm-up {warmup} steps")
    fig.add_hline(y=sweep["unigram"], line_dash="dash", line_color="gray", annotation_text="unigram baseline")
    fig.update_xaxes(title="peak learning rate", type="log")
    fig.update_yaxes(title="final validation loss")
    return style_figure(fig, f"Learning-rate sweep, {sweep['steps']} steps, with and without warm-up", height=380)


def spike_figure(r: SpikeResult, title: str | None = None) -> go.Figure:
    """Clean, jolted and rolled-back runs; detections, rollbacks and the batches skipped."""
    fig = go.Figure()
    fig.add_scatter(x=r.clean.steps, y=r.clean.train_loss, name="clean", line=dict(color="#2ca02c", width=1.5))
    fig.add_scatter(x=r.hurt.steps, y=r.hurt.train_loss, name="spike, no handling", line=dict(color="#d62728", width=1.5))
    fig.add_scatter(x=r.healed.steps, y=r.healed.train_loss, name="spike, rollback + skip", line=dict(color="#1f77b4", width=2))
    if r.healed.rolled_back:
        s, v = zip(*r.healed.rolled_back)
        fig.add_scatter(x=s, y=v, mode="markers", name="steps undone by the rollback", marker=dict(color="#1f77b4", symbol="x", size=7))
    fig.add_vline(x=r.jolt_step, line_dash="dot", line_color="#d62728", annotation_text="jolt", annotation_position="top left")
    for rb in r.healed.rollbacks:
        fig.add_vline(x=rb["step"], line_dash="dash", line_color="#1f77b4", annotation_text=f"detected → back to {rb['to_step']}",
                      annotation_position="top right")
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="training loss (nats / token)")
    return style_figure(fig, title or "A loss spike injected on purpose, caught and rolled back", height=420)


def spike_lab_figure(jolt_step: int = 45, factor: float = 30.0, window: int = 30, threshold: float = 6.0,
                     skip_batches: int = 10):
    """The spike lab: rerun the (very small) experiment with these settings; also what the detector sees."""
    r = spike_experiment(jolt_step=jolt_step, factor=factor, window=window, threshold=threshold,
                         min_history=min(20, window), skip_batches=skip_batches, snapshot_every=10, steps=90,
                         model_kw=LAB_MODEL, lr=2e-2, margin=0.1)
    fig = spike_figure(r, f"jolt ×{factor:g} at step {jolt_step}; detector window {window}, threshold {threshold:g}σ")
    det = SpikeDetector(window, threshold, min(20, window))
    flagged, z = [], []
    for s, l, g in zip(r.hurt.steps, r.hurt.train_loss, r.hurt.grad_norm):
        if det.check(l, g):
            flagged.append(s)
        z.append(min(max(det.last_z), 3 * threshold))  # what the detector sees (capped for the plot)
    # the detector's view of the unprotected run, on a second axis, with the threshold it compares against
    fig.add_scatter(x=r.hurt.steps, y=z, name="detector z-score (no handling)", yaxis="y2",
                    line=dict(color="#7f7f7f", width=1, dash="dot"))
    fig.add_scatter(x=[r.hurt.steps[0], r.hurt.steps[-1]], y=[threshold, threshold], name=f"threshold {threshold:g}σ",
                    yaxis="y2", mode="lines", line=dict(color="#7f7f7f", width=1))
    fig.update_layout(yaxis2=dict(title="z-score (σ)", overlaying="y", side="right", showgrid=False))
    note = (f"Without handling the detector would fire at steps {flagged[:6]}{'…' if len(flagged) > 6 else ''}; "
            f"with rollback: {len(r.healed.rollbacks)} rollback(s), {sum(x['skipped_batches'] for x in r.healed.rollbacks)} "
            f"batches skipped; final loss clean {final_loss(r.clean):.3f}, hurt {final_loss(r.hurt):.3f}, "
            f"rolled back {final_loss(r.healed):.3f}.")
    return fig, note
