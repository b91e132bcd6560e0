"""Tests for :mod:`lmlab.scaling.calculators` (lesson 12): closed-form memory, communication and bubble
calculators, and BLOOM's count (lmlab.scaling.counting's, on the meta device), against the papers'
numbers (``COURSE.md``, "Reference numbers"). No processes are started.
Exact integer equality for parameter counts; floats to 3 significant figures where a paper rounds.
"""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import torch.nn as nn

from lmlab.model import GPT, ModelConfig
from lmlab.scaling import calculators as calc
from lmlab.scaling.counting import count_params


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) tensors are listed once


# -- parameter counts: lmlab.scaling.counting counts; the calculators only use it ------------------


def test_bloom_176b():
    n = calc.bloom_params()  # h = 14336, 70 layers, vocabulary 250,880
    assert abs(n - 176.2e9) / 176.2e9 < 1e-3
    assert n == 176_247_271_424  # the released checkpoint's count
    layout = calc.parallel_layout(384, dp=8, tp=4, pp=12)
    assert layout["gpus_per_replica"] == 48 and layout["replicas"] == 8


def test_bloom_config_is_lmlabs_gpt_plus_the_embedding_norm():
    cfg = calc.bloom_config(vocab_size=37, d_model=32, n_layers=2, n_heads=4)
    assert calc.bloom_params(37, 32, 2, 4) == n_params(GPT(cfg)) + 2 * 32  # + LayerNorm(d) with a bias


def test_twelve_L_d_squared_rule():
    # a hand check of the counter: a GPT layer has 12 d^2 weights (4 d^2 attention, 8 d^2 MLP) and 13 d
    # biases and norm parameters (qkv 3d, proj d, MLP 4d + d, two LayerNorms 4d)
    d = 4096
    cfg = lambda n_layers: ModelConfig(vocab_size=1, context_length=8, d_model=d, n_layers=n_layers, n_heads=32)  # noqa: E731
    assert count_params(cfg(2)) - count_params(cfg(1)) == 12 * d * d + 13 * d


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
    (lambda: calc.bloom_params(n_heads=100), "n_heads"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        call()
