"""Time lmlab's norms and SwiGLU FFN against torch's own ops, forward + backward, in one run.

    python benchmarks/norms_activations.py                 # B=8, T=512, d=512, CPU
    python benchmarks/norms_activations.py --device cuda   # same on a GPU

Pairs, each timed interleaved (ours, reference, ours, ...) so machine noise hits both alike;
the median of the rounds is reported with the ratio ours / reference (below 1 = ours faster):

- ``lmlab.model.norms.rms_norm``   vs ``torch.nn.functional.rms_norm``   (target: within 1.5x)
- ``lmlab.model.norms.layer_norm`` vs ``torch.nn.functional.layer_norm`` (torch's is one fused kernel)
- ``lmlab.model.ffn.FeedForward(kind="swiglu")`` vs a LLaMA-style FFN of three ``nn.Linear``
  (gate, up, down) and ``F.silu``, with the same weights.

Not a test: it prints numbers (lessons 01 and 02 quote them). Runs in well under a minute on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model.ffn import FeedForward, glu_hidden_size
from lmlab.model.norms import layer_norm, rms_norm


class ReferenceSwiGLU(nn.Module):
    """LLaMA's FFN: ``w2(silu(w1 x) * w3 x)`` with three separate ``nn.Linear``."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)  # gate
        self.w3 = nn.Linear(d, hidden, bias=False)  # up (value)
        self.w2 = nn.Linear(hidden, d, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pair(ours, ref, grad_out, rounds: int, iters: int, device: torch.device) -> tuple[float, float]:
    """Median milliseconds per forward+backward call, measured interleaved.

    ``ours`` and ``ref`` are ``(function, inputs)``: the time covers ``y = function()`` and the
    gradients of ``y`` (against ``grad_out``) for every tensor in ``inputs``.
    """

    def once(fn, inputs):
        torch.autograd.grad(fn(), inputs, grad_out)

    times = {"ours": [], "ref": []}
    for fn, inputs in (ours, ref):  # warm-up
        once(fn, inputs)
    for _ in range(rounds):
        for name, (fn, inputs) in (("ours", ours), ("ref", ref)):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                once(fn, inputs)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(times["ours"]), statistics.median(times["ref"])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds for the norms (median)")
    p.add_argument("--ffn-rounds", type=int, default=3, help="interleaved rounds for the FFN (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    B, T, d = args.batch, args.seq, args.d
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, d, generator=gen).to(device, dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(d, generator=gen)).to(device, dtype).requires_grad_()
    b = (0.1 * torch.randn(d, generator=gen)).to(device, dtype).requires_grad_()
    g = torch.randn(B, T, d, generator=gen).to(device, dtype)
    print(f"torch {torch.__version__}, device={device}, dtype={dtype}, threads={torch.get_num_threads()}, "
          f"B={B} T={T} d={d}; forward+backward, median of interleaved rounds")

    results: dict[str, tuple[float, float]] = {}
    rows = [
        ("RMSNorm", "F.rms_norm", lambda: rms_norm(x, w, 1e-6), lambda: F.rms_norm(x, (d,), w, 1e-6), (x, w)),
        ("LayerNorm", "F.layer_norm", lambda: layer_norm(x, w, b, 1e-5), lambda: F.layer_norm(x, (d,), w, b, 1e-5), (x, w, b)),
    ]
    print(f"{'op':<12}{'reference':<16}{'ours ms':>10}{'ref ms':>10}{'ratio':>8}{'max|diff|':>12}")
    for name, ref_name, ours, ref, inputs in rows:
        diff = max_diff(ours(), ref())
        t_ours, t_ref = time_pair((ours, inputs), (ref, inputs), g, args.rounds, 3, device)
        results[name] = (t_ours, t_ref)
        print(f"{name:<12}{ref_name:<16}{t_ours:>10.2f}{t_ref:>10.2f}{t_ours / t_ref:>8.2f}{diff:>12.2e}")

    hidden = glu_hidden_size(4 * d, 8)
    torch.manual_seed(0)
    ffn = FeedForward(d, hidden, "swiglu", bias=False).to(device, dtype)
    ref_ffn = ReferenceSwiGLU(d, hidden).to(device, dtype)
    with torch.no_grad():  # same function: our up = [value (w3); gate (w1)], down = w2
        ref_ffn.w3.weight.copy_(ffn.up.weight[:hidden])
        ref_ffn.w1.weight.copy_(ffn.up.weight[hidden:])
        ref_ffn.w2.weight.copy_(ffn.down.weight)
    xf = x.detach().requires_grad_()
    diff = max_diff(ffn(xf), ref_ffn(xf))
    t_ours, t_ref = time_pair((lambda: ffn(xf), (xf, *ffn.parameters())),
                              (lambda: ref_ffn(xf), (xf, *ref_ffn.parameters())), g, args.ffn_rounds, 1, device)
    results["SwiGLU FFN"] = (t_ours, t_ref)
    print(f"{'SwiGLU FFN':<12}{'3x nn.Linear':<16}{t_ours:>10.2f}{t_ref:>10.2f}{t_ours / t_ref:>8.2f}{diff:>12.2e}"
          f"   (hidden={hidden})")

    ratio = results["RMSNorm"][0] / results["RMSNorm"][1]
    print(f"\nRMSNorm target: within 1.5x of torch's op -> {ratio:.2f}x: {'met' if ratio <= 1.5 else 'NOT met'}")
    return results


if __name__ == "__main__":
    main()
