"""Attention and KV-cache numbers for lessons 04 and 08, printed in one run.

    python benchmarks/attention_kvcache.py                 # CPU
    python benchmarks/attention_kvcache.py --device cuda   # same on a GPU
    python benchmarks/attention_kvcache.py --threads 2     # more CPU threads (default 1)

1. Decoding 512 new tokens with the tiny model: ``lmlab.infer.decoding.generation`` with the KV cache
   (prefill + one token per step) vs recomputing the whole sequence every step (target >= 10x),
   plus MHA / GQA / MQA decode times with the cache.
2. Peak extra memory of ``lmlab.infer.tiled_attention.flash_attention`` (tiled, online softmax) vs the reference
   ``lmlab.model.attention.attention`` at T=4096, forward (target <= 1/8). Measured by counting the bytes
   of live tensors created by each aten op (a dispatch mode), so it works on CPU too.
3. Speed: ``lmlab.model.attention.MultiHeadAttention`` (fast path: SDPA inside) vs the same projections
   around a bare ``F.scaled_dot_product_attention`` (target ~1x), and the reference / the Python
   tiled version vs SDPA (they are teaching code: slower).

Not a test. Takes well under 90 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lmlab.model.attention import MultiHeadAttention, attention
from lmlab.infer.decoding import generate
from lmlab.infer.tiled_attention import flash_attention
from lmlab.infer.kv_cache import kv_cache_bytes
from lmlab.data.masks import causal_mask
from lmlab.model import GPT, ModelConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, rounds: int = 1) -> float:
    """Median seconds of ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensors created while active (each storage counted once)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self._seen or storage.nbytes() == 0:
                    continue  # a view of something already counted
                self._seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, key, storage.nbytes())
        return out


def decode_speedup(cfg: dict, device: torch.device, new_tokens: int, prompt_len: int = 16) -> tuple[float, float, bool]:
    """Seconds for ``new_tokens`` greedy tokens with and without the KV cache, and whether they agree."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**cfg)).to(device).eval()
    prompt = torch.randint(0, cfg["vocab_size"], (1, prompt_len), device=device)
    generate(model, prompt, 8, use_cache=True)  # warm-up
    out = {}
    # median of several rounds each: one busy moment on a shared machine must not decide the ratio
    with_cache = timed(lambda: out.setdefault("cached", generate(model, prompt, new_tokens, use_cache=True)), device, rounds=5)
    without = timed(lambda: out.setdefault("full", generate(model, prompt, new_tokens, use_cache=False)), device, rounds=3)
    return with_cache, without, torch.equal(out["cached"], out["full"])


def bench_decode(device: torch.device, new_tokens: int = 512) -> dict:
    cfg = dict(vocab_size=256, context_length=1024, d_model=128, n_layers=4, n_heads=4)
    with_cache, without, same = decode_speedup(cfg, device, new_tokens)
    print(f"[decode] {new_tokens} new tokens, tiny GPT (d=128, 4 layers), prompt 16, greedy on {device}")
    print(f"  with KV cache     {with_cache:7.2f} s  ({new_tokens / with_cache:7.1f} tok/s)")
    print(f"  recompute all     {without:7.2f} s  ({new_tokens / without:7.1f} tok/s)")
    print(f"  speed-up          {without / with_cache:7.1f}x   (target >= 10x); same tokens: {same}")
    if device.type == "cuda":
        print("  (on a GPU both paths of a model this small are bound by kernel-launch overhead, ~15 launches per layer"
              " per token, so their times are close; the cache's saving is in GPU kernel time, which is tiny here)")
    big = dict(cfg, d_model=256, n_heads=8)
    c2, w2, same2 = decode_speedup(big, device, new_tokens)
    print(f"  d=256, 8 heads:   {c2:.2f} s vs {w2:.2f} s, speed-up {w2 / c2:.1f}x; same tokens: {same2}"
          "  (a cached step of a tiny model is Python-overhead-bound: the gap grows with model size)")
    prompt = torch.randint(0, 256, (1, 16), device=device)
    gqa = {}
    for n_kv in (4, 2, 1):
        torch.manual_seed(0)
        m = GPT(ModelConfig(**cfg, n_kv_heads=n_kv)).to(device).eval()
        gqa[n_kv] = timed(lambda: generate(m, prompt, 256, use_cache=True), device)
    print("  decode 256 tokens with the cache: " + ", ".join(
        f"{name} {gqa[n]:.2f} s ({kv_cache_bytes(4, n, 32, 1, 4)} B/token)"
        for name, n in (("MHA (4 KV heads)", 4), ("GQA (2)", 2), ("MQA (1)", 1))))
    print("    (a tiny model's decode step is overhead-bound, so these differ by noise; the cache size is what shrinks)")
    return {"speedup": without / with_cache, "speedup_d256": w2 / c2, "same_tokens": same and same2}


def bench_memory(device: torch.device, T: int = 4096) -> dict:
    B, H, d = 1, 4, 64
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, d, generator=g).to(device) for _ in range(3))
    peaks = {}
    with torch.no_grad():
        for name, fn in (("reference", lambda: attention(q, k, v, causal_mask(T, device=device))),
                         ("tiled", lambda: flash_attention(q, k, v, causal=True, block_q=256, block_k=256))):
            with PeakMemory() as pm:
                y = fn()
            peaks[name] = pm.peak
            del y
    io = q.numel() * q.element_size()
    print(f"[memory] causal attention forward, B={B}, H={H}, T={T}, d={d} (fp32; q, k, v are {io / 2**20:.0f} MiB each)")
    print(f"  reference (T x T scores)  peak extra {peaks['reference'] / 2**20:8.1f} MiB")
    print(f"  tiled, 256 x 256 tiles    peak extra {peaks['tiled'] / 2**20:8.1f} MiB")
    ratio = peaks["tiled"] / peaks["reference"]
    print(f"  ratio tiled / reference   {ratio:8.4f}   (target <= 1/8 = 0.125)")
    return {"memory_ratio": ratio}


def bench_speed(device: torch.device, rounds: int = 7) -> dict:
    B, T, C, nh = 8, 256, 256, 8
    torch.manual_seed(0)
    results = {}
    print(f"[speed] forward, B={B}, T={T}, d_model={C}, {nh} heads, causal, median of {rounds}")
    for n_kv in (nh, 2):
        mod = MultiHeadAttention(C, nh, n_kv).to(device).eval()
        x = torch.randn(B, T, C, device=device)
        hs, kv = C // nh, n_kv * (C // nh)

        def by_hand():
            q, k, v = F.linear(x, mod.qkv.weight, mod.qkv.bias).split([C, kv, kv], dim=2)
            q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, T, n_kv, hs).transpose(1, 2)  # (B, nkv, T, hs)
            v = v.view(B, T, n_kv, hs).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=n_kv != nh)
            return F.linear(y.transpose(1, 2).reshape(B, T, C), mod.proj.weight, mod.proj.bias)

        with torch.no_grad():
            by_hand(), mod(x)  # warm-up
            ours, ref = [], []
            for _ in range(rounds):  # interleaved, so noise hits both alike
                ours.append(timed(lambda: mod(x), device))
                ref.append(timed(by_hand, device))
        r = statistics.median(ours) / statistics.median(ref)
        label = "MHA" if n_kv == nh else f"GQA ({n_kv} KV heads)"
        print(f"  MultiHeadAttention {label:18s} {statistics.median(ours) * 1e3:7.2f} ms  vs SDPA by hand "
              f"{statistics.median(ref) * 1e3:7.2f} ms   ratio {r:.2f}")
        results[f"module_vs_sdpa_{n_kv}"] = r
    q, k, v = (torch.randn(1, nh, 1024, 64, device=device) for _ in range(3))
    with torch.no_grad():
        sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device, rounds=3)
        mask = causal_mask(1024, device=device)
        ref = timed(lambda: attention(q, k, v, mask), device, rounds=3)
        tiled = timed(lambda: flash_attention(q, k, v, causal=True, block_q=128, block_k=128), device, rounds=3)
    print(f"  T=1024, 8 heads, d=64: SDPA {sdpa * 1e3:.1f} ms; reference {ref * 1e3:.1f} ms ({ref / sdpa:.1f}x); "
          f"Python tiled {tiled * 1e3:.1f} ms ({tiled / sdpa:.1f}x)")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier timings on a busy laptop)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    t0 = time.perf_counter()
    out = {}
    out.update(bench_decode(device))
    out.update(bench_memory(device))
    out.update(bench_speed(device))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return out


if __name__ == "__main__":
    main()
