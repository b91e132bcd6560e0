"""Plausible wrong answers for chapter 01's exercises; every one must fail its grader
(merged into ``grading_wrong_answers.WRONG_ANSWERS`` and run by ``tests/test_grading_checks.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn


def _rmsnorm_class(fn, parameter=True):
    class RMSNorm(nn.Module):
        def __init__(self, d_model, eps=1e-6):
            super().__init__()
            self.eps = eps
            ones = torch.ones(d_model)
            if parameter:
                self.weight = nn.Parameter(ones)
            else:
                self.register_buffer("weight", ones)

        def forward(self, x):
            return fn(x, self.weight, self.eps)

    return RMSNorm


def _ln(x, w, b, eps, dim=-1, unbiased=False, eps_outside=False, center_var=True, affine=True):
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, unbiased=unbiased, keepdim=True) if center_var else x.pow(2).mean(dim, keepdim=True)
    y = (x - mean) / (torch.sqrt(var) + eps if eps_outside else torch.sqrt(var + eps))
    return y * w + b if affine else y


def _rms(x, w, eps, dim=-1, eps_outside=False, no_sqrt=False, center=False):
    if center:
        x = x - x.mean(dim, keepdim=True)
    ms = x.pow(2).mean(dim, keepdim=True)
    denom = ms + eps if no_sqrt else (torch.sqrt(ms) + eps if eps_outside else torch.sqrt(ms + eps))
    return x / denom * w


def _post_ln(x, attn, ffn, norm1, norm2):
    h = norm1(x + attn(x))
    return norm2(h + ffn(h))


WRONG = {
    "01.layer_norm": {
        "normalises over the batch axis (dim 0), BatchNorm-style": lambda x, w, b, eps: _ln(x, w, b, eps, dim=0),
        "variance with Bessel's correction (divide by d - 1)": lambda x, w, b, eps: _ln(x, w, b, eps, unbiased=True),
        "eps added outside the square root": lambda x, w, b, eps: _ln(x, w, b, eps, eps_outside=True),
        "ignores weight and bias": lambda x, w, b, eps: _ln(x, w, b, eps, affine=False),
        "mean square instead of variance (forgot to centre it)": lambda x, w, b, eps: _ln(x, w, b, eps, center_var=False),
        "no eps at all (NaN on a constant row)": lambda x, w, b, eps: (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True) * w + b,
        "detached from autograd": lambda x, w, b, eps: _ln(x, w, b, eps).detach(),
    },
    "01.rms_norm": {
        "subtracts the mean (that is LayerNorm)": lambda x, w, eps: _rms(x, w, eps, center=True),
        "eps added outside the square root": lambda x, w, eps: _rms(x, w, eps, eps_outside=True),
        "divides by the mean square (no square root)": lambda x, w, eps: _rms(x, w, eps, no_sqrt=True),
        "normalises over the batch axis (dim 0)": lambda x, w, eps: _rms(x, w, eps, dim=0),
        "ignores the weight": lambda x, w, eps: _rms(x, torch.ones_like(w), eps),
        "root of the sum, not the mean": lambda x, w, eps: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w,
    },
    "01.pre_ln_block": {
        "post-LN instead of pre-LN": _post_ln,
        "no residual connections": lambda x, attn, ffn, norm1, norm2: ffn(norm2(attn(norm1(x)))),
        "parallel block: the FFN reads x, not the updated stream": lambda x, attn, ffn, norm1, norm2: x + attn(norm1(x)) + ffn(norm2(x)),
        "normalizes the residual stream too": lambda x, attn, ffn, norm1, norm2: (lambda h: h + ffn(norm2(h)))(norm1(x) + attn(norm1(x))),
        "norms swapped": lambda x, attn, ffn, norm1, norm2: (lambda h: h + ffn(norm1(h)))(x + attn(norm2(x))),
        "one norm for both sub-layers": lambda x, attn, ffn, norm1, norm2: (lambda h: h + ffn(norm1(h)))(x + attn(norm1(x))),
    },
    "01.deepnorm_constants": {
        "alpha and beta swapped": lambda M: ((8 * M) ** -0.25, (2 * M) ** 0.25),
        "M instead of 2M and 8M": lambda M: (M ** 0.25, M ** -0.25),
        "beta without the minus sign": lambda M: ((2 * M) ** 0.25, (8 * M) ** 0.25),
        "square roots instead of fourth roots": lambda M: ((2 * M) ** 0.5, (8 * M) ** -0.5),
        "encoder-decoder's decoder constants with N = M": lambda M: ((3 * M) ** 0.25, (12 * M) ** -0.25),
        "returns only alpha": lambda M: (2 * M) ** 0.25,
    },
    "01.RMSNorm": {
        "eps ignored (always 1e-6)": _rmsnorm_class(lambda x, w, eps: _rms(x, w, 1e-6)),
        "subtracts the mean (a LayerNorm without bias)": _rmsnorm_class(lambda x, w, eps: _rms(x, w, eps, center=True)),
        "eps outside the square root": _rmsnorm_class(lambda x, w, eps: _rms(x, w, eps, eps_outside=True)),
        "gain is a plain tensor, not an nn.Parameter (it never trains)": _rmsnorm_class(lambda x, w, eps: _rms(x, w, eps), parameter=False),
    },
}
