"""Lesson 01's placement experiments (``lessons/01_normalization``, part 2): where the norm goes.

- :func:`grad_norms_per_layer` / :func:`placement_grad_norms`: the gradient norm of every block's
  weights at initialisation, the measurement behind "post-LN has large gradients near the output,
  pre-LN does not" (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
  Fig. 3), under lmlab's GPT-2 init or the original Transformer's Xavier init.
- :func:`depth_scan`: the same at several depths.
- :func:`stability_experiment`: a deep stack trained at a high learning rate without warm-up
  (post-LN vs pre-LN vs sandwich-LN vs DeepNorm) over several seeds, with the residual stream's RMS
  recorded at every step.
- Figure builders for each, and the gradient-norm widget's figure.

What each norm does and costs is in :mod:`lmlab.course.experiments.ch01_normalization`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import plotly.graph_objects as go
import torch
import torch.nn as nn

from lmlab.data.text import char_data, sample_batch, unigram_entropy
from lmlab.model import GPT, ModelConfig
from lmlab.model.gpt import placement_gains
from lmlab.model.registry import NORM_PLACEMENTS
from lmlab.model.norms import pre_ln_block  # noqa: F401 (re-exported: the reference lives in the core)
from lmlab.train.config import TrainConfig
from lmlab.train.loop import History, lm_loss, seed_everything, train
from lmlab.course.widgets import style_figure

__all__ = [
    "INITS", "POSITION_COLORS",
    "pre_ln_block", "grad_norms_per_layer", "init_weights", "placement_grad_norms", "depth_scan", "grad_norm_figure",
    "grad_norm_explorer_figure", "StabilityResult", "stability_experiment", "stability_figure",
]

INITS = ("gpt2", "xavier")
POSITION_COLORS = {"post": "#d62728", "pre": "#1f77b4", "sandwich": "#2ca02c", "deepnorm": "#9467bd"}


# =============================================================================================
# (c) Placement: gradient norms at initialisation, and stability
# =============================================================================================


def init_weights(model: GPT, init: str = "gpt2") -> GPT:
    """Re-initialise ``model`` in place. ``gpt2``: lmlab's own init (as built). ``xavier``: the original
    Transformer's — Xavier-uniform linear layers, no residual down-scaling, embeddings N(0, 1/d);
    DeepNorm's ``beta`` still scales its sub-layers (DeepNet uses Xavier init with that gain)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "gpt2":
        return model
    d = model.config.d_model
    gains = placement_gains(model)  # {linear: [(rows, beta)]}, empty unless DeepNorm
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m is not model.lm_head:
                nn.init.xavier_uniform_(m.weight)
                for rows, gain in gains.get(m, ()):
                    m.weight[rows] *= gain
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in model.modules():  # after the linears: with tied embeddings lm_head.weight is tok_emb.weight
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, d ** -0.5)
    return model


def _split_batch(batch, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        if batch.dim() != 2 or batch.shape[1] < 2:
            raise ValueError(f"{where}: batch must be (x, y) or one (B, T + 1) tensor with T >= 1, "
                             f"got shape {tuple(batch.shape)}")
        return batch[:, :-1], batch[:, 1:]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        if not all(isinstance(t, torch.Tensor) for t in (x, y)) or x.shape != y.shape or x.dim() != 2:
            raise ValueError(f"{where}: batch (x, y) must be two token-id tensors of the same shape (B, T)")
        return x, y
    raise ValueError(f"{where}: batch must be (x, y) or one (B, T + 1) tensor, got {type(batch).__name__}")


def _grad_norms(model: GPT, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    loss = lm_loss(model(x), y)
    loss.backward()

    def norm(params) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

    def matrices(module: torch.nn.Module):
        return [p for p in module.parameters() if p.dim() >= 2]

    return {
        "attn": [norm(matrices(b.attn)) for b in model.blocks],
        "ffn": [norm(matrices(b.ffn)) for b in model.blocks],
        "block": [norm(b.parameters()) for b in model.blocks],
        "loss": [float(loss.detach())],
    }


def grad_norms_per_layer(cfg: ModelConfig, batch: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
                         seed: int = 0) -> dict[str, list[float]]:
    """Per-layer L2 gradient norms of a freshly initialised ``GPT(cfg)`` on one batch.

    ``batch``: ``(x, y)`` token ids of shape ``(B, T)`` (as from ``lmlab.data.text.sample_batch``), or
    one ``(B, T + 1)`` tensor that is split into ``x = ids[:, :-1]``, ``y = ids[:, 1:]``.
    The model is built under ``torch.manual_seed(seed)``, in eval mode (no dropout).

    Returns lists of length ``n_layers``, layer 0 nearest the input:
    ``attn`` and ``ffn`` (the norm over that sub-layer's weight matrices, biases left out, as in
    Xiong et al.), ``block`` (over all of the block's parameters), plus ``loss`` (one float, in a list).
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"grad_norms_per_layer: cfg must be a ModelConfig, got {type(cfg).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"grad_norms_per_layer: seed must be an int, got {seed!r}")
    x, y = _split_batch(batch, "grad_norms_per_layer")
    torch.manual_seed(seed)
    return _grad_norms(GPT(cfg).eval(), x, y)


def placement_grad_norms(positions=("post", "pre", "sandwich"), n_layers: int = 6, init: str = "gpt2",
                         d_model: int = 64, n_heads: int = 4, batch_size: int = 16, context_length: int = 64,
                         seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """:func:`grad_norms_per_layer` for each norm position, on the same corpus batch and seed, under
    ``init`` (``gpt2``: lmlab's; ``xavier``: the original Transformer's, see :func:`init_weights`).

    Each value is :func:`grad_norms_per_layer`'s dict plus ``stream_std``: the std of the residual
    stream leaving the last block (pre-LN's final norm divides the gradient's way back by about it).
    """
    for pos in positions:
        if pos not in NORM_PLACEMENTS:
            raise ValueError(f"positions must be among {NORM_PLACEMENTS.names()}, got {pos!r}")
    tok, train_ids, _ = char_data()
    x, y = sample_batch(train_ids, batch_size, context_length, generator=torch.Generator().manual_seed(seed))
    out = {}
    for pos in positions:
        cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                          n_layers=n_layers, n_heads=n_heads, norm_position=pos)
        torch.manual_seed(seed)
        model = init_weights(GPT(cfg), init).eval()
        stream = []
        hook = model.blocks[-1].register_forward_hook(lambda _m, _i, o: stream.append(float(o.detach().std())))
        out[pos] = _grad_norms(model, x, y)
        hook.remove()
        out[pos]["stream_std"] = stream  # std of the residual stream leaving the last block (one float)
    return out


def depth_scan(depths=(6, 12, 24), seeds=(0, 1), init: str = "xavier", **kwargs) -> dict[str, list[float]]:
    """Post-LN vs pre-LN at init across depths, averaged over ``seeds`` (batch and weights both change).

    Per depth: ``post_over_pre_last`` (post-LN's last-layer FFN gradient norm ÷ pre-LN's),
    ``post_last_over_first`` and ``pre_last_over_first`` (each one's last layer ÷ its first).
    """
    out = {"depths": [int(d) for d in depths], "post_over_pre_last": [], "post_last_over_first": [], "pre_last_over_first": []}
    for depth in out["depths"]:
        runs = [placement_grad_norms(("post", "pre"), n_layers=depth, init=init, seed=s, **kwargs) for s in seeds]
        post, pre = [r["post"]["ffn"] for r in runs], [r["pre"]["ffn"] for r in runs]
        out["post_over_pre_last"].append(sum(p[-1] / q[-1] for p, q in zip(post, pre)) / len(runs))
        out["post_last_over_first"].append(sum(p[-1] / p[0] for p in post) / len(runs))
        out["pre_last_over_first"].append(sum(q[-1] / q[0] for q in pre) / len(runs))
    return out


def grad_norm_figure(norms: dict[str, dict[str, list[float]]], title: str = "", which: str = "ffn",
                     log_y: bool = True) -> go.Figure:
    fig = go.Figure()
    for pos, g in norms.items():
        layers = list(range(1, len(g[which]) + 1))
        fig.add_scatter(x=layers, y=g[which], name=pos + ("-LN" if pos in ("post", "pre", "sandwich") else ""),
                        mode="lines+markers", line_color=POSITION_COLORS.get(pos))
    fig.update_xaxes(title="layer (1 = nearest the input)", dtick=1 if len(layers) <= 12 else None)
    fig.update_yaxes(title=f"‖∂loss/∂W‖ of the {'FFN' if which == 'ffn' else which} weights", type="log" if log_y else "linear")
    return style_figure(fig, title or "Gradient norm per layer at initialisation", height=420)


@lru_cache(maxsize=64)
def _cached_placement(pos: str, n_layers: int, init: str) -> dict[str, list[float]]:
    return placement_grad_norms((pos,), n_layers=n_layers, init=init)[pos]  # the lesson's sizes: d=64, one batch of 16 x 64


def grad_norm_explorer_figure(depth: int, placements, init: str) -> tuple[go.Figure, str]:
    """The widget's figure: FFN-weight gradient norm per layer for the chosen placements and depth."""
    placements = tuple(placements) or ("pre",)
    norms = {pos: _cached_placement(pos, int(depth), init) for pos in placements}
    ratios = ", ".join(f"{p}: {g['ffn'][-1] / g['ffn'][0]:.2f}" for p, g in norms.items())
    note = f"last layer ÷ first layer — {ratios} (above 1: larger gradients near the output)"
    return grad_norm_figure(norms, f"{depth} layers, {init} init (d=64)"), note


@dataclass
class StabilityResult:
    """``histories[pos]``: one :class:`History` per seed; ``residual_rms[pos]``: per seed, the RMS of the
    residual stream after the last block at every training step (what sandwich-LN is meant to tame)."""

    histories: dict[str, list[History]]
    unigram_loss: float
    settings: dict = field(default_factory=dict)
    residual_rms: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return list(self.settings.get("seeds", []))

    def final_loss(self, pos: str, i: int = 0) -> float:
        return self.histories[pos][i].val_loss[-1]

    def status(self, pos: str, i: int = 0, margin: float = 0.1) -> str:
        """Seed ``i``'s run: ``diverged`` (loss not finite), ``stalled`` (not ``margin`` below the unigram
        baseline) or ``trained``."""
        h = self.histories[pos][i]
        if not all(math.isfinite(v) for v in h.train_loss + h.val_loss):
            return "diverged"
        return "stalled" if self.final_loss(pos, i) > self.unigram_loss - margin else "trained"

    def counts(self, pos: str) -> dict[str, int]:
        """How many seeds trained / stalled / diverged."""
        out = {"trained": 0, "stalled": 0, "diverged": 0}
        for i in range(len(self.histories[pos])):
            out[self.status(pos, i)] += 1
        return out

    def summary(self, pos: str) -> str:
        c, n = self.counts(pos), len(self.histories[pos])
        return f"{pos}: trained in {c['trained']} of {n} seeds, stalled in {c['stalled']}, diverged in {c['diverged']}"


def stability_experiment(positions=("post", "pre", "deepnorm"), n_layers: int = 12, d_model: int = 32, n_heads: int = 4,
                         lr: float = 3e-3, steps: int = 150, init: str = "xavier", grad_clip: float | None = None,
                         batch_size: int = 16, context_length: int = 32, seeds=(0,),
                         progress: bool = False) -> StabilityResult:
    """Train a deep, narrow GPT with each norm position at a constant, high learning rate: no warm-up,
    no gradient clipping by default, the same seeds (init where shapes agree, batches) for all.
    A forward hook records the residual stream's RMS after the last block at every training step."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"stability_experiment: seeds must be distinct ints, got {seeds}")
    tok, train_ids, val_ids = char_data()
    histories, rms = {}, {}
    for pos in positions:
        histories[pos], rms[pos] = [], []
        for seed in seeds:
            cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                              n_layers=n_layers, n_heads=n_heads, norm_position=pos)
            seed_everything(seed)
            model = init_weights(GPT(cfg), init)
            trace: list[float] = []

            def record(module, inputs, output, trace=trace):
                if module.training:  # training steps only, not the evaluation passes
                    trace.append(float(output.detach().float().pow(2).mean().sqrt()))

            handle = model.blocks[-1].register_forward_hook(record)
            try:
                config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, grad_clip=grad_clip,
                                     eval_every=max(1, steps // 3), eval_batches=6, seed=seed, progress=progress)
                histories[pos].append(train(model, train_ids, val_ids, config=config))
            finally:
                handle.remove()
            rms[pos].append(trace)
    settings = dict(n_layers=n_layers, d_model=d_model, lr=lr, steps=steps, init=init, grad_clip=grad_clip, seeds=seeds)
    return StabilityResult(histories, unigram_entropy(train_ids, val_ids, tok.vocab_size), settings, rms)


def stability_figure(result: StabilityResult) -> go.Figure:
    """Left: validation loss of every seed; right: the residual stream's RMS after the last block over
    training (mean over seeds, log scale)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "validation loss (every seed)", "residual-stream RMS after the last block"))
    for pos, hs in result.histories.items():
        color = POSITION_COLORS.get(pos)
        for i, h in enumerate(hs):
            fig.add_scatter(x=h.val_steps, y=h.val_loss, name=f"{pos}: {result.summary(pos).split(': ', 1)[1]}",
                            mode="lines+markers", line=dict(color=color, width=2), legendgroup=pos, showlegend=i == 0,
                            row=1, col=1)
        traces = [t for t in result.residual_rms.get(pos, []) if t]
        if traces:
            n = min(len(t) for t in traces)
            mean = [sum(t[j] for t in traces) / len(traces) for j in range(n)]
            fig.add_scatter(x=list(range(1, n + 1)), y=mean, name=pos, line=dict(color=color, width=2), legendgroup=pos,
                            showlegend=False, row=1, col=2)
    fig.add_hline(y=result.unigram_loss, line_dash="dash", line_color="gray", annotation_text="unigram baseline", row=1, col=1)
    s = result.settings
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss (nats / token)", row=1, col=1)
    fig.update_yaxes(title="RMS", type="log", row=1, col=2)
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return style_figure(fig, f"{s.get('n_layers')} layers, lr {s.get('lr')}, no warm-up, {s.get('init')} init, "
                        f"{len(result.seeds)} seeds", width=820, height=440)
