"""Lesson 00's experiments and figures (``lessons/00_tour``), importable so tests run the same code.

- :func:`train_tiny_gpt`: a tiny character-level GPT on Python's own documentation, against the
  unigram baseline (the best a model that ignores context can do).
- :func:`mask_figure` and :func:`visibility`: what each architecture's mask lets every token see.
- :func:`leakage_test`: does changing a later token change an earlier token's output?
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from lmlab.data.text import CharTokenizer, char_data, unigram_entropy
from lmlab.data.masks import architecture_mask, causal_mask, prefix_lm_mask
from lmlab.model import GPT, ModelConfig
from lmlab.train.config import TrainConfig
from lmlab.train.loop import History, seed_everything, train
from lmlab.course.widgets import mask_heatmap, style_figure

__all__ = ["TourResult", "train_tiny_gpt", "visibility", "mask_figure", "leakage_test", "loss_figure"]


@dataclass
class TourResult:
    model: GPT
    tokenizer: CharTokenizer
    history: History
    unigram_loss: float  # nats/token on validation, context ignored
    val_loss: float  # the trained model's final validation loss, nats/token


def train_tiny_gpt(steps: int = 800, seed: int = 0, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                   context_length: int = 64, batch_size: int = 32, lr: float = 3e-3, progress: bool = True) -> TourResult:
    """Train the lesson's tiny GPT on the embedded corpus and measure it against the unigram baseline."""
    tok, train_ids, val_ids = char_data()
    seed_everything(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                      n_layers=n_layers, n_heads=n_heads)
    model = GPT(cfg)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=max(1, steps // 8), seed=seed,
                         progress=progress)
    history = train(model, train_ids, val_ids, config=config)
    return TourResult(model, tok, history, unigram_entropy(train_ids, val_ids, tok.vocab_size), history.val_loss[-1])


def loss_figure(result: TourResult) -> go.Figure:
    h = result.history
    fig = go.Figure()
    fig.add_scatter(x=h.steps, y=h.train_loss, name="train (one batch)", line=dict(width=1), opacity=0.6)
    fig.add_scatter(x=h.val_steps, y=h.val_loss, name="validation", mode="lines+markers")
    fig.add_hline(y=result.unigram_loss, line_dash="dash", line_color="gray",
                  annotation_text=f"unigram baseline {result.unigram_loss:.2f}", annotation_position="top right")
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss (nats / token)")
    return style_figure(fig, "Tiny GPT: next-token loss", height=380)


def visibility(architecture: str, T: int, prefix_len: int = 0) -> dict:
    """Counts that describe a mask: visible pairs, and how many positions get a training loss.

    A causal decoder predicts every next token, so all T positions carry a loss. A prefix decoder only
    predicts the suffix: positions ``prefix_len - 1 .. T - 1`` (the last prefix position predicts the first
    suffix token), ``T - prefix_len + 1`` of them, as lesson 05 counts. An encoder-decoder predicts its
    ``T - prefix_len`` target tokens (the source is read, never predicted).
    """
    mask = architecture_mask(architecture, T, prefix_len)
    trained = {"causal decoder": T, "prefix decoder": T - prefix_len + 1}.get(architecture, T - prefix_len)
    return {
        "visible_pairs": int(mask.sum()),
        "fraction_visible": float(mask.float().mean()),
        "positions_with_loss": trained,
        "mean_keys_per_query": float(mask.sum(1).float().mean()),
    }


def mask_figure(architecture: str, T: int, prefix_len: int) -> tuple[go.Figure, str]:
    """Heatmap of who sees whom (rows = queries, columns = keys) and a one-line summary."""
    if architecture == "causal decoder":
        prefix_len = 0
    elif architecture == "encoder-decoder":
        prefix_len = min(max(prefix_len, 1), T - 1)  # the source needs >= 1 token, the target too
    else:
        prefix_len = min(prefix_len, T)
    mask = architecture_mask(architecture, T, prefix_len)
    labels = [("src " if architecture == "encoder-decoder" and i < prefix_len else "") + f"t{i}" for i in range(T)]
    fig = mask_heatmap(mask, f"What each token sees — {architecture}", labels=labels)
    if 0 < prefix_len < T:
        edge = prefix_len - 0.5
        fig.add_shape(type="line", x0=edge, x1=edge, y0=-0.5, y1=T - 0.5, line=dict(color="#d62728", dash="dot"))
        fig.add_shape(type="line", x0=-0.5, x1=T - 0.5, y0=edge, y1=edge, line=dict(color="#d62728", dash="dot"))
    fig.update_yaxes(title="query (the token doing the looking)")
    fig.update_xaxes(title="key (the token being looked at)")
    v = visibility(architecture, T, prefix_len)
    note = (f"{architecture}: {v['visible_pairs']} of {T * T} pairs visible ({v['fraction_visible']:.0%}); "
            f"{v['positions_with_loss']} of {T} positions get a next-token loss")
    fig.update_layout(width=560, height=600)
    return fig, note


@torch.no_grad()
def leakage_test(model: GPT, ids: torch.Tensor, position: int, prefix_len: int | None = None) -> dict:
    """Change the token at ``position`` and report which earlier outputs moved.

    With the causal mask nothing before ``position`` may change. With a prefix-LM mask whose prefix
    covers ``position``, earlier prefix tokens *do* see it, so their outputs change.
    """
    if ids.dim() != 1 or not 0 < position < len(ids):
        raise ValueError(f"ids must be 1-D and position in [1, {len(ids) - 1}], got shape {tuple(ids.shape)}, position {position}")
    T = len(ids)
    mask = causal_mask(T) if prefix_len is None else prefix_lm_mask(T, prefix_len)
    changed = ids.clone()
    changed[position] = (ids[position] + 1) % model.config.vocab_size
    before = model(ids[None], attn_mask=mask)[0]  # (T, V)
    after = model(changed[None], attn_mask=mask)[0]  # (T, V)
    moved = (before - after).abs().amax(dim=-1)[:position]  # (position,): change at each earlier output
    return {"max_change_before_position": float(moved.max()), "earlier_positions_changed": int((moved > 1e-6).sum())}


