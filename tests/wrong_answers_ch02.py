"""Plausible wrong answers to chapter 02's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math

import torch
import torch.nn.functional as F

_C = math.sqrt(2.0 / math.pi)


def _ffn(x, w_gate, w_value, w_down, act=F.silu, swap=False):
    g, v = (w_value, w_gate) if swap else (w_gate, w_value)
    return F.linear(act(F.linear(x, g)) * F.linear(x, v), w_down)


def _round_nearest(h, m=8):
    return max(m, m * round(int(2 * h / 3) / m))


def _round_down(h, m=8):
    return max(m, m * (int(2 * h / 3) // m))


def _params(d, h, kind, bias=True, gated_matrices=3, count_bias=True):
    gated = kind in ("swiglu", "geglu")
    mats = gated_matrices if gated else 2
    weights = mats * d * h
    if not (bias and count_bias):
        return weights
    return weights + (mats - 1) * h + d


def _swiglu_class(mix, bias=False):
    import torch.nn as nn

    class SwiGLU(nn.Module):
        def __init__(self, d_model, hidden):
            super().__init__()
            self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
            self.up_proj = nn.Linear(d_model, hidden, bias=bias)
            self.down_proj = nn.Linear(hidden, d_model, bias=bias)

        def forward(self, x):
            return self.down_proj(mix(self.gate_proj(x), self.up_proj(x)))

    return SwiGLU


WRONG = {
    "02.swish": {
        "sigmoid instead of swish (forgot the x)": lambda x, beta=1.0: torch.sigmoid(beta * x),
        "ignores beta (always SiLU)": lambda x, beta=1.0: x * torch.sigmoid(x),
        "beta outside the sigmoid": lambda x, beta=1.0: beta * x * torch.sigmoid(x),
        "beta divides instead of multiplies": lambda x, beta=1.0: x * torch.sigmoid(x / beta) if beta else x,
        "ReLU": lambda x, beta=1.0: torch.relu(x),
        "detached from autograd": lambda x, beta=1.0: (x * torch.sigmoid(beta * x)).detach(),
        "wrong default beta (0)": lambda x, beta=0.0: x * torch.sigmoid(beta * x),
    },
    "02.gelu_tanh": {
        "missing the 0.044715 cubic term": lambda x: 0.5 * x * (1 + torch.tanh(_C * x)),
        "exact erf GeLU instead of the tanh form": lambda x: F.gelu(x),
        "2/pi without the square root": lambda x: 0.5 * x * (1 + torch.tanh(2 / math.pi * (x + 0.044715 * x**3))),
        "squared instead of cubed": lambda x: 0.5 * x * (1 + torch.tanh(_C * (x + 0.044715 * x**2))),
        "forgot the 0.5": lambda x: x * (1 + torch.tanh(_C * (x + 0.044715 * x**3))),
        "sigmoid approximation x·σ(1.702x)": lambda x: x * torch.sigmoid(1.702 * x),
        "computed in float32 (loses float64 precision)": lambda x: F.gelu(x.float(), approximate="tanh").to(x.dtype),
    },
    "02.swiglu_ffn": {
        "gate and value swapped": lambda x, g, v, d: _ffn(x, g, v, d, swap=True),
        "sigmoid gate (plain GLU) instead of SiLU": lambda x, g, v, d: _ffn(x, g, v, d, act=torch.sigmoid),
        "GeLU gate (GeGLU)": lambda x, g, v, d: _ffn(x, g, v, d, act=F.gelu),
        "SiLU on both gate and value": lambda x, g, v, d: F.linear(F.silu(F.linear(x, g)) * F.silu(F.linear(x, v)), d),
        "no gate: down(silu(value(x)))": lambda x, g, v, d: F.linear(F.silu(F.linear(x, v)), d),
        "weights not transposed (x @ w)": lambda x, g, v, d: (F.silu(x @ g.T) * (x @ v.T)) @ d,
        "SiLU after the down projection": lambda x, g, v, d: F.silu(F.linear(F.linear(x, g) * F.linear(x, v), d)),
    },
    "02.glu_hidden_size": {
        "2/3 rule without rounding": lambda h, m=8: int(2 * h / 3),
        "rounds down instead of up": _round_down,
        "rounds to the nearest multiple": _round_nearest,
        "rounds 2/3 up before truncating (ceil of 2h/3)": lambda h, m=8: max(m, m * math.ceil(math.ceil(2 * h / 3) / m)),
        "3/4 instead of 2/3": lambda h, m=8: max(m, m * math.ceil(int(3 * h / 4) / m)),
        "returns a float": lambda h, m=8: float(max(m, m * math.ceil(int(2 * h / 3) / m))),
        "no minimum of one multiple": lambda h, m=8: m * math.ceil(int(2 * h / 3) / m) if h > 8 else 0,
    },
    "02.ffn_num_parameters": {
        "gated FFN counted with two matrices": lambda d, h, kind, bias=True: _params(d, h, kind, bias, gated_matrices=2),
        "biases forgotten": lambda d, h, kind, bias=True: _params(d, h, kind, bias, count_bias=False),
        "bias of the down projection sized h": lambda d, h, kind, bias=True: _params(d, h, kind, bias) + ((h - d) if bias else 0),
        "gated counted with four matrices": lambda d, h, kind, bias=True: _params(d, h, kind, bias, gated_matrices=4),
        "biases counted even when bias=False": lambda d, h, kind, bias=True: _params(d, h, kind, True),
    },
    "02.SwiGLU": {
        "SiLU on the value instead of the gate": _swiglu_class(lambda g, u: g * torch.nn.functional.silu(u)),
        "sigmoid gate (GLU, not SwiGLU)": _swiglu_class(lambda g, u: torch.sigmoid(g) * u),
        "biases in the projections": _swiglu_class(lambda g, u: torch.nn.functional.silu(g) * u, bias=True),
        "GeLU gate (GeGLU)": _swiglu_class(lambda g, u: torch.nn.functional.gelu(g) * u),
    },
}
