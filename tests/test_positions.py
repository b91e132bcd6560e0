"""Tests for lmlab.model.positions.encodings (lesson 03): hand-computed values, the RoPE properties, and parity
with Hugging Face's reference code when the optional ``parity`` extra (transformers) is installed."""

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.model.positions.encodings import (
    LearnedPositionEmbedding,
    T5RelativeBias,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    apply_rope_complex,
    half_to_interleaved,
    interleaved_to_half,
    relative_position_bucket,
    rope_cos_sin,
    rope_frequencies,
    sinusoidal_embedding,
)

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 trig and matmuls on small values


# ---------------------------------------------------------------------------------- sinusoidal


def test_sinusoidal_hand_values():
    pe = sinusoidal_embedding(3, 4)
    assert pe.shape == (3, 4)
    # column pairs (sin, cos) at frequencies 1 and 1/10000^(2/4) = 1/100
    expected = torch.tensor([
        [0.0, 1.0, 0.0, 1.0],
        [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
        [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)],
    ])
    torch.testing.assert_close(pe, expected, **TOL)
    torch.testing.assert_close(sinusoidal_embedding(torch.tensor([2, 0]), 4), expected[[2, 0]], **TOL)


def test_sinusoidal_shift_is_a_rotation():
    # PE[p + k] = R_k PE[p] pair by pair, so <PE[p], PE[p + k]> depends on k only
    pe = sinusoidal_embedding(64, 16)
    dots = torch.stack([pe[p] @ pe[p + 5] for p in range(50)])
    torch.testing.assert_close(dots, dots[:1].expand(50), **TOL)


def test_sinusoidal_rejects_odd_d_model():
    with pytest.raises(ValueError, match="d_model"):
        sinusoidal_embedding(4, 5)


# ---------------------------------------------------------------------------------- learned


def test_learned_table_cannot_extrapolate():
    emb = LearnedPositionEmbedding(8, 4)
    assert emb(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match=r"n_positions.*cannot extrapolate"):
        emb(torch.arange(9))


# ---------------------------------------------------------------------------------- T5 buckets


def test_t5_buckets_hand_values():
    rel = torch.tensor([0, -1, 1, -7, -8, -16, -127, -128, -1000, 1000])
    # bidirectional, 32 buckets: 16 per direction, 8 exact; later keys offset by 16
    # -16 -> 8 + int(ln(16/8) / ln(128/8) * 8) = 8 + int(2.0) = 10; >= 128 -> last bucket 15 (31 after)
    assert relative_position_bucket(rel, True, 32, 128).tolist() == [0, 1, 17, 7, 8, 10, 15, 15, 15, 31]
    # causal: 32 buckets, 16 exact; later keys -> 0; -32 -> 16 + int(ln 2 / ln 8 * 16) = 21
    rel = torch.tensor([0, -15, -16, -32, -127, -128, 5])
    assert relative_position_bucket(rel, False, 32, 128).tolist() == [0, 15, 16, 21, 31, 31, 0]


def test_t5_buckets_are_monotone_and_coarser_far_away():
    b = relative_position_bucket(-torch.arange(300), False, 32, 128)
    assert (b[1:] >= b[:-1]).all()
    assert len(set(b[:16].tolist())) == 16  # exact nearby
    assert len(set(b[64:128].tolist())) < 64 / 4  # coarse far away


def test_t5_bias_module_shape_and_values():
    torch.manual_seed(0)
    mod = T5RelativeBias(n_heads=3, num_buckets=8, max_distance=16)
    bias = mod(4, torch.arange(6))  # 4 queries, 6 keys
    assert bias.shape == (1, 3, 4, 6)
    buckets = relative_position_bucket(torch.arange(6)[None] - torch.arange(4)[:, None], False, 8, 16)
    torch.testing.assert_close(bias[0, 1], mod.relative_attention_bias.weight[buckets, 1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_hand_values():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]), rtol=0, atol=0)
    # 6 heads: the 4-head sequence (2^-2k), then every other slope of the 8-head one
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]), rtol=0, atol=0)
    twelve = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(0.5 + i) for i in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(twelve), rtol=1e-6, atol=0)
    assert alibi_slopes(1).tolist() == [2.0 ** -8]


def test_alibi_bias_is_minus_slope_times_distance():
    bias = alibi_bias(2, 3)  # (1, 2, 3, 3)
    d = torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]])
    torch.testing.assert_close(bias[0], -torch.tensor([2.0 ** -4, 2.0 ** -8])[:, None, None] * d, rtol=0, atol=0)  # 2 heads: 2^-4, 2^-8


# ---------------------------------------------------------------------------------- RoPE


def test_rope_hand_value_and_frequencies():
    torch.testing.assert_close(rope_frequencies(4, 100.0), torch.tensor([1.0, 0.1]), **TOL)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # (T=2, hs=2): one pair, positions 0 and 1
    torch.testing.assert_close(apply_rope(x, 2), torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)]]), **TOL)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(0, 200), st.sampled_from(["half", "interleaved"]), st.integers(0, 10_000))
def test_rope_preserves_norms_and_is_shift_invariant(half_dim, shift, layout, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2 * half_dim, generator=g)
    pos = torch.tensor([7, 3])
    qk = torch.stack((q, k))  # (2, hs): q at position 7, k at position 3
    a = apply_rope(qk, pos, layout=layout)
    b = apply_rope(qk, pos + shift, layout=layout)
    torch.testing.assert_close(a.norm(dim=-1), qk.norm(dim=-1), **TOL)
    # q^T k after rotation depends only on 7 - 3, not on the shift
    torch.testing.assert_close(a[0] @ a[1], b[0] @ b[1], rtol=1e-4, atol=1e-4)


def test_rope_scores_change_with_distance():
    torch.manual_seed(0)
    q, k = torch.randn(2, 8)
    s = [apply_rope(q[None], torch.tensor([d])) @ apply_rope(k[None], torch.tensor([0])).T for d in (1, 5)]
    assert not torch.allclose(s[0], s[1])


def test_rope_layouts_convert_and_complex_form_is_equal():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)  # (B, nh, T, hs)
    pos = torch.arange(5) * 3
    inter = apply_rope(x, pos, layout="interleaved")
    torch.testing.assert_close(interleaved_to_half(inter), apply_rope(interleaved_to_half(x), pos, layout="half"), **TOL)
    torch.testing.assert_close(half_to_interleaved(interleaved_to_half(x)), x, rtol=0, atol=0)
    torch.testing.assert_close(apply_rope_complex(x, pos), inter, **TOL)
    # converting W_q and W_k rows per head leaves the attention scores unchanged
    q, k = torch.randn(2, 5, 8)
    s_inter = apply_rope(q, pos, layout="interleaved") @ apply_rope(k, pos, layout="interleaved").T
    s_half = apply_rope(interleaved_to_half(q), pos) @ apply_rope(interleaved_to_half(k), pos).T
    torch.testing.assert_close(s_half, s_inter, **TOL)


def test_rope_cos_sin_matches_positions_path():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 4)
    cos, sin = rope_cos_sin(torch.arange(6), rope_frequencies(4, 500.0))
    torch.testing.assert_close(apply_rope(x, cos=cos, sin=sin), apply_rope(x, 6, base=500.0), rtol=0, atol=0)


@pytest.mark.parametrize("call", [
    lambda: rope_frequencies(7),
    lambda: apply_rope(torch.zeros(3, 5), 3),
    lambda: apply_rope_complex(torch.zeros(3, 5), 3),
])
def test_rope_rejects_odd_head_dim(call):
    with pytest.raises(ValueError, match="head_dim must be even"):
        call()


def test_rope_rejects_bad_layout():
    with pytest.raises(ValueError, match="layout must be one of"):
        apply_rope(torch.zeros(3, 4), 3, layout="zigzag")


# ---------------------------------------------------------------------------------- HF parity

try:  # optional: pip install -e .[parity]
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: F401
except Exception:  # pragma: no cover - depends on the environment
    transformers = None
# Skipped only outside CI: tools/test.sh installs the parity extra, so under CI a missing
# transformers makes these tests fail instead of silently skipping.
needs_hf = pytest.mark.skipif(transformers is None and not os.environ.get("CI"),
                              reason="optional parity extra: transformers>=4.45 not installed")


@needs_hf
def test_t5_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-600, 600)[None, :] - torch.arange(0, 40)[:, None]
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 20), (64, 300)):
            ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            assert torch.equal(relative_position_bucket(rel, bidirectional, nb, md), ref)


@needs_hf
def test_alibi_slopes_match_transformers():
    # BLOOM's ALiBi tensor is slope * position, (B * H, 1, T): its column at position 1 is the slopes.
    # (build_alibi_tensor exists in transformers 4.x and 5.x; a private _get_alibi_slopes did not last.)
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for n in range(1, 40):
        hf = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n, torch.float32)[:, 0, 1]  # (H,)
        torch.testing.assert_close(alibi_slopes(n), hf, rtol=1e-6, atol=0)


@needs_hf
def test_rope_application_matches_transformers_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, rope_theta=500.0)
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 2, 10, 16)
    pos = torch.arange(3, 13)[None].expand(2, 10)
    cos, sin = LlamaRotaryEmbedding(config=cfg)(q, pos)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, torch.arange(3, 13), base=500.0), q_ref, **TOL)
    torch.testing.assert_close(apply_rope(k, torch.arange(3, 13), base=500.0), k_ref, **TOL)
