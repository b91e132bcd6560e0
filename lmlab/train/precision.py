"""Floating-point formats bit by bit (lesson 11, ``lessons/11_mixed_precision``).

A binary float is ``sign | exponent | mantissa``. With ``E`` exponent bits (bias ``2**(E-1) - 1``)
and ``M`` mantissa bits, a pattern with exponent field ``e`` and mantissa field ``m`` means

- ``e == 0``: a **subnormal** ``(-1)**s * m * 2**(1 - bias - M)`` (no implicit leading 1; ``m == 0`` is ±0);
- ``0 < e < 2**E - 1``: a **normal** ``(-1)**s * (2**M + m) * 2**(e - bias - M)`` (implicit leading 1);
- ``e == 2**E - 1``: ±infinity (``m == 0``) or NaN (``m != 0``) — except FP8 E4M3 ("fn": finite,
  NaN only), which has no infinity and uses that exponent for normal numbers, only ``S.1111.111`` is NaN.

:func:`decode` (bits → value) and :func:`encode` (value → bits, round-to-nearest-even) do exactly
that with integer operations on ``int64`` tensors; every FP16 and BF16 pattern decodes as torch does
and encoding equals ``tensor.to(dtype)`` (``tests/test_precision.py``). :func:`quantize` is the fast
path the lesson's simulated FP16 training uses (same results: tested). :func:`format_info` is a
``torch.finfo``-style table; :func:`autocast_report` says which dtype each op ran in under
``torch.autocast``. Loss scaling and master weights are in :mod:`lmlab.train.loss_scaling`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from lmlab.argcheck import check_choice, check_tensor

__all__ = ["FloatFormat", "FORMATS", "FORMAT_NAMES", "get_format", "decode", "encode", "quantize", "bit_fields",
           "format_info", "torch_bits", "autocast_report", "decode_fp16", "fp32_to_bf16_bits"]


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    ``ieee``: the all-ones exponent means inf/NaN (FP32, FP16, BF16, TF32, FP8 E5M2). ``False`` is
    FP8 E4M3FN: no infinity, only the all-ones pattern is NaN, overflow saturates at ±448 (as torch does).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    ieee: bool = True
    torch_dtype: torch.dtype | None = None  # None: simulated only (TF32)

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emin(self) -> int:  # exponent of the smallest normal number
        return 1 - self.bias

    @property
    def max_bits(self) -> int:  # the largest finite positive pattern
        top = (2 ** self.exponent_bits - 1) << self.mantissa_bits
        return top - 1 if self.ieee else top | (2 ** self.mantissa_bits - 2)

    @property
    def inf_bits(self) -> int | None:
        return (2 ** self.exponent_bits - 1) << self.mantissa_bits if self.ieee else None

    @property
    def nan_bits(self) -> int:  # the canonical (quiet) NaN, positive
        top = (2 ** self.exponent_bits - 1) << self.mantissa_bits
        return top | (1 << (self.mantissa_bits - 1)) if self.ieee else top | (2 ** self.mantissa_bits - 1)


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23, torch_dtype=torch.float32),
    "tf32": FloatFormat("tf32", 8, 10),  # NVIDIA TensorFloat-32: FP32's range, FP16's precision (19 bits)
    "fp16": FloatFormat("fp16", 5, 10, torch_dtype=torch.float16),
    "bf16": FloatFormat("bf16", 8, 7, torch_dtype=torch.bfloat16),
    "fp8_e5m2": FloatFormat("fp8_e5m2", 5, 2, torch_dtype=torch.float8_e5m2),
    "fp8_e4m3": FloatFormat("fp8_e4m3", 4, 3, ieee=False, torch_dtype=torch.float8_e4m3fn),
}
FORMAT_NAMES = tuple(FORMATS)


def get_format(fmt: str | FloatFormat, name: str = "fmt") -> FloatFormat:
    """The :class:`FloatFormat` called ``fmt`` (one of :data:`FORMAT_NAMES`), or ``fmt`` itself."""
    if isinstance(fmt, FloatFormat):
        return fmt
    return FORMATS[check_choice(fmt, name, FORMAT_NAMES)]


def _as_bits(bits, f: FloatFormat) -> tuple[torch.Tensor, bool]:
    scalar = isinstance(bits, int) and not isinstance(bits, bool)
    if scalar:
        t = torch.tensor(bits, dtype=torch.int64)
    elif isinstance(bits, (list, tuple)):
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
            raise ValueError(f"bits must be ints (bit patterns), got {bits!r}")
        t = torch.tensor(bits, dtype=torch.int64)
    elif isinstance(bits, torch.Tensor) and not bits.is_floating_point() and not bits.is_complex() and bits.dtype != torch.bool:
        t = bits.to(torch.int64)
    else:
        raise ValueError(f"bits must be an int, a list of ints or an integer tensor, got {type(bits).__name__}"
                         + (f" of dtype {bits.dtype}" if isinstance(bits, torch.Tensor) else ""))
    if t.numel() and (t.min() < 0 or t.max() >= 2 ** f.bits):
        raise ValueError(f"bits must be unsigned {f.bits}-bit patterns of {f.name}, in [0, {2 ** f.bits - 1}] "
                         f"(0x{2 ** f.bits - 1:X}), got values in [{int(t.min())}, {int(t.max())}]")
    return t, scalar


def bit_fields(bits, fmt: str | FloatFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sign, exponent field, mantissa field)`` of bit patterns, as ``int64`` tensors."""
    f = get_format(fmt)
    t, _ = _as_bits(bits, f)
    M, E = f.mantissa_bits, f.exponent_bits
    return (t >> (E + M)) & 1, (t >> M) & (2 ** E - 1), t & (2 ** M - 1)


def decode(bits, fmt: str | FloatFormat):
    """The value of each bit pattern of ``fmt``, as ``float64`` (exact for every format here).

    ``bits``: an int, a list of ints or an integer tensor of unsigned patterns ``[0, 2**bits)``.
    Returns a Python float for an int, else a ``float64`` tensor of the same shape.
    """
    f = get_format(fmt)
    t, scalar = _as_bits(bits, f)
    sign, e, m = bit_fields(t, f)
    M = f.mantissa_bits
    subnormal = e == 0
    significand = torch.where(subnormal, m, m + (1 << M))  # the implicit leading 1 of normal numbers
    exponent = torch.where(subnormal, torch.full_like(e, f.emin), e - f.bias) - M  # value = significand * 2**exponent
    value = torch.ldexp(significand.to(torch.float64), exponent.to(torch.float64))
    if f.ieee:
        top = e == 2 ** f.exponent_bits - 1
        value = torch.where(top & (m == 0), torch.full_like(value, float("inf")), value)
        value = torch.where(top & (m != 0), torch.full_like(value, float("nan")), value)
    else:
        value = torch.where((e == 2 ** f.exponent_bits - 1) & (m == 2 ** M - 1), torch.full_like(value, float("nan")), value)
    value = torch.where(sign == 1, -value, value)
    return float(value) if scalar else value


def encode(x, fmt: str | FloatFormat):
    """The bit pattern of ``fmt`` nearest to ``x`` (round to nearest, ties to even), as ``int64``.

    Works on the FP64 bits of ``x`` with integer operations only: split sign / exponent / 53-bit
    significand, shift the significand right to ``fmt``'s precision at ``x``'s exponent (or at the
    smallest normal exponent, for subnormals), round on the bits shifted out, and let a carry into
    the exponent happen by itself. Too large → inf (E4M3: ±448, like torch); NaN → ``fmt``'s NaN.
    Returns a Python int for a Python number, else an ``int64`` tensor of ``x``'s shape.
    """
    f = get_format(fmt)
    scalar = isinstance(x, (int, float)) and not isinstance(x, bool)
    if scalar:
        x = torch.tensor(float(x), dtype=torch.float64)
    else:
        check_tensor(x, "x", floating=True)
    b = x.detach().to(torch.float64).cpu().view(torch.int64)  # exact: every float32/16 is a float64
    sign = (b >> 63) & 1
    e64 = (b >> 52) & 0x7FF
    m64 = b & ((1 << 52) - 1)
    special = e64 == 0x7FF  # inf or NaN
    sig = torch.where(e64 == 0, m64, m64 | (1 << 52))  # |x| = sig * 2**(exp - 52)
    exp = torch.where(e64 == 0, torch.full_like(e64, -1022), e64 - 1023)
    M = f.mantissa_bits
    exp_eff = torch.clamp(exp, min=f.emin)  # below the normal range the spacing stops shrinking
    shift = torch.clamp(52 + exp_eff - M - exp, 1, 62)  # bits of sig that fall below fmt's last place
    n = sig >> shift
    rest = sig & ((torch.ones_like(sig) << shift) - 1)
    half = torch.ones_like(sig) << (shift - 1)
    n = n + ((rest > half) | ((rest == half) & ((n & 1) == 1))).to(torch.int64)  # round to nearest, ties to even
    out = ((exp_eff - f.emin) << M) + n  # exponent field and mantissa at once (a carry moves up by itself)
    too_big = out > f.max_bits
    if f.ieee:
        out = torch.where(too_big, torch.full_like(out, f.inf_bits), out)
        out = torch.where(special, torch.where(m64 == 0, torch.full_like(out, f.inf_bits), torch.full_like(out, f.nan_bits)), out)
    else:  # E4M3FN saturates: too large (and, as torch does, ±inf) -> ±448
        out = torch.where(too_big | (special & (m64 == 0)), torch.full_like(out, f.max_bits), out)
        out = torch.where(special & (m64 != 0), torch.full_like(out, f.nan_bits), out)
    out = out | (sign << (f.bits - 1))
    return int(out) if scalar else out


def quantize(x: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """``x`` rounded to the nearest ``fmt`` value (ties to even), kept in ``x``'s dtype.

    The same numbers as ``decode(encode(x, fmt), fmt)`` (tested), computed with float operations
    for speed: the spacing of ``fmt`` at ``x`` is ``2**(max(floor(log2|x|), emin) - M)``, and
    ``torch.round`` rounds half to even. This is how the lesson simulates FP16 storage on a CPU.
    """
    f = get_format(fmt)
    check_tensor(x, "x", floating=True)
    if x.dtype == torch.float32:
        return _quantize_fp32(x, f)
    xd = x.to(torch.float64)
    _, e = torch.frexp(xd)  # |x| = mant * 2**e with mant in [0.5, 1): floor(log2|x|) = e - 1
    q = (torch.clamp(e - 1, min=f.emin) - f.mantissa_bits).to(torch.float64)
    y = torch.ldexp(torch.round(torch.ldexp(xd, -q)), q)
    big = y.abs() > decode(f.max_bits, f)
    top = float("inf") if f.ieee else decode(f.max_bits, f)  # E4M3FN saturates at ±448
    y = torch.where(big, torch.where(y > 0, top, -top), y)
    return y.to(x.dtype)


def _quantize_fp32(x: torch.Tensor, f: FloatFormat) -> torch.Tensor:
    """:func:`quantize` for FP32 tensors in FP32/int32 operations (the fast path of simulated training).

    Normal range: round the FP32 bits at bit ``23 - M`` (add ``0x0..7F..F`` plus the last kept bit:
    ties go to even), then clear the dropped bits. Subnormal range of ``fmt``: ``(|x| + C) - C`` with
    ``C = 2**(emin - M + 23)``, whose FP32 spacing is exactly ``fmt``'s subnormal spacing, so the FP32
    addition itself rounds to nearest even.
    """
    if f.mantissa_bits >= 23:
        return x.clone()
    shift = 23 - f.mantissa_bits
    ax = x.abs()
    a = ax.contiguous().view(torch.int32)  # |x| as bits (the sign is put back at the end)
    r = (a + ((1 << (shift - 1)) - 1) + ((a >> shift) & 1)) & ~((1 << shift) - 1)
    max32 = int(torch.tensor(decode(f.max_bits, f), dtype=torch.float32).view(torch.int32))
    r = r.masked_fill_((r > max32) & (a <= 0x7F800000), 0x7F800000 if f.ieee else max32)  # E4M3FN saturates
    c = 2.0 ** (f.emin - f.mantissa_bits + 23)
    y = torch.where(a < ((f.emin + 127) << 23), (ax + c) - c, r.view(torch.float32))
    y = torch.where(a > 0x7F800000, x, y)  # NaN stays NaN
    return torch.copysign(y, x)


def decode_fp16(bits: int) -> float:
    """One FP16 pattern (an int in ``[0, 65535]``) as a Python float: exercise 11.decode_fp16's reference."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 0xFFFF:
        raise ValueError(f"bits must be an int in [0, 65535] (an FP16 bit pattern), got {bits!r}")
    sign = -1.0 if bits >> 15 else 1.0
    e, m = (bits >> 10) & 0x1F, bits & 0x3FF
    if e == 0x1F:
        return sign * float("inf") if m == 0 else float("nan")
    if e == 0:
        return sign * m * 2.0 ** -24  # subnormal: no implicit 1, exponent fixed at 1 - 15 (= -14), times 2**-10
    return sign * (1024 + m) * 2.0 ** (e - 15 - 10)


def fp32_to_bf16_bits(x: torch.Tensor) -> torch.Tensor:
    """FP32 tensor → BF16 bit patterns (``int64`` in ``[0, 65535]``), round to nearest even with
    integer operations: add ``0x7FFF`` plus the lowest kept bit, keep the top 16 bits; NaN stays NaN.
    Exercise 11.fp32_to_bf16_bits's reference."""
    check_tensor(x, "x", dtype=torch.float32)
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # the 32 bits, unsigned
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    is_nan = (b & 0x7FFFFFFF) > 0x7F800000
    return torch.where(is_nan, (b >> 16) | 0x0040, rounded)  # NaN: keep it NaN (set the quiet bit)


def torch_bits(t: torch.Tensor) -> torch.Tensor:
    """The unsigned bit patterns of a torch float tensor (fp32, fp16, bf16, fp8), as ``int64``."""
    check_tensor(t, "t", dtype=tuple(f.torch_dtype for f in FORMATS.values() if f.torch_dtype is not None))
    size = t.element_size()
    as_int = {4: torch.int32, 2: torch.int16, 1: torch.uint8}[size]
    return t.view(as_int).to(torch.int64) & (2 ** (8 * size) - 1)


def format_info(fmt: str | FloatFormat) -> dict:
    """A ``torch.finfo``-style table of ``fmt``, computed from its bit patterns with :func:`decode`.

    Keys: ``bits``, ``exponent_bits``, ``mantissa_bits``, ``bias``, ``max``, ``smallest_normal``,
    ``smallest_subnormal``, ``eps`` (the gap after 1.0), ``has_inf``.
    """
    f = get_format(fmt)
    one = encode(1.0, f)
    return dict(name=f.name, bits=f.bits, exponent_bits=f.exponent_bits, mantissa_bits=f.mantissa_bits, bias=f.bias,
                max=decode(f.max_bits, f), smallest_normal=decode(1 << f.mantissa_bits, f), smallest_subnormal=decode(1, f),
                eps=decode(one + 1, f) - 1.0, has_inf=f.ieee)


# ---------------------------------------------------------------------------------------------
# Which op ran in which dtype under torch.autocast
# ---------------------------------------------------------------------------------------------


def autocast_report(model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor, device_type: str = "cpu",
                    dtype: torch.dtype = torch.bfloat16) -> dict:
    """Run one forward + backward of ``model`` (an lmlab GPT or any ``idx -> logits`` module) under
    ``torch.autocast(device_type, dtype)`` and record which dtype every op produced.

    Returns ``{"forward": {aten op: [dtype names]}, "backward": {...}, "modules": {module class:
    [output dtype names]}, "loss": dtype name, "device": device_type}``. The ops are seen after
    autocast has cast their inputs (a ``TorchDispatchMode``), so ``addmm`` in bf16 means the matrix
    multiply itself ran in bf16. Parameters get their ``.grad`` as usual.
    """
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    check_choice(device_type, "device_type", ("cpu", "cuda"))
    check_choice(dtype, "dtype", (torch.bfloat16, torch.float16))
    check_tensor(idx, "idx", dim=2)
    check_tensor(targets, "targets", shape=tuple(idx.shape))
    skip = {"detach", "view", "t", "expand", "_unsafe_view", "alias", "empty", "zeros", "ones_like", "promote_types"}

    class _Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = defaultdict(set)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if name not in skip and isinstance(first, torch.Tensor) and first.is_floating_point():
                self.ops[name].add(str(first.dtype).replace("torch.", ""))
            return out

    modules = defaultdict(set)

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            modules[type(module).__name__].add(str(output.dtype).replace("torch.", ""))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with _Log() as fwd, torch.autocast(device_type, dtype=dtype):
            logits = model(idx)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        with _Log() as bwd:
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    as_lists = lambda d: {k: sorted(v) for k, v in sorted(d.items())}  # noqa: E731
    return dict(forward=as_lists(fwd.ops), backward=as_lists(bwd.ops), modules=as_lists(modules),
                loss=str(loss.dtype).replace("torch.", ""), device=device_type)
