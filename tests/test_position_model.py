"""The position schemes inside the model (lesson 03): every ``ModelConfig.position`` runs, the
KV-cache path equals the full forward, generation with and without cache agree, and the
behaviours the lesson shows (permutation equivariance without positions, learned tables that
cannot extrapolate) hold."""

import dataclasses

import pytest
import torch

from lmlab.infer.decoding import generate
from lmlab.infer.kv_cache import KVCache
from lmlab.model import GPT, ModelConfig
from lmlab.model.registry import POSITIONS

TOL = dict(rtol=1e-4, atol=1e-5)  # float32: cached vs full forward differ only in summation order


def make(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=32, context_length=24, d_model=16, n_layers=2, n_heads=4)
    cfg.update(kw)
    return GPT(ModelConfig(**cfg)).eval()


VARIANTS = [dict(position=p) for p in POSITIONS] + [
    dict(position="rope", n_kv_heads=2),
    dict(position="alibi", n_kv_heads=1),
    dict(position="t5", attention="sliding_window", window=5),
    dict(position="rope", attention="sliding_window", window=5, n_sink=2),
    dict(position="alibi", norm_position="post"),
]


def _random_params(model):
    # biases (T5 table) start near zero; make them matter so the tests are not vacuous
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.normal_(0, 1.0)


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_cached_forward_equals_full_forward(kw):
    model = make(**kw)
    _random_params(model)
    idx = torch.randint(0, 32, (2, 20), generator=torch.Generator().manual_seed(1))
    full = model(idx)
    assert full.shape == (2, 20, 32) and torch.isfinite(full).all()
    with torch.no_grad():
        logits, cache = model.forward_with_cache(idx[:, :12], KVCache.for_model(model, batch=idx.size(0)))  # prefill
        steps = [logits]
        for t in range(12, 20):  # decode one token at a time
            logits, cache = model.forward_with_cache(idx[:, t:t + 1], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


@pytest.mark.parametrize("position", POSITIONS)
def test_generate_with_and_without_cache_agree(position):
    model = make(position=position)
    _random_params(model)
    prompt = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(2))
    a = generate(model, prompt, 12, use_cache=True)
    b = generate(model, prompt, 12, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("position", POSITIONS)
def test_only_no_positions_is_blind_to_order(position):
    # causal attention without positions: the last token's output depends on the *set* of earlier
    # tokens, not their order (permutation equivariance); every scheme breaks this
    # (one layer: with more, the earlier tokens' own outputs depend on the order of *their* prefixes)
    model = make(position=position, n_layers=1)
    _random_params(model)
    with torch.no_grad():  # at init attention is almost uniform; sharpen it so order can matter
        model.blocks[0].attn.qkv.weight.mul_(30)
    idx = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(3))
    perm = torch.cat([torch.randperm(9, generator=torch.Generator().manual_seed(4)), torch.tensor([9])])
    a, b = model(idx)[0, -1], model(idx[:, perm])[0, -1]
    relative_change = ((a - b).abs().max() / a.abs().max()).item()
    if position == "none":
        assert relative_change < 1e-5
    else:
        assert relative_change > 1e-3


def test_learned_positions_cannot_extrapolate_but_relative_schemes_can():
    trained = make(position="learned", context_length=8)
    longer = GPT(dataclasses.replace(trained.config, context_length=32, n_positions=8)).eval()
    longer.load_state_dict(trained.state_dict())  # same table shape: (8, C)
    idx = torch.randint(0, 32, (1, 16))
    torch.testing.assert_close(longer(idx[:, :8]), trained(idx[:, :8]), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"n_positions=8.*cannot extrapolate"):
        longer(idx)
    for position in ("rope", "alibi", "t5", "sinusoidal", "none"):
        short = make(position=position, context_length=8)
        long = GPT(dataclasses.replace(short.config, context_length=32)).eval()
        long.load_state_dict(short.state_dict())
        assert torch.isfinite(long(idx)).all()
        torch.testing.assert_close(long(idx[:, :8]), short(idx[:, :8]), rtol=0, atol=0)


def test_parameter_counts_per_position():
    base = make(position="none").num_parameters()
    assert make(position="learned").num_parameters() == base + 24 * 16
    assert make(position="learned", n_positions=10).num_parameters() == base + 10 * 16
    assert make(position="t5").num_parameters() == base + 32 * 4  # one (buckets, heads) table shared by all layers
    for p in ("sinusoidal", "rope", "alibi"):
        assert make(position=p).num_parameters() == base


def test_position_ids_default_is_arange():
    model = make(position="rope")
    idx = torch.randint(0, 32, (1, 9))
    torch.testing.assert_close(model(idx, position_ids=torch.arange(9)), model(idx), rtol=0, atol=0)
    # RoPE and ALiBi only see differences: shifting every position changes nothing
    for p in ("rope", "alibi", "t5"):
        m = make(position=p)
        _random_params(m)
        torch.testing.assert_close(m(idx, position_ids=torch.arange(9) + 7), m(idx), **TOL)


@pytest.mark.parametrize("kw,match", [
    (dict(position="rope", d_model=12, n_heads=4), "even head_dim"),
    (dict(position="alibi", rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling only applies"),
    (dict(position="rope", rope_scaling={"type": "linear", "factor": 0.5}), "factor must be a number >= 1"),
    (dict(position="rope", rope_scaling={"type": "truncate", "window": 0}), "window must be an int >= 1"),
    (dict(position="rope", rope_scaling={"type": "yarn", "factor": 2.0}), "original_context_length"),
    (dict(position="rope", rope_base=0.5), "rope_base"),
    (dict(position="rope", n_positions=8), "n_positions only applies"),
    (dict(n_positions=0), "n_positions must be an int"),
    (dict(n_sink=2), "n_sink only applies"),
    (dict(position="relative"), "position must be one of"),
])
def test_bad_config_names_the_parameter(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_sinusoidal_table_is_scaled_to_the_token_embeddings():
    """The model adds SINUSOIDAL_SCALE * table: RMS 0.02 per dimension, the token embeddings' init."""
    from lmlab.model.positions.encodings import SINUSOIDAL_SCALE, sinusoidal_embedding

    model = make(position="sinusoidal")
    pos = torch.arange(24)
    added = model.position.embed(torch.zeros(1, 24, 16), pos)[0]  # (T, C)
    torch.testing.assert_close(added, SINUSOIDAL_SCALE * sinusoidal_embedding(pos, 16))
    assert abs(float(added.pow(2).mean().sqrt()) - 0.02) < 1e-6
    assert abs(float(model.tok_emb.weight.detach().pow(2).mean().sqrt()) - 0.02) < 0.004
