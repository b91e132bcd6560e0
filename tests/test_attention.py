"""lmlab.model.attention: the reference, sparse masks (dense and FlexAttention), MQA/GQA (lesson 04)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.model.attention import (
    MultiHeadAttention,
    attention,
    decode_mask,
    flex_attention,
    flex_available,
    global_local_mask,
    global_local_mask_mod,
    mask_from_mask_mod,
    repeat_kv,
    sliding_window_mask,
    sliding_window_mask_mod,
    strided_mask,
    strided_mask_mod,
)
from lmlab.data.masks import causal_mask
from lmlab.model import GPT, ModelConfig

FP32 = dict(atol=1e-6, rtol=1e-6)  # fp32 reference vs fused kernels: a few ulps


def qkv(B=2, H=4, T=12, d=8, H_kv=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    return (torch.randn(B, H, T, d, generator=g, dtype=dtype),
            torch.randn(B, H_kv, T, d, generator=g, dtype=dtype),
            torch.randn(B, H_kv, T, d, generator=g, dtype=dtype))


# ---- the reference -------------------------------------------------------------------------


def test_reference_matches_sdpa_with_and_without_mask():
    q, k, v = qkv()
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), **FP32)
    m = causal_mask(12)
    torch.testing.assert_close(attention(q, k, v, m), F.scaled_dot_product_attention(q, k, v, is_causal=True), **FP32)


def test_reference_by_hand_for_one_query():
    q, k, v = qkv(B=1, H=1, T=5, d=3)
    w = torch.softmax(torch.tensor([q[0, 0, 2] @ k[0, 0, j] / math.sqrt(3) for j in range(5)]), 0)  # (5,)
    torch.testing.assert_close(attention(q, k, v)[0, 0, 2], w @ v[0, 0], **FP32)


# ---- sparse masks --------------------------------------------------------------------------


def brute(T, rule):
    return torch.tensor([[bool(rule(i, j)) for j in range(T)] for i in range(T)])


@pytest.mark.parametrize("T,w", [(1, 1), (7, 1), (9, 3), (6, 6), (5, 20)])
def test_sliding_window_mask_by_definition(T, w):
    assert torch.equal(sliding_window_mask(T, w), brute(T, lambda i, j: 0 <= i - j < w))
    assert torch.equal(sliding_window_mask(T, w, causal=False), brute(T, lambda i, j: abs(i - j) < w))


def test_sliding_window_edge_cases():
    assert torch.equal(sliding_window_mask(8, 8), causal_mask(8))  # window >= T: causal
    assert torch.equal(sliding_window_mask(8, 1), torch.eye(8, dtype=torch.bool))  # only itself
    assert sliding_window_mask(100, 4).sum(1).max() == 4  # linear, not quadratic, work


@pytest.mark.parametrize("T,s", [(10, 3), (16, 4), (5, 1), (7, 10)])
def test_strided_mask_by_definition(T, s):
    assert torch.equal(strided_mask(T, s), brute(T, lambda i, j: j <= i and (i - j < s or (i - j) % s == 0)))


@pytest.mark.parametrize("T,g,w", [(10, 2, 3), (8, 0, 2), (6, 6, 1)])
def test_global_local_mask_by_definition(T, g, w):
    assert torch.equal(global_local_mask(T, g, w), brute(T, lambda i, j: j <= i and (i - j < w or j < g)))
    nc = brute(T, lambda i, j: abs(i - j) < w or j < g or i < g)
    assert torch.equal(global_local_mask(T, g, w, causal=False), nc)


def test_every_causal_pattern_keeps_the_diagonal_and_nothing_above_it():
    for m in (sliding_window_mask(20, 3), strided_mask(20, 4), global_local_mask(20, 2, 3)):
        assert m.diagonal().all() and not m.triu(1).any()


def test_sparse_masks_cut_the_quadratic_cost():
    T = 256
    full = int(causal_mask(T).sum())
    assert int(sliding_window_mask(T, 16).sum()) < full / 8
    assert int(strided_mask(T, 16).sum()) < full / 4  # ~ T (s + T/s) / 2


@pytest.mark.parametrize("dense,mod", [
    (lambda T: sliding_window_mask(T, 5), sliding_window_mask_mod(5)),
    (lambda T: strided_mask(T, 4), strided_mask_mod(4)),
    (lambda T: global_local_mask(T, 2, 3), global_local_mask_mod(2, 3)),
    (lambda T: global_local_mask(T, 2, 3, causal=False), global_local_mask_mod(2, 3, causal=False)),
])
def test_mask_mods_equal_the_dense_masks(dense, mod):
    for T in (1, 9, 33):
        assert torch.equal(mask_from_mask_mod(mod, T), dense(T))


FLEX_OK, FLEX_WHY = flex_available()


@pytest.mark.skipif(not FLEX_OK, reason=f"FlexAttention unavailable: {FLEX_WHY}")
@pytest.mark.parametrize("dense,mod", [
    (lambda T: sliding_window_mask(T, 5), sliding_window_mask_mod(5)),
    (lambda T: strided_mask(T, 4), strided_mask_mod(4)),
    (lambda T: global_local_mask(T, 2, 3), global_local_mask_mod(2, 3)),
])
def test_flex_attention_equals_the_masked_reference(dense, mod):
    q, k, v = qkv(B=1, H=2, T=40, d=16, seed=3)  # T not a multiple of flex's 128-token blocks
    with torch.no_grad():  # FlexAttention on CPU: forward only
        got = flex_attention(q, k, v, mod)
    torch.testing.assert_close(got, attention(q, k, v, dense(40)), atol=2e-6, rtol=1e-5)


@pytest.mark.skipif(not FLEX_OK, reason=f"FlexAttention unavailable: {FLEX_WHY}")
def test_flex_attention_with_gqa():
    q, k, v = qkv(B=1, H=4, H_kv=2, T=20, d=8, seed=4)
    with torch.no_grad():
        got = flex_attention(q, k, v, sliding_window_mask_mod(4))
    torch.testing.assert_close(got, attention(q, repeat_kv(k, 2), repeat_kv(v, 2), sliding_window_mask(20, 4)), atol=2e-6, rtol=1e-5)


# ---- MQA / GQA -----------------------------------------------------------------------------


def test_repeat_kv_layout_matches_sdpa_enable_gqa():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # (B, nkv, T, hs)
    r = repeat_kv(x, 4)  # (2, 12, 4, 5)
    assert r.shape == (2, 12, 4, 5)
    for h in range(12):
        assert torch.equal(r[:, h], x[:, h // 4])  # query head h uses K/V head h // n_rep
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("H_kv", [1, 2, 4])
def test_gqa_reference_equals_sdpa_enable_gqa(H_kv):
    q, k, v = qkv(H=4, H_kv=H_kv, T=10, seed=H_kv)
    ref = attention(q, repeat_kv(k, 4 // H_kv), repeat_kv(v, 4 // H_kv), causal_mask(10))
    torch.testing.assert_close(ref, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), **FP32)


@pytest.mark.parametrize("n_kv", [1, 2, 8])
def test_module_equals_sdpa_by_hand(n_kv):
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 8, n_kv).eval()
    x = torch.randn(2, 11, 32)
    hs = 4
    q, k, v = m.qkv(x).split([32, n_kv * hs, n_kv * hs], dim=2)
    q = q.view(2, 11, 8, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(2, 11, n_kv, hs).transpose(1, 2)  # (B, nkv, T, hs)
    v = v.view(2, 11, n_kv, hs).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(2, 11, 32)
    torch.testing.assert_close(m(x), m.proj(y), **FP32)
    # and against the plain reference with repeated K/V
    y2 = attention(q, repeat_kv(k, 8 // n_kv), repeat_kv(v, 8 // n_kv), causal_mask(11)).transpose(1, 2).reshape(2, 11, 32)
    torch.testing.assert_close(m(x), m.proj(y2), **FP32)


def test_mqa_and_gqa_shrink_the_kv_projection():
    sizes = {n: MultiHeadAttention(64, 8, n).qkv.weight.shape[0] for n in (8, 2, 1)}
    assert sizes == {8: 3 * 64, 2: 64 + 2 * 16, 1: 64 + 2 * 8}


def test_sliding_window_module_equals_masked_reference():
    torch.manual_seed(1)
    m = MultiHeadAttention(16, 2, 1, window=3).eval()
    x = torch.randn(1, 9, 16)
    q, k, v = m.qkv(x).split([16, 8, 8], dim=2)
    q = q.view(1, 9, 2, 8).transpose(1, 2)
    k = repeat_kv(k.view(1, 9, 1, 8).transpose(1, 2), 2)
    v = repeat_kv(v.view(1, 9, 1, 8).transpose(1, 2), 2)
    y = attention(q, k, v, sliding_window_mask(9, 3)).transpose(1, 2).reshape(1, 9, 16)
    torch.testing.assert_close(m(x), m.proj(y), **FP32)


def test_decode_mask_is_the_bottom_rows_of_the_full_mask():
    assert torch.equal(decode_mask(3, 10), causal_mask(10)[-3:])
    assert torch.equal(decode_mask(4, 10, window=3), sliding_window_mask(10, 3)[-4:])


def test_model_config_gqa_and_sliding_window():
    cfg = ModelConfig(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    assert cfg.n_kv_heads == 2 and ModelConfig().n_kv_heads == ModelConfig().n_heads
    model = GPT(cfg)
    assert model.blocks[0].attn.qkv.weight.shape == (32 + 2 * 2 * 8, 32)
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 32)
    # MHA keeps the pre-lesson-04 parameter names and shapes
    mha = GPT(ModelConfig(vocab_size=32, context_length=16, d_model=32, n_layers=1, n_heads=4))
    assert mha.blocks[0].attn.qkv.weight.shape == (96, 32)
    # a sliding window of 1 token: each position's output depends on its own token only
    sw = GPT(ModelConfig(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=4, attention="sliding_window", window=1, position="none")).eval()
    a = sw(torch.tensor([[1, 2, 3, 4]]))
    b = sw(torch.tensor([[9, 9, 9, 4]]))
    torch.testing.assert_close(a[0, -1], b[0, -1], **FP32)


def test_sliding_window_model_equals_full_model_when_window_covers_context():
    kw = dict(vocab_size=32, context_length=12, d_model=32, n_layers=2, n_heads=4)
    torch.manual_seed(0)
    full = GPT(ModelConfig(**kw)).eval()
    sw = GPT(ModelConfig(**kw, attention="sliding_window", window=12)).eval()
    sw.load_state_dict(full.state_dict())
    idx = torch.randint(0, 32, (2, 12))
    torch.testing.assert_close(sw(idx), full(idx), **FP32)


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda: MultiHeadAttention(32, 8, 3), r"n_kv_heads must divide n_heads=8"),
    (lambda: MultiHeadAttention(32, 8, 0), r"n_kv_heads"),
    (lambda: ModelConfig(n_heads=4, n_kv_heads=3), r"ModelConfig\.n_kv_heads must divide n_heads"),
    (lambda: ModelConfig(attention="sliding_window"), r"ModelConfig\.window must be an int >= 1"),
    (lambda: ModelConfig(window=4), r"window only applies to attention='sliding_window'"),
    (lambda: ModelConfig(attention="sparse"), r"ModelConfig\.attention must be one of"),
    (lambda: sliding_window_mask(8, 0), r"window must be an int >= 1"),
    (lambda: sliding_window_mask_mod(0), r"window must be an int >= 1"),
    (lambda: strided_mask(8, 0), r"stride must be an int >= 1"),
    (lambda: global_local_mask(8, -1, 2), r"n_global must be an int >= 0"),
    (lambda: global_local_mask(8, 1, 0), r"window must be an int >= 1"),
    (lambda: repeat_kv(torch.zeros(1, 2, 3, 4), 0), r"n_rep must be an int >= 1"),
    (lambda: attention(*qkv(T=4)[:2], torch.zeros(2, 4, 5, 8)), r"must agree on B, nkv, T_k"),
    (lambda: attention(torch.zeros(2, 4, 4, 8), torch.zeros(2, 4, 4, 6), torch.zeros(2, 4, 4, 8)), r"same head size"),
    (lambda: attention(torch.zeros(2, 4, 4, 8), torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8)), r"same number of heads"),
    (lambda: attention(*qkv(T=4)[:2], qkv(T=4)[2].double()), r"share one floating dtype"),
    (lambda: attention(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 8)), r"q must be a 4-D tensor"),
    (lambda: attention(*qkv(T=4), mask=torch.ones(4, 5, dtype=torch.bool)), r"mask must be a bool tensor"),
    (lambda: attention(*qkv(T=4), mask=torch.ones(4, 4)), r"mask must be a bool tensor"),
])
def test_bad_input_raises_value_error_naming_it(make, match):
    with pytest.raises(ValueError, match=match):
        make()
