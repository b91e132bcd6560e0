"""Tests for :mod:`lmlab.scaling.calculators` (lesson 12): closed-form counts checked against real models and
against the papers' numbers (``COURSE.md``, "Reference numbers"). No processes are started.
Exact integer equality for parameter counts; floats to 3 significant figures where a paper rounds.
"""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import torch.nn as nn

from lmlab.scaling import calculators as calc
from lmlab.model import GPT, ModelConfig


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) tensors are listed once


# -- parameter counts ------------------------------------------------------------------------

CONFIGS = [
    dict(),
    dict(tie_embeddings=False),
    dict(bias=False, norm="rmsnorm"),
    dict(activation="swiglu"),
    dict(activation="geglu", d_ff=40, bias=False),
    dict(norm_position="sandwich"),
    dict(norm_position="post", position="none"),
    dict(norm_position="deepnorm", norm="rmsnorm"),
    dict(n_heads=4, n_kv_heads=2),
    dict(n_heads=4, n_kv_heads=1, activation="swiglu", bias=False, norm="rmsnorm", tie_embeddings=False, position="none"),
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_model_params_equal_the_real_model(overrides):
    cfg = ModelConfig(**{**dict(vocab_size=37, context_length=11, d_model=32, n_layers=3, n_heads=2), **overrides})
    assert calc.model_params(cfg) == n_params(GPT(cfg))


@pytest.mark.parametrize("gated,bias", [(False, True), (False, False), (True, True), (True, False)])
def test_mlp_params_plain_and_gated(gated, bias):
    from lmlab.model.ffn import FeedForward

    ffn = FeedForward(24, 40, "swiglu" if gated else "gelu", bias=bias)
    assert calc.mlp_params(24, 40, gated=gated, bias=bias) == n_params(ffn)
    # the 2/3 rule: a gated MLP with d_ff = 2/3 * 4d has the parameters of a plain one with 4d
    assert calc.mlp_params(96, 256, gated=True, bias=False) == calc.mlp_params(96, 384, gated=False, bias=False)


def test_llama_style_formula_against_a_llama_style_module():
    # LLaMA-style: no biases, RMSNorm, SwiGLU, untied; built with lmlab.model.gpt's options
    cfg = ModelConfig(vocab_size=50, context_length=8, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=88,
                      bias=False, norm="rmsnorm", activation="swiglu", position="none", tie_embeddings=False)
    assert calc.llama_params(50, 32, 2, 88, n_heads=4, n_kv_heads=2) == n_params(GPT(cfg))
    assert calc.llama_params(32000, 4096, 32, 11008) == 6_738_415_616  # LLaMA-7B as released


def test_bloom_176b():
    n = calc.bloom_params()  # h = 14336, 70 layers, vocabulary 250,880
    assert abs(n - 176.2e9) / 176.2e9 < 1e-3
    assert n == 176_247_271_424  # the released checkpoint's count
    layout = calc.parallel_layout(384, dp=8, tp=4, pp=12)
    assert layout["gpus_per_replica"] == 48 and layout["replicas"] == 8


def test_twelve_L_d_squared_rule():
    # per-layer parameters of a GPT layer ~ 12 d^2 (the rest is O(d))
    d = 4096
    per_layer = calc.transformer_params(vocab_size=1, d_model=d, n_layers=2) - calc.transformer_params(vocab_size=1, d_model=d, n_layers=1)
    assert per_layer == 12 * d * d + 13 * d


# -- memory ----------------------------------------------------------------------------------


def test_bytes_per_param():
    assert calc.bytes_per_param("mixed", "adam") == dict(params=2, grads=2, optimizer=12, total=16)
    assert calc.bytes_per_param("fp32", "adam")["total"] == 16
    assert calc.bytes_per_param("bf16", "adam")["total"] == 8
    assert calc.bytes_per_param("fp32", "sgd")["total"] == 8
    assert calc.bytes_per_param("mixed", "sgd_momentum")["optimizer"] == 8


def test_zero_paper_figure_1():
    gb = [calc.zero_memory_per_gpu(7.5e9, 64, stage)["total"] / 1e9 for stage in range(4)]
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]


def test_activation_memory():
    s, b, h, a = 2048, 1, 12288, 96  # GPT-3-sized layer
    base = calc.activation_memory_per_layer(s, b, h, a)
    assert base == s * b * h * (34 + 5 * a * s / h)
    # sequence parallel divides everything by t; full recompute keeps only the input
    assert calc.activation_memory_per_layer(s, b, h, a, tp=8, sequence_parallel=True) == pytest.approx(base / 8)
    assert calc.activation_memory_per_layer(s, b, h, a, recompute="full") == 2 * s * b * h
    tp_only = calc.activation_memory_per_layer(s, b, h, a, tp=8)
    assert base / 8 < tp_only < base  # TP alone leaves the 10 sbh of norms/dropout inputs replicated
    assert calc.activation_memory_per_layer(s, b, h, a, tp=8, sequence_parallel=True, recompute="selective") == 34 * s * b * h / 8


# -- bubble, communication, compute ---------------------------------------------------------


def test_bubble_both_definitions():
    assert calc.bubble(4, 8) == Fraction(3, 11)
    assert calc.bubble(4, 8, "megatron") == Fraction(3, 8)
    assert calc.bubble(1, 5) == 0
    for p in range(1, 9):
        for m in range(1, 17):
            assert calc.bubble_identity(p, m)


def test_communication_volumes():
    assert calc.ring_all_reduce_volume(1000, 4) == 1500  # 2 (N-1)/N
    assert calc.dp_comm_volume(1000, 4) == calc.zero_comm_volume(1000, 4, 1) == calc.zero_comm_volume(1000, 4, 2)
    assert calc.zero_comm_volume(1000, 4, 3) == 1.5 * calc.zero_comm_volume(1000, 4, 2)
    assert calc.tp_comm_volume(2, 8, 16, tp=2, n_layers=3) == 3 * 4 * (2 * 8 * 16)  # 4 all-reduces of bsh, 2(t-1)/t = 1
    assert calc.pp_comm_volume(2, 8, 16, n_micro=8) == 2 * 8 * 2 * 8 * 16


def test_flops_and_mfu():
    assert calc.training_flops(175e9, 300e9) == pytest.approx(3.15e23)
    assert calc.mfu(1000.0, 1e9, 6e12, n_gpus=2) == pytest.approx(0.5)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda: calc.bubble(4, 0), "m"),
    (lambda: calc.bubble(0, 4), "p"),
    (lambda: calc.bubble(4, 8, "pipedream"), "definition"),
    (lambda: calc.zero_memory_per_gpu(1e9, 8, 4), "stage"),
    (lambda: calc.zero_memory_per_gpu(1e9, 0, 1), "n_gpus"),
    (lambda: calc.bytes_per_param("fp8"), "precision"),
    (lambda: calc.bytes_per_param("mixed", "lion"), "optimizer"),
    (lambda: calc.parallel_layout(384, 8, 4, 10), "dp x tp x pp"),
    (lambda: calc.activation_memory_per_layer(8, 1, 16, 2, recompute="some"), "recompute"),
    (lambda: calc.attention_params(30, 4), "n_heads"),
    (lambda: calc.model_params(dict(d_model=8)), "cfg"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        call()


# -- model_params == GPT(cfg).num_parameters() for every option (property test) -------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def model_configs(draw):
    n_heads = draw(st.sampled_from([1, 2, 4]))
    d_model = n_heads * draw(st.sampled_from([2, 4, 6]))
    n_layers = draw(st.integers(1, 3))
    position = draw(st.sampled_from(["learned", "none", "sinusoidal", "t5", "rope", "alibi"]))
    attention = draw(st.sampled_from(["full", "sliding_window"]))
    context_length = draw(st.integers(2, 12))
    kw = dict(
        vocab_size=draw(st.integers(2, 30)), context_length=context_length, d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=draw(st.sampled_from([h for h in (1, 2, 4) if n_heads % h == 0])),
        bias=draw(st.booleans()), norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        norm_position=draw(st.sampled_from(["pre", "post", "sandwich", "deepnorm"])),
        activation=draw(st.sampled_from(["gelu", "relu", "swiglu", "geglu"])),
        d_ff=draw(st.one_of(st.none(), st.integers(1, 40))), position=position, attention=attention,
        tie_embeddings=draw(st.booleans()),
    )
    if position == "learned":
        kw["n_positions"] = draw(st.one_of(st.none(), st.integers(context_length, 40)))
    if attention == "sliding_window":
        kw["window"] = draw(st.integers(1, 8))
        kw["n_sink"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        kw["knn_memory"] = {"layer": draw(st.integers(0, n_layers - 1)), "top_k": 2, "size": 8}
    return ModelConfig(**kw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_configs())
def test_model_params_equal_the_real_model_for_generated_configs(cfg):
    assert calc.model_params(cfg) == n_params(GPT(cfg)) == GPT(cfg).num_parameters()


def test_model_params_regressions_from_the_issue():
    # t5 was 826,112 (bias table forgotten), n_positions=64 was 842,496 (context_length used), knn missed its gate
    for kw in (dict(position="t5"), dict(n_positions=64), dict(knn_memory={"layer": 1, "top_k": 4, "size": 16})):
        cfg = ModelConfig(**kw)
        assert calc.model_params(cfg) == n_params(GPT(cfg))
    assert calc.model_params(ModelConfig(position="t5")) == 826_240
    assert calc.model_params(ModelConfig(n_positions=64)) == 834_304
