"""Train variants over seeds *and* learning rates, and compare them with the shared paired test.

A verdict that ranks two trained variants at one learning rate confounds the variant with the LR:
one may simply like a different step size. :func:`train_sweep` trains every (variant, LR, seed)
with the same data order and validation windows per seed; :meth:`Sweep.verdict` compares two
variants with :func:`lmlab.course.stats.paired_comparison` at every LR and at each variant's own best LR,
and says whether the conclusion depends on the LR. Lessons 01, 03 and 04 use it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lmlab.argcheck import check_int
from lmlab.course.stats import PairedComparison, holm, paired_comparison
from lmlab.course.widgets import style_figure
from lmlab.data.text import char_data
from lmlab.model import GPT, ModelConfig
from lmlab.train.config import TrainConfig
from lmlab.train.loop import seed_everything, train

__all__ = ["Sweep", "train_sweep", "sweep_figure"]


@dataclass
class Sweep:
    """Final validation losses: ``loss[(variant, lr)]`` holds one value per seed (``nan`` if it diverged)."""

    variants: list[str]
    lrs: list[float]
    seeds: list[int]
    loss: dict[tuple[str, float], list[float]]
    parameters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def mean(self, variant: str, lr: float) -> float:
        v = self.loss[(variant, lr)]
        return statistics.fmean(v) if all(math.isfinite(x) for x in v) else math.inf

    def best_lr(self, variant: str) -> float:
        """The LR with the lowest mean loss over seeds (a diverged seed rules an LR out)."""
        return min(self.lrs, key=lambda lr: self.mean(variant, lr))

    def diverged(self, variant: str, lr: float) -> int:
        return sum(not math.isfinite(x) for x in self.loss[(variant, lr)])

    def compare(self, a: str, b: str, lr: float | None = None, *, claim: str = "better",
                margin: float | None = None) -> PairedComparison | None:
        """``a`` vs ``b`` paired by seed, at ``lr`` (both at it) or, with ``lr=None``, each at its best LR,
        with the verdict on ``claim`` against ``margin`` (:func:`lmlab.course.stats.paired_comparison`).
        ``None`` when a run diverged there (reported by :meth:`table`, not averaged away)."""
        la = self.loss[(a, lr if lr is not None else self.best_lr(a))]
        lb = self.loss[(b, lr if lr is not None else self.best_lr(b))]
        if not all(math.isfinite(x) for x in la + lb):
            return None
        return paired_comparison(la, lb, a, b, claim=claim, margin=margin, seeds=self.seeds)

    def verdict(self, a: str, b: str, *, claim: str = "better",
                margin: float | None = None) -> tuple[str, PairedComparison | None, bool]:
        """``(text, comparison at each one's best LR, whether the outcome is the same at every LR)``.

        The outcome at one LR is the three-way verdict on ``claim`` (supports / contradicts /
        undetermined); the comparisons at the LRs and, when the two best LRs differ, at the best LRs are
        Holm-corrected together (when they coincide the best-LR comparison is that LR's, counted once)."""
        lines, outcomes = [], []
        cs = [self.compare(a, b, lr, claim=claim, margin=margin) for lr in self.lrs]
        same_best = self.best_lr(a) == self.best_lr(b)
        if not same_best:
            cs.append(self.compare(a, b, claim=claim, margin=margin))
        live = holm([c for c in cs if c is not None])
        it = iter(live)
        cs = [next(it) if c is not None else None for c in cs]
        if same_best:
            cs.append(cs[self.lrs.index(self.best_lr(a))])
        for lr, c in zip(self.lrs, cs):
            outcomes.append("diverged" if c is None else c.outcome)
            lines.append(f"  at lr {lr:g}: " + (c.sentence if c is not None else "a run diverged, no paired test"))
        best = cs[-1]
        same = len(set(outcomes)) == 1
        head = (f"{a} (best lr {self.best_lr(a):g}) vs {b} (best lr {self.best_lr(b):g}), each at its best LR: "
                + (best.sentence if best is not None else "a run diverged, no paired test"))
        tail = ("The outcome is the same at every LR tried." if same else
                f"The outcome depends on the learning rate ({len(self.lrs)} LRs tried): a one-LR comparison would "
                "have been confounded with the step size.")
        return "\n".join([head, *lines, tail]), best, same

    def table(self) -> str:
        head = f"{'variant':<22}" + "".join(f"{'lr ' + format(lr, 'g'):>18}" for lr in self.lrs)
        rows = [head]
        for v in self.variants:
            cells = []
            for lr in self.lrs:
                d = self.diverged(v, lr)
                vals = [x for x in self.loss[(v, lr)] if math.isfinite(x)]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}" + (f" ({d} div)" if d else "") if vals else "diverged")
            rows.append(f"{v:<22}" + "".join(f"{c:>18}" for c in cells))
        return "\n".join(rows) + f"\n(mean ± std of the final validation loss over seeds {self.seeds})"


def train_sweep(configs: dict[str, dict], lrs: Sequence[float] = (3e-3,), seeds: Sequence[int] = (0, 1, 2), *,
                steps: int = 150, batch_size: int = 16, eval_batches: int = 10,
                base: dict | None = None, build: Callable[[ModelConfig], object] | None = None) -> Sweep:
    """Train lesson 00's tiny GPT once per (variant, LR, seed) on the character corpus.

    ``configs``: variant name -> :class:`ModelConfig` overrides, on top of ``base`` (default: d 32,
    2 layers, 4 heads, T 32). A seed fixes the initialisation (where shapes agree), the batch order
    and the validation windows, so runs with the same seed are paired. ``build`` maps a config to a
    model (default :class:`GPT`).
    """
    if not configs:
        raise ValueError("train_sweep: configs must name at least one variant")
    lrs, seeds = [float(x) for x in lrs], [int(s) for s in seeds]
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"train_sweep: lrs must be positive numbers, got {lrs}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"train_sweep: seeds must be distinct ints, got {seeds}")
    check_int(steps, "steps", "train_sweep")
    tok, train_ids, val_ids = char_data()
    settings = dict(vocab_size=tok.vocab_size, context_length=32, d_model=32, n_layers=2, n_heads=4)
    settings.update(base or {})
    build = build or GPT
    sweep = Sweep(list(configs), lrs, seeds, {})
    start = time.perf_counter()
    for name, overrides in configs.items():
        for lr in lrs:
            losses = []
            for seed in seeds:
                seed_everything(seed)
                model = build(ModelConfig(**{**settings, **overrides}))
                config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=steps,
                                     eval_batches=eval_batches, seed=seed, progress=False)
                h = train(model, train_ids, val_ids, config=config)
                loss = h.val_loss[-1]
                losses.append(loss if math.isfinite(loss) else math.nan)
                sweep.parameters[name] = sum(p.numel() for p in model.parameters())
            sweep.loss[(name, lr)] = losses
    sweep.seconds = time.perf_counter() - start
    return sweep


def sweep_figure(sweep: Sweep, title: str = "Final validation loss by learning rate") -> "go.Figure":
    """Each variant's final validation loss against the LR: every seed as a dot, the mean as a line."""
    import plotly.graph_objects as go

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    fig = go.Figure()
    for i, v in enumerate(sweep.variants):
        color = colors[i % len(colors)]
        fig.add_scatter(x=sweep.lrs, y=[sweep.mean(v, lr) if math.isfinite(sweep.mean(v, lr)) else None for lr in sweep.lrs],
                        name=v, mode="lines", line=dict(color=color), legendgroup=v)
        xs = [lr for lr in sweep.lrs for _ in sweep.seeds]
        ys = [x if math.isfinite(x) else None for lr in sweep.lrs for x in sweep.loss[(v, lr)]]
        fig.add_scatter(x=xs, y=ys, mode="markers", marker=dict(color=color, size=7), name=f"{v} (each seed)",
                        legendgroup=v, showlegend=False)
    fig.update_xaxes(type="log", title="learning rate", tickvals=sweep.lrs)
    fig.update_yaxes(title="final validation loss (nats / char)")
    return style_figure(fig, title, height=380)
