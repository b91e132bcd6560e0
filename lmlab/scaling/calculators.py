"""Closed-form calculators for scaling training (lesson 12, ``lessons/12_parallelism``).

Nothing here starts a process: every function is arithmetic that the lesson checks against
measured bytes and message counts (:mod:`lmlab.parallel`) or against numbers from papers. Parameters
are counted by :mod:`lmlab.scaling.counting` (the model built on the ``meta`` device), never here:

- parameters: :func:`bloom_params` (:func:`lmlab.scaling.counting.count_params` of BLOOM's config, plus
  the embedding LayerNorm lmlab's GPT has not); a LLaMA is ``count_params(llama_config("llama2_70b"))``;
- memory: :func:`bytes_per_param` (precision x optimizer), :func:`zero_memory_per_gpu`
  (ZeRO stages 0-3), :func:`activation_memory_per_layer` (Korthikanti et al., 2022);
- time: :func:`bubble` (GPipe's and Megatron's definitions, :func:`bubble_identity`);
- communication, in *elements sent per rank per step*: :func:`ring_all_reduce_volume`,
  :func:`dp_comm_volume`, :func:`zero_comm_volume`, :func:`tp_comm_volume`, :func:`pp_comm_volume`;
- compute: :func:`mfu` (training FLOPs: :func:`lmlab.scaling.counting.training_flops`);
- layout: :func:`parallel_layout` (BLOOM: 384 GPUs = 8 DP x 4 TP x 12 PP).

Reference numbers (``COURSE.md``): 7.5B parameters on 64 GPUs need 120 / 31.4 / 16.6 / 1.9 GB per
GPU for ZeRO stages 0-3; ``bubble(4, 8) == 3/11``; BLOOM has ~176.2B parameters.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import torch

from lmlab.argcheck import check_choice, check_int, check_positive
from lmlab.model import ModelConfig
from lmlab.model.gpt import build_norm
from lmlab.scaling.counting import count_params

__all__ = [
    "PRECISIONS", "OPTIMIZERS", "ZERO_STAGES", "BUBBLE_DEFINITIONS", "RECOMPUTE", "bloom_config", "bloom_params",
    "bytes_per_param", "zero_memory_per_gpu", "activation_memory_per_layer",
    "bubble", "bubble_identity",
    "ring_all_reduce_volume", "dp_comm_volume", "zero_comm_volume", "tp_comm_volume", "pp_comm_volume",
    "mfu", "parallel_layout",
]

PRECISIONS = ("fp32", "mixed", "bf16")  # mixed = 16-bit weights/grads + fp32 master copy (ZeRO's setting)
OPTIMIZERS = ("adam", "sgd_momentum", "sgd")  # number of fp32-ish states: 2, 1, 0
ZERO_STAGES = (0, 1, 2, 3)
BUBBLE_DEFINITIONS = ("gpipe", "megatron")
RECOMPUTE = ("none", "selective", "full")
_STATES = {"adam": 2, "sgd_momentum": 1, "sgd": 0}


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------


def bloom_config(vocab_size: int = 250_880, d_model: int = 14336, n_layers: int = 70, n_heads: int = 112) -> ModelConfig:
    """BLOOM as lmlab's GPT: GPT-style layers with biases and LayerNorm (4 d FFN, GELU), ALiBi (no position
    parameters), tied embeddings. Defaults: BLOOM-176B. Its LayerNorm right after the embedding is not
    part of lmlab's GPT (see :func:`bloom_params`)."""
    return ModelConfig(vocab_size=vocab_size, context_length=2048, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       norm="layernorm", bias=True, activation="gelu", position="alibi", tie_embeddings=True)


def bloom_params(vocab_size: int = 250_880, d_model: int = 14336, n_layers: int = 70, n_heads: int = 112) -> int:
    """BLOOM's parameters: :func:`lmlab.scaling.counting.count_params` of :func:`bloom_config` plus the
    LayerNorm BLOOM puts right after the embedding (built on the ``meta`` device too).
    Defaults: BLOOM-176B, 176,247,271,424 as the released checkpoint."""
    cfg = bloom_config(vocab_size, d_model, n_layers, n_heads)
    with torch.device("meta"):
        embedding_norm = build_norm(cfg)
    return count_params(cfg) + sum(p.numel() for p in embedding_norm.parameters())


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def bytes_per_param(precision: str = "mixed", optimizer: str = "adam") -> dict[str, int]:
    """Bytes each parameter costs, split into ``params``, ``grads`` and ``optimizer`` (``total`` too).

    ``fp32``: 4 + 4 + 4 x states. ``mixed`` (ZeRO's setting): 16-bit weights and gradients, plus an
    fp32 master copy and fp32 states: 2 + 2 + (4 + 4 x states) -> Adam: 2 + 2 + 12 = 16.
    ``bf16`` (pure 16-bit, no master copy): 2 + 2 + 2 x states. States: adam 2, sgd_momentum 1, sgd 0.
    """
    check_choice(precision, "precision", PRECISIONS, "bytes_per_param:")
    states = _STATES[check_choice(optimizer, "optimizer", OPTIMIZERS, "bytes_per_param:")]
    if precision == "fp32":
        out = dict(params=4, grads=4, optimizer=4 * states)
    elif precision == "mixed":
        out = dict(params=2, grads=2, optimizer=4 + 4 * states)
    else:
        out = dict(params=2, grads=2, optimizer=2 * states)
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def zero_memory_per_gpu(n_params: int, n_gpus: int, stage: int, precision: str = "mixed",
                        optimizer: str = "adam") -> dict[str, float]:
    """Bytes per GPU of parameters, gradients and optimizer state with ZeRO (Rajbhandari et al., 2020).

    Stage 0 replicates everything; stage 1 shards the optimizer state (P_os), stage 2 also the
    gradients (P_os+g), stage 3 also the parameters (P_os+g+p): each sharded part is divided by N.
    Returns ``params``, ``grads``, ``optimizer`` and ``total`` in bytes (divide by 1e9 for GB).
    """
    where = "zero_memory_per_gpu"
    check_positive(n_params, "n_params", f"{where}:")
    check_int(n_gpus, "n_gpus", f"{where}:")
    check_choice(stage, "stage", ZERO_STAGES, f"{where}:")
    b = bytes_per_param(precision, optimizer)
    sharded = {"optimizer": stage >= 1, "grads": stage >= 2, "params": stage >= 3}
    out = {k: n_params * b[k] / (n_gpus if sharded[k] else 1) for k in ("params", "grads", "optimizer")}
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def activation_memory_per_layer(seq_len: int, batch: int, d_model: int, n_heads: int, tp: int = 1,
                                sequence_parallel: bool = False, recompute: str = "none") -> float:
    """Bytes of activations one transformer layer keeps for backward, 16-bit, per GPU
    (Korthikanti et al., 2022, "Reducing activation recomputation", Table 2)::

        no parallelism           s b h (34 + 5 a s / h)
        tensor parallel t        s b h (10 + 24 / t + 5 a s / (h t))
        + sequence parallel      s b h (34 + 5 a s / h) / t
        selective recompute      s b h 34 / t       (the attention scores are recomputed)
        full recompute           2 s b h            (only the layer input is kept)
    """
    where = "activation_memory_per_layer"
    s, b, h, a = (check_int(v, n, f"{where}:") for v, n in ((seq_len, "seq_len"), (batch, "batch"), (d_model, "d_model"), (n_heads, "n_heads")))
    t = check_int(tp, "tp", f"{where}:")
    check_choice(recompute, "recompute", RECOMPUTE, f"{where}:")
    sbh = s * b * h
    if recompute == "full":
        return 2.0 * sbh
    if recompute == "selective":
        return sbh * 34 / t if sequence_parallel else sbh * (10 + 24 / t)
    if sequence_parallel:
        return sbh * (34 + 5 * a * s / h) / t
    return sbh * (10 + 24 / t + 5 * a * s / (h * t))


# --------------------------------------------------------------------------------------------
# The pipeline bubble
# --------------------------------------------------------------------------------------------


def bubble(p: int, m: int, definition: str = "gpipe") -> Fraction:
    """Idle fraction of a pipeline with ``p`` stages and ``m`` micro-batches, as an exact fraction.

    ``gpipe``: idle time / *total* time = (p - 1) / (m + p - 1)  (GPipe, Huang et al., 2019).
    ``megatron``: idle time / *ideal* time = (p - 1) / m  (Narayanan et al., 2021).
    The same bubble measured against two denominators; see :func:`bubble_identity`.
    1F1B has the same bubble as GPipe, it only stores fewer activations.
    """
    check_int(p, "p", "bubble:")
    check_int(m, "m", "bubble:")
    check_choice(definition, "definition", BUBBLE_DEFINITIONS, "bubble:")
    return Fraction(p - 1, m + p - 1) if definition == "gpipe" else Fraction(p - 1, m)


def bubble_identity(p: int, m: int) -> bool:
    """``megatron = gpipe / (1 - gpipe)`` (and ``gpipe = megatron / (1 + megatron)``), exactly."""
    g, meg = bubble(p, m, "gpipe"), bubble(p, m, "megatron")
    return meg == g / (1 - g) and g == meg / (1 + meg)


# --------------------------------------------------------------------------------------------
# Communication: elements each rank sends per training step
# --------------------------------------------------------------------------------------------


def ring_all_reduce_volume(n_elements: int, n_ranks: int) -> float:
    """Elements each rank sends in a ring all-reduce: reduce-scatter (N - 1 chunks of n/N) then
    all-gather (N - 1 more): ``2 (N - 1) / N x n``, nearly independent of N."""
    check_int(n_elements, "n_elements", "ring_all_reduce_volume:", minimum=0)
    check_int(n_ranks, "n_ranks", "ring_all_reduce_volume:")
    return 2 * (n_ranks - 1) / n_ranks * n_elements


def dp_comm_volume(n_params: int, dp: int) -> float:
    """Data parallel: one all-reduce of all gradients per step, ``2 (N - 1) / N x Psi`` (~2 Psi)."""
    return ring_all_reduce_volume(n_params, dp)


def zero_comm_volume(n_params: int, dp: int, stage: int) -> float:
    """ZeRO per step and rank: stages 0-2 move ``2 (N-1)/N Psi`` (~2 Psi: a reduce-scatter of the
    gradients, then an all-gather of the updated parameters); stage 3 adds one more parameter
    all-gather (forward and backward each gather): ``3 (N-1)/N Psi`` (~3 Psi, 1.5x)."""
    check_choice(stage, "stage", ZERO_STAGES, "zero_comm_volume:")
    check_int(n_params, "n_params", "zero_comm_volume:", minimum=0)
    check_int(dp, "dp", "zero_comm_volume:")
    return (3 if stage == 3 else 2) * (dp - 1) / dp * n_params


def tp_comm_volume(batch: int, seq_len: int, d_model: int, tp: int, n_layers: int = 1) -> float:
    """Megatron tensor parallel: per layer 2 all-reduces forward + 2 backward of a ``b s h`` activation:
    ``4 x 2 (t - 1) / t x b s h`` elements per rank per layer (times ``n_layers``)."""
    where = "tp_comm_volume"
    for v, n in ((batch, "batch"), (seq_len, "seq_len"), (d_model, "d_model"), (tp, "tp"), (n_layers, "n_layers")):
        check_int(v, n, f"{where}:")
    return 4 * ring_all_reduce_volume(batch * seq_len * d_model, tp) * n_layers


def pp_comm_volume(micro_batch: int, seq_len: int, d_model: int, n_micro: int) -> int:
    """Pipeline parallel, per stage boundary: each micro-batch's activation ``b s h`` goes forward
    and its gradient comes back: ``2 m b s h`` elements per step (point-to-point, no all-reduce)."""
    where = "pp_comm_volume"
    for v, n in ((micro_batch, "micro_batch"), (seq_len, "seq_len"), (d_model, "d_model"), (n_micro, "n_micro")):
        check_int(v, n, f"{where}:")
    return 2 * n_micro * micro_batch * seq_len * d_model


# --------------------------------------------------------------------------------------------
# Compute
# --------------------------------------------------------------------------------------------


def mfu(tokens_per_second: float, n_params: float, peak_flops_per_gpu: float, n_gpus: int = 1) -> float:
    """Model FLOPs utilisation: ``6 N x tokens/s / (n_gpus x peak)`` (PaLM, Chowdhery et al., 2022).
    Recomputation does not count: it is work the *model* did not need."""
    where = "mfu"
    check_positive(tokens_per_second, "tokens_per_second", f"{where}:")
    check_positive(peak_flops_per_gpu, "peak_flops_per_gpu", f"{where}:")
    check_int(n_gpus, "n_gpus", f"{where}:")
    return 6.0 * check_positive(n_params, "n_params", f"{where}:") * tokens_per_second / (n_gpus * peak_flops_per_gpu)


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def parallel_layout(n_gpus: int, dp: int, tp: int, pp: int) -> dict[str, int]:
    """Check ``dp x tp x pp == n_gpus`` and describe the layout: one model replica spans
    ``tp x pp`` GPUs (BLOOM: 4 x 12 = 48), and there are ``dp`` replicas (8 x 48 = 384)."""
    where = "parallel_layout"
    for v, n in ((n_gpus, "n_gpus"), (dp, "dp"), (tp, "tp"), (pp, "pp")):
        check_int(v, n, f"{where}:")
    if dp * tp * pp != n_gpus:
        raise ValueError(f"{where}: dp x tp x pp must equal n_gpus, got {dp} x {tp} x {pp} = {dp * tp * pp} != {n_gpus}")
    return dict(n_gpus=n_gpus, dp=dp, tp=tp, pp=pp, gpus_per_replica=tp * pp, replicas=dp)
