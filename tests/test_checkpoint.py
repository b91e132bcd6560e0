"""lmlab.train.checkpoint and the loop's spike handling: exact resume after a kill, atomic writes, clear errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

import lmlab.train.checkpoint as C
from lmlab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lmlab.data.text import char_data
from lmlab.model import GPT, ModelConfig
from lmlab.train.spikes import Jolt, SpikePolicy
from lmlab.train.config import TrainConfig
from lmlab.train.loop import seed_everything, train
from lmlab.train.policies import NonFiniteLossError

SCRIPT = textwrap.dedent("""
    import sys, time
    from lmlab.data.text import char_data
    from lmlab.model import GPT, ModelConfig
    from lmlab.train.config import TrainConfig
    from lmlab.train.loop import seed_everything, train
    path, resume, slow = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    tok, tr, va = char_data()
    seed_everything(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=16, d_model=32, n_layers=2, n_heads=2, dropout=0.1))
    def report(step, loss):
        print(step, loss.hex(), flush=True)
        time.sleep(slow)
    train(model, tr, va, config=TrainConfig(
        steps=40, batch_size=8, lr=1e-2, schedule="cosine", warmup=5, eval_every=10, eval_batches=2, micro_batch_size=4,
        checkpoint_path=path if path != "-" else None, checkpoint_every=10 if path != "-" else None, resume=resume,
        progress=False, callback=report))
""")


def _losses(text: str) -> dict[int, str]:
    return {int(s): h for s, h in (line.split() for line in text.splitlines() if line.strip())}


def test_killed_run_resumes_bit_identically(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ckpt = tmp_path / "last.pt"
    clean = subprocess.run([sys.executable, str(script), "-", "0", "0"], capture_output=True, text=True, env=env,
                           timeout=300, check=True)
    reference = _losses(clean.stdout)
    assert sorted(reference) == list(range(1, 41))
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), "0", "0.05"], stdout=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:  # kill it between checkpoints, mid-run
        seen.append(line)
        if int(line.split()[0]) == 25:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(ckpt, GPT(ModelConfig(vocab_size=char_data()[0].vocab_size, context_length=16, d_model=32,
                                                 n_layers=2, n_heads=2)), restore_rng=False)["step"] == 20
    resumed = subprocess.run([sys.executable, str(script), str(ckpt), "1", "0"], capture_output=True, text=True, env=env,
                             timeout=300, check=True)
    after = _losses(resumed.stdout)
    assert sorted(after) == list(range(21, 41))  # it continued from the step-20 checkpoint
    assert after == {s: reference[s] for s in range(21, 41)}  # every later loss exactly equal
    assert _losses("".join(seen)) == {s: reference[s] for s in range(1, 26)}


def _tiny(**kw):
    seed_everything(0)
    return GPT(ModelConfig(vocab_size=30, context_length=8, d_model=16, n_layers=1, n_heads=2, **kw))


def test_truncated_checkpoint_is_a_clear_error_and_a_crash_keeps_the_previous(tmp_path, monkeypatch):
    model, path = _tiny(), tmp_path / "ckpt.pt"
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(path, model, opt, step=7, data_position=7)
    good = path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(broken, _tiny())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pt", _tiny())

    def dies_mid_write(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(C.torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, step=8, data_position=8)
    monkeypatch.undo()
    assert path.read_bytes() == good  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # and no temp file is left
    assert load_checkpoint(path, _tiny())["step"] == 7


def test_checkpoint_of_another_shape_names_the_parameter(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _tiny(), step=1)
    other = _tiny(d_ff=32)
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.\S+ has shape"):
        load_checkpoint(path, other)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))  # nothing was loaded
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", _tiny())


def test_rng_and_data_position_round_trip(tmp_path):
    model, gen = _tiny(), torch.Generator().manual_seed(3)
    save_checkpoint(tmp_path / "r.pt", model, step=4, data_position=9, generator=gen, extra={"note": "x"})
    expected = (torch.rand(3), torch.rand(2, generator=gen))
    torch.manual_seed(123)
    gen2 = torch.Generator().manual_seed(99)
    state = load_checkpoint(tmp_path / "r.pt", model, generator=gen2)
    assert state == dict(step=4, data_position=9, extra={"note": "x"})
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(torch.rand(2, generator=gen2), expected[1])


# --------------------------------------------------------------------------------------------
# Non-finite losses and spikes in the loop
# --------------------------------------------------------------------------------------------


def test_non_finite_loss_is_reported_with_its_step_never_trained_on():
    _, tr, _ = char_data()
    ids = tr[tr < 30][:5000]
    config = TrainConfig(steps=5, batch_size=4, eval_every=None, progress=False, jolt=Jolt(1, factor=1e30))
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        train(_tiny(), ids, config=config)
    h = train(_tiny(), ids, config=replace(config, on_nonfinite="stop"))
    assert h.stopped_at == 3 and len(h.train_loss) == 2


def test_spike_policies_skip_roll_back_or_lower_the_lr():
    from lmlab.course.experiments.ch09_recipe import run

    small = dict(d_model=16, n_layers=1, n_heads=2, context_length=16)
    kw = dict(steps=70, lr=2e-2, schedule="constant", warmup=0, jolt=Jolt(44, factor=30.0))
    runs = {action: run(0, small, spike=SpikePolicy(action, window=30, min_history=20, skip_batches=7), **kw)
            for action in ("rollback", "skip", "lower_lr")}
    rb = runs["rollback"]
    assert rb.spikes[0] in (46, 47) and rb.rollbacks[0]["step"] == rb.spikes[0]
    assert rb.rollbacks[0]["to_step"] in (30, 40) and rb.rollbacks[0]["skipped_batches"] == 7
    assert rb.steps == list(range(1, 71)) and len(rb.train_loss) == len(rb.lr) == len(rb.grad_norm) == 70
    assert rb.spikes[0] in [s for s, _ in rb.rolled_back]
    sk = runs["skip"]
    assert sk.spikes and sk.spikes == sk.skipped_steps  # OLMo: the update of a spike step is not applied
    low = runs["lower_lr"]
    first = low.spikes[0]
    assert low.lr[first - 3] == 2e-2 and low.lr[first - 2] == pytest.approx(30 * 2e-2)  # before; the jolt
    assert low.lr[first - 1] == pytest.approx(1e-2) and max(low.lr[first:]) <= 1e-2  # halved from the spike on (OPT)
    assert low.skipped_steps == []  # and training goes on
    assert len(sk.skipped_steps) <= 10 + len(set(sk.spikes) - set(range(sk.spikes[0], sk.spikes[0] + 11)))
    with pytest.raises(ValueError, match="SpikePolicy.action"):
        SpikePolicy("restart")
