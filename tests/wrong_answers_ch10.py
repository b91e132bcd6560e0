"""Plausible wrong answers to chapter 10's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math

from lmlab.scaling.counting import ChinchillaConstants, compute_optimal
from lmlab.scaling.fit import fit_power_law


def _fit_reference(C, L):
    fit = fit_power_law(C, L)
    return fit.a, fit.b, fit.c


def _opt_reference(C, E, A, B, alpha, beta):
    r = compute_optimal(C, ChinchillaConstants("wrong", E, A, B, alpha, beta))
    return r["N"], r["D"]


def _fit_no_irreducible(C, L):
    """A straight line in log-log: L = a C^b, no c."""
    x = [math.log(v) for v in C]
    y = [math.log(v) for v in L]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sum((u - mx) ** 2 for u in x)
    return math.exp(my - b * mx), b, 0.0


def _fit_c_is_min(C, L):
    """c taken as the smallest loss seen, then a line through log(L - c) (the last point breaks it)."""
    c = min(L) * 0.999
    x = [math.log(v) for v in C]
    y = [math.log(v - c) for v in L]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sum((u - mx) ** 2 for u in x)
    return math.exp(my - b * mx), b, c


def _fit_positive_b(C, L):
    a, b, c = _fit_reference(C, L)
    return a, -b, c  # reports the decay rate as a positive exponent


def _llama(V, d, L, d_ff, nh, nkv, tie=False, *, mistake):
    kv = nkv * (d // nh)
    if mistake == "gqa ignored":
        kv = d
    attention = 2 * d * d + 2 * d * kv
    ffn = (2 if mistake == "two ffn matrices" else 3) * d * d_ff
    norms = 0 if mistake == "no norms" else 2 * d
    emb = V * d * (2 if (mistake == "tied counted twice" or not tie) else 1)
    final = 0 if mistake == "no norms" else d
    return L * (attention + ffn + norms) + final + emb


WRONG = {
    "10.flops_per_token": {
        "2N instead of 6N (forward only)": lambda N, L, T, d: 2.0 * N + 12.0 * L * T * d,
        "plain 6N, no attention term": lambda N, L, T, d: 6.0 * N,
        "attention term forward only (4LTd)": lambda N, L, T, d: 6.0 * N + 4.0 * L * T * d,
        "attention quadratic in T per token": lambda N, L, T, d: 6.0 * N + 12.0 * L * T * T * d,
    },
    "10.fit_power_law": {
        "forgets the irreducible term (a line in log-log)": _fit_no_irreducible,
        "c fixed to the smallest loss seen": _fit_c_is_min,
        "returns b as a positive decay rate": _fit_positive_b,
    },
    "10.compute_optimal": {
        "alpha and beta swapped": lambda C, E, A, B, al, be: _opt_reference(C, E, A, B, be, al),
        "budget C = N·D (forgets the 6)": lambda C, E, A, B, al, be: _opt_reference(6 * C, E, A, B, al, be),
        "A and B swapped": lambda C, E, A, B, al, be: _opt_reference(C, E, B, A, al, be),
        "N and D swapped": lambda C, E, A, B, al, be: _opt_reference(C, E, A, B, al, be)[::-1],
    },
    "10.llama_params": {
        "tied embeddings counted twice": lambda *a: _llama(*a, mistake="tied counted twice"),
        "FFN with two matrices (not SwiGLU)": lambda *a: _llama(*a, mistake="two ffn matrices"),
        "k and v at full width (GQA ignored)": lambda *a: _llama(*a, mistake="gqa ignored"),
        "norms forgotten": lambda *a: _llama(*a, mistake="no norms"),
        "returns a float": lambda *a: float(_llama(*a, mistake=None)),
    },
}
