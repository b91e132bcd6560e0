"""lmlab.train.optim against torch: AdamW, Adafactor, global-norm clipping, decay groups; and the default
training loop against the loop lmlab used before lesson 09 (a copy of it lives here as the reference)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn as nn

from lmlab.data.text import char_data, sample_batch
from lmlab.model import GPT, ModelConfig
from lmlab.train.optim import (Adafactor, AdamW, clip_grad_norm, global_grad_norm, param_groups, state_bytes,
                         state_bytes_for)
from lmlab.train.spikes import EmbeddingGradShrink, SpikeDetector, shrink_embedding_gradient
from lmlab.train.config import TrainConfig
from lmlab.train.loop import evaluate, lm_loss, seed_everything, train

TOL = dict(rtol=0, atol=1e-6)  # the bound; in practice the two agree bit for bit


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))


def _run(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_equals_torch_after_1000_steps(weight_decay):
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    ours = _run(m := _mlp(), AdamW(m.parameters(), **kw), 1000)
    ref = _run(m := _mlp(), torch.optim.AdamW(m.parameters(), amsgrad=False, **kw), 1000)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL)
    assert not torch.equal(ours[0], _mlp()[0].weight)  # it trained


def test_adamw_decay_is_decoupled():
    """With a zero gradient Adam's update is 0; decoupled decay still shrinks the weight by lr * wd."""
    p = nn.Parameter(torch.full((3,), 2.0))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))


def test_adamw_state_dict_round_trips_and_is_torchs_format():
    m1 = _mlp()
    o1 = AdamW(m1.parameters(), lr=1e-2)
    _run(m1, o1, 10)
    m2 = _mlp()
    m2.load_state_dict(m1.state_dict())
    o2 = AdamW(m2.parameters(), lr=1e-2)
    buf = io.BytesIO()
    torch.save(o1.state_dict(), buf)  # through bytes, as a checkpoint does (in memory torch shares the tensors)
    buf.seek(0)
    o2.load_state_dict(torch.load(buf))
    a, b = _run(m1, o1, 10, seed=5), _run(m2, o2, 10, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert set(o1.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    # torch's AdamW state loads into ours and continues identically
    m3, m4 = _mlp(), _mlp()
    t3 = torch.optim.AdamW(m3.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    _run(m3, t3, 5)
    m4.load_state_dict(m3.state_dict())
    o4 = AdamW(m4.parameters(), lr=1e-2)
    o4.load_state_dict(copy.deepcopy(t3.state_dict()))
    a, b = _run(m3, t3, 5, seed=2), _run(m4, o4, 5, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("shape", [(12, 20), (17,)], ids=["matrix", "vector"])
def test_adafactor_equals_torch(shape):
    g = torch.Generator().manual_seed(0)
    p1 = nn.Parameter(torch.randn(*shape, generator=g))
    p2 = nn.Parameter(p1.detach().clone())
    o1, o2 = Adafactor([p1], lr=1e-2, weight_decay=0.01), torch.optim.Adafactor([p2], lr=1e-2, weight_decay=0.01)
    for _ in range(200):
        grad = torch.randn(*shape, generator=g) * 3
        p1.grad, p2.grad = grad.clone(), grad.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(p1.detach(), p2.detach(), **TOL)
    if len(shape) == 2:
        assert o1.state[p1]["row_var"].shape == (12, 1) and o1.state[p1]["col_var"].shape == (1, 20)


def test_adafactor_beta1_zero_is_no_momentum_and_beta1_changes_the_path():
    def path(beta1):
        g = torch.Generator().manual_seed(1)
        p = nn.Parameter(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))
        opt = Adafactor([p], lr=1e-2, beta1=beta1)
        for _ in range(20):
            p.grad = torch.randn(6, 5, generator=g)
            opt.step()
        return p.detach()
    torch.testing.assert_close(path(0.0), path(None), rtol=1e-6, atol=1e-7)
    assert (path(0.9) - path(None)).abs().max() > 1e-4


def test_state_memory_llama_7b_matrix(capsys):
    shape = (4096, 11008)  # LLaMA-7B's FFN matrix
    adamw, ada = state_bytes_for(shape, "adamw"), state_bytes_for(shape, "adafactor")
    assert adamw == 2 * 4096 * 11008 * 4 == 360_710_144
    assert ada == (4096 + 11008) * 4 == 60_416
    print(f"optimizer state for one 4096x11008 fp32 matrix: AdamW {adamw:,} bytes, Adafactor {ada:,} bytes "
          f"({adamw / ada:,.0f}x less)")
    assert "5,970x less" in capsys.readouterr().out
    # the formula is what the optimizers really allocate (minus the 4-byte step counter)
    for cls, kind in ((AdamW, "adamw"), (Adafactor, "adafactor")):
        p = nn.Parameter(torch.randn(64, 172))
        opt = cls([p], lr=1e-3)
        p.grad = torch.randn(64, 172)
        opt.step()
        assert state_bytes(opt) - 4 == state_bytes_for((64, 172), kind)


def _params_with_grads(seed, scale):
    g = torch.Generator().manual_seed(seed)
    ps = [nn.Parameter(torch.randn(4, 5, generator=g)), nn.Parameter(torch.randn(7, generator=g)),
          nn.Parameter(torch.randn(3, generator=g))]
    for p in ps[:2]:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps  # the last one has no grad: skipped


@pytest.mark.parametrize("scale,max_norm", [(3.0, 1.0), (0.01, 1.0), (1.0, 0.5)])
def test_clip_grad_norm_equals_torch(scale, max_norm):
    ours, ref = _params_with_grads(0, scale), _params_with_grads(0, scale)
    n1 = clip_grad_norm(ours, max_norm)
    n2 = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.equal(n1, n2)  # the pre-clip norm
    for a, b in zip(ours, ref):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)
    after = global_grad_norm(ours).item()
    assert after <= max_norm + 1e-5 and (after < n1.item() or n1.item() <= max_norm)


def test_clip_grad_norm_reports_non_finite():
    for bad in (math.inf, math.nan):
        ours, ref = _params_with_grads(1, 1.0), _params_with_grads(1, 1.0)
        ours[0].grad[0, 0] = ref[0].grad[0, 0] = bad
        n1, n2 = clip_grad_norm(ours, 1.0), torch.nn.utils.clip_grad_norm_(ref, 1.0)
        assert not math.isfinite(n1.item()) and (math.isnan(n1.item()) == math.isnan(n2.item()))
        with pytest.raises(ValueError, match="gradient norm is"):
            clip_grad_norm(ours, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(ours, 0.0)


def _gpt(**kw):
    seed_everything(0)
    return GPT(ModelConfig(vocab_size=30, context_length=8, d_model=16, n_layers=1, n_heads=2, **kw))


def test_param_groups_decay_matrices_not_norms_or_biases_and_the_embedding_choice():
    model = _gpt()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = (set(names[id(p)] for p in g["params"]) for g in param_groups(model, 0.1))
    assert {"tok_emb.weight", "pos_emb.weight"} <= decay  # the default: embeddings decay like matrices
    assert all(model.get_parameter(n).dim() >= 2 for n in decay)
    assert all(model.get_parameter(n).dim() == 1 for n in no_decay) and any("bias" in n for n in no_decay)
    assert any("norm" in n for n in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))  # the tied head weight once
    decay2, no2 = (set(names[id(p)] for p in g["params"]) for g in param_groups(model, 0.1, decay_embeddings=False))
    assert {"tok_emb.weight", "pos_emb.weight"} <= no2 and decay2 == decay - {"tok_emb.weight", "pos_emb.weight"}
    # what the choice does: a token that never occurs keeps its row only when embeddings are not decayed
    ids = torch.randint(0, 20, (2000,), generator=torch.Generator().manual_seed(0))  # tokens 20..29 never occur
    rows = {}
    for choice in (True, False):
        m = _gpt(tie_embeddings=False)
        before = m.tok_emb.weight[25].detach().clone()
        train(m, ids, config=TrainConfig(steps=20, batch_size=4, eval_every=None, progress=False, decay_embeddings=choice))
        rows[choice] = (m.tok_emb.weight[25].detach() - before).abs().max().item()
    assert rows[False] == 0.0 and rows[True] > 0.0


def test_optimizers_reject_bad_input():
    p = [nn.Parameter(torch.zeros(2))]
    for kw, name in ((dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9)), r"betas\[0\]"),
                     (dict(betas=(0.9, 1.5)), r"betas\[1\]"), (dict(betas=(-0.1, 0.9)), r"betas\[0\]"),
                     (dict(betas=0.9), "betas"), (dict(weight_decay=-1.0), "weight_decay")):
        with pytest.raises(ValueError, match=f"AdamW.{name}"):
            AdamW(p, **kw)
    with pytest.raises(ValueError, match="Adafactor.lr"):
        Adafactor(p, lr=0.0)
    with pytest.raises(ValueError, match="Adafactor.beta1"):
        Adafactor(p, beta1=1.0)
    with pytest.raises(ValueError, match="param_groups.weight_decay"):
        param_groups(_gpt(), -0.1)


def test_embedding_gradient_shrink_keeps_forward_and_scales_gradient():
    emb = torch.randn(3, 4, requires_grad=True)
    out = shrink_embedding_gradient(emb, 0.1)
    assert torch.equal(out, emb * 0.1 + emb * 0.9) or torch.allclose(out, emb, atol=1e-7)
    w = torch.randn(3, 4)
    (out * w).sum().backward()
    torch.testing.assert_close(emb.grad, 0.1 * w, rtol=1e-6, atol=0)
    model = _gpt(tie_embeddings=False)
    x = torch.randint(30, (2, 8), generator=torch.Generator().manual_seed(0))
    ref = model(x)
    ref.square().mean().backward()
    g_ref = model.tok_emb.weight.grad.clone()
    model.zero_grad()
    with EmbeddingGradShrink(model.tok_emb, 0.1):
        out = model(x)
        out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.tok_emb.weight.grad, 0.1 * g_ref, rtol=1e-5, atol=1e-9)
    assert not model.tok_emb._forward_hooks  # removed on exit
    with pytest.raises(ValueError, match="alpha"):
        shrink_embedding_gradient(emb, 1.5)


def test_spike_detector_rolling_z_score():
    det = SpikeDetector(window=8, threshold=4.0, min_history=4)
    flags = [det.check(2.0 + 0.01 * (i % 3), 1.0 + 0.01 * (i % 2)) for i in range(10)]
    assert not any(flags)
    assert det.check(3.0, 1.0)  # loss jumps
    assert det.check(2.0, 5.0)  # gradient norm jumps
    assert len(det.losses) == 8  # spikes were not added; the window rolls
    assert det.check(2.0, 5.0)  # so the same jump is caught again
    assert not det.check(1.0, 1.0)  # downward moves are not spikes
    assert det.check(math.nan, 1.0)
    with pytest.raises(ValueError, match="SpikeDetector.window"):
        SpikeDetector(window=1)


# --------------------------------------------------------------------------------------------
# The default loop == the loop before lesson 09 (copied verbatim, with torch's AdamW and clipping)
# --------------------------------------------------------------------------------------------


def _old_train(model, train_ids, val_ids, *, steps, batch_size, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95),
               grad_clip=1.0, eval_every=100, eval_batches=10, seed=0):
    gen = seed_everything(seed)
    T = model.config.context_length
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=betas)
    losses, vals = [], []
    model.train()
    for step in range(1, steps + 1):
        x, y = sample_batch(train_ids, batch_size, T, generator=gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(loss.item())
        if val_ids is not None and eval_every and (step % eval_every == 0 or step == steps):
            vals.append(evaluate(model, val_ids, batch_size, eval_batches))
    model.eval()
    return losses, vals


@pytest.mark.parametrize("kw", [dict(), dict(grad_clip=None, dropout=0.1, seed=3)], ids=["defaults", "no-clip-dropout"])
def test_default_train_reproduces_the_old_loop(kw):
    """Tolerance: 1e-6 per loss (what the optimizer equality guarantees); observed: bit-identical."""
    kw = dict(kw)
    dropout, seed = kw.pop("dropout", 0.0), kw.get("seed", 0)
    tok, tr, va = char_data()
    runs = []
    for loop in ("old", "new"):
        seed_everything(seed)
        model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=32, d_model=32, n_layers=2, n_heads=4,
                                dropout=dropout))
        if loop == "old":
            runs.append(_old_train(model, tr, va, steps=120, batch_size=16, eval_every=60, eval_batches=3, **kw))
        else:
            h = train(model, tr, va, config=TrainConfig(steps=120, batch_size=16, eval_every=60, eval_batches=3,
                                                        progress=False, **kw))
            runs.append((h.train_loss, h.val_loss))
    (old, old_val), (new, new_val) = runs
    torch.testing.assert_close(torch.tensor(new), torch.tensor(old), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(new_val), torch.tensor(old_val), rtol=0, atol=1e-6)
    assert old[-1] < old[0] - 0.5  # a real training run
