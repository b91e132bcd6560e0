"""Lesson 00's ladder experiment (``lessons/00_tour``): train each rung of :mod:`lmlab.model.minimal_gpt`
briefly on the same data with the same budget and report its validation loss."""

from __future__ import annotations

import time

from lmlab.data.text import char_data, unigram_entropy
from lmlab.model.minimal_gpt import LADDER
from lmlab.model import ModelConfig
from lmlab.train.config import TrainConfig
from lmlab.train.loop import seed_everything, train

__all__ = ["train_ladder"]


def train_ladder(steps: int = 150, seed: int = 0, d_model: int = 32, n_heads: int = 4, context_length: int = 32,
                 batch_size: int = 16, lr: float = 1e-2) -> list[dict]:
    """One row per rung: ``{"rung", "parameters", "val_loss", "seconds"}``, plus the unigram baseline first."""
    tok, train_ids, val_ids = char_data()
    rows = [{"rung": "unigram (no context)", "parameters": tok.vocab_size, "val_loss": unigram_entropy(train_ids, val_ids, tok.vocab_size), "seconds": 0.0}]
    for name, (cls, n_layers) in LADDER.items():
        cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=d_model,
                          n_heads=n_heads, n_layers=max(n_layers, 1))
        seed_everything(seed)
        model = cls(cfg)
        start = time.perf_counter()
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=steps, eval_batches=5, seed=seed,
                             progress=False)
        hist = train(model, train_ids, val_ids, config=config)
        rows.append({"rung": name, "parameters": sum(p.numel() for p in model.parameters()),
                     "val_loss": hist.val_loss[-1], "seconds": time.perf_counter() - start})
    return rows
