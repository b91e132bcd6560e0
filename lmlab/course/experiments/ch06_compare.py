"""Lesson 06's bounded-memory methods against full attention over the same tokens (``lessons/06_long_context``).

The claim checked: a Λ window (sinks + recent tokens) and a kNN memory give "most of the benefit of
full attention at a fraction of the cost". So both are measured against a model that attends to the
whole sequence, on the same evaluation tokens, with their costs counted by a function:

- :func:`attention_cost`: attention FLOPs of one forward pass over ``T`` tokens and the KV cache a
  decoder holds at the end, for full causal attention, a Λ window, or a segment window + kNN memory;
  :func:`lambda_cost` puts a Λ window's next to full attention's.
- :func:`fraction_recovered`: how much of the reference's improvement over a baseline a method gets.
- :func:`fine_tune_seeds`, :func:`per_seed`: several methods (full attention, PI, NTK, the Λ window…)
  each fine-tuned the same steps at the long length, over several fine-tune seeds, evaluated on the
  same windows: the paired runs behind lesson 06's verdicts 3b and 3c.
- :func:`full_attention_facts`, :func:`knn_vs_full`: the fact task of
  :func:`lmlab.course.experiments.ch06_long_context.fact_batch` answered by a full-attention model over the whole
  sequence, against the kNN-memory model, over several seeds.

FLOPs convention: one (query, key) pair costs ``2·hs`` FLOPs for ``q·k`` and ``2·hs`` for the
weighted value, per head and layer; an exact memory search costs ``2·hs`` per (query, memory entry).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.infer.kv_cache import kv_cache_bytes
from lmlab.model import GPT, ModelConfig
from lmlab.train.loop import evaluate_lengths, seed_everything
from lmlab.argcheck import check_choice, check_int
from lmlab.course.experiments.ch06_long_context import fact_batch, fact_vocab, fine_tune, knn_experiment, method_changes

__all__ = ["COST_METHODS", "attention_cost", "lambda_cost", "fraction_recovered", "fine_tune_seeds", "per_seed",
           "full_attention_facts", "knn_vs_full"]

COST_METHODS = ("full", "lambda", "knn")


def _lambda_pairs(T: int, n_sink: int, window: int) -> int:
    """(query, key) pairs a Λ mask keeps: query ``i`` sees ``min(i+1, window)`` recent keys plus the
    sinks that fall before that window."""
    return sum(min(i + 1, window) + min(n_sink, max(0, i + 1 - window)) for i in range(T))


def attention_cost(T: int, cfg, method: str = "full", *, n_sink: int = 0, window: int | None = None,
                   segment_length: int | None = None, top_k: int = 0, memory_size: int | None = None,
                   memory_layers: int = 1, bytes_per_value: float = 4) -> dict:
    """Attention cost of reading ``T`` tokens with model config ``cfg`` (``n_layers``, ``n_heads``,
    ``n_kv_heads``, ``head_dim``).

    - ``"full"``: every token attends to every earlier one; the cache holds all ``T`` tokens.
    - ``"lambda"``: ``n_sink`` first tokens + a ``window`` of recent ones; the cache holds ``n_sink + window``.
    - ``"knn"``: segments of ``segment_length`` attend within themselves; in ``memory_layers`` layers each
      query also scores every memory entry (exact search: the entries of earlier segments, at most
      ``memory_size``) and attends to its ``top_k``. The cache is the current segment in every layer
      plus the memory (``min(T - segment_length, memory_size)`` entries) in the memory layers.

    Returns ``pairs`` (attended (query, key) pairs, all heads and layers), ``attention_flops``,
    ``search_flops`` (0 unless ``"knn"``), ``flops`` (their sum) and ``cache_bytes``.
    """
    check_choice(method, "method", COST_METHODS)
    check_int(T, "T")
    L, nh, hs = cfg.n_layers, cfg.n_heads, cfg.head_dim
    nkv = cfg.n_kv_heads or nh
    search_flops = 0
    if method == "full":
        pairs_per_head = L * T * (T + 1) // 2
        cache = kv_cache_bytes(L, nkv, hs, T, bytes_per_value)
    elif method == "lambda":
        check_int(n_sink, "n_sink", minimum=0)
        check_int(window, "window")
        pairs_per_head = L * _lambda_pairs(T, n_sink, window)
        cache = kv_cache_bytes(L, nkv, hs, min(T, n_sink + window), bytes_per_value)
    else:
        check_int(segment_length, "segment_length")
        check_int(top_k, "top_k", minimum=0)
        check_int(memory_size, "memory_size")
        check_int(memory_layers, "memory_layers", minimum=0)
        if memory_layers > L:
            raise ValueError(f"memory_layers must be in [0, n_layers={L}], got {memory_layers}")
        local = memory_pairs = scored = 0
        for start in range(0, T, segment_length):
            n = min(segment_length, T - start)  # tokens in this segment
            held = min(start, memory_size)  # memory entries from earlier segments
            local += n * (n + 1) // 2
            memory_pairs += n * min(top_k, held)
            scored += n * held
        pairs_per_head = L * local + memory_layers * memory_pairs
        search_flops = 2 * hs * nh * memory_layers * scored
        held_end = min(max(T - segment_length, 0), memory_size)  # memory entries when the last segment is read
        cache = kv_cache_bytes(L, nkv, hs, min(T, segment_length), bytes_per_value)
        if memory_layers:
            cache += kv_cache_bytes(memory_layers, nkv, hs, held_end, bytes_per_value)
    attention_flops = 4 * hs * nh * pairs_per_head
    return {"method": method, "T": T, "pairs": nh * pairs_per_head, "attention_flops": attention_flops,
            "search_flops": search_flops, "flops": attention_flops + search_flops, "cache_bytes": cache}


def lambda_cost(T: int, n_sink: int, window: int, cfg) -> dict:
    """What a Λ window (``n_sink`` sinks + ``window``) costs against full causal attention over the same
    ``T`` tokens, for a model config ``cfg``: attention FLOPs of a forward pass over the ``T`` tokens
    (QKᵀ and AV, 2 · 2 · head_dim FLOPs per kept (query, key) pair per head and layer) and the KV cache
    a decoder holds at the end (fp32)."""
    full, lam = attention_cost(T, cfg, "full"), attention_cost(T, cfg, "lambda", n_sink=n_sink, window=window)
    return {"T": T, "attention_flops_full": full["attention_flops"], "attention_flops_lambda": lam["attention_flops"],
            "cache_bytes_full": full["cache_bytes"], "cache_bytes_lambda": lam["cache_bytes"]}


def fraction_recovered(baseline: float, method: float, reference: float) -> float:
    """``(method - baseline) / (reference - baseline)``: the share of the reference's improvement over
    the baseline that the method gets (1 = all of it, 0 = none, < 0 = worse than the baseline). Works
    for a loss (lower is better) and an accuracy alike. ``reference`` must differ from ``baseline``."""
    if reference == baseline:
        raise ValueError(f"reference must differ from baseline (no improvement to share), got both = {baseline!r}")
    return (method - baseline) / (reference - baseline)


def fine_tune_seeds(base, methods, length: int = 256, factor: float = 4.0, seeds=(1, 2, 3), ft_steps: int = 30,
                    ft_batch: int = 8, eval_lengths=None, eval_batch: int = 16, eval_batches: int = 3,
                    known: dict | None = None) -> dict:
    """Each method in ``methods`` fine-tuned ``ft_steps`` steps at ``length`` from the same base model, once
    per fine-tune seed (the seed sets the batches), then evaluated on the same windows at every length in
    ``eval_lengths`` (default: the trained length and ``length``). So two methods share seeds and can be
    compared with :func:`lmlab.course.stats.paired_comparison`.

    ``known`` maps ``(method, seed)`` to ``{length: loss}`` already measured with these settings (that
    run is skipped). Returns ``{"losses": {method: [{length: loss} per seed]}, "seeds", "length", ...}``;
    :func:`per_seed` picks one length out of it."""
    check_int(length, "length", minimum=base.context_length + 1)
    check_int(ft_steps, "ft_steps", minimum=1)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct ints, got {seeds!r}")
    eval_lengths = sorted({base.context_length, length} if eval_lengths is None else {int(n) for n in eval_lengths})
    known = known or {}
    losses = {}
    for method in methods:
        changes = method_changes(method, base.context_length, factor)  # validates the method's name
        losses[method] = []
        for seed in seeds:
            if (method, seed) in known and all(n in known[(method, seed)] for n in eval_lengths):
                losses[method].append({n: known[(method, seed)][n] for n in eval_lengths})
                continue
            tuned, _ = fine_tune(base.model, base.train_ids, length, ft_steps, ft_batch, seed=seed, **changes)
            losses[method].append(evaluate_lengths(tuned, base.val_ids, eval_lengths, batch_size=eval_batch,
                                                   n_batches=eval_batches))
    return {"losses": losses, "seeds": seeds, "length": length, "eval_lengths": eval_lengths, "ft_steps": ft_steps}


def per_seed(result: dict, method: str, length: int | None = None) -> list[float]:
    """The losses of ``method`` at ``length`` (default: the fine-tune length), one per seed, from
    :func:`fine_tune_seeds`."""
    check_choice(method, "method", tuple(result["losses"]))
    length = result["length"] if length is None else length
    check_choice(length, "length", tuple(result["eval_lengths"]))
    return [row[length] for row in result["losses"][method]]


def full_attention_facts(steps: int = 120, batch_size: int = 32, segment_length: int = 16, n_segments: int = 4,
                         n_keys: int = 8, n_values: int = 8, d_model: int = 32, n_heads: int = 1, lr: float = 1e-2,
                         seed: int = 0, eval_batch: int = 256) -> dict:
    """The reference for :func:`lmlab.course.experiments.ch06_long_context.knn_experiment`: the same one-layer model
    without positions and without memory, but with a context of the whole ``n_segments × segment_length``
    sequence (full attention), trained and evaluated on the same batches. Returns far/near accuracy."""
    gen = seed_everything(seed)
    N = n_segments * segment_length
    cfg = ModelConfig(vocab_size=fact_vocab(n_keys, n_values, 16)["size"], context_length=N, d_model=d_model, n_layers=1,
                      n_heads=n_heads, position="none")
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        x, y, where, _ = fact_batch(batch_size, n_segments, segment_length, n_keys, n_values, generator=gen)
        loss = F.cross_entropy(model(x)[where], y[where])  # (B, N, V) logits; only the answers count
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    x, y, where, far = fact_batch(eval_batch, n_segments, segment_length, n_keys, n_values,
                                  generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        pred = model(x).argmax(-1)  # (B, N)
    return {"far": float((pred[far] == y[far]).float().mean()), "near": float((pred[where & ~far] == y[where & ~far]).float().mean()),
            "config": cfg}


def knn_vs_full(seeds=(0, 1, 2), known: dict | None = None, **kwargs) -> dict:
    """Far-question accuracy per seed of the kNN-memory model (with memory, and the same weights local
    only) and of the full-attention model; ``known`` maps a seed to a ``knn_experiment`` result already
    run with these ``kwargs``. ``kwargs`` go to both trainings (steps, sizes)."""
    known = known or {}
    knn, local, full = [], [], []
    for seed in seeds:
        k = known[seed] if seed in known else knn_experiment(seed=seed, **kwargs)
        knn.append(k["far_with_memory"])
        local.append(k["far_local_only"])
        full.append(full_attention_facts(seed=seed, **kwargs)["far"])
    return {"knn": knn, "local": local, "full": full, "seeds": list(seeds)}
