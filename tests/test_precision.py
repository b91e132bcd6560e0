"""lmlab.train.precision and lmlab.train.loss_scaling against torch: bit patterns, rounding, finfo, GradScaler, master weights."""

import math
import random

import pytest
import torch

from lmlab.train.loss_scaling import (DynamicLossScaler, MasterWeights, gradscaler_trajectory, master_weights_step,
                                scaler_trajectory, update_scale)
from lmlab.train.precision import (FORMATS, autocast_report, decode, decode_fp16, encode, format_info, fp32_to_bf16_bits,
                             quantize, torch_bits)

TORCH_FORMATS = [n for n, f in FORMATS.items() if f.torch_dtype is not None and n != "fp32"]


def _same(a, b):
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_every_pattern_decodes_as_torch(name):
    f = FORMATS[name]
    pats = torch.arange(2**f.bits)
    as_int = torch.int16 if f.bits == 16 else torch.uint8
    theirs = pats.to(as_int).view(f.torch_dtype).double()
    ours = decode(pats, name)
    assert _same(ours, theirs)
    assert torch.equal(torch.signbit(ours[~torch.isnan(ours)]), torch.signbit(theirs[~torch.isnan(theirs)]))  # -0.0 too
    assert torch.equal(torch_bits(theirs.to(f.torch_dtype)), torch.where(torch.isnan(theirs), torch_bits(theirs.to(f.torch_dtype)), pats))


def _sample(f, n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = decode(torch.arange(2**f.bits), f) if f.bits <= 16 else torch.tensor([])
    finite = grid[torch.isfinite(grid)].sort().values
    return torch.cat([torch.randn(n, generator=g) * torch.exp2(torch.randint(-150, 128, (n,), generator=g).float()),
                      finite.float(), ((finite[1:] + finite[:-1]) / 2).float(),  # every value and every tie
                      torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, 3.4e38, -1e-45])])


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_encode_and_quantize_equal_torch_conversion(name):
    f = FORMATS[name]
    x = _sample(f)
    theirs = decode(torch_bits(x.to(f.torch_dtype)), name)
    assert _same(decode(encode(x, name), name), theirs)
    assert _same(quantize(x, name).double(), theirs)  # fast FP32 path
    assert _same(quantize(x.double(), name), theirs)  # FP64 path
    assert torch.equal(torch.signbit(quantize(x, name)[x == 0]), torch.signbit(x[x == 0]))


def test_encode_fp32_is_the_bit_view_and_scalars_work():
    x = torch.randn(1000) * 1e30
    assert torch.equal(encode(x, "fp32"), x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF)
    assert encode(1.0, "fp16") == 0x3C00 and decode(0x3C00, "fp16") == 1.0
    assert encode(1 + 2**-11, "fp16") == 0x3C00  # a tie: rounds to the even mantissa
    assert encode(1 + 3 * 2**-11, "fp16") == 0x3C02  # a tie with an odd last bit: rounds up
    assert encode(65520.0, "fp16") == 0x7C00 and encode(65519.0, "fp16") == 0x7BFF  # overflow threshold
    assert encode(2.0**-25, "fp16") == 0 and encode(2.0**-25 * 1.0001, "fp16") == 1  # half the smallest subnormal


def test_tf32_is_nearest_19_bit_value():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20_000, generator=g) * torch.exp2(torch.randint(-120, 120, (20_000,), generator=g).float())
    q = quantize(x, "tf32")
    assert torch.equal(q.view(torch.int32) & 0x1FFF, torch.zeros_like(x, dtype=torch.int32))  # 10 mantissa bits left
    up = (q.view(torch.int32) + 0x2000).view(torch.float32)
    down = (q.view(torch.int32) - 0x2000).view(torch.float32)
    err = (q.double() - x.double()).abs()
    assert (err <= (up.double() - x.double()).abs()).all() and (err <= (down.double() - x.double()).abs()).all()
    assert _same(decode(encode(x, "tf32"), "tf32"), q.double())


def test_format_info_equals_finfo_and_reference_numbers():
    for name in ("fp32", *TORCH_FORMATS):
        ours, t = format_info(name), torch.finfo(FORMATS[name].torch_dtype)
        assert (ours["max"], ours["smallest_normal"], ours["eps"], ours["bits"]) == (t.max, t.smallest_normal, t.eps, t.bits)
        smallest = torch.tensor([1], dtype=torch.int32).to(torch.int16 if t.bits == 16 else (torch.uint8 if t.bits == 8 else torch.int32))
        assert ours["smallest_subnormal"] == float(smallest.view(FORMATS[name].torch_dtype)[0])
    fp16, bf16 = format_info("fp16"), format_info("bf16")
    assert fp16["max"] == 65504 and f"{fp16['smallest_normal']:.3g}" == "6.1e-05" and f"{fp16['smallest_subnormal']:.3g}" == "5.96e-08"
    assert f"{bf16['max']:.3g}" == "3.39e+38" and f"{bf16['smallest_normal']:.3g}" == "1.18e-38" and bf16["eps"] == 2**-7
    assert f"{bf16['smallest_subnormal']:.2g}" == "9.2e-41"


def test_exercise_references_equal_torch():
    pats = range(0, 2**16, 7)
    table = torch.arange(2**16).to(torch.int16).view(torch.float16).tolist()
    assert all((decode_fp16(b) == table[b]) or (math.isnan(decode_fp16(b)) and math.isnan(table[b])) for b in pats)
    x = _sample(FORMATS["bf16"], n=20_000)
    assert _same(decode(fp32_to_bf16_bits(x), "bf16"), x.to(torch.bfloat16).double())


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="fmt"):
        decode(0, "fp12")
    with pytest.raises(ValueError, match="bits"):
        decode(70000, "fp16")
    with pytest.raises(ValueError, match="bits"):
        decode(-1, "bf16")
    with pytest.raises(ValueError, match="bits"):
        decode(torch.tensor([1.5]), "fp16")
    with pytest.raises(ValueError, match="x"):
        encode(torch.tensor([1, 2]), "fp16")
    with pytest.raises(ValueError, match="bits"):
        decode_fp16(65536)
    for kw, name in ((dict(init_scale=0.0), "init_scale"), (dict(init_scale=-2.0), "init_scale"),
                     (dict(growth_factor=1.0), "growth_factor"), (dict(backoff_factor=1.0), "backoff_factor"),
                     (dict(backoff_factor=0.0), "backoff_factor"), (dict(growth_interval=0), "growth_interval")):
        with pytest.raises(ValueError, match=name):
            DynamicLossScaler(**kw)


@pytest.mark.parametrize("kw", [dict(), dict(init_scale=1024.0, growth_interval=3),
                                dict(init_scale=3.3, growth_factor=1.7, backoff_factor=0.3, growth_interval=2),
                                dict(init_scale=3e38, growth_factor=4.0, growth_interval=1)])
def test_dynamic_loss_scaler_equals_gradscaler(kw):
    rnd = random.Random(0)
    script = [rnd.random() < 0.25 for _ in range(80)]
    ours, theirs = scaler_trajectory(script, **kw), gradscaler_trajectory(script, **kw)
    assert ours == theirs  # scales (FP32, exactly) and skipped steps
    assert theirs["skipped"] == [i for i, bad in enumerate(script) if bad]


def test_gradscaler_defaults_and_update_rule():
    s = DynamicLossScaler()
    assert (s.scale, s.growth_factor, s.backoff_factor, s.growth_interval) == (65536.0, 2.0, 0.5, 2000)
    g = torch.amp.GradScaler("cpu")
    assert (g.get_scale(), g.get_growth_factor(), g.get_backoff_factor(), g.get_growth_interval()) == (65536.0, 2.0, 0.5, 2000)
    assert update_scale(65536.0, 1999, False) == (131072.0, 0)
    assert update_scale(65536.0, 1999, True) == (32768.0, 0)
    assert update_scale(3e38, 0, False, growth_factor=4.0, growth_interval=1) == (3e38, 0)  # growth to inf is refused


def test_scaler_step_skips_and_unscales():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    s = DynamicLossScaler(init_scale=8.0)
    s.scale_loss((p * 2).sum()).backward()
    assert torch.equal(p.grad, torch.full((3,), 16.0))
    assert s.step(opt) and torch.equal(p.detach(), torch.zeros(3))  # unscaled grad 2, lr 0.5
    p.grad = torch.tensor([1.0, math.inf, 0.0])
    assert not s.step(opt) and torch.equal(p.detach(), torch.zeros(3)) and s.scale == 4.0 and s.skipped == [1]


def test_master_weights_keep_tiny_updates_and_count_16_bytes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8).half()
    with torch.no_grad():
        lin.weight.fill_(1.0)
    mw = MasterWeights(lin.parameters(), lambda ps: torch.optim.SGD(ps, lr=1e-4))
    for _ in range(50):
        for p in lin.parameters():
            p.grad = torch.ones_like(p)
        assert mw.step()
    assert torch.allclose(mw.master[0], torch.full((8, 8), 1 - 50e-4), atol=1e-6)  # FP32 master moved
    assert float(lin.weight.detach()[0, 0]) == float(torch.tensor(1 - 50e-4).half())  # and the FP16 weight followed
    pure = torch.ones(4, dtype=torch.float16)
    for _ in range(50):
        pure -= 1e-4  # the same updates on FP16 weights: each rounds away (half the spacing below 1 is 2**-12)
    assert torch.equal(pure, torch.ones(4, dtype=torch.float16))
    adam = MasterWeights(torch.nn.Linear(16, 4).half().parameters())
    for p in adam.params:
        p.grad = torch.ones_like(p)
    adam.step()
    b = adam.bytes_per_parameter()
    assert (b["weights"], b["grads"], b["master"], b["optimizer_state"], b["total"]) == (2, 2, 4, 8, 16)


def test_master_weights_with_scaler_skips_on_inf():
    lin = torch.nn.Linear(4, 2).half()
    mw = MasterWeights(lin.parameters(), scaler=DynamicLossScaler(init_scale=4.0))
    before = [p.detach().clone() for p in lin.parameters()]
    for p in lin.parameters():
        p.grad = torch.full_like(p, math.inf)
    assert not mw.step() and mw.scaler.scale == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))


def test_master_weights_step_reference():
    p = torch.ones(3, dtype=torch.float16)
    m = p.float()
    p.grad = torch.full((3,), 512.0, dtype=torch.float16)
    assert master_weights_step([p], [m], 1e-4, 512.0)
    assert torch.allclose(m, torch.full((3,), 1 - 1e-4)) and torch.equal(p, torch.ones(3, dtype=torch.float16))
    p.grad[0] = math.inf
    assert not master_weights_step([p], [m], 1e-4, 512.0) and torch.allclose(m, torch.full((3,), 1 - 1e-4))


def test_autocast_report_cpu():
    from lmlab.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, context_length=8, d_model=32, n_layers=1, n_heads=2, norm="rmsnorm"))
    idx = torch.randint(32, (2, 8))
    rep = autocast_report(model, idx, idx, "cpu", torch.bfloat16)
    assert rep["loss"] == "float32" and rep["modules"]["Linear"] == ["bfloat16"]
    assert "bfloat16" in rep["forward"]["addmm"] or "bfloat16" in rep["forward"]["mm"]
    assert rep["forward"]["_log_softmax"] == ["float32"]
    assert any("bfloat16" in v for v in rep["backward"].values())
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="device_type"):
        autocast_report(model, idx, idx, "tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_autocast_report_cuda_layernorm_fp32():
    ln = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 16)).cuda()
    idx = torch.randint(16, (2, 4), device="cuda")
    rep = autocast_report(ln, idx, idx, "cuda", torch.bfloat16)
    assert rep["modules"]["LayerNorm"] == ["float32"] and rep["modules"]["Linear"] == ["bfloat16"]
