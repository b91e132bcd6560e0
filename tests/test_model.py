"""Tests for lmlab.model.gpt: ModelConfig validation and the GPT forward pass."""

from __future__ import annotations

import pytest
import torch

from lmlab.data.masks import causal_mask, prefix_lm_mask
from lmlab.model import GPT, ModelConfig


def tiny(**overrides) -> ModelConfig:
    kw = dict(vocab_size=13, context_length=10, d_model=16, n_layers=2, n_heads=2)
    kw.update(overrides)
    return ModelConfig(**kw)


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).eval()


def rand_ids(B: int, T: int, V: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


VARIANTS = [
    dict(),
    dict(norm_position="post"),
    dict(activation="relu"),
    dict(position="none"),
    dict(norm_position="post", activation="relu", position="none", bias=False, tie_embeddings=False),
    dict(d_ff=7, n_heads=4, n_layers=1),
]
VARIANT_IDS = ["default", "post", "relu", "nopos", "post-relu-nopos-nobias-untied", "dff-heads"]


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("B,T", [(1, 1), (3, 10), (2, 6)])
def test_forward_shape(overrides, B, T):
    model = make_model(**overrides)
    logits = model(rand_ids(B, T))
    assert logits.shape == (B, T, 13)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_forward_accepts_int32_ids():
    model = make_model()
    ids = rand_ids(2, 5)
    torch.testing.assert_close(model(ids.int()), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("overrides", VARIANTS, ids=VARIANT_IDS)
def test_changing_a_future_token_does_not_change_earlier_logits(overrides):
    model = make_model(**overrides)
    T = 10
    ids = rand_ids(2, T)
    base = model(ids)
    for k in (1, 4, T - 1):
        changed = ids.clone()
        changed[:, k] = (changed[:, k] + 1) % 13
        out = model(changed)
        torch.testing.assert_close(out[:, :k], base[:, :k], rtol=1e-5, atol=1e-6)
        # the test is not vacuous: position k itself does see the change
        assert not torch.allclose(out[:, k], base[:, k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", VARIANTS[:2], ids=VARIANT_IDS[:2])
def test_explicit_causal_mask_equals_default(overrides):
    model = make_model(**overrides)
    ids = rand_ids(2, 7)
    torch.testing.assert_close(model(ids, attn_mask=causal_mask(7)), model(ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", VARIANTS[:2], ids=VARIANT_IDS[:2])
def test_prefix_mask_lets_earlier_positions_see_later_prefix_tokens(overrides):
    model = make_model(**overrides)
    T, P = 8, 4
    ids = rand_ids(1, T)
    mask = prefix_lm_mask(T, P)
    changed = ids.clone()
    changed[:, P - 1] = (changed[:, P - 1] + 1) % 13  # the last prefix token

    # with the prefix mask, position 0 depends on the later prefix token...
    assert not torch.allclose(model(ids, attn_mask=mask)[:, 0], model(changed, attn_mask=mask)[:, 0], rtol=1e-5, atol=1e-6)
    # ...without it (causal) it does not
    torch.testing.assert_close(model(ids)[:, : P - 1], model(changed)[:, : P - 1], rtol=1e-5, atol=1e-6)

    # after the prefix it stays causal: a token after the prefix is invisible to everything before it
    after = ids.clone()
    after[:, P + 1] = (after[:, P + 1] + 1) % 13
    torch.testing.assert_close(
        model(ids, attn_mask=mask)[:, : P + 1], model(after, attn_mask=mask)[:, : P + 1], rtol=1e-5, atol=1e-6
    )


def test_batched_4d_mask_is_accepted():
    model = make_model()
    ids = rand_ids(2, 6)
    mask2d = prefix_lm_mask(6, 3)
    mask4d = mask2d.expand(2, 1, 6, 6)
    torch.testing.assert_close(model(ids, attn_mask=mask4d), model(ids, attn_mask=mask2d), rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic_with_dropout_and_train_mode_is_not():
    model = make_model(dropout=0.5)
    ids = rand_ids(2, 8)
    torch.testing.assert_close(model(ids), model(ids), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    a = model(ids)
    b = model(ids)
    assert not torch.allclose(a, b)


def test_same_seed_same_init():
    a, b, c = make_model(seed=3), make_model(seed=3), make_model(seed=4)
    ids = rand_ids(1, 5)
    torch.testing.assert_close(a(ids), b(ids), rtol=0, atol=0)
    assert not torch.allclose(a(ids), c(ids))


# --------------------------------------------------------------------------------------------
# Weight tying and parameter counts
# --------------------------------------------------------------------------------------------


def test_weight_tying():
    tied = make_model(tie_embeddings=True)
    assert tied.lm_head.weight is tied.tok_emb.weight
    with torch.no_grad():
        tied.tok_emb.weight[3].fill_(1.25)
    assert torch.all(tied.lm_head.weight[3] == 1.25)

    untied = make_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 13 * 16  # one more V x C matrix


def _hand_count(V, ctx, C, L, d_ff, *, bias=True, pre=True, learned=True, tied=True):
    ln = 2 * C if bias else C  # LayerNorm weight (+ bias)
    b = 1 if bias else 0
    attn = C * 3 * C + b * 3 * C + C * C + b * C  # qkv + output projection
    ffn = C * d_ff + b * d_ff + d_ff * C + b * C  # up + down
    per_block = 2 * ln + attn + ffn
    n = V * C  # token embedding
    n += ctx * C if learned else 0  # position embedding
    n += L * per_block
    n += ln if pre else 0  # final norm (pre-LN only)
    n += 0 if tied else V * C  # output layer
    return n


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(bias=False),
        dict(norm_position="post"),
        dict(position="none"),
        dict(tie_embeddings=False),
        dict(bias=False, norm_position="post", position="none", tie_embeddings=False),
    ],
)
def test_num_parameters_matches_hand_count(kw):
    V, ctx, C, L, d_ff = 11, 7, 8, 2, 12
    model = GPT(ModelConfig(vocab_size=V, context_length=ctx, d_model=C, n_layers=L, n_heads=2, d_ff=d_ff, **kw))
    expected = _hand_count(
        V, ctx, C, L, d_ff,
        bias=kw.get("bias", True),
        pre=kw.get("norm_position", "pre") == "pre",
        learned=kw.get("position", "learned") == "learned",
        tied=kw.get("tie_embeddings", True),
    )
    assert model.num_parameters() == expected
    emb = V * C + (ctx * C if kw.get("position", "learned") == "learned" else 0)
    assert model.num_parameters(exclude_embeddings=True) == expected - emb


def test_num_parameters_concrete_tiny_config():
    # V=11, ctx=7, C=8, L=1, d_ff=12, pre-LN, learned positions, tied:
    # tok 88 + pos 56 + block (ln 16 + qkv 216 + proj 72 + ln 16 + up 108 + down 104 = 532) + final ln 16
    model = GPT(ModelConfig(vocab_size=11, context_length=7, d_model=8, n_layers=1, n_heads=2, d_ff=12))
    assert model.num_parameters() == 88 + 56 + 532 + 16


def test_d_ff_defaults_to_four_times_d_model():
    cfg = tiny(d_model=24, n_heads=3)
    assert cfg.d_ff == 96
    assert cfg.head_dim == 8
    model = GPT(cfg)
    assert model.blocks[0].ffn.up.out_features == 96
    assert cfg.to_dict()["d_ff"] == 96


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(d_model=30, n_heads=4), r"d_model \(30\) must be divisible by n_heads \(4\)"),
        (dict(context_length=0), r"ModelConfig\.context_length must be an int >= 1"),
        (dict(vocab_size=0), r"ModelConfig\.vocab_size must be an int >= 1"),
        (dict(d_model=16.0), r"ModelConfig\.d_model must be an int >= 1"),
        (dict(n_layers=True), r"ModelConfig\.n_layers must be an int >= 1"),
        (dict(n_heads=0), r"ModelConfig\.n_heads must be an int >= 1"),
        (dict(d_ff=0), r"ModelConfig\.d_ff must be an int >= 1"),
        (dict(norm="no-such-norm"), r"ModelConfig\.norm must be one of"),
        (dict(norm_position="no-such-place"), r"ModelConfig\.norm_position must be one of"),
        (dict(activation="no-such-activation"), r"ModelConfig\.activation must be one of"),
        (dict(position="no-such-position"), r"ModelConfig\.position must be one of"),
        (dict(attention="no-such-attention"), r"ModelConfig\.attention must be one of"),
        (dict(dropout=1.0), r"ModelConfig\.dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"ModelConfig\.dropout must be in \[0, 1\)"),
        (dict(dropout=float("nan")), r"ModelConfig\.dropout must be in \[0, 1\)"),
    ],
)
def test_model_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_gpt_requires_a_model_config():
    with pytest.raises(ValueError, match="GPT expects a ModelConfig"):
        GPT(dict(vocab_size=13))


def test_forward_rejects_bad_input():
    model = make_model()
    with pytest.raises(ValueError, match=r"sequence length T=11 must be in \[1, context_length=10\]"):
        model(rand_ids(1, 11))
    with pytest.raises(ValueError, match=r"sequence length T=0"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=13\)"):
        model(torch.tensor([[0, 13]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=13\)"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"idx must be an integer tensor of shape \(B, T\)"):
        model(torch.tensor([1, 2, 3]))  # 1-D
    with pytest.raises(ValueError, match=r"idx must be an integer tensor of shape \(B, T\)"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))  # 3-D
    with pytest.raises(ValueError, match=r"idx must be an integer tensor"):
        model(torch.zeros(1, 3))  # float
    with pytest.raises(ValueError, match=r"idx must be an integer tensor"):
        model([[1, 2]])
    with pytest.raises(ValueError, match=r"attn_mask must be a bool tensor"):
        model(rand_ids(1, 4), attn_mask=causal_mask(5))
    with pytest.raises(ValueError, match=r"attn_mask must be a bool tensor"):
        model(rand_ids(1, 4), attn_mask=causal_mask(4).float())
