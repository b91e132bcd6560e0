"""TrainConfig and the training loop's policies (lesson 09): the loop reproduces the pre-refactor numbers.

``tests/data/train_config_runs.json`` holds what the keyword-argument ``train()`` (before
``TrainConfig``) measured on small runs covering every option: each optimizer, its
hyper-parameters, clipping, both schedules, accumulation, the batch ramp, a jolt, every spike
policy (rollback, rollbacks exhausted, skip, a plateau taken as the new normal, lower_lr), the
embedding-gradient shrink, the three non-finite policies and a checkpoint resume. The loop must
reproduce every loss, rate, gradient norm and the final parameters bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from lmlab.data.text import char_data
from lmlab.model import GPT, ModelConfig
from lmlab.train.config import TrainConfig
from lmlab.train.loop import seed_everything, train
from lmlab.train.policies import NonFiniteLossError
from lmlab.train.spikes import Jolt, SpikePolicy

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


def _config(opts: dict, **extra) -> TrainConfig:
    opts = dict(opts, **extra)
    if "spike" in opts:
        opts["spike"] = SpikePolicy(**opts["spike"])
    if "jolt" in opts:
        opts["jolt"] = Jolt(**opts["jolt"])
    for key in ("batch_ramp", "betas"):
        if key in opts:
            opts[key] = tuple(opts[key])
    return TrainConfig(**opts)


def _run(name: str, tmp_path: Path) -> dict:
    opts, model_kw, interrupt = _spec(name)
    tr, va = _ids()
    calls = []
    model = _model(model_kw)
    record = lambda t, loss: calls.append([t, loss])  # noqa: E731
    if interrupt is not None:
        path = tmp_path / "ckpt.pt"

        def crash(t, loss):
            if t == interrupt:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(model, tr, va, config=_config(opts, checkpoint_path=path, callback=crash))
        model = _model(model_kw, seed=99)  # resumed into a differently initialised model
        h = train(model, tr, va, config=_config(opts, checkpoint_path=path, resume=True, callback=record))
    else:
        try:
            h = train(model, tr, va, config=_config(opts, callback=record))
        except NonFiniteLossError as err:
            return dict(error=str(err))
    return _summary(h, model, calls)


@pytest.mark.parametrize("name", list(RUNS))
def test_the_loop_reproduces_the_keyword_loop_bit_for_bit(name, tmp_path):
    want = json.loads(FIXTURE.read_text())[name]
    got = _run(name, tmp_path)
    if "error" in want:  # the message now names TrainConfig; the step and values must be the same
        assert got["error"].split("; ")[0] == want["error"].split("; ")[0]
        return
    assert set(got) == set(want)
    for key in ("train_loss", "val_loss", "lr", "grad_norm"):
        torch.testing.assert_close(torch.tensor(got[key], dtype=torch.float64), torch.tensor(want[key], dtype=torch.float64),
                                   rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}.{key}: {m}")
    for key in ("callback", "rolled_back"):  # [step, loss] pairs
        assert [c[0] for c in got[key]] == [c[0] for c in want[key]], f"{name}.{key}"
        losses = [torch.tensor([c[1] for c in d[key]], dtype=torch.float64) for d in (got, want)]
        torch.testing.assert_close(*losses, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}.{key}: {m}")
    for key in set(want) - {"train_loss", "val_loss", "lr", "grad_norm", "callback", "rolled_back"}:
        assert got[key] == want[key], f"{name}.{key}"  # steps, batch sizes, spikes, rollbacks, the parameters' digest


def test_covers_every_option():
    """Every TrainConfig field but the logging ones is set away from its default by some run."""
    changed = set()
    for name in RUNS:
        opts, _, interrupt = _spec(name)
        changed |= {k for k, v in opts.items() if v != getattr(TrainConfig(), k, None) or k in ("spike", "jolt")}
        if interrupt is not None:
            changed |= {"checkpoint_path", "resume", "callback"}
    assert {f.name for f in dataclasses.fields(TrainConfig)} - changed == set()


BAD = [
    ("steps", 0), ("steps", 2.5), ("batch_size", 0), ("seed", -1), ("optimizer", "sgd"), ("lr", 0.0), ("lr", float("nan")),
    ("weight_decay", -0.1), ("betas", (0.9,)), ("betas", (0.9, 1.0)), ("eps", 0), ("decay_embeddings", 1),
    ("schedule", "linear"), ("warmup", -1), ("warmup", 501), ("min_lr_ratio", 1.5), ("grad_clip", 0.0),
    ("micro_batch_size", 0), ("micro_batch_size", 5), ("batch_ramp", (3, 100)), ("batch_ramp", (0, 100)),
    ("batch_ramp", 4), ("batch_ramp", (4, -1)), ("spike", "rollback"), ("jolt", 3), ("embedding_grad_shrink", 2.0),
    ("on_nonfinite", "ignore"), ("checkpoint_path", 3), ("checkpoint_every", 0), ("resume", "yes"), ("eval_every", 0),
    ("eval_batches", 0), ("progress", None), ("callback", "print"),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_bad_field_is_a_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}") as err:
        TrainConfig(**{field: value})
    assert "must" in str(err.value)


def test_options_that_go_together():
    with pytest.raises(ValueError, match="TrainConfig.checkpoint_path and checkpoint_every go together"):
        TrainConfig(checkpoint_every=10)
    with pytest.raises(ValueError, match="TrainConfig.checkpoint_path and checkpoint_every go together"):
        TrainConfig(resume=True)
    with pytest.raises(ValueError, match=r"TrainConfig.micro_batch_size \(3\) must divide batch_ramp's start \(4\)"):
        TrainConfig(batch_size=12, batch_ramp=(4, 100), micro_batch_size=3)
    assert TrainConfig(batch_size=16, batch_ramp=(4, 64)).micro_batch == 4
    assert TrainConfig(batch_size=16, micro_batch_size=8).micro_batch == 8 and TrainConfig(batch_size=16).micro_batch == 16
    assert dataclasses.replace(TrainConfig(), lr=1e-2).lr == 1e-2
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


def test_train_takes_a_config_and_nothing_else():
    tr, _ = _ids()
    with pytest.raises(ValueError, match="train: config must be a lmlab.train.config.TrainConfig"):
        train(_model({}), tr, config=dict(steps=2))
    with pytest.raises(TypeError):
        train(_model({}), tr, steps=2)  # the keyword options are gone: no second way in
    with pytest.raises(TypeError, match="positional arguments"):  # config is keyword-only
        train(_model({}), tr, None, TrainConfig(steps=2))
    with pytest.raises(ValueError, match="train.val_ids must be a torch.Tensor"):
        train(_model({}), tr, TrainConfig(steps=2), config=TrainConfig(steps=2))
