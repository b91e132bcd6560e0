"""lmlab.infer.tiled_attention: tiled attention with the online softmax, forward and backward (lesson 04)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmlab.model.attention import attention
from lmlab.infer.tiled_attention import IOStats, flash_attention, sram_block_sizes, standard_attention_io
from lmlab.data.masks import causal_mask

FP32 = dict(atol=1e-6, rtol=1e-6)  # the bar: fp32, within 1e-6 (plus 1e-6 relative)


def tensors(B, H, T, d, T_k=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    T_k = T if T_k is None else T_k
    return [torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
            for shape in ((B, H, T, d), (B, H, T_k, d), (B, H, T_k, d))]


CASES = [  # (T, block_q, block_k): lengths not divisible by the blocks, one tile, more blocks than tokens
    (100, 16, 24),
    (77, 32, 8),
    (33, 64, 64),
    (50, 7, 50),
    (1, 4, 4),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,bq,bk", CASES)
def test_forward_and_gradients_equal_the_reference(causal, T, bq, bk):
    q, k, v = tensors(2, 3, T, 16, seed=T)
    ref = attention(q, k, v, causal_mask(T) if causal else None)  # (B, nh, T, hs)
    out = flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
    torch.testing.assert_close(out, ref, **FP32)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), **FP32)


def test_cross_attention_with_different_lengths_and_value_size():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 13, 8, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 29, 8, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 29, 5, generator=g, requires_grad=True)  # hs_v != hs
    ref, out = attention(q, k, v), flash_attention(q, k, v, block_q=4, block_k=6)
    torch.testing.assert_close(out, ref, **FP32)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v)), **FP32)


def test_float64_agrees_to_rounding():
    q, k, v = tensors(1, 2, 45, 8, seed=9, dtype=torch.float64)
    ref = attention(q, k, v, causal_mask(45))
    out = flash_attention(q, k, v, causal=True, block_q=8, block_k=16)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v)), atol=1e-12, rtol=1e-12)


def test_online_softmax_survives_huge_scores():
    q, k, v = (t.detach() for t in tensors(1, 1, 40, 4, seed=2))
    q = q * 1e3  # scores ~1e3: exp overflows without the running max
    out = flash_attention(q, k, v, block_q=8, block_k=8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_gradcheck_in_float64():
    q, k, v = tensors(1, 1, 7, 3, seed=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(a, b, c, causal=True, block_q=3, block_k=2), (q, k, v))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest, self.shape = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.shape = t.numel(), tuple(t.shape)
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_never_materialises_a_T_by_T_tensor(causal):
    T, d, bq, bk = 256, 16, 32, 32
    q, k, v = tensors(1, 1, T, d, seed=1)
    with LargestTensor() as spy:
        out = flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
        out.backward(torch.ones_like(out))
    # the largest tensors are the (T, d) inputs/outputs/gradients; the score tiles are bq x bk
    assert spy.largest <= max(T * d, bq * bk), spy.shape
    assert spy.largest < T * T / 8
    with LargestTensor() as ref_spy:  # the spy does see the reference's (T, T) score matrix
        attention(q, k, v).sum().backward()
    assert ref_spy.largest >= T * T


def test_io_counts_and_the_traffic_argument():
    B, H, N, d, b = 1, 2, 256, 16, 32
    q, k, v = (t.detach() for t in tensors(B, H, N, d))
    stats = IOStats()
    flash_attention(q, k, v, block_q=b, block_k=b, stats=stats)
    n_tiles = N // b
    # each query tile: read Q_i once and every K_j, V_j; write O_i and its log-sum-exp
    assert stats.reads == B * H * (N * d + n_tiles * 2 * N * d)
    assert stats.writes == B * H * (N * d + N)
    assert stats.tiles == n_tiles * n_tiles  # (query tile, key tile) pairs, each batched over B and heads
    causal = IOStats()
    flash_attention(q, k, v, causal=True, block_q=b, block_k=b, stats=causal)
    assert causal.tiles == n_tiles * (n_tiles + 1) // 2  # tiles above the diagonal are skipped
    # Θ(N² d² / M): with the paper's tiles for SRAM M, traffic falls as M grows
    traffic = {}
    for M in (1024, 4096, 16384):
        s = IOStats()
        bq, bk = sram_block_sizes(M, d)
        flash_attention(q, k, v, block_q=bq, block_k=bk, stats=s)
        traffic[M] = s.total
        assert s.total <= B * H * (4 * N * d + 8 * N * N * d * d / M)  # reads + writes within the bound
    assert traffic[1024] > 3 * traffic[4096] and traffic[4096] > 2 * traffic[16384]  # ~1/M until the Nd floor
    assert standard_attention_io(N, d, B * H).total == B * H * (4 * N * N + 4 * N * d)
    assert traffic[16384] < standard_attention_io(N, d, B * H).total


def test_sram_block_sizes():
    assert sram_block_sizes(100 * 1024 // 4, 64) == (100, 64)  # ~100 KB of fp32 SRAM, d=64
    assert sram_block_sizes(4 * 16, 16) == (1, 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_q=0), r"block_q must be an int >= 1"),
    (dict(block_k=-3), r"block_k must be an int >= 1"),
    (dict(block_q=2.5), r"block_q must be an int >= 1"),
    (dict(stats={}), r"stats must be an IOStats"),
])
def test_bad_block_sizes(kwargs, match):
    q, k, v = tensors(1, 1, 4, 2)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, **kwargs)


def test_bad_shapes_and_dtypes():
    q, k, v = tensors(1, 2, 4, 8)
    with pytest.raises(ValueError, match="share one floating dtype"):
        flash_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="must agree on B, nkv, T_k"):
        flash_attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match=r"causal=True needs as many queries as keys"):
        flash_attention(q, *tensors(1, 2, 6, 8)[1:], causal=True)
    with pytest.raises(ValueError, match=r"M \(SRAM size in elements\) must be >= 4 \* d"):
        sram_block_sizes(10, 8)
