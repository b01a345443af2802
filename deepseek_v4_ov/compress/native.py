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

The codes come from the checkpoint itself (`CheckpointReader`), not from re-quantising, and each weight's
decompressed value is checked bit for bit against the traced FP32 constant (the exact dequantisation the
port ran with) before it is replaced. Decompression is in f32 (an E8M0 scale can leave f16's range).

OpenVINO CPU 2026.4 keeps the f4e2m1 experts compressed at run time (FullyConnected reads the f4e2m1
constant). f8e4m3 weights are expanded to f32 at compile time on CPUs without FP8 hardware support (seen
on this AMD EPYC host); the IR keeps them as f8e4m3.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from deepseek_v4_ov.checkpoint import quant
from deepseek_v4_ov.checkpoint.layout import CheckpointError, CheckpointReader
from deepseek_v4_ov.checkpoint.release import BF16, FP4, FP8, scale_name, storage_class

NATIVE = "native"
_NAME_RE = re.compile(r"^self\.(?:model\.)?(.+)$")


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


def half_constant(values: np.ndarray, name: str):
    """A BF16-valued f32 matrix as f16 (when every value is exact in f16) or bf16, with a Convert back to
    f32. Works in row chunks, so the temporaries stay small next to the matrix."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    shape = list(np.shape(values))
    step = _CHUNK
    exact16 = all(np.array_equal(flat[i:i + step].astype(np.float16).astype(np.float32), flat[i:i + step],
                                 equal_nan=True) for i in range(0, flat.size, step))
    if not exact16:
        for i in range(0, flat.size, step):
            if np.any(flat[i:i + step].view(np.uint32) & 0xFFFF):
                raise ValueError(f"{name}: values are not BF16, cannot store them as bf16 losslessly")
    t = ov.Tensor(ov.Type.f16 if exact16 else ov.Type.bf16, ov.Shape(shape))
    dst = np.asarray(t.data).view(np.uint16).reshape(-1)
    for i in range(0, flat.size, step):
        chunk = flat[i:i + step]
        dst[i:i + chunk.size] = chunk.astype(np.float16).view(np.uint16) if exact16 else chunk.view(np.uint32) >> 16
    c = ops.constant(t)
    c.set_friendly_name(name)
    conv = ops.convert(c, ov.Type.f32)
    conv.get_rt_info()["decompression"] = ""
    return conv


def _replace(const, new_output) -> None:
    for target in list(const.output(0).get_target_inputs()):
        target.replace_source_output(new_output.output(0))


def nativize(ov_model: ov.Model, source: str | Path | CheckpointReader, verify: bool = True) -> dict[str, int]:
    """Replace, in place, every traced weight constant `self.model.<official name>` of release class FP4 /
    FP8 by its checkpoint encoding (see the module docstring) and every BF16-class weight matrix by f16/bf16.
    Returns counts per class. With `verify`, each replacement is checked bit for bit against the constant
    it replaces (a mismatch raises CheckpointError naming the tensor)."""
    reader = source if isinstance(source, CheckpointReader) else CheckpointReader(Path(source))
    counts = {FP4: 0, FP8: 0, BF16: 0}
    for op in list(ov_model.get_ops()):
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32:
            continue
        m = _NAME_RE.match(op.get_friendly_name())
        if not m:
            continue
        name = m.group(1)
        kind = storage_class(name)
        if kind in (FP4, FP8):
            q, s = reader.get(name), reader.get(scale_name(name))
            if verify:
                ref = (quant.dequantize_fp4 if kind == FP4 else quant.dequantize_fp8)(q, s).numpy()
                got = op.get_data()
                if ref.shape != got.shape or not np.array_equal(ref.view(np.uint32), got.view(np.uint32)):
                    raise CheckpointError(f"{reader.folder / reader.weight_map[name]}: tensor {name!r}: the traced "
                                          "weight is not the exact dequantisation of its checkpoint codes")
                del ref, got
            sub = (fp4_subgraph if kind == FP4 else fp8_subgraph)(q, s, op.get_friendly_name())
            _replace(op, sub)
            counts[kind] += 1
    ov_model.validate_nodes_and_infer_types()
    counts[FP4] += _nativize_stacked(ov_model, reader, verify)
    # BF16 matrices, including those the frontend renamed after a `.float()` (resolved by module path)
    from deepseek_v4_ov.compress.policy import weight_constants

    for wc in weight_constants(ov_model):
        node = wc.node
        if wc.part != "weight" or wc.name is None or node.get_output_element_type(0) != ov.Type.f32:
            continue
        shape = tuple(node.get_output_partial_shape(0).to_shape())
        if storage_class(wc.name) == BF16 and len([d for d in shape if d != 1]) >= 2:
            _replace(node, half_constant(node.get_data(), node.get_friendly_name()))
            counts[BF16] += 1
    ov_model.validate_nodes_and_infer_types()
    return counts


__all__ = ["NATIVE", "check_native_options", "nativize", "fp4_subgraph", "fp8_subgraph", "half_constant"]


_STACKED_RE = re.compile(r"^((?:layers|mtp)\.\d+\.ffn)\.experts\.0\.w1\.weight$")


def _nativize_stacked(ov_model: ov.Model, reader: CheckpointReader, verify: bool) -> int:
    """Routed experts traced as one stacked constant `[E, out, in]` per projection (the MoE's
    grouped form, GroupedMatMul): identify w1 / w3 / w2 by value (expert 0 against the checkpoint), then replace the
    constant by f4e2m1 `[E, out, in/32, 32]` + f8e8m0 `[E, out, in/32, 1]` stacked from the checkpoint."""
    from deepseek_v4_ov.compress.policy import weight_constants

    done = 0
    for wc in weight_constants(ov_model):
        node = wc.node
        shape = tuple(node.get_output_partial_shape(0).to_shape())
        if (wc.part != "weight" or wc.name is None or len(shape) != 3
                or node.get_output_element_type(0) != ov.Type.f32):
            continue
        m = _STACKED_RE.match(wc.name)
        if not m:
            continue
        ffn, experts = m.group(1), shape[0]
        data = node.get_data()
        proj = None
        for cand in ("w1", "w3", "w2"):
            name = f"{ffn}.experts.0.{cand}.weight"
            q, s = reader.get(name), reader.get(scale_name(name))
            if (2 * q.shape[1], q.shape[0]) != (shape[2], shape[1]):
                continue
            ref = quant.dequantize_fp4(q, s).numpy()
            if np.array_equal(ref.view(np.uint32), data[0].view(np.uint32)):
                proj = cand
                break
        if proj is None:
            raise CheckpointError(f"{reader.folder}: stacked routed-expert constant {node.get_friendly_name()} "
                                  f"{list(shape)} of {ffn} matches none of w1/w3/w2 of expert 0 exactly")
        names = [f"{ffn}.experts.{e}.{proj}.weight" for e in range(experts)]
        qs, ss = [], []
        for e, name in enumerate(names):
            q, s = reader.get(name), reader.get(scale_name(name))
            if verify and e:
                ref = quant.dequantize_fp4(q, s).numpy()
                if not np.array_equal(ref.view(np.uint32), data[e].view(np.uint32)):
                    raise CheckpointError(f"{reader.folder / reader.weight_map[name]}: tensor {name!r}: the traced "
                                          "weight is not the exact dequantisation of its checkpoint codes")
            qs.append(q.view(torch.uint8))
            ss.append(s.view(torch.uint8))
        rows, cols = shape[1], shape[2]
        g = quant.FP4_GROUP
        label = f"self.model.{ffn}.experts.{proj}.weight"
        w = _const(torch.stack(qs).numpy(), ov.Type.f4e2m1, [experts, rows, cols // g, g], label)
        sc = _const(torch.stack(ss).numpy(), ov.Type.f8e8m0, [experts, rows, cols // g, 1], f"{label}/scale")
        del qs, ss, data
        _replace(node, _decompress(w, sc, shape, label))
        done += experts
    ov_model.validate_nodes_and_infer_types()
    return done


def check_native_options(group_size=None, sym=False, ratio=None, backup_precision=None, all_layers=False, awq=False,
                         group_size_fallback=None) -> None:
    """`native` takes none of the NNCF compression options; raise ValueError naming the first one given."""
    given = {"--group-size": group_size is not None, "--sym": sym, "--ratio": ratio is not None,
             "--backup-precision": backup_precision is not None, "--all-layers": all_layers, "--awq": awq,
             "--group-size-fallback": group_size_fallback is not None}
    bad = [k for k, v in given.items() if v]
    if bad:
        raise ValueError(f"{bad[0]} does not apply to --weight-format native (the release's own encodings are kept)")
