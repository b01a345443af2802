"""`--weight-format native`: the release's own encodings carried into the IR, bit for bit.

    release FP4 routed experts  I8 [O, K/2] + E8M0 [O, K/32]   -> Constant f4e2m1 [O, K/32, 32] and
                                                                  Constant f8e8m0 [O, K/32, 1], each Convert
                                                                  to f32, Multiply, Reshape [O, K]
                                                                  (the layout NNCF's MXFP4 writes)
    release FP8 linears         F8_E4M3 [O, K] + E8M0 128x128  -> Constant f8e4m3 [O, K/g, g] and the block
                                                                  scale repeated per row, f8e8m0 [O, K/g, 1]
                                                                  (g = gcd(K, 128); 128 for every V4-Flash
                                                                  tensor), same Convert/Multiply/Reshape
    release BF16                                               -> f16 Constant + Convert when every value
                                                                  is exact in f16, else a bf16 Constant +
                                                                  Convert (both bit-exact)
    release F32, vectors, computed constants                   -> left as traced (f32)

The codes come from the checkpoint itself, not from re-quantising: `compress/weights.py` binds the traced
weight inputs to these subgraphs, so no FP32 copy of the weight is ever made; the tests check that each
decompresses to exactly the port's dequantised weight. Decompression is in f32 (an E8M0 scale can leave
f16's range).

OpenVINO CPU 2026.4 keeps the f4e2m1 experts compressed at run time (FullyConnected reads the f4e2m1
constant). f8e4m3 weights are expanded to f32 at compile time on CPUs without FP8 hardware support (seen
on this AMD EPYC host); the IR keeps them as f8e4m3.
"""

from __future__ import annotations

import math

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from deepseek_v4_ov.checkpoint import quant


def _const(codes: np.ndarray, etype: ov.Type, shape: list[int], name: str):
    """A Constant of a sub-byte/8-bit element type holding `codes` (uint8 bytes, packed as OpenVINO packs)."""
    t = ov.Tensor(etype, ov.Shape(shape))
    dst = np.asarray(t.data).view(np.uint8).reshape(-1)
    src = np.ascontiguousarray(codes).view(np.uint8).reshape(-1)
    if dst.size != src.size:
        raise ValueError(f"{name}: {src.size} bytes for {etype} {shape}, expected {dst.size}")
    dst[:] = src
    c = ops.constant(t)
    c.set_friendly_name(name)
    return c


def _decompress(weight, scale, out_shape: tuple[int, ...], name: str):
    w = ops.convert(weight, ov.Type.f32)
    s = ops.convert(scale, ov.Type.f32)
    mul = ops.multiply(w, s)
    mul.set_friendly_name(f"{name}/decompress")
    return ops.reshape(mul, ops.constant(np.array(out_shape, dtype=np.int64)), False)


def fp4_subgraph(q: torch.Tensor, s: torch.Tensor, name: str):
    """Decompression subgraph [O, K] f32 from release FP4 codes (I8 [O, K/2]) and E8M0 scales [O, K/32]."""
    rows, half = q.shape
    cols = 2 * half
    g = quant.FP4_GROUP
    w = _const(q.contiguous().view(torch.uint8).numpy(), ov.Type.f4e2m1, [rows, cols // g, g], name)
    sc = _const(s.contiguous().view(torch.uint8).numpy(), ov.Type.f8e8m0, [rows, cols // g, 1], f"{name}/scale")
    return _decompress(w, sc, (rows, cols), name)


def fp8_subgraph(q: torch.Tensor, s: torch.Tensor, name: str):
    """Decompression subgraph [O, K] f32 from release FP8 codes [O, K] and E8M0 128x128 block scales."""
    rows, cols = q.shape
    blk = quant.FP8_BLOCK
    g = math.gcd(cols, blk)
    s8 = s.contiguous().view(torch.uint8)
    per_row = s8.repeat_interleave(blk, 0)[:rows]  # [O, ceil(K/128)]
    per_group = per_row.repeat_interleave(blk // g, 1)[:, : cols // g]  # [O, K/g]
    w = _const(q.contiguous().view(torch.uint8).numpy(), ov.Type.f8e4m3, [rows, cols // g, g], name)
    sc = _const(per_group.contiguous().numpy(), ov.Type.f8e8m0, [rows, cols // g, 1], f"{name}/scale")
    return _decompress(w, sc, (rows, cols), name)


_CHUNK = 1 << 22  # elements per step of the f16/bf16 conversion (bounded temporaries)


def half_constant(values: torch.Tensor, name: str):
    """A BF16-valued matrix (a bf16 or f32 tensor) as f16 (when every value is exact in f16) or bf16, with a
    Convert back to f32. Works in chunks, so no f32 copy of the whole matrix is made."""
    flat_t = values.reshape(-1)
    shape = list(values.shape)
    step = _CHUNK

    def chunks():
        for i in range(0, flat_t.numel(), step):
            yield i, flat_t[i:i + step].to(torch.float32).numpy()

    exact16 = all(np.array_equal(c.astype(np.float16).astype(np.float32), c, equal_nan=True) for _, c in chunks())
    if not exact16 and any(np.any(c.view(np.uint32) & 0xFFFF) for _, c in chunks()):
        raise ValueError(f"{name}: values are not BF16, cannot store them as bf16 losslessly")
    t = ov.Tensor(ov.Type.f16 if exact16 else ov.Type.bf16, ov.Shape(shape))
    dst = np.asarray(t.data).view(np.uint16).reshape(-1)
    for i, chunk in chunks():
        dst[i:i + chunk.size] = chunk.astype(np.float16).view(np.uint16) if exact16 else chunk.view(np.uint32) >> 16
    c = ops.constant(t)
    c.set_friendly_name(name)
    conv = ops.convert(c, ov.Type.f32)
    conv.get_rt_info()["decompression"] = ""
    return conv


def stacked_fp4_subgraph(qs: list[torch.Tensor], ss: list[torch.Tensor], shape: tuple[int, ...], name: str):
    """Decompression subgraph [E, out, in] f32 of routed experts stacked from their release FP4 codes (one
    I8/U8 [out, in/2] and one E8M0 [out, in/32] per expert): f4e2m1 [E, out, in/32, 32] and f8e8m0
    [E, out, in/32, 1], the layout `fp4_subgraph` writes for one matrix."""
    experts, rows, cols = shape
    g = quant.FP4_GROUP
    w = _const(torch.stack(qs).numpy(), ov.Type.f4e2m1, [experts, rows, cols // g, g], name)
    sc = _const(torch.stack(ss).numpy(), ov.Type.f8e8m0, [experts, rows, cols // g, 1], f"{name}/scale")
    return _decompress(w, sc, shape, name)


def check_native_options(group_size=None, sym=None, ratio=None, backup_precision=None, all_layers=False, awq=False,
                         group_size_fallback=None, head_precision=None) -> None:
    """`native` takes none of the NNCF compression options; raise ValueError naming the first one given."""
    given = {"--group-size": group_size is not None, "--sym": sym is True, "--asym": sym is False, "--ratio": ratio is not None,
             "--backup-precision": backup_precision is not None, "--all-layers": all_layers, "--awq": awq,
             "--group-size-fallback": group_size_fallback is not None,
             "--head-precision": head_precision is not None}
    bad = [k for k, v in given.items() if v]
    if bad:
        raise ValueError(f"{bad[0]} does not apply to --weight-format native (the release's own encodings are kept)")
