"""References of the component exercises that live in core modules (04's GQA + RoPE layer)."""

import pytest
import torch

from lmlab.model.attention import gqa_rope_attention
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


def test_sink_evict_matches_the_sink_cache():
    from lmlab.infer.long_context import SinkKVCache, sink_evict

    cache = SinkKVCache(n_layers=1, n_sink=2, window=4, batch=1)
    k = v = torch.zeros(1, 1, 0, 2)
    pos = torch.zeros(0, dtype=torch.long)
    for t in range(11):
        new = torch.randn(1, 1, 1, 2)
        ck, _ = cache.update(0, new, new)
        k, v, pos = sink_evict(torch.cat((k, new), 2), torch.cat((v, new), 2), torch.cat((pos, torch.tensor([t]))), 2, 4)
        torch.testing.assert_close(k, ck)
    assert pos.tolist() == cache.positions(0).tolist() == [0, 1, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="window"):
        sink_evict(k, v, pos, 2, 0)


def test_planner_tasks_have_computed_answers_and_a_checker():
    from lmlab.course.experiments.ch12_planner import TASKS, check_answers, task_answers

    truth = task_answers()
    assert truth == {"fits_on_one_node": False, "smallest_tp_32_gpus_pp4": 8, "smallest_pp_64_gpus_tp8": 2}
    lines = check_answers({**truth, "smallest_pp_64_gpus_tp8": 4})
    assert lines[0].startswith("✅") and lines[2].startswith("❌") and len(lines) == len(TASKS)
    assert check_answers({})[0].startswith("⏳")
    with pytest.raises(ValueError, match="answers"):
        check_answers([1])
