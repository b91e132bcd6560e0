"""Chapter 11 graders (``exercises/11_mixed_precision.ipynb``): FP16 decoding, FP32 → BF16 rounding,
the loss scaler's update rule, one master-weights step.

Every check compares with torch: torch reading the same FP16 bits (``.view(torch.float16)``),
``tensor.to(torch.bfloat16)``, the real ``torch.amp.GradScaler("cpu")`` on the same script, and
FP32 / FP16 arithmetic done here by torch. lmlab's own implementations are only the ``reference``
that the tests feed through the same checks.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.sandbox import share
from lmlab.grading.seeds import check_generator

# The notebook's order (11_mixed_precision.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "11.decode_fp16",
    "11.fp32_to_bf16_bits",
    "11.update_scale",
    "11.master_weights_step",
)


# ---------------------------------------------------------------------------------------------
# 11.decode_fp16
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _fp16_table() -> list[float]:
    return torch.arange(2**16).to(torch.int16).view(torch.float16).tolist()  # torch reading every pattern


def _torch_fp16(bits: int) -> float:
    return _fp16_table()[bits]


def _number(got, what) -> float:
    expect_true(isinstance(got, (int, float)) and not isinstance(got, bool),
                f"{what} should return a Python float, got {type(got).__name__} {got!r}")
    return float(got)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def _decode_cases(f, patterns, why):
    for bits in patterns:
        what = f"decode_fp16({bits:#06x}) (bits {bits >> 15} {(bits >> 10) & 0x1F:05b} {bits & 0x3FF:010b})"
        got, expected = _number(f(bits), what), _torch_fp16(bits)
        expect_true(_same(got, expected), f"{what}: expected {expected!r}, got {got!r} — {why}")


def _decode_named(f):
    _decode_cases(f, (0x3C00, 0x3C01, 0xC000, 0x3555, 0x7BFF, 0x0400, 0xFBFF), "a normal number: (1 + m/1024) * 2**(e - 15)")


def _decode_subnormal(f):
    _decode_cases(f, (0x0001, 0x0002, 0x03FF, 0x0200, 0x8001, 0x0000, 0x8000),
                  "exponent field 0: a subnormal (or ±0), no implicit 1 and the exponent is 1 - 15, not 0 - 15")


def _decode_special(f):
    _decode_cases(f, (0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF), "exponent field 31: inf if the mantissa is 0, else NaN")


def _decode_sample(f):
    g = check_generator(11)
    _decode_cases(f, torch.randint(0, 2**16, (3000,), generator=g).tolist(), "compared with torch reading the same bits")


register(Exercise(
    id="11.decode_fp16",
    points=2,
    signature="decode_fp16(bits: int in [0, 65535]) -> float",
    hint="split sign (1 bit), exponent (5), mantissa (10) with >> and &; treat exponent 0 and exponent 31 separately.",
    minutes=10,
    hints=(
        "An FP16 number is 1 sign bit, 5 exponent bits (bias 15) and 10 mantissa bits. A normal number is (1 + m / "
        "1024) * 2 ** (e - 15); exponent 0 means subnormal (no implicit 1, exponent fixed at 1 - 15) and exponent 31 "
        "means inf or NaN.",
        "sign = bit 15; e = bits 10..14 (shift right by 10, mask 0x1F); m = the low 10 bits (mask 0x3FF). Test e == 31 "
        "first (m == 0: +-inf, otherwise NaN), then e == 0 (subnormal), otherwise normal. Return a Python float.",
        "sign = ...  # -1.0 or 1.0\ne, m = ..., ...\nif e == 0x1F:\n    return ...  # inf or NaN\nif e == 0:\n"
        "    return ...  # subnormal\nreturn ...  # normal",
    ),
    checks=(
        Check("normal numbers (1.0, the number after 1.0, -2, 65504, the smallest normal)", _decode_named),
        Check("subnormals and signed zeros", _decode_subnormal),
        Check("infinities and NaNs", _decode_special),
        Check("3,000 random patterns equal torch's reading of the same bits", _decode_sample),
    ),
    reference="lmlab.train.precision:decode_fp16",
))

# ---------------------------------------------------------------------------------------------
# 11.fp32_to_bf16_bits
# ---------------------------------------------------------------------------------------------


def _bf16_reference(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF


def _bf16_compare(f, x, what):
    got = f(share(x.clone()))  # a copy the learner's code may change in place
    got = expect_tensor(got, what, shape=tuple(x.shape))
    expect_true(not got.is_floating_point() and got.dtype != torch.bool,
                f"{what} should return an integer tensor of bit patterns, got dtype {got.dtype}")
    got = got.to(torch.int64) & 0xFFFF
    expected = _bf16_reference(x)
    nan_e = (expected & 0x7FFF) > 0x7F80
    nan_g = (got & 0x7FFF) > 0x7F80
    bad = (got != expected) & ~(nan_e & nan_g)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        xb = int(x.flatten()[i:i + 1].view(torch.int32)) & 0xFFFFFFFF
        raise_msg = (f"{what}: x = {x.flatten()[i].item()!r} (bits {xb:#010x}): expected {int(expected.flatten()[i]):#06x}, "
                     f"got {int(got.flatten()[i]):#06x} ({int(bad.sum())} of {x.numel()} differ)")
        expect_true(False, raise_msg)


def _bits_to_f32(bits):
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def _bf16_ties(f):
    x = _bits_to_f32([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F804000, 0xBF808000, 0x40490FDB, 0x3DCCCCCD])
    _bf16_compare(f, x, "fp32_to_bf16_bits on exact ties (x.5 of the last kept bit) and near-ties")


def _bf16_random(f):
    g = check_generator(12)
    x = torch.randn(50_000, generator=g) * torch.exp2(torch.randint(-149, 128, (50_000,), generator=g).float())
    x = torch.cat([x, torch.tensor([0.0, -0.0, 3.3961e38, -3.4e38, 1e-45, 9e-41])])
    _bf16_compare(f, x, "fp32_to_bf16_bits on 50,000 values over the whole FP32 range (subnormals and overflow included)")


def _bf16_special(f):
    x = torch.cat([torch.tensor([math.inf, -math.inf, math.nan]), _bits_to_f32([0x7F800001, 0x7FFFFFFF, 0xFF800001, 0x7F80FFFF])])
    _bf16_compare(f, x, "fp32_to_bf16_bits on inf and NaNs (a NaN must stay NaN, also one with a tiny payload)")


register(Exercise(
    id="11.fp32_to_bf16_bits",
    points=3,
    signature="fp32_to_bf16_bits(x: float32 tensor) -> integer tensor of BF16 bit patterns (same shape)",
    hint="x.view(torch.int32) gives the bits; the lower 16 bits decide the rounding (more or less than half of 0x10000, "
         "and on a tie the lowest kept bit); NaNs need their own case.",
    minutes=15,
    hints=(
        "BF16 is the top half of FP32: the same sign and 8-bit exponent, 7 mantissa bits. Converting drops the low 16 "
        "bits with round-to-nearest-even, as .to(torch.bfloat16) does; a NaN must stay a (quiet) NaN.",
        "b = the 32-bit pattern as an unsigned number in int64 (view as int32, widen, mask with 0xFFFFFFFF). Round to "
        "nearest even: add 0x7FFF plus the lowest bit that will be kept (bit 16), then shift right by 16. A NaN "
        "(exponent all ones, mantissa not zero) instead keeps its top 16 bits with the quiet bit 0x40 set. torch.where "
        "chooses per element.",
        "b = ...  # (...,) the unsigned 32-bit pattern, int64\nrounded = ...  # round to nearest even, then >> 16\n"
        "is_nan = ...\nreturn torch.where(is_nan, ..., rounded)",
    ),
    checks=(
        Check("ties round to the even neighbour", _bf16_ties),
        Check("50,000 values equal x.to(torch.bfloat16)", _bf16_random),
        Check("inf stays inf, NaN stays NaN", _bf16_special),
    ),
    reference="lmlab.train.precision:fp32_to_bf16_bits",
))

# ---------------------------------------------------------------------------------------------
# 11.update_scale
# ---------------------------------------------------------------------------------------------


def _pair(got, what):
    expect_true(isinstance(got, tuple) and len(got) == 2, f"{what} should return a tuple (new_scale, new_clean_steps), got {got!r}")
    scale, steps = got
    expect_true(isinstance(steps, int) and not isinstance(steps, bool), f"{what}: new_clean_steps should be an int, got {steps!r}")
    return _number(scale, what + ": new_scale"), steps


def _scale_single(f):
    cases = (((65536.0, 0, True), (32768.0, 0), "an inf halves the scale and restarts the count"),
             ((65536.0, 1999, False), (131072.0, 0), "the 2000th clean step in a row doubles it and restarts the count"),
             ((65536.0, 5, False), (65536.0, 6), "a clean step before the interval only counts"),
             ((1024.0, 1998, True), (512.0, 0), "an inf right before growing restarts the count: no growth"))
    for args, expected, why in cases:
        what = f"update_scale{args}"
        expect_equal(_pair(f(*args), what), expected, f"{what} — {why}")


def _run_script(f, script, kw):
    scale, clean, scales = kw["init_scale"], 0, []
    rule = {k: v for k, v in kw.items() if k != "init_scale"}
    for bad in script:
        scale, clean = _pair(f(scale, clean, bad, **rule), f"update_scale(scale, clean_steps, {bad}, **{rule})")
        scales.append(scale)
    return scales


def _gradscaler_scales(script, init_scale, growth_factor, backoff_factor, growth_interval):
    """GradScaler's own update kernel (what ``GradScaler.update`` calls) on the script."""
    scale, tracker, out = torch.tensor([init_scale]), torch.zeros(1, dtype=torch.int32), []
    for bad in script:
        torch._amp_update_scale_(scale, tracker, torch.tensor([float(bad)]), growth_factor, backoff_factor, growth_interval)
        out.append(float(scale))
    return out


def _scale_vs_gradscaler(f):
    g = check_generator(13)
    for kw in (dict(init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
               dict(init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=1),
               dict(init_scale=3.3, growth_factor=1.7, backoff_factor=0.3, growth_interval=2)):
        script = (torch.rand(60, generator=g) < 0.25).tolist()
        ref = _gradscaler_scales(script, **kw)
        got = _run_script(f, script, kw)
        for i, (a, b) in enumerate(zip(got, ref)):
            expect_true(math.isclose(a, b, rel_tol=1e-5), f"update_scale driven through {len(script)} steps with {kw}: at step {i} "
                        f"(inf at steps {[j for j, s in enumerate(script[:i + 1]) if s]}) GradScaler's scale is {b:g}, yours {a:g}")


register(Exercise(
    id="11.update_scale",
    points=2,
    signature="update_scale(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000) -> (new_scale, new_clean_steps)",
    hint="two branches: an overflow shrinks the scale and forgets the clean run; a clean step counts, and only reaching "
         "the interval grows the scale (then the count starts again).",
    minutes=10,
    hints=(
        "Dynamic loss scaling (torch.amp.GradScaler) multiplies the loss by a scale so that small FP16 gradients do "
        "not underflow. If a step overflows, the scale was too big: shrink it (and skip the step). After "
        "growth_interval clean steps in a row, try a bigger one.",
        "found_inf: shrink by backoff_factor, and the clean run starts over at 0. Otherwise the clean run grows by "
        "one; when it reaches growth_interval, grow the scale by growth_factor and start the count over; otherwise the "
        "scale stays.",
        "if found_inf:\n    return ...\nclean_steps += 1\nif ...:\n    return ...  # grown scale, count back to 0\n"
        "return ...  # unchanged scale, the new count",
    ),
    checks=(
        Check("single transitions (GradScaler's defaults)", _scale_single),
        Check("scripted runs equal torch.amp.GradScaler's scales step by step", _scale_vs_gradscaler),
    ),
    reference="lmlab.train.loss_scaling:update_scale",
))

# ---------------------------------------------------------------------------------------------
# 11.master_weights_step
# ---------------------------------------------------------------------------------------------


def _setup(seed, dtype, shapes=((4, 3), (5,)), grad_scale=1e-2, scale=1024.0):
    params, masters = [], []
    for i, shape in enumerate(shapes):
        m = seeded_randn(*shape, seed=seed + i)
        p = m.to(dtype)
        p.grad = (seeded_randn(*shape, seed=seed + 10 + i, scale=grad_scale) * scale).to(dtype)
        params.append(share(p))  # the step updates params and masters in place
        masters.append(share(p.float()))  # the master starts as the stored weight
    return params, masters


def _ms_one(f):
    for dtype in (torch.float16, torch.bfloat16):
        params, masters = _setup(110, dtype)
        lr, scale = 0.1, 1024.0
        expected_m = [m - lr * (p.grad.float() / scale) for p, m in zip(params, masters)]  # FP32 arithmetic
        what = f"master_weights_step(params ({dtype}), FP32 masters, lr={lr}, scale={scale})"
        got = f(params, masters, lr, scale)
        expect_true(got is True, f"{what} should return True when every gradient is finite, got {got!r}")
        for i, (p, m, e) in enumerate(zip(params, masters, expected_m)):
            expect_close(m, e, f"{what}: master {i} after the step (FP32: master - lr * grad / scale)", atol=1e-7, rtol=1e-6)
            expect_tensor(p, f"{what}: param {i}", dtype=dtype)
            expect_close(p, e.to(dtype), f"{what}: param {i} (the new master rounded to {dtype})", atol=0, rtol=0)


def _ms_skip(f):
    params, masters = _setup(120, torch.float16)
    params[1].grad[2] = float("inf")
    before = [t.clone() for t in params + masters]
    what = "master_weights_step(..., a gradient with inf)"
    got = f(params, masters, 0.1, 65536.0)
    expect_true(got is False, f"{what} should return False (step skipped), got {got!r}")
    expect_true(all(torch.equal(a, b) for a, b in zip(before, params + masters)),
                f"{what} changed weights: on overflow nothing may change (the scaler lowers the scale and tries again)")


def _ms_accumulate(f):
    p = share(torch.ones(3, dtype=torch.float16))
    m = share(p.float())
    lr, scale = 1e-4, 256.0
    for _ in range(100):  # 100 updates of 1e-4 each: every one is below half FP16's spacing at 1.0 (2**-11)
        p.grad = torch.full((3,), scale, dtype=torch.float16)  # gradient 1, scaled
        f([p], [m], lr, scale)
    expected = torch.ones(3) - 100 * lr
    what = "100 calls of master_weights_step with updates of 1e-4 on a weight of 1.0 (FP16 spacing there: 2**-10)"
    expect_close(m, expected, f"{what}: the FP32 master", atol=1e-5, rtol=0)
    expect_true(float(p[0]) < 1.0, f"{what}: the FP16 weight is still {float(p[0])} — updates smaller than half a spacing "
                "must accumulate in the FP32 master, not in the FP16 weight")
    expect_close(p, expected.half(), f"{what}: the FP16 weight (the master rounded)", atol=0, rtol=0)


register(Exercise(
    id="11.master_weights_step",
    points=3,
    signature="master_weights_step(params: list of FP16/BF16 tensors with .grad, masters: list of FP32 tensors, lr, scale) -> bool",
    hint="gradients to FP32 and divided by scale first; check them all before changing anything; update the masters in "
         "FP32, then copy each master into its parameter (in place, under torch.no_grad()).",
    minutes=15,
    hints=(
        "Mixed-precision training keeps an FP32 master copy of every weight: tiny updates (lr * grad) that would "
        "vanish when added to an FP16 weight survive in FP32. The half-precision parameters are a rounded copy used "
        "for the forward and backward.",
        "Under torch.no_grad(): unscale every gradient in FP32 (to float, then divide by scale). If any of them has an "
        "inf or a NaN, change nothing and return False (the scaler will lower the scale). Otherwise update each master "
        "by -lr * grad, copy each master into its parameter in place (copy_ rounds it), and return True.",
        "with torch.no_grad():\n    grads = ...  # FP32, unscaled\n    if ...:  # any non-finite entry\n"
        "        return False\n    for p, m, g in ...:\n        ...  # update the master, then copy it into p\n"
        "return True",
    ),
    checks=(
        Check("one step: FP32 master update, parameter = rounded master (FP16 and BF16)", _ms_one),
        Check("an inf gradient skips the step and changes nothing", _ms_skip),
        Check("tiny updates accumulate in the master and reach the FP16 weight", _ms_accumulate),
    ),
    reference="lmlab.train.loss_scaling:master_weights_step",
))
