"""Plausible wrong answers to chapter 11's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math

import torch


def _fp16(bits, bias=15, subnormal_as_normal=False, nan_as_inf=False, no_sign=False, mant_div=1024):
    sign = 1.0 if no_sign or not bits >> 15 else -1.0
    e, m = (bits >> 10) & 0x1F, bits & 0x3FF
    if e == 0x1F:
        return sign * math.inf if (m == 0 or nan_as_inf) else math.nan
    if e == 0 and not subnormal_as_normal:
        return sign * (m / mant_div) * 2.0 ** (1 - bias)
    return sign * (1 + m / mant_div) * 2.0 ** (e - bias)


def _bf16(x, how):
    b = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    if how == "truncate":
        out = b >> 16
    elif how == "half up":
        out = (b + 0x8000) >> 16  # ties always away from zero, not to even
    elif how == "no nan":
        return (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    else:
        raise ValueError(how)
    return torch.where(nan, (b >> 16) | 0x40, out)


def _scale(scale, clean, bad, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, how=""):
    if bad:
        if how == "grows after inf":
            return scale * growth_factor, 0
        if how == "keeps count after inf":
            return scale * backoff_factor, clean  # the clean run is not forgotten: grows too early after an inf
        return scale * backoff_factor, 0
    clean += 1
    if how == "late by one" and clean == growth_interval:
        return scale, clean
    if how == "late by one" and clean == growth_interval + 1:
        return scale * growth_factor, 0
    if clean == growth_interval:
        return scale * growth_factor, (clean if how == "no reset after growth" else 0)
    return scale, clean


def _ms(params, masters, lr, scale, how):
    with torch.no_grad():
        grads = [p.grad.float() / (1.0 if how == "no unscale" else scale) for p in params]
        if how != "no skip" and not all(torch.isfinite(g).all() for g in grads):
            return False
        for p, m, g in zip(params, masters, grads):
            if how == "low precision":
                m.copy_((p - (lr * g).to(p.dtype)).float())  # the update done on the FP16 weight: rounds away
            else:
                m -= lr * g
            if how != "no copy back":
                p.copy_(m)
    return True


WRONG = {
    "11.decode_fp16": {
        "exponent bias off by one (16)": lambda b: _fp16(b, bias=16),
        "exponent bias off by one (14)": lambda b: _fp16(b, bias=14),
        "subnormals decoded as normals": lambda b: _fp16(b, subnormal_as_normal=True),
        "NaN decoded as inf": lambda b: _fp16(b, nan_as_inf=True),
        "sign ignored": lambda b: _fp16(b, no_sign=True),
        "subnormal exponent 0 - 15 instead of 1 - 15": lambda b: _fp16(b, bias=16) if (b >> 10) & 0x1F == 0 else _fp16(b),
    },
    "11.fp32_to_bf16_bits": {
        "truncation instead of rounding": lambda x: _bf16(x, "truncate"),
        "round half up (ties not to even)": lambda x: _bf16(x, "half up"),
        "NaN with a small payload becomes inf": lambda x: _bf16(x, "no nan"),
        "returns float values, not bits": lambda x: x.to(torch.bfloat16).float(),
    },
    "11.update_scale": {
        "scaler that grows after an inf": lambda *a, **k: _scale(*a, **k, how="grows after inf"),
        "clean-step count not reset after an inf": lambda *a, **k: _scale(*a, **k, how="keeps count after inf"),
        "grows one step late": lambda *a, **k: _scale(*a, **k, how="late by one"),
        "count not reset after growing": lambda *a, **k: _scale(*a, **k, how="no reset after growth"),
    },
    "11.master_weights_step": {
        "master weights updated in low precision": lambda p, m, lr, s: _ms(p, m, lr, s, "low precision"),
        "forgets to unscale the gradients": lambda p, m, lr, s: _ms(p, m, lr, s, "no unscale"),
        "does not skip on inf": lambda p, m, lr, s: _ms(p, m, lr, s, "no skip"),
        "never copies the master back": lambda p, m, lr, s: _ms(p, m, lr, s, "no copy back"),
    },
}
