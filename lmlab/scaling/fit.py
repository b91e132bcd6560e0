"""Scaling-law fits with a Huber loss on log-loss, several initialisations, and bootstrap intervals
(lesson 10, ``lessons/10_scaling``).

- :func:`fit_power_law`: ``L(C) = a C^b + c`` (GPT-4 technical report; Henighan et al., 2020);
- :func:`fit_chinchilla`: ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al., 2022);
- :func:`bootstrap_power_law`, :func:`bootstrap_chinchilla`: refit on resampled points, percentile intervals.

Hoffmann et al.'s method: write each law as a log-sum-exp, ``log L = LSE(log A - alpha log N,
log B - beta log D, log E)``, minimise the Huber loss (delta = 1e-3) of the residuals in log-loss from
a grid of initialisations, keep the best. The optimiser here is our own, written with torch and
batched over every initialisation (and every bootstrap resample) at once: Levenberg-Marquardt steps
on iteratively reweighted least squares (the Huber weights), accepted only when the Huber objective
falls. No scipy.

A fit says whether it can be trusted: ``fit.ok`` is False, with ``fit.message`` saying why, when the
optimiser did not converge, when it diverged, or when the law it found does not decrease (an exponent
>= 0). ``fit.predict`` then raises instead of drawing a garbage curve.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from lmlab.argcheck import check_int, check_positive, check_probability
from lmlab.scaling.counting import ChinchillaConstants, compute_optimal

__all__ = ["HUBER_DELTA", "huber", "fit_lse", "PowerLawFit", "ChinchillaFit", "fit_power_law", "fit_chinchilla",
           "bootstrap_power_law", "bootstrap_chinchilla"]

HUBER_DELTA = 1e-3  # Hoffmann et al.


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """Elementwise Huber loss: ``r^2 / 2`` inside ``|r| <= delta``, ``delta (|r| - delta / 2)`` outside."""
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def fit_lse(X: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor, delta: float = HUBER_DELTA,
            max_iter: int = 300, gtol: float = 1e-7) -> dict:
    """Fit ``K`` independent problems ``y_i ~ logsumexp_j (X_ij . theta)`` at once.

    Args:
        X: ``(K, n, J, P)`` design (J terms per point, each linear in the P parameters).
        y: ``(K, n)`` observed log-losses.
        theta0: ``(K, P)`` starting points.
    Returns ``theta (K, P)``, ``objective (K,)`` (sum of Huber losses), ``grad (K,)`` (largest gradient
    entry, relative to ``delta * n``), ``converged (K,)`` and ``iterations``.
    """
    X, y, theta = X.double(), y.double(), theta0.double().clone()
    K, n, J, P = X.shape

    def evaluate(th):
        u = torch.einsum("knjp,kp->knj", X, th)  # (K, n, J): each term's log
        r = torch.logsumexp(u, dim=-1) - y  # (K, n): residual in log-loss
        return u, r, huber(r, delta).sum(-1)

    u, r, obj = evaluate(theta)
    lam = torch.full((K,), 1e-3, dtype=torch.float64)
    eye = torch.eye(P, dtype=torch.float64)
    done = ~torch.isfinite(obj)
    grad_rel = torch.full((K,), math.inf, dtype=torch.float64)
    it = 0
    for it in range(1, max_iter + 1):
        jac = torch.einsum("knj,knjp->knp", u.softmax(-1), X)  # (K, n, P): d residual / d theta
        grad = torch.einsum("knp,kn->kp", jac, r.clamp(-delta, delta))  # gradient of the Huber sum
        grad_rel = grad.abs().amax(-1) / (delta * n)
        done = done | (grad_rel < gtol) | (lam > 1e12)
        if bool(done.all()):
            break
        w = torch.where(r.abs() <= delta, torch.ones_like(r), delta / r.abs().clamp_min(1e-300))  # IRLS weights
        H = torch.einsum("knp,kn,knq->kpq", jac, w, jac)  # (K, P, P)
        damp = lam[:, None, None] * (torch.diagonal(H, dim1=-2, dim2=-1).clamp_min(1e-12)[:, :, None] * eye)
        step = -torch.linalg.solve(H + damp + 1e-15 * eye, grad.unsqueeze(-1)).squeeze(-1)  # (K, P)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        u_new, r_new, obj_new = evaluate(theta + step)
        better = torch.isfinite(obj_new) & (obj_new < obj) & ~done
        theta = torch.where(better[:, None], theta + step, theta)
        u = torch.where(better[:, None, None], u_new, u)
        r = torch.where(better[:, None], r_new, r)
        obj = torch.where(better, obj_new, obj)
        lam = torch.where(better, (lam / 3).clamp_min(1e-9), lam * 4)
    converged = torch.isfinite(obj) & (grad_rel < 1e-4)
    return dict(theta=theta, objective=obj, grad=grad_rel, converged=converged, iterations=it)


def _log(v: float) -> float:
    return math.log(max(v, 1e-300))  # a constant that underflowed to 0 still gives a finite start


def _as_positive_list(values, name: str, where: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a list of positive numbers, got {values!r}") from None
    for v in values:
        check_positive(v, name, where)
    return values


def _check_points(n: int, n_params: int, where: str) -> None:
    if n <= n_params:
        raise ValueError(f"{where}: fitting {n_params} parameters needs at least {n_params + 1} points "
                         f"(one more than the parameters, or the fit just interpolates), got {n}")


def _best(result: dict, n_inits: int) -> tuple[int, int]:
    """Index of the best converged initialisation (or the best overall) and how many agree with it."""
    obj = torch.where(torch.isfinite(result["objective"]), result["objective"], torch.full_like(result["objective"], math.inf))
    ok = result["converged"]
    pool = torch.where(ok, obj, torch.full_like(obj, math.inf)) if bool(ok.any()) else obj
    i = int(pool.argmin())
    agree = int((ok & ((obj - obj[i]).abs() <= 1e-6 * obj[i].abs() + 1e-12)).sum())
    return i, agree


# --------------------------------------------------------------------------------------------
# L(C) = a C^b + c
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """``L(C) = a C^b + c`` fitted to ``n_points``; ``ok`` False (with ``message``) means do not use it."""

    a: float
    b: float
    c: float
    n_points: int
    objective: float
    converged: bool
    ok: bool
    message: str
    inits: int = 0
    agree: int = 0

    def predict(self, compute):
        """``a C^b + c`` at a number or a list of numbers; raises if the fit is not ``ok``."""
        if not self.ok:
            raise ValueError(f"this power-law fit is not usable: {self.message}")
        if isinstance(compute, (list, tuple)):
            return [self.predict(x) for x in compute]
        C = check_positive(compute, "compute", "PowerLawFit.predict")
        return self.a * C ** self.b + self.c

    def to_dict(self) -> dict:
        return dict(a=self.a, b=self.b, c=self.c, ok=self.ok, message=self.message)


def _power_design(logC: torch.Tensor, mu: float) -> torch.Tensor:
    x = logC - mu  # (K, n) centred log-compute: well conditioned at any scale of C
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    term_a = torch.stack([one, x, zero], -1)  # log a' + b x
    term_c = torch.stack([zero, zero, one], -1)  # log c
    return torch.stack([term_a, term_c], -2)  # (K, n, 2, 3)


def _power_inits(L: list[float]) -> list[list[float]]:
    lo, gm = min(L), math.exp(sum(math.log(v) for v in L) / len(L))
    inits = []
    for b, frac in itertools.product((-0.03, -0.1, -0.3, -0.7, -1.5), (1e-3, 0.5, 0.8, 0.95)):
        c = frac * lo
        inits.append([math.log(max(gm - c, 1e-3 * lo)), b, math.log(c)])
    return inits


def _power_result(theta, mu, n, obj, converged, grad, inits, agree) -> PowerLawFit:
    la, b, lc = (float(v) for v in theta)
    try:
        a, c = math.exp(la - b * mu), math.exp(lc)
    except OverflowError:
        a = c = math.inf
    finite = all(math.isfinite(v) for v in (a, b, c))
    if not finite:
        ok, msg = False, "the fit diverged (non-finite parameters)"
    elif not converged:
        ok, msg = False, f"the optimiser did not converge (gradient {grad:.1e} of the Huber loss) from any of {inits} initialisations"
    elif b >= 0:
        ok, msg = False, f"the fitted exponent b = {b:.3g} is not negative: in these points loss does not fall with compute"
    else:
        ok, msg = True, f"converged ({agree} of {inits} initialisations reached the same minimum)"
    return PowerLawFit(a, b, c, n, float(obj), bool(converged), ok, msg, inits, agree)


def fit_power_law(compute, loss, *, delta: float = HUBER_DELTA, max_iter: int = 300) -> PowerLawFit:
    """Fit ``L(C) = a C^b + c`` (b < 0 for a law that falls) to points ``(compute[i], loss[i])``.

    Huber loss (``delta``) on ``log L`` residuals, 20 initialisations (a grid over b and c), the best
    converged one kept. Needs at least 4 points. Never raises on a bad fit: check ``fit.ok``.
    """
    where = "fit_power_law"
    C = _as_positive_list(compute, "compute", where)
    L = _as_positive_list(loss, "loss", where)
    if len(C) != len(L):
        raise ValueError(f"{where}: compute and loss must have the same length, got {len(C)} and {len(L)}")
    _check_points(len(C), 3, where)
    check_positive(delta, "delta", where)
    check_int(max_iter, "max_iter", where)
    logC = torch.tensor(C, dtype=torch.float64).log()
    mu = float(logC.mean())
    inits = _power_inits(L)
    K = len(inits)
    X = _power_design(logC.expand(K, -1), mu)
    y = torch.tensor(L, dtype=torch.float64).log().expand(K, -1)
    res = fit_lse(X, y, torch.tensor(inits, dtype=torch.float64), delta, max_iter)
    i, agree = _best(res, K)
    return _power_result(res["theta"][i], mu, len(C), res["objective"][i], bool(res["converged"][i]),
                         float(res["grad"][i]), K, agree)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _resample_fits(res: dict, idx: torch.Tensor, S: int, make, n_params: int) -> tuple[list, int]:
    """The best usable fit of each resample (``S`` starts each, consecutive in ``res``), and how many
    resamples had none (or had no more distinct points than parameters)."""
    fits, failed = [], 0
    for k in range(idx.shape[0]):
        sub = {key: v[k * S:(k + 1) * S] for key, v in res.items() if key != "iterations"}
        i, agree = _best(sub, S)
        f = make(sub["theta"][i], sub["objective"][i], bool(sub["converged"][i]), float(sub["grad"][i]), S, agree)
        if f.ok and len(set(idx[k].tolist())) > n_params:
            fits.append(f)
        else:
            failed += 1
    return fits, failed


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(n, (n_boot, n), generator=gen)  # (n_boot, n): resampled points, with replacement


def bootstrap_power_law(compute, loss, at=None, *, n_boot: int = 200, level: float = 0.9, seed: int = 0,
                        delta: float = HUBER_DELTA) -> dict:
    """Refit ``L(C)`` on ``n_boot`` resamples (with replacement) of the points; percentile intervals.

    Returns ``fit`` (on all points), ``a``/``b``/``c`` as ``(low, high)``, and with ``at`` (a compute
    value) ``prediction``, ``low``, ``high`` at it; ``n_failed`` counts resamples whose fit was not ok
    (they are left out, and reported). Seeded: the same inputs give the same interval.
    """
    where = "bootstrap_power_law"
    fit = fit_power_law(compute, loss, delta=delta)
    check_int(n_boot, "n_boot", where, minimum=10)
    check_probability(level, "level", where, open_low=True, open_high=True)
    check_int(seed, "seed", where, minimum=0)
    C, L = _as_positive_list(compute, "compute", where), _as_positive_list(loss, "loss", where)
    logC, logL = torch.tensor(C, dtype=torch.float64).log(), torch.tensor(L, dtype=torch.float64).log()
    mu = float(logC.mean())
    idx = _bootstrap_indices(len(C), n_boot, seed)
    starts = _power_inits(L)[::4]  # 5 initialisations per resample (one per exponent) ...
    if fit.ok:  # ... plus the full fit as a warm start
        starts = starts + [[_log(fit.a) + fit.b * mu, fit.b, _log(fit.c)]]
    S = len(starts)
    X = _power_design(logC[idx].repeat_interleave(S, 0), mu)
    y = logL[idx].repeat_interleave(S, 0)
    res = fit_lse(X, y, torch.tensor(starts, dtype=torch.float64).repeat(n_boot, 1), delta)
    params, failed = _resample_fits(res, idx, S, lambda th, *r: _power_result(th, mu, len(C), *r), n_params=3)
    out = dict(fit=fit, n_boot=n_boot, n_failed=failed, level=level, samples=params)
    if len(params) < max(10, n_boot // 2):
        out["ok"] = False
        out["message"] = f"only {len(params)} of {n_boot} resamples gave a usable fit: no interval"
        return out
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    for name in ("a", "b", "c"):
        vals = [getattr(p, name) for p in params]
        out[name] = (_percentile(vals, lo_q), _percentile(vals, hi_q))
    out["ok"] = fit.ok
    out["message"] = fit.message
    if at is not None:
        at = check_positive(at, "at", where)
        preds = [p.predict(at) for p in params]
        out["prediction"] = fit.predict(at) if fit.ok else _percentile(preds, 0.5)
        out["low"], out["high"] = _percentile(preds, lo_q), _percentile(preds, hi_q)
    return out


# --------------------------------------------------------------------------------------------
# Chinchilla: L(N, D) = E + A / N^alpha + B / D^beta
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChinchillaFit:
    """Fitted ``E, A, B, alpha, beta``; ``ok`` False (with ``message``) means do not use it."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n_points: int
    objective: float
    converged: bool
    ok: bool
    message: str
    inits: int = 0
    agree: int = 0
    extra: dict = field(default_factory=dict)

    def predict(self, n_params: float, n_tokens: float) -> float:
        if not self.ok:
            raise ValueError(f"this Chinchilla fit is not usable: {self.message}")
        N = check_positive(n_params, "n_params", "ChinchillaFit.predict")
        D = check_positive(n_tokens, "n_tokens", "ChinchillaFit.predict")
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    def constants(self, name: str = "fitted"):
        """As :class:`lmlab.scaling.counting.ChinchillaConstants`, for :func:`lmlab.scaling.counting.compute_optimal`."""
        if not self.ok:
            raise ValueError(f"this Chinchilla fit is not usable: {self.message}")
        return ChinchillaConstants(name, self.E, self.A, self.B, self.alpha, self.beta, "fit_chinchilla")


def _chin_design(logN: torch.Tensor, logD: torch.Tensor, muN: float, muD: float) -> torch.Tensor:
    xN, xD = logN - muN, logD - muD  # (K, n)
    one, zero = torch.ones_like(xN), torch.zeros_like(xN)
    tA = torch.stack([one, zero, zero, -xN, zero], -1)  # a' - alpha xN
    tB = torch.stack([zero, one, zero, zero, -xD], -1)  # b' - beta xD
    tE = torch.stack([zero, zero, one, zero, zero], -1)  # e = log E
    return torch.stack([tA, tB, tE], -2)  # (K, n, 3, 5)


def _chin_inits(L: list[float]) -> list[list[float]]:
    lo = min(L)
    gm = math.exp(sum(math.log(v) for v in L) / len(L))
    inits = []
    for al, be, frac, share in itertools.product((0.15, 0.4, 1.0), (0.15, 0.4, 1.0), (0.3, 0.7, 0.9), (0.25, 0.75)):
        E = frac * lo
        rest = max(gm - E, 1e-3 * lo)
        inits.append([math.log(share * rest), math.log((1 - share) * rest), math.log(E), al, be])
    return inits


def _chin_result(theta, muN, muD, n, obj, converged, grad, inits, agree) -> ChinchillaFit:
    a_, b_, e, al, be = (float(v) for v in theta)
    try:
        A, B, E = math.exp(a_ + al * muN), math.exp(b_ + be * muD), math.exp(e)
    except OverflowError:
        A = B = E = math.inf
    if not all(math.isfinite(v) for v in (A, B, E, al, be)):
        ok, msg = False, "the fit diverged (non-finite parameters)"
    elif not converged:
        ok, msg = False, f"the optimiser did not converge (gradient {grad:.1e} of the Huber loss) from any of {inits} initialisations"
    elif al <= 0 or be <= 0:
        ok, msg = False, f"a fitted exponent is not positive (alpha = {al:.3g}, beta = {be:.3g}): loss does not fall with N and D here"
    else:
        ok, msg = True, f"converged ({agree} of {inits} initialisations reached the same minimum)"
    return ChinchillaFit(E, A, B, al, be, n, float(obj), bool(converged), ok, msg, inits, agree)


def fit_chinchilla(n_params, n_tokens, loss, *, delta: float = HUBER_DELTA, max_iter: int = 300) -> ChinchillaFit:
    """Fit ``L(N, D) = E + A / N^alpha + B / D^beta`` as Hoffmann et al.: Huber loss on log-loss
    residuals from a grid of 54 initialisations, the best converged one kept. Needs at least 6 points."""
    where = "fit_chinchilla"
    N = _as_positive_list(n_params, "n_params", where)
    D = _as_positive_list(n_tokens, "n_tokens", where)
    L = _as_positive_list(loss, "loss", where)
    if not len(N) == len(D) == len(L):
        raise ValueError(f"{where}: n_params, n_tokens and loss must have the same length, got {len(N)}, {len(D)}, {len(L)}")
    _check_points(len(N), 5, where)
    check_positive(delta, "delta", where)
    logN, logD = torch.tensor(N, dtype=torch.float64).log(), torch.tensor(D, dtype=torch.float64).log()
    muN, muD = float(logN.mean()), float(logD.mean())
    inits = _chin_inits(L)
    K = len(inits)
    X = _chin_design(logN.expand(K, -1), logD.expand(K, -1), muN, muD)
    y = torch.tensor(L, dtype=torch.float64).log().expand(K, -1)
    res = fit_lse(X, y, torch.tensor(inits, dtype=torch.float64), delta, max_iter)
    i, agree = _best(res, K)
    return _chin_result(res["theta"][i], muN, muD, len(N), res["objective"][i], bool(res["converged"][i]),
                        float(res["grad"][i]), K, agree)


def bootstrap_chinchilla(n_params, n_tokens, loss, at=None, *, n_boot: int = 100, level: float = 0.9, seed: int = 0,
                         delta: float = HUBER_DELTA) -> dict:
    """Refit Chinchilla's law on resamples of the points; ``(low, high)`` for each constant and for
    the compute-optimal ``tokens_per_param`` at the largest compute of the data; with ``at = (N, D)``
    also ``prediction``, ``low``, ``high`` of the loss there."""
    where = "bootstrap_chinchilla"
    fit = fit_chinchilla(n_params, n_tokens, loss, delta=delta)
    check_int(n_boot, "n_boot", where, minimum=10)
    check_probability(level, "level", where, open_low=True, open_high=True)
    N, D, L = (_as_positive_list(v, k, where) for v, k in ((n_params, "n_params"), (n_tokens, "n_tokens"), (loss, "loss")))
    logN, logD, logL = (torch.tensor(v, dtype=torch.float64).log() for v in (N, D, L))
    muN, muD = float(logN.mean()), float(logD.mean())
    idx = _bootstrap_indices(len(N), n_boot, seed)
    starts = _chin_inits(L)[::9]
    if fit.ok:
        starts = starts + [[_log(fit.A) - fit.alpha * muN, _log(fit.B) - fit.beta * muD, _log(fit.E), fit.alpha, fit.beta]]
    S = len(starts)
    X = _chin_design(logN[idx].repeat_interleave(S, 0), logD[idx].repeat_interleave(S, 0), muN, muD)
    res = fit_lse(X, logL[idx].repeat_interleave(S, 0), torch.tensor(starts, dtype=torch.float64).repeat(n_boot, 1), delta)
    C = max(6 * n * d for n, d in zip(N, D))
    fits, failed = _resample_fits(res, idx, S, lambda th, *r: _chin_result(th, muN, muD, len(N), *r), n_params=5)
    out = dict(fit=fit, n_boot=n_boot, n_failed=failed, level=level, compute=C)
    if len(fits) < max(10, n_boot // 2):
        return {**out, "ok": False, "message": f"only {len(fits)} of {n_boot} resamples gave a usable fit: no interval"}
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    for name in ("E", "A", "B", "alpha", "beta"):
        vals = [getattr(f, name) for f in fits]
        out[name] = (_percentile(vals, lo_q), _percentile(vals, hi_q))
    tpp = [compute_optimal(C, f.constants())["tokens_per_param"] for f in fits]
    out["tokens_per_param"] = (_percentile(tpp, lo_q), _percentile(tpp, hi_q))
    if at is not None:
        if not (isinstance(at, (tuple, list)) and len(at) == 2):
            raise ValueError(f"{where}: at must be a pair (n_params, n_tokens), got {at!r}")
        preds = [f.predict(*at) for f in fits]
        out["prediction"] = fit.predict(*at) if fit.ok else _percentile(preds, 0.5)
        out["low"], out["high"] = _percentile(preds, lo_q), _percentile(preds, hi_q)
    return {**out, "ok": fit.ok, "message": fit.message, "samples": fits}

