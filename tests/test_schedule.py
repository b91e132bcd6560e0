"""lmlab.train.schedule: warm-up + cosine (flat after the end, unlike torch's and transformers'), the batch ramp."""

from __future__ import annotations

import pytest
import torch

from lmlab.data.text import char_data, sample_batch
from lmlab.model import GPT, ModelConfig
from lmlab.train.schedule import (accumulation_steps, ramp_batch_size, steps_for_samples, torch_warmup_cosine,
                            transformers_warmup_cosine, warmup_cosine)
from lmlab.train.config import TrainConfig
from lmlab.train.loop import lm_loss, seed_everything, train

REFERENCE = [0, .142857, .285714, .428571, .571429, .714286, .857143, 1, .988718, .955436, .901824, .830570, .745248,
             .650134, .55, .449866, .354752, .269430, .198176, .144564, .111282, .1, .1, .1, .1]  # COURSE.md


def test_warmup_cosine_reference_vector():
    got = [warmup_cosine(t, 1.0, 0.1, 7, 21) for t in range(25)]
    assert got == pytest.approx(REFERENCE, abs=1e-6)
    assert warmup_cosine(21, 2.0, None, 7, 21) == pytest.approx(0.2)  # min_lr defaults to 10 % of the peak
    assert warmup_cosine(0, 1.0, 0.1, 0, 10) == 1.0  # no warm-up: starts at the peak
    assert warmup_cosine(5, 1.0, 0.1, 5, 5) == 0.1  # warm-up as long as the run


def test_flat_after_total_while_torch_and_transformers_rise_again():
    pytest.importorskip("transformers")  # the optional lmlab[parity] reference
    ours = [warmup_cosine(t, 1.0, 0.1, 7, 21) for t in range(40)]
    th, tf = torch_warmup_cosine(40, 1.0, 0.1, 7, 21), transformers_warmup_cosine(40, 1.0, 0.1, 7, 21)
    assert th[:22] == pytest.approx(ours[:22], abs=1e-6) and tf[:22] == pytest.approx(ours[:22], abs=1e-6)
    assert ours[21:] == [0.1] * 19
    for other in (th, tf):
        assert all(b > a for a, b in zip(other[21:35], other[22:36]))  # climbing again after the end
        assert other[35] > 0.9  # back near the peak one cosine half-period later


@pytest.mark.parametrize("kw,name", [
    (dict(max_lr=0.0), "max_lr"), (dict(max_lr=-1.0), "max_lr"), (dict(warmup=30), "warmup"),
    (dict(min_lr=2.0), "min_lr"), (dict(step=-1), "step"), (dict(total=0), "total"),
])
def test_warmup_cosine_rejects_bad_input(kw, name):
    args = dict(step=3, max_lr=1.0, min_lr=0.1, warmup=7, total=21) | kw
    with pytest.raises(ValueError, match=f"warmup_cosine.{name}"):
        warmup_cosine(**args)


def test_ramp_batch_size_like_megatron():
    sizes = [ramp_batch_size(c, 8, 32, 120) for c in range(0, 140, 10)]
    assert sizes == [8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24, 32, 32]  # 3 increments of 8, every 40 sequences
    assert ramp_batch_size(0, 8, 32, 0) == 32 and ramp_batch_size(5, 32, 32, 100) == 32
    assert ramp_batch_size(50, 4, 16, 60, increment=2) == 14
    assert steps_for_samples(320, 8, 32, 120) == 5 + 3 + 2 + 6  # 8s to 40, 16s to 88, 24s to 136, 32s to 328
    with pytest.raises(ValueError, match="multiple of increment"):
        ramp_batch_size(0, 8, 30, 100)
    with pytest.raises(ValueError, match="ramp_batch_size.full"):
        ramp_batch_size(0, 8, 4, 100)
    with pytest.raises(ValueError, match="micro_batch_size"):
        accumulation_steps(32, 5)


def test_accumulated_gradient_equals_the_full_batch_gradient():
    tok, tr, _ = char_data()
    seed_everything(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=16, d_model=32, n_layers=1, n_heads=2))
    x, y = sample_batch(tr, 16, 16, generator=torch.Generator().manual_seed(0))
    lm_loss(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i in range(accumulation_steps(16, 4)):
        (lm_loss(model(x[4 * i:4 * i + 4]), y[4 * i:4 * i + 4]) / 4).backward()
    for a, b in zip(full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_train_with_ramp_and_schedule_records_what_it_used():
    tok, tr, _ = char_data()
    seed_everything(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=16, d_model=16, n_layers=1, n_heads=2))
    h = train(model, tr, config=TrainConfig(steps=12, batch_size=16, lr=1e-2, schedule="cosine", warmup=3,
                                            batch_ramp=(4, 64), eval_every=None, progress=False))
    assert h.batch_size == [ramp_batch_size(sum(h.batch_size[:i]), 4, 16, 64) for i in range(12)]
    assert h.batch_size[0] == 4 and h.batch_size[-1] == 16
    assert h.lr == pytest.approx([warmup_cosine(t, 1e-2, 1e-3, 3, 12) for t in range(1, 13)])
    assert h.lr[-1] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"TrainConfig.warmup must be an int in \[0, 5\]"):
        TrainConfig(steps=5, warmup=6)
    with pytest.raises(ValueError, match="TrainConfig.schedule must be one of"):
        TrainConfig(steps=5, schedule="linear")
