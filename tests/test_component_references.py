"""References of the component exercises that live in core modules (04's GQA + RoPE layer)."""

import pytest
import torch

from lmlab.attention import gqa_rope_attention
from lmlab.model import GPT, ModelConfig


@pytest.mark.parametrize("nh,nkv", [(4, 1), (4, 2), (4, 4)])
def test_gqa_rope_attention_equals_lmlab_layer(nh, nkv):
    cfg = ModelConfig(vocab_size=5, context_length=8, d_model=16, n_layers=1, n_heads=nh, n_kv_heads=nkv, position="rope", bias=False)
    model = GPT(cfg).eval()
    attn = model.blocks[0].attn
    x, pos = torch.randn(2, 6, 16), torch.arange(6)
    with torch.no_grad():
        expected = attn(x, positions=model.position.for_attention(pos, pos))
        got = gqa_rope_attention(x, attn.qkv.weight, attn.proj.weight, nh, nkv)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_gqa_rope_attention_validates():
    with pytest.raises(ValueError, match="n_kv_heads"):
        gqa_rope_attention(torch.randn(1, 3, 16), torch.randn(48, 16), torch.randn(16, 16), 4, 3)
    with pytest.raises(ValueError, match="w_qkv"):
        gqa_rope_attention(torch.randn(1, 3, 16), torch.randn(40, 16), torch.randn(16, 16), 4, 2)
