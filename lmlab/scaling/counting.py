"""Predictable scaling: count parameters and FLOPs, and size a model for a compute budget (lesson 10,
``lessons/10_scaling``). The fitters (``L(C) = a C^b + c`` and Chinchilla's ``L(N, D)``) are in
:mod:`lmlab.scaling.fit`.

- parameters by part: :func:`param_counts` groups ``GPT(cfg).named_parameters()`` by role, built on
  the ``meta`` device (no memory: LLaMA-7B, ``llama_config("llama_7b")``, is counted in a blink:
  6,738,415,616), so a count can never drift from the model's code. It is lmlab's one parameter
  counter: :func:`count_params` (the total, or Kaplan's non-embedding N), the calculators of lesson 12
  (:mod:`lmlab.scaling.calculators`) and the graders all call it. :func:`matmul_params` counts the
  weights that multiply activations (every ``nn.Linear``, the output layer included even when it is
  tied to the embedding);
- FLOPs: :func:`kaplan_flops_per_token` (``6N + 12 L T d``, the formula), :func:`flops_per_token` (the
  formula for a config), :func:`training_flops` (times the tokens) and :func:`measure_training_flops`, a
  real training step under ``FlopCounterMode``;
- compute-optimal sizing under ``C = 6 N D`` in closed form: :func:`compute_optimal`, with Chinchilla's
  published constants and Epoch AI's replication (:data:`CONSTANT_SETS`), and :func:`chinchilla_loss`.

Reference numbers (``COURSE.md``): ``chinchilla_loss(70e9, 1.4e12) ~ 1.937`` with the published
constants; at Chinchilla's compute they give ~93 tokens per parameter, Epoch AI's ~18-20.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lmlab.argcheck import check_bool, check_int, check_positive
from lmlab.model import GPT, ModelConfig

__all__ = [
    "PARTS", "param_counts", "count_params", "matmul_params", "kaplan_flops_per_token", "flops_per_token",
    "training_flops", "measure_training_flops", "ChinchillaConstants", "CHINCHILLA_PUBLISHED",
    "EPOCH_REPLICATION", "CONSTANT_SETS", "chinchilla_loss", "compute_optimal", "isoflop_curve", "CHINCHILLA_COMPUTE",
]

PARTS = ("embedding", "positions", "attention", "ffn", "norms", "output", "other")


def _model_on_meta(cfg):
    """``GPT(cfg)`` with shapes but no storage: any size can be counted."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a lmlab.model.config.ModelConfig, got {type(cfg).__name__}")
    with torch.device("meta"):
        return GPT(cfg)


def _part(name: str) -> str:
    """The role of a parameter, from its name in :class:`lmlab.model.gpt.GPT`."""
    first = name.split(".")[0]
    if first == "tok_emb":
        return "embedding"
    if first in ("pos_emb", "position"):
        return "positions"  # learned table, or T5's relative-bias table
    if first == "lm_head":
        return "output"  # only listed when untied: a tied head *is* tok_emb.weight
    if first == "final_norm":
        return "norms"
    if first == "blocks":
        sub = name.split(".")[2]
        if sub == "attn":
            return "attention"  # q, k, v, output projections (and kNN memory's gate, lesson 06)
        if sub == "ffn":
            return "ffn"
        if "norm" in sub:
            return "norms"  # norm1, norm2, sandwich's attn_out_norm / ffn_out_norm, DeepNorm
    return "other"


def param_counts(cfg) -> dict[str, int]:
    """Parameters of ``GPT(cfg)`` by part (:data:`PARTS`) plus ``"total"``: lmlab's one parameter counter.

    Counted on the model's own modules, built on the ``meta`` device (``named_parameters`` deduplicates
    a tied output layer, so tied embeddings count once): the total equals ``GPT(cfg).num_parameters()``
    by construction, for every registered part (yours included).
    """
    counts = dict.fromkeys(PARTS, 0)
    for name, p in _model_on_meta(cfg).named_parameters():
        counts[_part(name)] += p.numel()
    counts["total"] = sum(counts[k] for k in PARTS)
    return counts


def count_params(cfg, exclude_embeddings: bool = False) -> int:
    """Total parameters of ``GPT(cfg)``; ``exclude_embeddings`` drops the token and position tables
    (Kaplan et al.'s "non-embedding" N; a tied output layer goes with the embedding)."""
    check_bool(exclude_embeddings, "exclude_embeddings", "count_params")
    c = param_counts(cfg)
    return c["total"] - (c["embedding"] + c["positions"] if exclude_embeddings else 0)


def matmul_params(cfg) -> int:
    """Weights that multiply activations: every ``nn.Linear`` weight of ``GPT(cfg)``, the output layer
    ``V x d`` included (it is a matmul even when tied to the embedding lookup, which is not).
    Biases, norms and lookups cost no matmul FLOPs. This is the N of ``6N`` that FlopCounterMode sees."""
    model = _model_on_meta(cfg)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def kaplan_flops_per_token(n_params: float, n_layers: int, context_length: int, d_model: int) -> float:
    """Training FLOPs per token: ``6 N`` (2 forward + 4 backward per weight) plus attention's
    ``12 L T d``: per layer, ``Q K^T`` and ``A V`` each cost ``2 T d`` forward per token (the full
    ``T x T`` scores, as SDPA computes them), times 3 for forward + backward (Kaplan et al., 2020)."""
    where = "kaplan_flops_per_token"
    check_positive(n_params, "n_params", where)
    for v, n in ((n_layers, "n_layers"), (context_length, "context_length"), (d_model, "d_model")):
        check_int(v, n, where)
    return 6.0 * n_params + 12.0 * n_layers * context_length * d_model


def flops_per_token(cfg, attention: bool = True, context_length: int | None = None) -> float:
    """Training FLOPs per token of ``GPT(cfg)``: ``6 N`` (N = :func:`matmul_params`) plus, with
    ``attention``, ``12 L T d`` at ``context_length`` (default: the config's); :func:`kaplan_flops_per_token`."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a lmlab.model.gpt.ModelConfig, got {type(cfg).__name__}")
    check_bool(attention, "attention", "flops_per_token")
    T = cfg.context_length if context_length is None else check_int(context_length, "context_length", "flops_per_token")
    n = matmul_params(cfg)
    return kaplan_flops_per_token(n, cfg.n_layers, T, cfg.d_model) if attention else 6.0 * n


def training_flops(cfg, n_tokens: float, attention: bool = True) -> float:
    """FLOPs of training ``GPT(cfg)`` on ``n_tokens`` tokens: :func:`flops_per_token` x tokens
    (``6 N D``, plus attention's ``12 L T d D`` unless ``attention=False``). GPT-3 (175B, 300B tokens):
    ~3.14e23 for ``6 N D``, the 3.15e23 the paper quotes."""
    return flops_per_token(cfg, attention) * check_positive(n_tokens, "n_tokens", "training_flops")


def measure_training_flops(model: nn.Module, batch_size: int = 2, seq_len: int | None = None, seed: int = 0) -> dict:
    """Count one training step (forward, cross-entropy, backward) with ``torch.utils.flop_counter``.

    Attention runs on SDPA's math backend: FlopCounterMode has no formula for the CPU flash kernel
    and would silently count attention as zero. Returns ``total``, ``per_token`` and ``by_op``.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    where = "measure_training_flops"
    check_int(batch_size, "batch_size", where)
    T = model.config.context_length if seq_len is None else check_int(seq_len, "seq_len", where, maximum=model.config.context_length)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.randint(model.config.vocab_size, (batch_size, T + 1), generator=gen).to(device)  # (B, T+1)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        logits = model(x[:, :-1])  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
    model.zero_grad(set_to_none=True)
    total = counter.get_total_flops()
    by_op = {str(k).removeprefix("aten."): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return dict(total=int(total), per_token=total / (batch_size * T), by_op=by_op, tokens=batch_size * T)


# --------------------------------------------------------------------------------------------
# Chinchilla's parametric loss and compute-optimal sizing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChinchillaConstants:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (N parameters, D tokens, L in nats per token)."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str = ""

    def to_dict(self) -> dict:
        return dict(E=self.E, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta)


CHINCHILLA_PUBLISHED = ChinchillaConstants("Chinchilla (published)", 1.69, 406.4, 410.7, 0.34, 0.28,
                                           "Hoffmann et al. 2022, eq. 10 (rounded)")
EPOCH_REPLICATION = ChinchillaConstants("Epoch AI (replication)", 1.8172, 482.01, 2085.43, 0.3478, 0.3658,
                                        "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt")
CONSTANT_SETS = {c.name: c for c in (CHINCHILLA_PUBLISHED, EPOCH_REPLICATION)}
CHINCHILLA_COMPUTE = 6 * 70e9 * 1.4e12  # Chinchilla: 70B parameters, 1.4T tokens -> 5.88e23 FLOPs


def _constants(constants) -> ChinchillaConstants:
    if isinstance(constants, str):
        if constants not in CONSTANT_SETS:
            raise ValueError(f"constants must be a ChinchillaConstants or one of {tuple(CONSTANT_SETS)}, got {constants!r}")
        return CONSTANT_SETS[constants]
    if not isinstance(constants, ChinchillaConstants):
        raise ValueError(f"constants must be a ChinchillaConstants or one of {tuple(CONSTANT_SETS)}, got {type(constants).__name__}")
    return constants


def chinchilla_loss(n_params: float, n_tokens: float, constants=CHINCHILLA_PUBLISHED) -> float:
    """``E + A / N^alpha + B / D^beta``. Published constants: ``chinchilla_loss(70e9, 1.4e12) = 1.937``."""
    k = _constants(constants)
    N = check_positive(n_params, "n_params", "chinchilla_loss")
    D = check_positive(n_tokens, "n_tokens", "chinchilla_loss")
    return k.E + k.A / N ** k.alpha + k.B / D ** k.beta


def compute_optimal(compute: float, constants=CHINCHILLA_PUBLISHED, flops_per_param_token: float = 6.0) -> dict:
    """The ``N`` and ``D`` that minimise ``L(N, D)`` under ``C = 6 N D``, in closed form.

    Substituting ``D = C / (6N)`` and setting ``dL/dN = 0``:
    ``N_opt = G (C/6)^(beta / (alpha + beta))``, ``D_opt = G^-1 (C/6)^(alpha / (alpha + beta))`` with
    ``G = (alpha A / (beta B))^(1 / (alpha + beta))``. Returns ``N``, ``D``, ``tokens_per_param``, ``loss``.
    """
    k = _constants(constants)
    C = check_positive(compute, "compute", "compute_optimal")
    f = check_positive(flops_per_param_token, "flops_per_param_token", "compute_optimal")
    s = k.alpha + k.beta
    G = (k.alpha * k.A / (k.beta * k.B)) ** (1 / s)
    N = G * (C / f) ** (k.beta / s)
    D = (C / f) / N
    return dict(N=N, D=D, tokens_per_param=D / N, loss=k.E + k.A / N ** k.alpha + k.B / D ** k.beta,
                a=k.beta / s, b=k.alpha / s)


def isoflop_curve(compute: float, constants=CHINCHILLA_PUBLISHED, n_points: int = 61, decades: float = 1.5) -> dict:
    """``L(N, C / 6N)`` for ``N`` within ``decades`` either side of ``N_opt``: the isoFLOP valley."""
    opt = compute_optimal(compute, constants)
    check_int(n_points, "n_points", "isoflop_curve", minimum=3)
    check_positive(decades, "decades", "isoflop_curve")
    ns = [opt["N"] * 10 ** (decades * (2 * i / (n_points - 1) - 1)) for i in range(n_points)]
    return dict(N=ns, loss=[chinchilla_loss(n, compute / (6 * n), constants) for n in ns], opt=opt)

