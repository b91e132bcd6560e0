"""Lesson 01's experiments (``lessons/01_normalization``), importable so tests run the same code.

- :func:`batchnorm_vs_layernorm`: a token's BatchNorm output depends on which other sequences
  (and how much padding) share its batch; its LayerNorm output never does.
- :func:`norm_properties` and :func:`time_norms`: what LayerNorm and RMSNorm re-centre and
  re-scale, and what each costs (from-scratch and torch's kernels).
- :func:`compare_norm_training`: the same tiny GPT trained with LayerNorm and with RMSNorm.
- Figure builders for each, and the activation-histogram widget's figure.

Where the norm goes (post / pre / sandwich / DeepNorm) is in :mod:`lmlab.course.experiments.ch01_placement`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn as nn
import torch.nn.functional as F
from plotly.subplots import make_subplots

from lmlab.course.experiments.ch00_tour import leakage_test
from lmlab.course.widgets import style_figure
from lmlab.data.text import char_data, unigram_entropy
from lmlab.model import GPT, ModelConfig
from lmlab.model.norms import LayerNorm, RMSNorm
from lmlab.train.config import TrainConfig
from lmlab.train.loop import History, seed_everything, train

__all__ = [
    "batchnorm_vs_layernorm", "batchnorm_figure", "SequenceBatchNorm", "with_batchnorm", "batchnorm_leakage",
    "norm_properties", "time_norms", "timing_figure",
    "NormTraining", "compare_norm_training", "norm_training_figure",
    "activation_histogram_figure",
]

NORM_COLORS = {"layernorm": "#1f77b4", "rmsnorm": "#ff7f0e"}


# =============================================================================================
# (a) BatchNorm vs LayerNorm on padded, variable-length, small batches
# =============================================================================================


def _padded_batch(lengths: torch.Tensor, T: int, mu: torch.Tensor, sigma: torch.Tensor, g: torch.Generator):
    """``(B, T, d)`` activations (zeros at padded positions) and the ``(B, T)`` mask of real tokens."""
    B, d = len(lengths), len(mu)
    x = mu + sigma * torch.randn(B, T, d, generator=g)  # (B, T, d): every feature has its own mean/scale
    real = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    return x * real[..., None], real


def _bn(x: torch.Tensor, weight_mask: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Training-mode BatchNorm over every (b, t) position; ``weight_mask`` (B, T) keeps only real tokens."""
    if weight_mask is None:
        mean = x.mean(dim=(0, 1))  # (d,): statistics over the batch *and* the time axis, pads included
        var = x.var(dim=(0, 1), unbiased=False)
    else:
        w = weight_mask[..., None].to(x.dtype)  # (B, T, 1)
        n = w.sum()
        mean = (x * w).sum(dim=(0, 1)) / n  # (d,): real tokens only
        var = (((x - mean) * w) ** 2).sum(dim=(0, 1)) / n
    return (x - mean) / torch.sqrt(var + eps)  # (B, T, d)


def batchnorm_vs_layernorm(batch_sizes=(1, 2, 4, 8, 16, 32), d: int = 16, max_len: int = 32, min_len: int = 2,
                           probe_len: int = 12, trials: int = 40, seed: int = 0) -> dict:
    """Put one fixed "probe" sequence into many random padded batches and watch its normalized output.

    Every other sequence has a random length in ``[min_len, max_len]`` and is zero-padded to
    ``max_len``. Features have their own mean and scale (as real activations do). For each batch
    size, over ``trials`` batches, we measure at the probe's real tokens:

    - ``spread_*``: how much the probe's output moves when its batch-mates change (std across
      trials, averaged over positions and features). LayerNorm's is exactly 0.
    - ``mismatch_*``: the mean |difference| between the training-mode output and the output with
      the *true* statistics of the features (the best running averages could do; running averages
      collected on padded batches would carry the pads' bias too).

    ``*_padded``: the statistics include the pads (what ``nn.BatchNorm1d`` does on a padded batch);
    ``*_masked``: pads excluded (the careful version). Also returns the probe's pad-induced mean
    bias and what happens with one sequence of one token in training mode: the variance is 0 (eval mode
    uses the running averages).
    """
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    if not 1 <= min_len <= max_len or not 1 <= probe_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len and 1 <= probe_len <= max_len, got {min_len}, {max_len}, {probe_len}")
    if trials < 2:
        raise ValueError(f"trials must be >= 2 to measure a spread, got {trials}")
    g = torch.Generator().manual_seed(seed)
    mu = torch.empty(d).uniform_(-2.0, 2.0, generator=g)  # (d,) population mean per feature
    sigma = torch.empty(d).uniform_(0.5, 2.0, generator=g)  # (d,) population std per feature
    probe, _ = _padded_batch(torch.tensor([probe_len]), max_len, mu, sigma, g)  # (1, T, d)
    reference = (probe - mu) / sigma  # (1, T, d): normalized with the population statistics
    ln_ref = F.layer_norm(probe, (d,))  # (1, T, d)
    out = {"batch_sizes": [int(b) for b in batch_sizes], "spread_padded": [], "spread_masked": [], "spread_layernorm": [],
           "mismatch_padded": [], "mismatch_masked": [], "mean_pad_fraction": []}
    for B in out["batch_sizes"]:
        runs = {"padded": [], "masked": [], "layernorm": []}
        pad_fraction = []
        for _ in range(trials):
            lengths = torch.randint(min_len, max_len + 1, (B - 1,), generator=g)
            others, _ = _padded_batch(lengths, max_len, mu, sigma, g)
            x = torch.cat([probe, others])  # (B, T, d): the probe is row 0
            real = torch.arange(max_len)[None, :] < torch.cat([torch.tensor([probe_len]), lengths])[:, None]
            pad_fraction.append(1 - float(real.float().mean()))
            runs["padded"].append(_bn(x)[0, :probe_len])  # (probe_len, d)
            runs["masked"].append(_bn(x, real)[0, :probe_len])
            runs["layernorm"].append(F.layer_norm(x, (d,))[0, :probe_len])
        for name, outs in runs.items():
            stacked = torch.stack(outs)  # (trials, probe_len, d)
            out[f"spread_{name}"].append(float(stacked.std(dim=0).mean()))
            if name != "layernorm":
                out[f"mismatch_{name}"].append(float((stacked - reference[0, :probe_len]).abs().mean()))
        out["mean_pad_fraction"].append(sum(pad_fraction) / trials)
    out["layernorm_max_change"] = float(max((o - ln_ref[0, :probe_len]).abs().max() for o in runs["layernorm"]))
    # One token of one sequence in training mode: the variance over a single value is 0 (eval mode, as at
    # generation, would use the running averages instead).
    one = probe[:, :1]  # (1, 1, d)
    out["one_token_batchnorm_abs_max"] = float(_bn(one).abs().max())  # everything maps to 0
    out["one_token_layernorm_std"] = float(F.layer_norm(one, (d,)).std(unbiased=False))
    try:
        nn.BatchNorm1d(d).train()(one[0])  # (N=1, C=d)
        out["torch_batchnorm_one_token_error"] = ""
    except ValueError as exc:  # "Expected more than 1 value per channel when training"
        out["torch_batchnorm_one_token_error"] = str(exc).split(",")[0]
    return out


class SequenceBatchNorm(nn.Module):
    """``nn.BatchNorm1d`` over every (sequence, position) of a ``(B, T, d)`` input, per feature: what
    BatchNorm means for text. In training mode its statistics pool *all* positions, future ones
    included; in eval mode it uses its running averages (a fixed affine map per feature)."""

    def __init__(self, d: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        return self.bn(x.reshape(-1, x.size(-1))).view_as(x)


def with_batchnorm(model: GPT) -> GPT:
    """Replace every LayerNorm / RMSNorm of ``model`` by a :class:`SequenceBatchNorm` (in place)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.LayerNorm, nn.RMSNorm, LayerNorm, RMSNorm)):
                setattr(module, child_name, SequenceBatchNorm(model.config.d_model))
    return model


def batchnorm_leakage(seed: int = 0, T: int = 24, position: int = 12, vocab_size: int = 32) -> dict:
    """Lesson 00's leakage test on a causal GPT whose norms are BatchNorm, in training and eval mode.

    The causal mask keeps attention from seeing the future, but training-mode BatchNorm normalizes
    each feature with statistics pooled over the whole batch *including later positions*: changing
    the token at ``position`` moves the outputs before it. In eval mode (running averages) a single
    token is fine and nothing leaks; LayerNorm never leaks. Returns each variant's leakage dict
    (:func:`lmlab.course.experiments.ch00_tour.leakage_test`) and the eval-mode output of a one-token batch.
    """
    if not 0 < position < T:
        raise ValueError(f"position must be in [1, {T - 1}], got {position}")
    seed_everything(seed)
    cfg = ModelConfig(vocab_size=vocab_size, context_length=T, d_model=32, n_layers=2, n_heads=4, dropout=0.0)
    layernorm = GPT(cfg)
    batchnorm = with_batchnorm(GPT(cfg))
    ids = torch.randint(vocab_size, (T,), generator=torch.Generator().manual_seed(seed))
    out = {"layernorm": leakage_test(layernorm.eval(), ids, position)}
    out["batchnorm_train"] = leakage_test(batchnorm.train(), ids, position)
    out["batchnorm_eval"] = leakage_test(batchnorm.eval(), ids, position)
    with torch.no_grad():
        one = batchnorm.eval()(ids[None, :1])  # (1, 1, V): one token, running statistics
    out["eval_one_token_finite"] = bool(torch.isfinite(one).all())
    out["position"] = position
    return out


def batchnorm_figure(result: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "the probe's output moves with its batch-mates", "train-mode vs the true statistics"))
    B = result["batch_sizes"]
    styles = {"padded": ("BatchNorm, pads counted", "#d62728"), "masked": ("BatchNorm, pads masked", "#ff7f0e"),
              "layernorm": ("LayerNorm", "#1f77b4")}
    for name, (label, color) in styles.items():
        fig.add_scatter(x=B, y=result[f"spread_{name}"], name=label, mode="lines+markers", line_color=color,
                        legendgroup=name, row=1, col=1)
        if name != "layernorm":
            fig.add_scatter(x=B, y=result[f"mismatch_{name}"], name=label, mode="lines+markers", line_color=color,
                            legendgroup=name, showlegend=False, row=1, col=2)
    fig.update_xaxes(type="log", title="batch size (sequences)", tickvals=B)
    fig.update_yaxes(title="std of the probe's output across batches", row=1, col=1)
    fig.update_yaxes(title="mean |train-mode − true-statistics output|", row=1, col=2)
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return style_figure(fig, "BatchNorm on padded, variable-length batches", width=820, height=420)


# =============================================================================================
# (b) LayerNorm vs RMSNorm: what each does, what each costs, how each trains
# =============================================================================================


def _layer_norm_scratch(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xc = x - x.mean(-1, keepdim=True)  # two reductions: the mean ...
    return xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)  # ... and the variance


def _rms_norm_scratch(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # one reduction


def norm_properties(x: torch.Tensor, shift: float = 3.0, scale: float = 5.0) -> dict:
    """What LayerNorm and RMSNorm do to ``x`` (``(..., d)``), and whether ``x * scale + shift`` changes it.

    Returns, for each of ``layernorm`` / ``rmsnorm``: the mean over tokens of each output row's mean and
    root-mean-square, and the max change of the output when the input is scaled, and when shifted.
    """
    out = {}
    for name, fn in (("layernorm", lambda t: F.layer_norm(t, t.shape[-1:])), ("rmsnorm", lambda t: F.rms_norm(t, t.shape[-1:], eps=1e-6))):
        y = fn(x)
        out[name] = {
            "row_mean": float(y.mean(-1).mean()),
            "row_rms": float(y.pow(2).mean(-1).sqrt().mean()),
            "change_when_scaled": float((fn(x * scale) - y).abs().max()),
            "change_when_shifted": float((fn(x + shift) - y).abs().max()),
        }
    return out


def time_norms(rows: int = 2048, d: int = 256, repeats: int = 7, number: int = 10, seed: int = 0) -> dict[str, dict[str, float]]:
    """Microseconds per call (minimum over ``repeats`` rounds, the four timed in turn each round) of four
    ways to normalize a ``(rows, d)`` float32 tensor, for the ``forward`` pass alone and for
    ``forward+backward`` (what a training step pays).

    ``layernorm (scratch)`` / ``rmsnorm (scratch)``: plain tensor ops, as you would write them;
    ``F.layer_norm`` / ``F.rms_norm``: torch's kernels (no learned weight in any of the four).
    The default size (2 MB) stays clear of very large temporaries, whose allocation can cost more
    than the arithmetic on a CPU.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g)
    grad_out = torch.randn(rows, d, generator=g)
    xg = x.clone().requires_grad_(True)
    fns = {
        "layernorm (scratch)": _layer_norm_scratch,
        "rmsnorm (scratch)": _rms_norm_scratch,
        "F.layer_norm": lambda t: F.layer_norm(t, (d,)),
        "F.rms_norm": lambda t: F.rms_norm(t, (d,), eps=1e-6),
    }

    def forward(fn):
        with torch.no_grad():
            fn(x)

    def forward_backward(fn):
        torch.autograd.grad(fn(xg), xg, grad_out)

    out = {}
    for mode, run in (("forward", forward), ("forward+backward", forward_backward)):
        best = {name: math.inf for name in fns}
        for fn in fns.values():
            run(fn)  # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(number):
                    run(fn)
                best[name] = min(best[name], (time.perf_counter() - t0) / number)
        out[mode] = {name: t * 1e6 for name, t in best.items()}
    return out


def timing_figure(times: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars: one group per way of normalizing, one bar per mode (forward, forward+backward)."""
    fig = go.Figure()
    for mode, pattern in zip(times, ("", "/")):
        names = list(times[mode])
        fig.add_bar(x=names, y=[times[mode][n] for n in names], name=mode, marker_pattern_shape=pattern,
                    marker_color=[NORM_COLORS["layernorm" if "layer" in n else "rmsnorm"] for n in names],
                    text=[f"{times[mode][n]:.0f}" for n in names], textposition="outside")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="µs per call (min of repeats)")
    return style_figure(fig, "Cost of one normalization call (CPU); hatched = forward+backward", height=400)


@dataclass
class NormTraining:
    histories: dict[str, list[History]]  # norm -> one History per seed
    seeds: tuple[int, ...]
    unigram_loss: float

    def final(self, norm: str) -> list[float]:
        return [h.val_loss[-1] for h in self.histories[norm]]

    def mean(self, norm: str) -> float:
        v = self.final(norm)
        return sum(v) / len(v)

    def seconds(self, norm: str) -> float:
        return sum(h.seconds for h in self.histories[norm])


def compare_norm_training(norms=("layernorm", "rmsnorm"), seeds=(0, 1), steps: int = 200, d_model: int = 64,
                          n_layers: int = 2, n_heads: int = 4, context_length: int = 64, batch_size: int = 32,
                          lr: float = 3e-3, progress: bool = False) -> NormTraining:
    """Train the same pre-LN tiny GPT with each norm, same seeds and batches; final validation losses."""
    tok, train_ids, val_ids = char_data()
    histories = {}
    for norm in norms:
        histories[norm] = []
        for seed in seeds:
            seed_everything(seed)
            cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                              n_layers=n_layers, n_heads=n_heads, norm=norm)
            config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=max(1, steps // 4),
                                 eval_batches=8, seed=seed, progress=progress)
            histories[norm].append(train(GPT(cfg), train_ids, val_ids, config=config))
    return NormTraining(histories, tuple(seeds), unigram_entropy(train_ids, val_ids, tok.vocab_size))


def norm_training_figure(result: NormTraining) -> go.Figure:
    fig = go.Figure()
    for norm, hs in result.histories.items():
        for i, (seed, h) in enumerate(zip(result.seeds, hs)):
            fig.add_scatter(x=h.val_steps, y=h.val_loss, mode="lines+markers", name=f"{norm} (seed {seed})",
                            line=dict(color=NORM_COLORS.get(norm), dash="solid" if i == 0 else "dot"))
    fig.add_hline(y=result.unigram_loss, line_dash="dash", line_color="gray", annotation_text="unigram baseline")
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="validation loss (nats / token)")
    return style_figure(fig, "LayerNorm vs RMSNorm: the same tiny GPT", height=400)


# =============================================================================================
# Widget: activations before / after the norm
# =============================================================================================


def activation_histogram_figure(shift: float, scale: float, norm: str = "both", d: int = 64, tokens: int = 64,
                                seed: int = 0) -> tuple[go.Figure, str]:
    """Histograms of ``tokens`` activation vectors ``shift + scale * z`` (z ~ N(0, 1) of size ``d``,
    each token also a little off-centre) and of the same vectors after LayerNorm and/or RMSNorm."""
    if norm not in ("layernorm", "rmsnorm", "both"):
        raise ValueError(f"norm must be 'layernorm', 'rmsnorm' or 'both', got {norm!r}")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, d, generator=g) + 0.3 * torch.randn(tokens, 1, generator=g)  # (tokens, d)
    x = shift + scale * z
    outs = {"input": x}
    if norm in ("layernorm", "both"):
        outs["after LayerNorm"] = F.layer_norm(x, (d,))
    if norm in ("rmsnorm", "both"):
        outs["after RMSNorm"] = F.rms_norm(x, (d,), eps=1e-6)
    colors = {"input": "#7f7f7f", "after LayerNorm": NORM_COLORS["layernorm"], "after RMSNorm": NORM_COLORS["rmsnorm"]}
    fig = go.Figure()
    for name, t in outs.items():
        fig.add_histogram(x=t.flatten().tolist(), name=name, opacity=0.55, marker_color=colors[name], nbinsx=80)
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="activation value", range=[min(-4.0, shift - 4 * abs(scale)), max(4.0, shift + 4 * abs(scale))])
    fig.update_yaxes(title="count")
    parts = []
    for name, t in outs.items():
        parts.append(f"{name}: mean {float(t.mean()):+.2f}, std within a token {float(t.std(-1, unbiased=False).mean()):.2f}")
    return style_figure(fig, "Activations before and after the norm", height=400), " · ".join(parts)
