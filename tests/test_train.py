"""Tests for lmlab.train.loop: loss, evaluation, the training loop and generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.data.text import CharTokenizer, load_corpus
from lmlab.model import GPT, ModelConfig
from lmlab.infer.decoding import generate  # lesson 00 uses the one decoding loop (lmlab.generate)
from lmlab.train.config import TrainConfig
from lmlab.train.loop import History, evaluate, lm_loss, seed_everything, train


@pytest.fixture(scope="module")
def corpus_ids():
    corpus = load_corpus(max_chars=30_000)
    tok = CharTokenizer(corpus.text)
    return (
        torch.tensor(tok.encode(corpus.train), dtype=torch.long),
        torch.tensor(tok.encode(corpus.val), dtype=torch.long),
        tok.vocab_size,
    )


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    kw = dict(vocab_size=vocab_size, context_length=16, d_model=32, n_layers=2, n_heads=2)
    kw.update(overrides)
    seed_everything(seed)
    return GPT(ModelConfig(**kw))


# --------------------------------------------------------------------------------------------
# lm_loss
# --------------------------------------------------------------------------------------------


def test_lm_loss_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(7, (3, 5), generator=g)
    expected = F.cross_entropy(logits.permute(0, 2, 1), targets)  # the (B, V, T) form of the same loss
    torch.testing.assert_close(lm_loss(logits, targets), expected, rtol=1e-12, atol=1e-12)
    # and the definition: mean negative log-probability of the target token
    by_hand = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(lm_loss(logits, targets), by_hand, rtol=1e-12, atol=1e-12)


def test_lm_loss_of_uniform_logits_is_log_V():
    loss = lm_loss(torch.zeros(2, 4, 50), torch.randint(50, (2, 4)))
    torch.testing.assert_close(loss, torch.tensor(math.log(50)), rtol=1e-6, atol=1e-6)


def test_lm_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected logits \(B, T, V\) and targets \(B, T\)"):
        lm_loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected logits \(B, T, V\) and targets \(B, T\)"):
        lm_loss(torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# seed_everything and evaluate
# --------------------------------------------------------------------------------------------


def test_seed_everything_seeds_torch_and_returns_a_generator():
    g1 = seed_everything(5)
    a = torch.rand(3)
    g2 = seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_evaluate_is_deterministic_and_restores_mode(corpus_ids):
    _, val, V = corpus_ids
    model = tiny_model(V, dropout=0.2)
    model.train()
    a = evaluate(model, val, batch_size=4, n_batches=3)
    b = evaluate(model, val, batch_size=4, n_batches=3)
    assert a == b
    assert model.training  # the mode is restored
    model.eval()
    assert evaluate(model, val, batch_size=4, n_batches=3) == a
    assert not model.training
    # other windows give another number; an untrained model is near log(V)
    assert evaluate(model, val, batch_size=4, n_batches=3, seed=99) != a
    assert abs(a - math.log(V)) < 0.5


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def test_short_training_run_lowers_the_loss(corpus_ids):
    train_ids, val_ids, V = corpus_ids
    model = tiny_model(V)
    before = evaluate(model, val_ids, batch_size=16, n_batches=4)
    hist = train(model, train_ids, val_ids, config=TrainConfig(steps=60, batch_size=16, eval_every=30, eval_batches=4,
                                                               progress=False))
    after = evaluate(model, val_ids, batch_size=16, n_batches=4)
    assert isinstance(hist, History)
    assert hist.steps == list(range(1, 61))
    assert len(hist.train_loss) == 60 and all(math.isfinite(x) for x in hist.train_loss)
    assert hist.val_steps == [30, 60]
    assert hist.seconds > 0
    # a clear drop: from about log(V) to well below it
    assert before > math.log(V) - 0.5
    assert after < before - 0.8, (before, after)
    assert sum(hist.train_loss[-10:]) / 10 < sum(hist.train_loss[:10]) / 10 - 0.6
    assert hist.val_loss[-1] < hist.val_loss[0] + 1e-6
    assert {"steps", "train_loss", "val_steps", "val_loss", "seconds", "lr", "grad_norm", "skipped_steps", "rollbacks"} <= set(hist.to_dict())


def _run(V, train_ids, val_ids, seed):
    model = tiny_model(V, seed=seed, dropout=0.1)
    config = TrainConfig(steps=8, batch_size=4, eval_every=4, eval_batches=2, seed=seed, progress=False)
    hist = train(model, train_ids, val_ids, config=config)
    return model, hist


def test_training_is_deterministic_for_a_seed(corpus_ids):
    train_ids, val_ids, V = corpus_ids
    m1, h1 = _run(V, train_ids, val_ids, seed=3)
    m2, h2 = _run(V, train_ids, val_ids, seed=3)
    assert h1.train_loss == h2.train_loss
    assert h1.val_loss == h2.val_loss and h1.val_steps == h2.val_steps == [4, 8]
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    _, h3 = _run(V, train_ids, val_ids, seed=4)
    assert h3.train_loss != h1.train_loss


def test_train_without_val_and_final_step_eval(corpus_ids):
    train_ids, val_ids, V = corpus_ids
    model = tiny_model(V, n_layers=1)
    hist = train(model, train_ids, config=TrainConfig(steps=3, batch_size=2, progress=False))
    assert hist.val_steps == [] and hist.val_loss == []
    hist = train(model, train_ids, val_ids, config=TrainConfig(steps=5, batch_size=2, eval_every=2, eval_batches=1, progress=False))
    assert hist.val_steps == [2, 4, 5]  # every eval_every steps, and the last step
    hist = train(model, train_ids, val_ids, config=TrainConfig(steps=2, batch_size=2, eval_every=None, progress=False))
    assert hist.val_steps == []


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(steps=0), r"TrainConfig.steps must be an int >= 1"),
        (dict(lr=0.0), r"TrainConfig.lr must be a finite number > 0"),
        (dict(lr=-1e-3), r"TrainConfig.lr must be a finite number > 0"),
        (dict(eval_every=0), r"TrainConfig.eval_every must be an int >= 1 \(or None\)"),
    ],
)
def test_train_rejects_bad_arguments(corpus_ids, kw, match):
    train_ids, _, V = corpus_ids
    model = tiny_model(V, n_layers=1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        train(model, train_ids, config=TrainConfig(progress=False, **kw))
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)  # nothing was trained


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_model():
    return tiny_model(20, context_length=8, n_layers=1).eval()


def test_generate_shapes_and_keeps_the_prompt(gen_model):
    prompt = torch.tensor([1, 2, 3])
    out = generate(gen_model, prompt, 5, "greedy")
    assert out.shape == (8,)
    assert torch.equal(out[:3], prompt)
    assert ((0 <= out) & (out < 20)).all()
    batch = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate(gen_model, batch, 4, "sample", generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 7)
    assert torch.equal(out[:, :3], batch)
    assert torch.equal(generate(gen_model, prompt, 0), prompt)


def test_greedy_is_deterministic_and_is_the_argmax(gen_model):
    prompt = torch.tensor([[3, 1, 4]])
    a = generate(gen_model, prompt, 6, "greedy")
    b = generate(gen_model, prompt, 6, "greedy")
    assert torch.equal(a, b)
    # every new token is the argmax of the model's next-token logits for the text so far
    for t in range(3, 9):
        with torch.no_grad():
            expected = gen_model(a[:, :t])[:, -1].argmax(-1)
        assert torch.equal(a[:, t], expected)
    # temperature does not matter for greedy decoding, even 0
    assert torch.equal(generate(gen_model, prompt, 6, "sample", temperature=0.0), a)


def test_seeded_sampling_is_reproducible(gen_model):
    prompt = torch.tensor([5])
    a = generate(gen_model, prompt, 30, "sample", generator=torch.Generator().manual_seed(1))
    b = generate(gen_model, prompt, 30, "sample", generator=torch.Generator().manual_seed(1))
    c = generate(gen_model, prompt, 30, "sample", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # an untrained model is near uniform over 20 tokens


def test_generation_past_the_context_crops(gen_model):
    T = gen_model.config.context_length  # 8
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    out = generate(gen_model, prompt, 3 * T, "greedy")
    assert out.shape == (1, 5 + 3 * T)
    # the model only ever saw the last T tokens: the token after position t is argmax(model(out[t-T:t]))
    for t in range(T + 1, out.size(1)):
        with torch.no_grad():
            expected = gen_model(out[:, t - T : t])[:, -1].argmax(-1)
        assert torch.equal(out[:, t], expected), t


class _RecordingModel(torch.nn.Module):
    """Predicts (sum of the visible ids) mod V and records what it was shown."""

    def __init__(self, context_length: int, vocab_size: int = 50):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=4, n_layers=1, n_heads=1)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, idx):
        self.seen.append(idx.clone())
        nxt = idx.sum(dim=1) % self.config.vocab_size  # (B,)
        logits = torch.zeros(*idx.shape, self.config.vocab_size)
        logits[:, -1, :].scatter_(1, nxt[:, None], 1.0)
        return logits


def test_generation_feeds_exactly_the_last_context_length_tokens():
    T = 4
    model = _RecordingModel(context_length=T)
    prompt = torch.tensor([[1, 2, 3], [7, 8, 9]])
    out = generate(model, prompt, 6, "greedy")
    assert out.shape == (2, 9)
    assert len(model.seen) == 6
    for step, seen in enumerate(model.seen):
        length = 3 + step  # the text so far
        assert seen.shape == (2, min(length, T))
        assert torch.equal(seen, out[:, max(0, length - T) : length])
        assert torch.equal(out[:, length], seen.sum(1) % 50)


def test_generate_restores_training_mode(gen_model):
    gen_model.train()
    try:
        generate(gen_model, torch.tensor([1]), 2, "greedy")
        assert gen_model.training
    finally:
        gen_model.eval()


def test_generate_rejects_bad_input(gen_model):
    # lesson 00's generate was folded into lmlab.infer.decoding.generation: a prompt longer than the context is
    # cropped to its last context_length tokens (the window slides) instead of refused
    long = generate(gen_model, torch.arange(9), 1, "greedy")
    assert long[-1] == generate(gen_model, torch.arange(1, 9), 1, "greedy")[-1]
    with pytest.raises(ValueError, match="temperature must be"):
        generate(gen_model, torch.tensor([1, 2]), 3, "sample", temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        generate(gen_model, torch.tensor([1, 2]), -1)
    with pytest.raises(ValueError, match=r"prompt_ids must be integer ids of shape \(T,\) or \(B, T\) with T >= 1"):
        generate(gen_model, torch.tensor([], dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"prompt_ids must be integer ids of shape"):
        generate(gen_model, torch.zeros(1, 1, 2, dtype=torch.long), 1)


def test_with_config_keeps_weights_and_evaluate_lengths_marks_learned_past_table():
    import math

    from lmlab.model import GPT, ModelConfig
    from lmlab.train.loop import evaluate, evaluate_lengths

    torch.manual_seed(0)
    ids = torch.randint(0, 32, (4000,))
    rope = GPT(ModelConfig(vocab_size=32, context_length=16, d_model=16, n_layers=1, n_heads=2, position="rope"))
    longer = rope.with_config(context_length=64)
    assert longer.config.context_length == 64
    x = torch.randint(0, 32, (2, 16))
    torch.testing.assert_close(longer(x), rope(x), rtol=0, atol=0)  # same weights, same positions
    got = evaluate_lengths(rope, ids, [16, 64], n_batches=2)
    assert got[16] == evaluate(rope, ids, 16, 2)  # same windows as evaluate at the trained length
    assert math.isfinite(got[64])
    learned = GPT(ModelConfig(vocab_size=32, context_length=16, d_model=16, n_layers=1, n_heads=2, position="learned"))
    got = evaluate_lengths(learned, ids, [16, 32], n_batches=2)
    assert math.isfinite(got[16]) and math.isnan(got[32])
    with pytest.raises(ValueError, match="keep the weights"):
        rope.with_config(d_model=32)
    with pytest.raises(ValueError, match="lengths"):
        evaluate_lengths(rope, ids, [])
    with pytest.raises(ValueError, match="context_length"):
        evaluate(rope, ids, context_length=17)
