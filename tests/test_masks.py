"""Tests for lmlab.data.masks: the three architectures' attention masks (True = may attend)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.data.masks import (
    ARCHITECTURES,
    EncoderDecoderMasks,
    architecture_mask,
    causal_mask,
    encoder_decoder_masks,
    prefix_lm_mask,
)

SIZES = [1, 2, 5, 16]


def _loop_prefix_mask(T: int, P: int) -> torch.Tensor:
    """Independent construction: i sees j iff j <= i, or both are inside the prefix."""
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            m[i, j] = j <= i or (i < P and j < P)
    return m


def _loop_encoder_decoder_picture(T: int, S: int) -> torch.Tensor:
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            if i < S:  # encoder query: sees every source token, never the target
                m[i, j] = j < S
            else:  # decoder query: every source token, and earlier-or-same target tokens
                m[i, j] = j < S or j <= i
    return m


@pytest.mark.parametrize("T", SIZES)
def test_causal_mask_is_lower_triangle(T):
    m = causal_mask(T)
    assert m.shape == (T, T) and m.dtype == torch.bool
    expected = torch.tril(torch.ones(T, T)).bool()
    assert torch.equal(m, expected)
    # no token sees the future: strictly upper triangle is empty
    assert not m[torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)].any()
    assert m.diagonal().all()


@pytest.mark.parametrize("T", SIZES)
def test_prefix_lm_mask_matches_loop_for_every_prefix(T):
    for P in range(T + 1):
        m = prefix_lm_mask(T, P)
        assert m.shape == (T, T) and m.dtype == torch.bool
        assert torch.equal(m, _loop_prefix_mask(T, P)), (T, P)


@pytest.mark.parametrize("T", SIZES)
def test_prefix_lm_mask_limits(T):
    assert torch.equal(prefix_lm_mask(T, 0), causal_mask(T))
    assert torch.equal(prefix_lm_mask(T, 1), causal_mask(T))
    assert prefix_lm_mask(T, T).all()


def test_prefix_lm_mask_does_not_modify_a_shared_causal_mask():
    before = causal_mask(6).clone()
    prefix_lm_mask(6, 4)
    assert torch.equal(causal_mask(6), before)


@pytest.mark.parametrize("S,T", [(1, 1), (3, 5), (6, 2)])
def test_encoder_decoder_masks_components(S, T):
    m = encoder_decoder_masks(S, T)
    assert isinstance(m, EncoderDecoderMasks)
    assert m.encoder_self.shape == (S, S) and m.encoder_self.dtype == torch.bool and m.encoder_self.all()
    assert m.decoder_self.shape == (T, T) and torch.equal(m.decoder_self, torch.tril(torch.ones(T, T)).bool())
    assert m.cross.shape == (T, S) and m.cross.dtype == torch.bool and m.cross.all()


@pytest.mark.parametrize("T", [2, 5, 9])
def test_architecture_mask_stitches_encoder_decoder(T):
    for S in range(1, T):
        m = architecture_mask("encoder-decoder", T, S)
        assert torch.equal(m, _loop_encoder_decoder_picture(T, S)), (T, S)
        assert not m[:S, S:].any()  # encoder rows never see decoder columns
        assert m[S:, :S].all()  # decoder rows see every source token


@pytest.mark.parametrize("T", SIZES)
def test_architecture_mask_decoders(T):
    assert torch.equal(architecture_mask("causal decoder", T), _loop_prefix_mask(T, 0))
    for P in range(T + 1):
        assert torch.equal(architecture_mask("prefix decoder", T, P), _loop_prefix_mask(T, P))


def test_architectures_are_the_three_of_the_lesson():
    assert set(ARCHITECTURES) == {"causal decoder", "prefix decoder", "encoder-decoder"}
    for arch in ARCHITECTURES:
        m = architecture_mask(arch, 6, 3)
        assert m.shape == (6, 6) and m.dtype == torch.bool


def _manual_attention(q, k, v, mask):
    """Softmax attention with an explicit -inf for masked (False) entries."""
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _qkv(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("T", [1, 4, 11])
def test_causal_mask_in_sdpa_equals_is_causal(T):
    q, k, v = _qkv(T)
    with_mask = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T))
    builtin = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(with_mask, builtin, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch,T,P", [("prefix decoder", 7, 3), ("encoder-decoder", 7, 3), ("prefix decoder", 5, 5)])
def test_masks_mean_may_attend_in_sdpa(arch, T, P):
    q, k, v = _qkv(T, seed=1)
    mask = architecture_mask(arch, T, P)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, _manual_attention(q, k, v, mask), rtol=1e-10, atol=1e-12)
    # and it differs from plain causal attention (the prefix is bidirectional)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(out[..., 0, :], causal[..., 0, :])


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4", None])
def test_causal_mask_rejects_bad_T(bad):
    with pytest.raises(ValueError, match=r"T must be an int >= 1"):
        causal_mask(bad)


def test_prefix_lm_mask_rejects_bad_input():
    with pytest.raises(ValueError, match=r"T must be an int >= 1"):
        prefix_lm_mask(0, 0)
    with pytest.raises(ValueError, match=r"prefix_len must be an int >= 0"):
        prefix_lm_mask(4, -1)
    with pytest.raises(ValueError, match=r"prefix_len must be an int >= 0"):
        prefix_lm_mask(4, 2.0)
    with pytest.raises(ValueError, match=r"prefix_len must be in \[0, T=4\]"):
        prefix_lm_mask(4, 5)


def test_encoder_decoder_masks_reject_bad_input():
    with pytest.raises(ValueError, match="src_len"):
        encoder_decoder_masks(0, 3)
    with pytest.raises(ValueError, match="tgt_len"):
        encoder_decoder_masks(3, 0)


def test_architecture_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="architecture must be one of"):
        architecture_mask("decoder-only", 4)
    with pytest.raises(ValueError, match=r"T must be an int >= 1"):
        architecture_mask("causal decoder", 0)
    with pytest.raises(ValueError, match="prefix_len"):
        architecture_mask("prefix decoder", 4, 5)
    for bad_source in (0, 4, 7):  # needs 1 <= source < T
        with pytest.raises(ValueError, match=r"prefix_len \(the source length\)"):
            architecture_mask("encoder-decoder", 4, bad_source)
