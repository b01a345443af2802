"""Exact FP8 / FP4 dequantisation of the DeepSeek-V4 release, and the matching quantisers.

Storage (spec section 6):
* E8M0 scale byte b means 2^(b-127); b = 255 is NaN.
* FP8 e4m3 weight `[O, K]` with one scale per 128x128 block, scale `[ceil(O/128), ceil(K/128)]`
  (edge blocks may be partial).
* FP4 e2m1 weight packed two per byte into I8 `[O, K/2]` (low nibble = even column, high nibble = odd
  column; bit 3 of a nibble is the sign), one scale per 32 inputs, scale `[O, K/32]`.

Dequantisation runs in FP32 and is exact: a code has at most 4 significant bits and a scale is a power of
two, so the product is representable unless it overflows FP32 (only for b >= 248 with large FP8 codes, where
it gives inf like any exact computation rounded to FP32).

The quantisers (used to write synthetic release checkpoints) choose the scale exponent
ceil(log2(amax / max_code)) per block, as the official kernels do, and round to the nearest grid value,
ties to the even code.
"""

from __future__ import annotations

import torch

FP8_BLOCK = 128
FP4_GROUP = 32
FP8_MAX = 448.0
FP4_MAX = 6.0

# Value of every FP8 e4m3fn code (torch's cast is the reference decoder; code 0x7F/0xFF is NaN).
FP8_VALUES = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
# Value of every FP4 e2m1 nibble: magnitudes from the spec, bit 3 is the sign (code 8 is -0).
_FP4_MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
FP4_VALUES = torch.tensor(_FP4_MAGNITUDES + [-m for m in _FP4_MAGNITUDES], dtype=torch.float32)


def _e8m0_table() -> torch.Tensor:
    """2^(b-127) for every byte b, built from FP32 bit patterns (exact, including the subnormal 2^-127)."""
    bits = torch.arange(256, dtype=torch.int32) << 23  # exponent field b, mantissa 0 -> 2^(b-127)
    bits[0] = 1 << 22  # 2^-127 is the FP32 subnormal with the top mantissa bit set
    bits[255] = 0x7FC00000  # NaN
    return bits.view(torch.float32)


E8M0_VALUES = _e8m0_table()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a one-byte tensor (F8_E4M3, F8_E8M0, I8 or U8) as int64 indices."""
    if t.element_size() != 1:
        raise ValueError(f"expected a one-byte dtype, got {t.dtype}")
    return t.view(torch.uint8).long()


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """E8M0 scale bytes -> FP32 powers of two (NaN for the byte 255)."""
    return E8M0_VALUES[_bytes(scale)]


def _expand_blocks(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    rows, cols = shape
    return scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP8 e4m3 `[O, K]` with E8M0 128x128 block scales `[ceil(O/128), ceil(K/128)]` -> FP32 `[O, K]`."""
    if weight.dim() != 2:
        raise ValueError(f"FP8 weight must be 2-D, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    expected = (-(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK))
    if tuple(scale.shape) != expected:
        raise ValueError(
            f"FP8 weight {list(weight.shape)} needs a scale of shape {list(expected)}, got {list(scale.shape)}"
        )
    values = FP8_VALUES[_bytes(weight)]
    return values * _expand_blocks(e8m0_to_float(scale), (rows, cols), (FP8_BLOCK, FP8_BLOCK))


def dequantize_fp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP4 e2m1 packed as I8 `[O, K/2]` with E8M0 per-32 scales `[O, K/32]` -> FP32 `[O, K]`."""
    if packed.dim() != 2:
        raise ValueError(f"packed FP4 weight must be 2-D, got shape {list(packed.shape)}")
    rows, cols = packed.shape[0], packed.shape[1] * 2
    if cols % FP4_GROUP or tuple(scale.shape) != (rows, cols // FP4_GROUP):
        raise ValueError(
            f"packed FP4 weight {list(packed.shape)} (K={cols}) needs K divisible by {FP4_GROUP} and a scale of "
            f"shape {[rows, cols // FP4_GROUP]}, got {list(scale.shape)}"
        )
    u = _bytes(packed)
    codes = torch.stack((u & 0xF, u >> 4), dim=-1).reshape(rows, cols)  # low nibble first
    return FP4_VALUES[codes] * e8m0_to_float(scale).repeat_interleave(FP4_GROUP, 1)


# ------------------------------------------------------------------------------------------------------
# Quantisers
# ------------------------------------------------------------------------------------------------------
def round_to_grid(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of `grid` (sorted magnitudes, index = code) for |x|, ties to the even
    index, saturating at the largest entry. Distances are compared in FP64, where they are exact."""
    a = x.abs().double()
    g = grid.double()
    hi = torch.searchsorted(g, a).clamp(max=len(g) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - g[lo], g[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    return torch.where(pick_hi, hi, lo)


def _exponents(amax: torch.Tensor, max_code: float) -> torch.Tensor:
    """ceil(log2(amax / max_code)), computed exactly with frexp and kept in the E8M0 range."""
    ratio = amax.float().clamp(min=torch.finfo(torch.float32).tiny) / max_code
    mantissa, exponent = torch.frexp(ratio)  # ratio = mantissa * 2^exponent, mantissa in [0.5, 1)
    return torch.where(mantissa == 0.5, exponent - 1, exponent).clamp(-127, 127)


def _e8m0_bytes(exp: torch.Tensor) -> torch.Tensor:
    return (exp + 127).to(torch.uint8).view(torch.float8_e8m0fnu)


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP32 `[O, K]` -> (F8_E4M3 `[O, K]`, F8_E8M0 `[ceil(O/128), ceil(K/128)]`)."""
    w = w.float()
    rows, cols = w.shape
    br, bc = -(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)
    padded = torch.zeros(br * FP8_BLOCK, bc * FP8_BLOCK)
    padded[:rows, :cols] = w.abs()
    amax = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK).amax(dim=(1, 3))
    exp = _exponents(amax, FP8_MAX)
    scaled = w * _expand_blocks(E8M0_VALUES[(127 - exp).long()], (rows, cols), (FP8_BLOCK, FP8_BLOCK))
    magnitudes = FP8_VALUES[:127]  # codes 0..126: the finite non-negative values, increasing
    codes = round_to_grid(scaled, magnitudes) | (torch.signbit(scaled).long() << 7)
    return codes.to(torch.uint8).view(torch.float8_e4m3fn), _e8m0_bytes(exp)


def quantize_fp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP32 `[O, K]` (K divisible by 32) -> (I8 `[O, K/2]` packed e2m1, F8_E8M0 `[O, K/32]`)."""
    w = w.float()
    rows, cols = w.shape
    if cols % FP4_GROUP:
        raise ValueError(f"FP4 needs the input dimension divisible by {FP4_GROUP}, got {cols}")
    amax = w.abs().view(rows, cols // FP4_GROUP, FP4_GROUP).amax(dim=2)
    exp = _exponents(amax, FP4_MAX)
    scaled = w * E8M0_VALUES[(127 - exp).long()].repeat_interleave(FP4_GROUP, 1)
    codes = round_to_grid(scaled, FP4_VALUES[:8]) | (torch.signbit(scaled).long() << 3)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.to(torch.uint8).view(torch.int8), _e8m0_bytes(exp)
