"""Lesson 00's ladder (lmlab.model.minimal_gpt): the minimal GPT is lmlab.GPT, and every rung trains."""

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.course.experiments.ch00_ladder import train_ladder
from lmlab.model.minimal_gpt import LADDER, MiniGPT, attention_head, gpt_forward


def _big_gpt(cfg):
    gpt = lmlab.GPT(cfg).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.normal_(0, 0.5)
    return gpt


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (2, 4)])
def test_minimal_gpt_and_gpt_forward_equal_lmlab_gpt(n_layers, n_heads):
    cfg = lmlab.ModelConfig(vocab_size=13, context_length=10, d_model=16, n_layers=n_layers, n_heads=n_heads)
    gpt = _big_gpt(cfg)
    mini = MiniGPT(cfg)
    mini.load_state_dict(gpt.state_dict())  # strict: the parameter names match
    idx = torch.randint(13, (3, 10))
    with torch.no_grad():
        torch.testing.assert_close(mini(idx), gpt(idx), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gpt_forward(gpt.state_dict(), idx, n_heads), gpt(idx), atol=1e-4, rtol=1e-4)


def test_attention_head_equals_sdpa_and_validates():
    x, w = torch.randn(2, 5, 8), torch.randn(3, 4, 8)
    q, k, v = (x @ wi.T for wi in w)
    torch.testing.assert_close(attention_head(x, *w), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    with pytest.raises(ValueError, match="w_k"):
        attention_head(x, w[0], torch.randn(4, 7), w[2])


def test_every_rung_maps_ids_to_logits_and_the_ladder_trains():
    cfg = lmlab.ModelConfig(vocab_size=7, context_length=6, d_model=8, n_heads=2, n_layers=1)
    for cls, _ in LADDER.values():
        assert cls(cfg)(torch.randint(7, (2, 6))).shape == (2, 6, 7)
    rows = train_ladder(steps=3, batch_size=2, context_length=8, d_model=8, n_heads=2)
    assert [r["rung"] for r in rows[1:]] == list(LADDER) and all(r["val_loss"] > 0 for r in rows)
