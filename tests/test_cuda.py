"""lmlab on a GPU: the same numbers as on the CPU (skipped where there is no CUDA device).

CI has no GPU, so these run only on a machine with one (they were run on an H100; see the session
notes). Each test moves a CPU-built object to ``cuda`` and compares with the CPU result or with a
torch built-in on the GPU. TF32 is off (torch's default for matmuls), so fp32 tolerances hold.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from lmlab.model.attention import attention
from lmlab.infer.tiled_attention import flash_attention
from lmlab.infer.kv_cache import KVCache
from lmlab.model import GPT, ModelConfig
from lmlab.model.norms import LayerNorm, RMSNorm
from lmlab.train.config import TrainConfig
from lmlab.train.loop import train

# LMLAB_TEST_DEVICE=cpu runs the same comparisons CPU-to-CPU (to check the tests themselves).
CUDA = torch.device(os.environ.get("LMLAB_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")
FP32 = dict(rtol=1e-4, atol=1e-4)

CONFIGS = [
    dict(),  # GPT-2 style: learned positions, LayerNorm, GELU, MHA
    dict(position="rope", norm="rmsnorm", activation="swiglu", n_kv_heads=2),  # LLaMA style
    dict(position="alibi", n_kv_heads=1),
    dict(position="t5", norm_position="post"),
    dict(position="rope", attention="sliding_window", window=6, rope_scaling={"type": "yarn", "factor": 2.0, "original_context_length": 16}),
]


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, context_length=32, d_model=32, n_layers=2, n_heads=4)
    cfg.update(kw)
    return GPT(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "gpt2")
def test_model_on_gpu_matches_cpu(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 64, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = model(idx)
        gpu = model.to(CUDA)(idx.to(CUDA))
    assert gpu.device.type == CUDA.type
    torch.testing.assert_close(gpu.cpu(), cpu, **FP32)


@pytest.mark.parametrize("kw", CONFIGS[:3], ids=["gpt2", "llama", "alibi-mqa"])
def test_kv_cache_on_gpu_equals_recomputation(kw):
    model = tiny(**kw).to(CUDA)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2)).to(CUDA)
    with torch.no_grad():
        out, cache = model.forward_with_cache(prompt, None)
        assert isinstance(cache, KVCache)
        ids = prompt
        for _ in range(20):
            nxt = out[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            ids = torch.cat([ids, nxt], dim=1)
            out, cache = model.forward_with_cache(nxt, cache)
            torch.testing.assert_close(out[:, -1], model(ids)[:, -1], **FP32)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_on_gpu_matches_sdpa_forward_and_backward(causal):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 100, 16, generator=g).to(CUDA).requires_grad_() for _ in range(3))
    out = flash_attention(q, k, v, causal=causal, block_q=32, block_k=24)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, ref, **FP32)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **FP32)
    mask = torch.ones(100, 100, dtype=torch.bool, device=CUDA).tril()
    torch.testing.assert_close(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, is_causal=True), **FP32)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_modules_on_gpu_in_bf16(kind):
    x = torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(4)) * 3
    norm = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}[kind](64)
    ref = norm(x)
    torch.testing.assert_close(norm.to(CUDA)(x.to(CUDA)).cpu(), ref, **FP32)
    torch.testing.assert_close(norm.to(CUDA, torch.bfloat16)(x.to(CUDA, torch.bfloat16)).float().cpu(), ref,
                               rtol=2e-2, atol=2e-2)


def test_training_on_gpu_lowers_the_loss():
    model = tiny(position="rope", norm="rmsnorm", activation="swiglu").to(CUDA)
    ids = torch.arange(4000) % 17  # a periodic stream: easy to learn
    hist = train(model, ids, config=TrainConfig(steps=60, batch_size=16, lr=3e-3, eval_every=None, progress=False))
    assert next(model.parameters()).device.type == CUDA.type
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]


@pytest.mark.skipif(CUDA.type != "cuda", reason="nccl needs a GPU")
def test_launch_with_nccl_on_one_gpu():
    from lmlab.parallel.launch import launch
    from lmlab.parallel.workers import rank_info

    (info,) = launch(rank_info, 1, backend="nccl", timeout=60)
    assert info == {"rank": 0, "world_size": 1, "device": "cuda:0"}
