"""TrainConfig and the training loop's policies (lesson 09): the loop reproduces the pre-refactor numbers.

``tests/data/train_config_runs.json`` holds what the keyword-argument ``train()`` (before
``TrainConfig``) measured on small runs covering every option: each optimizer, its
hyper-parameters, clipping, both schedules, accumulation, the batch ramp, a jolt, every spike
policy (rollback, rollbacks exhausted, skip, a plateau taken as the new normal, lower_lr), the
embedding-gradient shrink, the three non-finite policies and a checkpoint resume. The loop must
reproduce every loss, rate, gradient norm and the final parameters bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lmlab.data.text import char_data
from lmlab.model.gpt import GPT, ModelConfig
from lmlab.train.loop import seed_everything

FIXTURE = Path(__file__).parent / "data" / "train_config_runs.json"
COMMON = dict(steps=24, batch_size=4, lr=1e-2, eval_every=8, eval_batches=2, progress=False)
DETECT = dict(window=8, threshold=3.0, min_history=6)
RUNS = {
    "plain": {},
    "adafactor": dict(optimizer="adafactor", lr=0.1),
    "adamw_hyper": dict(betas=[0.8, 0.99], eps=1e-6, weight_decay=0.05, decay_embeddings=False),
    "no_clip": dict(grad_clip=None, weight_decay=0.0),
    "clip_tight": dict(grad_clip=0.1),
    "cosine": dict(schedule="cosine", warmup=5, min_lr_ratio=0.2),
    "constant_warmup": dict(warmup=6),
    "accumulation": dict(batch_size=8, micro_batch_size=2),
    "ramp": dict(batch_size=8, batch_ramp=[2, 64], steps=20),
    "ramp_micro": dict(batch_size=8, batch_ramp=[2, 32], micro_batch_size=1, schedule="cosine", warmup=3),
    "jolt": dict(jolt=dict(position=12, factor=30.0)),
    "jolt_length": dict(jolt=dict(position=10, factor=10.0, length=3)),
    "rollback": dict(steps=30, jolt=dict(position=15, factor=30.0),
                     spike=dict(action="rollback", skip_batches=3, snapshot_every=4, **DETECT)),
    "rollback_exhausted": dict(steps=30, spike=dict(action="rollback", window=4, threshold=0.5, min_history=2,
                                                    snapshot_every=2, skip_batches=1, max_rollbacks=2, max_consecutive=3)),
    "skip": dict(steps=30, jolt=dict(position=15, factor=30.0), spike=dict(action="skip", **DETECT)),
    "skip_plateau": dict(steps=30, spike=dict(action="skip", window=4, threshold=0.3, min_history=2, max_consecutive=2)),
    "lower_lr": dict(steps=30, jolt=dict(position=15, factor=30.0, length=2),
                     spike=dict(action="lower_lr", lr_factor=0.5, **DETECT)),
    "shrink": dict(embedding_grad_shrink=0.1),
    "nonfinite_raise": dict(jolt=dict(position=2, factor=1e30)),
    "nonfinite_stop": dict(jolt=dict(position=2, factor=1e30), on_nonfinite="stop"),
    "nonfinite_skip": dict(jolt=dict(position=2, factor=1e30), on_nonfinite="skip", steps=8),
    "nonfinite_rollback": dict(jolt=dict(position=12, factor=1e30), on_nonfinite="skip",
                               spike=dict(action="rollback", skip_batches=2, snapshot_every=4, **DETECT)),
    "seed_dropout": dict(seed=3, _model=dict(dropout=0.1)),
    "no_eval": dict(eval_every=None),
    "resume": dict(schedule="cosine", warmup=5, micro_batch_size=2, checkpoint_every=5, _interrupt_at=12,
                   _model=dict(dropout=0.1)),
    "resume_spike": dict(steps=30, checkpoint_every=5, _interrupt_at=22, jolt=dict(position=15, factor=30.0),
                         spike=dict(action="rollback", skip_batches=3, snapshot_every=4, **DETECT)),
}


def _spec(name: str) -> tuple[dict, dict, int | None]:
    """``(train options, model changes, interrupt step)`` of a run."""
    opts = COMMON | RUNS[name]
    return ({k: v for k, v in opts.items() if not k.startswith("_")}, opts.get("_model", {}), opts.get("_interrupt_at"))


def _model(changes: dict, seed: int = 0) -> GPT:
    tok = char_data().tok
    seed_everything(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=16, d_model=16, n_layers=1, n_heads=2, **changes))


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    _, tr, va = char_data()
    return tr[:20000], va[:2000]


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _summary(h, model, calls) -> dict:
    return dict(steps=h.steps, train_loss=h.train_loss, val_steps=h.val_steps, val_loss=h.val_loss, lr=h.lr,
                grad_norm=h.grad_norm, batch_size=h.batch_size, spikes=h.spikes, skipped_steps=h.skipped_steps,
                rollbacks=h.rollbacks, rolled_back=[list(r) for r in h.rolled_back], stopped_at=h.stopped_at,
                callback=calls, params=_digest(model))
