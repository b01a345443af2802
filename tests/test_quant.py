"""Bit-exact tests of deepseek_v4_ov.checkpoint.quant against references written independently here: the FP8 and FP4
value tables come from the bit layouts by formula, E8M0 from math.ldexp, products in Python/FP64."""

from __future__ import annotations

import math

import pytest
import torch

from deepseek_v4_ov.checkpoint import quant


# ------------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------------
def ref_fp8(code: int) -> float:
    """e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; S.1111.111 is NaN; no infinities."""
    sign = -1.0 if code & 0x80 else 1.0
    exp, man = (code >> 3) & 0xF, code & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    if exp == 0:
        return sign * man / 8 * 2.0**-6
    return sign * (1 + man / 8) * 2.0 ** (exp - 7)


def ref_fp4(code: int) -> float:
    """e2m1: 1 sign, 2 exponent (bias 1), 1 mantissa bit."""
    sign = -1.0 if code & 0x8 else 1.0
    exp, man = (code >> 1) & 0x3, code & 0x1
    if exp == 0:
        return sign * man * 0.5
    return sign * (1 + man / 2) * 2.0 ** (exp - 1)


def ref_e8m0(byte: int) -> float:
    return math.nan if byte == 255 else math.ldexp(1.0, byte - 127)


def same_bits(got: torch.Tensor, want_fp64: torch.Tensor) -> bool:
    """FP32 `got` equals the FP64 reference rounded to FP32, bit for bit (sign of zero included); NaN
    positions must agree."""
    want = want_fp64.float()
    nan = torch.isnan(want)
    if not torch.equal(torch.isnan(got), nan):
        return False
    return torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


def u8(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.uint8)


FP8_REF = torch.tensor([ref_fp8(c) for c in range(256)], dtype=torch.float64)
FP4_REF = torch.tensor([ref_fp4(c) for c in range(16)], dtype=torch.float64)
E8M0_REF = torch.tensor([ref_e8m0(b) for b in range(256)], dtype=torch.float64)
ALL_EXPONENTS = range(255)  # every finite E8M0 byte; the release uses roughly 100..140


# ------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------
def test_tables_match_the_bit_layouts():
    assert FP4_REF[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]  # the spec's list
    assert same_bits(quant.FP8_VALUES, FP8_REF)
    assert same_bits(quant.FP4_VALUES, FP4_REF)
    assert same_bits(quant.E8M0_VALUES, E8M0_REF)
    assert same_bits(quant.e8m0_to_float(u8(range(256)).view(torch.float8_e8m0fnu)), E8M0_REF)
    assert torch.isnan(quant.FP8_VALUES[[0x7F, 0xFF]]).all() and quant.FP8_VALUES[0x7E] == 448


# ------------------------------------------------------------------------------------------------------
# Dequantisation: every code under every exponent
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("byte", ALL_EXPONENTS)
def test_fp8_all_codes_every_exponent(byte):
    weight = u8(range(256)).reshape(2, 128).view(torch.float8_e4m3fn)  # one partial 2x128 block
    got = quant.dequantize_fp8(weight, u8([[byte]]).view(torch.float8_e8m0fnu))
    assert same_bits(got, (FP8_REF * E8M0_REF[byte]).reshape(2, 128))


@pytest.mark.parametrize("byte", ALL_EXPONENTS)
def test_fp4_all_codes_every_exponent(byte):
    packed = u8(range(256)).reshape(2, 128).view(torch.int8)  # every (low, high) nibble pair
    got = quant.dequantize_fp4(packed, u8([[byte] * 8] * 2).view(torch.float8_e8m0fnu))
    want = torch.empty(2, 256, dtype=torch.float64)
    for i in range(2):
        for j in range(128):
            b = 128 * i + j
            want[i, 2 * j] = FP4_REF[b & 0xF] * E8M0_REF[byte]
            want[i, 2 * j + 1] = FP4_REF[b >> 4] * E8M0_REF[byte]
    assert same_bits(got, want)


def test_e8m0_255_is_nan():
    weight = torch.full((4, 32), 0x22, dtype=torch.int8)  # every element 1.0
    got = quant.dequantize_fp4(weight, u8([[255, 127]] * 4).view(torch.float8_e8m0fnu))
    assert torch.isnan(got[:, :32]).all() and (got[:, 32:] == 1).all()


@pytest.mark.parametrize("shape", [(300, 200), (128, 256), (1, 1), (129, 127)])
def test_fp8_random_blocks_with_partial_edges(shape):
    g = torch.Generator().manual_seed(sum(shape))
    rows, cols = shape
    codes = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    scale = torch.randint(100, 141, (-(-rows // 128), -(-cols // 128)), generator=g, dtype=torch.uint8)
    got = quant.dequantize_fp8(codes.view(torch.float8_e4m3fn), scale.view(torch.float8_e8m0fnu))
    i = torch.arange(rows)[:, None] // 128
    j = torch.arange(cols)[None, :] // 128
    want = FP8_REF[codes.long()] * E8M0_REF[scale.long()[i, j]]
    assert same_bits(got, want)


def test_fp4_random_groups():
    g = torch.Generator().manual_seed(4)
    packed = torch.randint(-128, 128, (64, 96), generator=g, dtype=torch.int8)
    scale = torch.randint(100, 141, (64, 6), generator=g, dtype=torch.uint8)
    got = quant.dequantize_fp4(packed, scale.view(torch.float8_e8m0fnu))
    u = packed.view(torch.uint8).long()
    nibbles = torch.empty(64, 192, dtype=torch.long)
    nibbles[:, 0::2], nibbles[:, 1::2] = u % 16, u // 16
    want = FP4_REF[nibbles] * E8M0_REF[scale.long()[:, torch.arange(192) // 32]]
    assert same_bits(got, want)


def test_bad_scale_shapes_are_rejected():
    with pytest.raises(ValueError, match="scale of shape"):
        quant.dequantize_fp8(torch.zeros(129, 4, dtype=torch.float8_e4m3fn), torch.zeros(1, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale of shape"):
        quant.dequantize_fp4(torch.zeros(4, 32, dtype=torch.int8), torch.zeros(4, 1, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------------------
# Quantisers: minimal power-of-two scales, round to nearest (ties to even), exact round trip
# ------------------------------------------------------------------------------------------------------
def ref_exponent(amax: float, max_code: float) -> int:
    """Smallest e with amax / 2^e <= max_code."""
    e = -127
    while amax / 2.0**e > max_code:
        e += 1
    return e


def ref_project(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Nearest finite value of `table` (indexed by code) by brute force; ties go to the even code."""
    finite = ~torch.isnan(table)
    codes = torch.arange(len(table))[finite]
    values = table[finite]
    dist = (x.double()[..., None] - values).abs()
    best = dist.min(-1, keepdim=True).values
    cand = torch.where(dist == best, codes, 10**6)
    even = torch.where(cand % 2 == 0, cand, 10**6).min(-1).values
    chosen = torch.where(even < 10**6, even, cand.min(-1).values)
    return table[chosen]


@pytest.mark.parametrize("shape,spread", [((300, 200), 1.0), ((128, 128), 1e-3), ((129, 257), 50.0)])
def test_fp8_quantize_round_trip_is_grid_projection(shape, spread):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(shape, generator=g) * spread
    w[0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    q, s = quant.quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float8_e8m0fnu
    assert tuple(s.shape) == (-(-shape[0] // 128), -(-shape[1] // 128))
    deq = quant.dequantize_fp8(q, s)
    for bi in range(s.shape[0]):
        for bj in range(s.shape[1]):
            block = w[bi * 128 : (bi + 1) * 128, bj * 128 : (bj + 1) * 128].double()
            e = ref_exponent(block.abs().max().item(), 448.0)
            assert s.view(torch.uint8)[bi, bj].item() == e + 127
            want = ref_project(block / 2.0**e, FP8_REF) * 2.0**e
            got = deq[bi * 128 : (bi + 1) * 128, bj * 128 : (bj + 1) * 128]
            assert torch.equal(got.double().abs(), want.abs())  # -0 vs +0 aside, equal values
    # torch's own RNE cast of the scaled weights gives the same codes
    scale = quant.e8m0_to_float(s).repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    assert torch.equal((w / scale).to(torch.float8_e4m3fn).float(), q.float())


@pytest.mark.parametrize("spread", [1.0, 1e-4, 300.0])
def test_fp4_quantize_round_trip_is_grid_projection(spread):
    g = torch.Generator().manual_seed(11)
    w = torch.randn(48, 160, generator=g) * spread
    q, s = quant.quantize_fp4(w)
    assert q.dtype == torch.int8 and tuple(q.shape) == (48, 80) and tuple(s.shape) == (48, 5)
    deq = quant.dequantize_fp4(q, s)
    blocks = w.double().view(48, 5, 32)
    exps = torch.tensor([[ref_exponent(b.abs().max().item(), 6.0) for b in row] for row in blocks])
    assert torch.equal(s.view(torch.uint8).long(), exps + 127)
    scale = 2.0 ** exps[..., None].double()
    want = (ref_project(blocks / scale, FP4_REF) * scale).view(48, 160)
    assert torch.equal(deq.double(), want)
    assert torch.equal(quant.dequantize_fp4(*quant.quantize_fp4(deq)), deq)  # idempotent on the grid


def test_fp4_ties_go_to_even_codes():
    half_way = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]  # even codes 0, 2, 2, 4, 4, 6, 6
    row = torch.tensor(half_way + [-v for v in half_way] + [6.0] + [0.0] * 17)
    q, s = quant.quantize_fp4(row[None])
    assert s.view(torch.uint8).item() == 127
    assert quant.dequantize_fp4(q, s)[0, :15].tolist() == want + [-v for v in want] + [6.0]
