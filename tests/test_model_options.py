"""Tests for the model options of chapters 01 and 02: norm, norm_position and activation.

Each block formula is checked against a hand-written forward from the same weights; DeepNorm's
init against its beta; the default options against torch's built-in LayerNorm / GELU.
Tolerance: rtol = 1e-5, atol = 1e-6 (fp32 through a whole model).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model.ffn import FeedForward, glu_hidden_size
from lmlab.course.experiments.ch01_placement import grad_norms_per_layer
from lmlab.model import GPT, ModelConfig
from lmlab.model.registry import FFNS, NORM_PLACEMENTS, NORMS
from lmlab.model.norms import DeepNorm, LayerNorm, RMSNorm, deepnorm_constants

TOL = dict(rtol=1e-5, atol=1e-6)


def tiny(**overrides) -> ModelConfig:
    kw = dict(vocab_size=13, context_length=10, d_model=16, n_layers=2, n_heads=2)
    kw.update(overrides)
    return ModelConfig(**kw)


def make(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).eval()


def ids(B=2, T=8, seed=0):
    return torch.randint(13, (B, T), generator=torch.Generator().manual_seed(seed))


def test_option_tables():
    assert NORMS == ("layernorm", "rmsnorm")
    assert set(NORM_PLACEMENTS) == {"pre", "post", "sandwich", "deepnorm"}
    assert set(FFNS) == {"relu", "gelu", "swiglu", "geglu"}
    cfg = ModelConfig()
    assert (cfg.norm, cfg.norm_position, cfg.activation) == ("layernorm", "pre", "gelu")


# --------------------------------------------------------------------------------------------
# Every combination builds, runs, and stays causal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,position,activation", list(itertools.product(NORMS, NORM_PLACEMENTS, FFNS)))
def test_every_combination_is_finite_and_causal(norm, position, activation):
    model = make(norm=norm, norm_position=position, activation=activation)
    x = ids()
    out = model(x)
    assert out.shape == (2, 8, 13) and torch.isfinite(out).all()
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 13
    out2 = model(changed)
    torch.testing.assert_close(out2[:, :5], out[:, :5], **TOL)
    assert not torch.allclose(out2[:, 5], out[:, 5], **TOL)
    model.train()
    F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("position,has_final", [("pre", True), ("sandwich", True), ("post", False), ("deepnorm", False)])
@pytest.mark.parametrize("norm,cls", [("layernorm", LayerNorm), ("rmsnorm", RMSNorm)])
def test_norm_modules_and_final_norm(position, has_final, norm, cls):
    model = make(norm=norm, norm_position=position)
    assert isinstance(model.final_norm, cls) if has_final else isinstance(model.final_norm, nn.Identity)
    block = model.blocks[0]
    if position == "deepnorm":
        assert isinstance(block.norm1, DeepNorm) and isinstance(block.norm1.norm, cls)
        assert block.norm1.alpha == pytest.approx(deepnorm_constants(2).alpha)
    else:
        assert isinstance(block.norm1, cls) and isinstance(block.norm2, cls)
    assert hasattr(block, "attn_out_norm") == (position == "sandwich")


def test_layernorm_bias_follows_cfg_bias_and_rmsnorm_has_none():
    assert make(bias=False).blocks[0].norm1.bias is None
    assert make(bias=True).blocks[0].norm1.bias is not None
    n_norm_params = [sum(p.numel() for n, p in make(norm=k).named_parameters() if "norm" in n) for k in NORMS]
    assert n_norm_params[0] == 2 * n_norm_params[1]  # LayerNorm: weight + bias; RMSNorm: weight


def test_parameter_counts_per_position():
    C, L = 16, 2
    base = make(norm_position="post").num_parameters()
    ln = 2 * C
    assert make(norm_position="pre").num_parameters() == base + ln  # + final norm
    assert make(norm_position="sandwich").num_parameters() == base + ln + 2 * L * ln  # + 2 output norms per block
    assert make(norm_position="deepnorm").num_parameters() == base


# --------------------------------------------------------------------------------------------
# The block formulas, by hand from the same weights
# --------------------------------------------------------------------------------------------


def hand_block(block, x, position, alpha=1.0):
    attn = lambda t: block.attn(t)  # noqa: E731
    ffn = lambda t: block.ffn(t)  # noqa: E731
    if position == "pre":
        x = x + attn(block.norm1(x))
        return x + ffn(block.norm2(x))
    if position == "post":
        x = block.norm1(x + attn(x))
        return block.norm2(x + ffn(x))
    if position == "sandwich":
        x = x + block.attn_out_norm(attn(block.norm1(x)))
        return x + block.ffn_out_norm(ffn(block.norm2(x)))
    x = block.norm1.norm(alpha * x + attn(x))
    return block.norm2.norm(alpha * x + ffn(x))


@pytest.mark.parametrize("position", NORM_PLACEMENTS)
def test_block_follows_its_formula(position):
    model = make(norm_position=position, n_layers=3)
    with torch.no_grad():  # non-trivial norm gains so that each norm's place matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    x = torch.randn(2, 6, 16)
    alpha = (2 * 3) ** 0.25
    block = model.blocks[1]
    torch.testing.assert_close(block(x), hand_block(block, x, position, alpha), **TOL)
    # the formulas really differ: the same weights under another placement give another output
    other = {"pre": "post", "post": "pre", "sandwich": "pre"}.get(position)
    if other is not None:
        assert not torch.allclose(block(x), hand_block(block, x, other), **TOL)


def test_deepnorm_block_differs_from_post_by_alpha_only():
    deep = make(norm_position="deepnorm")
    x = torch.randn(2, 6, 16)
    block = deep.blocks[0]
    alpha = deepnorm_constants(2).alpha
    torch.testing.assert_close(block(x), hand_block(block, x, "deepnorm", alpha), **TOL)
    assert not torch.allclose(block(x), hand_block(block, x, "deepnorm", 1.0), **TOL)


def test_default_model_equals_builtin_torch_reference():
    # The default options (pre-LN, LayerNorm, GELU) through torch's own ops: existing behaviour kept.
    for position in ("pre", "post"):
        model = make(norm_position=position, n_layers=2)
        sd = model.state_dict()
        x = ids(2, 7)
        C, nh = 16, 2

        def ln(t, name):
            return F.layer_norm(t, (C,), sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)

        def attn(t, i):
            B, T, _ = t.shape
            q, k, v = F.linear(t, sd[f"blocks.{i}.attn.qkv.weight"], sd[f"blocks.{i}.attn.qkv.bias"]).split(C, 2)
            q, k, v = (u.view(B, T, nh, C // nh).transpose(1, 2) for u in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            return F.linear(y, sd[f"blocks.{i}.attn.proj.weight"], sd[f"blocks.{i}.attn.proj.bias"])

        def ffn(t, i):
            h = F.gelu(F.linear(t, sd[f"blocks.{i}.ffn.up.weight"], sd[f"blocks.{i}.ffn.up.bias"]))
            return F.linear(h, sd[f"blocks.{i}.ffn.down.weight"], sd[f"blocks.{i}.ffn.down.bias"])

        h = sd["tok_emb.weight"][x] + sd["pos_emb.weight"][:7]
        for i in range(2):
            if position == "pre":
                h = h + attn(ln(h, f"blocks.{i}.norm1"), i)
                h = h + ffn(ln(h, f"blocks.{i}.norm2"), i)
            else:
                h = ln(h + attn(h, i), f"blocks.{i}.norm1")
                h = ln(h + ffn(h, i), f"blocks.{i}.norm2")
        if position == "pre":
            h = ln(h, "final_norm")
        torch.testing.assert_close(model(x), h @ sd["tok_emb.weight"].T, **TOL)


# --------------------------------------------------------------------------------------------
# Init: GPT-2 scaling by default, DeepNorm's beta when asked
# --------------------------------------------------------------------------------------------


def test_default_init_scales_residual_projections():
    model = make(d_model=64, n_heads=4, n_layers=4)
    b = model.blocks[0]
    assert b.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert b.ffn.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert b.ffn.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert b.attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)


def test_deepnorm_init_scales_v_out_and_ffn_by_beta_not_q_k():
    L, C = 6, 64
    model = make(d_model=C, n_heads=4, n_layers=L, norm_position="deepnorm", activation="swiglu")
    beta = deepnorm_constants(L).beta
    for b in model.blocks:
        w = b.attn.qkv.weight
        assert w[:C].std().item() == pytest.approx(0.02, rel=0.05)  # q
        assert w[C:2 * C].std().item() == pytest.approx(0.02, rel=0.05)  # k
        assert w[2 * C:].std().item() == pytest.approx(0.02 * beta, rel=0.05)  # v
        assert b.attn.proj.weight.std().item() == pytest.approx(0.02 * beta, rel=0.05)
        assert b.ffn.up.weight.std().item() == pytest.approx(0.02 * beta, rel=0.05)
        assert b.ffn.down.weight.std().item() == pytest.approx(0.02 * beta, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)


# --------------------------------------------------------------------------------------------
# Activations and d_ff
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation,expected", [("gelu", 512), ("relu", 512), ("swiglu", 344), ("geglu", 344)])
def test_d_ff_default(activation, expected):
    cfg = ModelConfig(d_model=128, activation=activation)
    assert cfg.d_ff == expected == (glu_hidden_size(512, 8) if activation in ("swiglu", "geglu") else 512)
    ffn = GPT(tiny(d_model=128, n_heads=4, activation=activation)).blocks[0].ffn
    assert isinstance(ffn, FeedForward) and ffn.kind == activation
    assert ffn.up.out_features == (2 * expected if activation in ("swiglu", "geglu") else expected)


def test_explicit_d_ff_is_the_gated_hidden_size():
    ffn = make(activation="swiglu", d_ff=20).blocks[0].ffn
    assert (ffn.up.out_features, ffn.down.in_features) == (40, 20)


def test_default_gated_model_has_about_the_plain_models_parameters():
    C, L = 64, 2
    plain = GPT(tiny(d_model=C, n_heads=4, bias=False)).num_parameters()
    for act in ("swiglu", "geglu"):
        gated = GPT(tiny(d_model=C, n_heads=4, bias=False, activation=act)).num_parameters()
        assert 0 <= gated - plain <= L * 3 * C * 8  # at most the cost of rounding up to a multiple of 8
    # while at equal hidden size the gated FFN has 50% more parameters
    a = make(d_ff=32, bias=False).blocks[0].ffn
    g = make(d_ff=32, bias=False, activation="swiglu").blocks[0].ffn
    assert sum(p.numel() for p in g.parameters()) == 1.5 * sum(p.numel() for p in a.parameters())


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_gated_model_ffn_is_shut_by_its_gate(activation):
    ffn = make(activation=activation).blocks[0].ffn
    x = torch.randn(2, 5, 16)
    assert not torch.allclose(ffn(x), ffn.down.bias.expand(2, 5, 16))
    with torch.no_grad():  # a zero gate: silu(0) = gelu(0) = 0, so only the output bias is left
        ffn.up.weight[ffn.hidden:] = 0
        ffn.up.bias[ffn.hidden:] = 0
    torch.testing.assert_close(ffn(x), ffn.down.bias.expand(2, 5, 16), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(norm="batchnorm"), r"ModelConfig\.norm must be one of \('layernorm', 'rmsnorm'\), got 'batchnorm'"),
        (dict(norm_position="middle"), r"ModelConfig\.norm_position must be one of \('pre', 'post', 'sandwich', 'deepnorm'\)"),
        (dict(activation="swish"), r"ModelConfig\.activation must be one of \('gelu', 'relu', 'swiglu', 'geglu'\), got 'swish'"),
        (dict(d_ff=0, activation="swiglu"), r"ModelConfig\.d_ff must be an int >= 1"),
        (dict(d_ff=True), r"ModelConfig\.d_ff must be an int >= 1"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


# --------------------------------------------------------------------------------------------
# grad_norms_per_layer (for lesson 01)
# --------------------------------------------------------------------------------------------


def test_grad_norms_per_layer():
    cfg = tiny(n_layers=3)
    batch = ids(4, 9, seed=1)
    r = grad_norms_per_layer(cfg, batch, seed=0)
    assert set(r) == {"attn", "ffn", "block", "loss"}
    assert all(len(r[k]) == 3 for k in ("attn", "ffn", "block"))
    assert all(v > 0 for k in ("attn", "ffn", "block") for v in r[k])
    assert all(b >= math.hypot(a, f) - 1e-9 for a, f, b in zip(r["attn"], r["ffn"], r["block"]))
    assert r == grad_norms_per_layer(cfg, (batch[:, :-1], batch[:, 1:]), seed=0)  # the two batch forms agree
    assert r != grad_norms_per_layer(cfg, batch, seed=1)

    # the same number by hand for layer 0's FFN
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
    ffn = model.blocks[0].ffn
    by_hand = torch.sqrt(ffn.up.weight.grad.pow(2).sum() + ffn.down.weight.grad.pow(2).sum()).item()
    assert r["ffn"][0] == pytest.approx(by_hand, rel=1e-6)

    with pytest.raises(ValueError, match=r"batch must be \(x, y\) or one \(B, T \+ 1\) tensor"):
        grad_norms_per_layer(cfg, [batch], seed=0)
    with pytest.raises(ValueError, match=r"cfg must be a ModelConfig"):
        grad_norms_per_layer({}, batch)
