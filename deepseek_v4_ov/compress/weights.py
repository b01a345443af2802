"""Bind a traced piece's weight Parameters (`convert/pieces.py`) to constants, straight from the checkpoint,
in bounded memory: no FP32 copy of a layer's routed experts ever exists.

    fp32                the FP32 tensor (dequantised exactly from FP8/FP4)
    native              the release's own codes (`compress/native.py`), no FP32 at all
    int8/int4/mxfp4     every weight but the routed experts as FP32 constants (where a traced weight was),
                        then compressed under the precision policy in their own graph
                        (`compress/policy.compress_with`); the routed experts by the exact quantiser
                        (`compress/quantise.py`: NNCF's constants, computed directly on all cores), a few
                        experts at a time dequantised from the checkpoint and quantised into the stack's
                        constants, which get the decompression subgraph NNCF builds for the whole stack
    fp16, --ratio < 1,  the routed experts chunk by chunk: a few experts of one projection at a time as an
    --awq               FP32 constant in a one-op graph (the piece's own GroupedMatMul), compressed by the
                        same call, and the chunks' compressed constants concatenated along the expert axis

Data-free compression works per weight row and group, so chunking the experts gives the constants that
compressing the whole stack at once gives, bit for bit (tests/test_weights.py). `--ratio` below 1 and
`--awq` rank or scale weights across a whole tensor, so there each projection's stack is compressed by NNCF
as one chunk (more memory: one projection's experts in FP32).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import openvino.opset17 as opset17
import torch

from deepseek_v4_ov.checkpoint.release import BF16, FP4, FP8, Checkpoint, scale_name, storage_class
from deepseek_v4_ov.compress.native import fp4_subgraph, fp8_subgraph, half_constant, stacked_fp4_subgraph
from deepseek_v4_ov.compress import quantise
from deepseek_v4_ov.compress.policy import CompressionOptions, compress_with, row_block_name
from deepseek_v4_ov.compress.quantise import QuantisedWeight, scheme_for

_WEIGHT_RE = re.compile(r"^(embed\.|head\.|norm\.|hc_head_|(layers|mtp)\.\d+\.)")
_EXPERTS_RE = re.compile(r"^((?:layers|mtp)\.\d+)\.ffn\.experts\.(w[123])$")
# Routed experts compressed at once in a graph (fp16, --ratio < 1, --awq; FP32 bytes, three projections): a
# layer's whole stack when it is small (toys: one call), else at most an eighth of it and at most 1 GiB, so that the peak stays a fraction
# of one layer's FP32 experts (V4-Flash: 25.8 GB per layer, 1 GiB chunks of 10 experts).
SMALL_LAYER_BYTES, CHUNK_BYTES, CHUNKS_PER_LAYER = 64 << 20, 1 << 30, 8


class ModelWeights:
    """The weights of an in-memory port model by official name (`Checkpoint`'s `tensor` interface)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.state = model.state_dict()

    def tensor(self, name: str) -> torch.Tensor:
        return self.state[name]


def weight_parameters(ov_model: ov.Model) -> dict[str, ov.Node]:
    """The traced piece's weight inputs by official name (stacked experts: `layers.N.ffn.experts.wK`)."""
    return {p.get_friendly_name(): p for p in ov_model.get_parameters() if _WEIGHT_RE.match(p.get_friendly_name())}


def _replace(param: ov.Node, output: ov.Output) -> None:
    """Feed `param`'s consumers from `output`; a ShapeOf of the weight (the grouped form reads E from the
    stack) becomes the constant shape, as the frontend folds it for a traced constant, so that the weight's
    consumer is its matmul alone."""
    for target in list(param.output(0).get_target_inputs()):
        node = target.get_node()
        if node.get_type_name() == "ShapeOf":
            shape = ops.constant(np.array(param.get_output_shape(0), dtype=node.get_output_element_type(0).to_dtype()))
            for user in list(node.output(0).get_target_inputs()):
                user.replace_source_output(shape.output(0))
        else:
            target.replace_source_output(output)


def _row_split(param: ov.Node) -> ov.Node | None:
    """The split of the weight `param` into blocks of rows, if that is its only use besides reading its
    shape (`Attention.output` chunks wo_a into one linear per group): each block is then bound as a
    constant of its own, so that compression sees G plain linears."""
    targets = [t for t in param.output(0).get_target_inputs() if t.get_node().get_type_name() != "ShapeOf"]
    node = targets[0].get_node() if len(targets) == 1 else None
    if node is None or node.get_type_name() not in ("Split", "VariadicSplit") or targets[0].get_index() != 0:
        return None
    axis = node.input_value(1).get_node()
    if axis.get_type_name() != "Constant" or int(axis.get_data()) != 0:
        return None
    return node


def _bind_row_blocks(param: ov.Node, split: ov.Node, tensor: torch.Tensor, name: str) -> None:
    """Feed each output of `split` (`torch.chunk` over rows: blocks of ceil(rows / n), the last what is
    left) from a constant of its rows of `tensor`."""
    size = -(-tensor.shape[0] // split.get_output_size())
    for k, out in enumerate(split.outputs()):
        start, stop = k * size, min((k + 1) * size, tensor.shape[0])
        block = _plain(tensor[start:stop], row_block_name(name, start, stop))
        for target in list(out.get_target_inputs()):
            target.replace_source_output(block.output(0))
    _replace(param, param.output(0))  # what still reads the weight reads its shape: a constant now


def _plain(tensor: torch.Tensor, name: str) -> ov.Node:
    data = tensor.to(torch.float32).numpy() if tensor.is_floating_point() else tensor.numpy()
    c = ops.constant(np.ascontiguousarray(data), shared_memory=True)  # no second copy of the weight
    c.set_friendly_name(f"self.model.{name}")
    return c


def _expert_names(block: str, proj: str, experts: range) -> Iterator[str]:
    return (f"{block}.ffn.experts.{e}.{proj}.weight" for e in experts)


def bind_weights(ov_model: ov.Model, source, compression: CompressionOptions | None = None,
                 native: bool = False) -> None:
    """Replace every weight Parameter of `ov_model` by its constant from `source` (a `Checkpoint`, or
    `ModelWeights`), compressed as `compression` says, or with the release's codes (`native`, a release-layout
    `Checkpoint`); see the module docstring."""
    params = weight_parameters(ov_model)
    experts = {n: p for n, p in params.items() if _EXPERTS_RE.match(n)}
    quantised = native and isinstance(source, Checkpoint) and source.fmt == "fp8"
    coded = {}
    for name, param in params.items():
        if name in experts:
            continue
        kind = storage_class(name)
        if quantised and kind in (FP4, FP8):
            coded[name] = (fp4_subgraph if kind == FP4 else fp8_subgraph)(
                source.get(name), source.get(scale_name(name)), f"self.model.{name}")
        elif native and kind == BF16 and len([d for d in param.get_output_shape(0) if d != 1]) >= 2:
            coded[name] = half_constant(source.tensor(name), f"self.model.{name}")
        else:
            split = _row_split(param)
            if split is None:
                _replace(param, _plain(source.tensor(name), name).output(0))
            else:  # one constant per block of rows (`row_block_name`), each a weight of its own linear
                _bind_row_blocks(param, split, source.tensor(name), name)
            ov_model.remove_parameter(param)
    ov_model.validate_nodes_and_infer_types()
    if compression is not None and compression.format.compressed:
        compress_with(ov_model, compression)
    for name, sub in coded.items():  # after NNCF, which must not see them
        _replace(params[name], sub.output(0))
        ov_model.remove_parameter(params[name])
    blocks = sorted({_EXPERTS_RE.match(n).group(1) for n in experts}, key=lambda b: (b[0], int(b.split(".")[1])))
    for layer in blocks:
        projs = {proj: experts[f"{layer}.ffn.experts.{proj}"] for proj in ("w1", "w3", "w2")}
        if quantised:
            outs = {k: _native_experts(source, layer, k, tuple(p.get_output_shape(0))) for k, p in projs.items()}
        else:
            outs = _experts(source, layer, projs, compression)
        for k, param in projs.items():
            _replace(param, outs[k])
            ov_model.remove_parameter(param)
    ov_model.validate_nodes_and_infer_types()


def _native_experts(source: Checkpoint, layer: str, proj: str, shape: tuple[int, ...]) -> ov.Output:
    names = list(_expert_names(layer, proj, range(shape[0])))
    qs = [source.get(n).view(torch.uint8) for n in names]
    ss = [source.get(scale_name(n)).view(torch.uint8) for n in names]
    return stacked_fp4_subgraph(qs, ss, shape, f"self.model.{layer}.ffn.experts.{proj}.weight").output(0)


def _stack(source, layer: str, proj: str, experts: range, shape: tuple[int, ...]) -> np.ndarray:
    """FP32 [len(experts), out, in] of one projection's experts, filled one expert at a time."""
    out = np.empty((len(experts), *shape[1:]), dtype=np.float32)
    for k, name in enumerate(_expert_names(layer, proj, experts)):
        out[k] = source.tensor(name).to(torch.float32).numpy()
    return out


def _experts(source, layer: str, params: dict[str, ov.Node], compression: CompressionOptions | None
             ) -> dict[str, ov.Output]:
    """A layer's stacked experts (w1, w3, w2) as constants, or compressed a chunk of experts at a time, the
    three projections in one graph of the piece's GroupedMatMuls (module docstring)."""
    shapes = {k: tuple(p.get_output_shape(0)) for k, p in params.items()}
    experts = shapes["w1"][0]
    labels = {k: f"self.model.{layer}.ffn.experts.0.{k}.weight" for k in params}  # the policy's names
    if compression is None or not compression.format.compressed:
        out = {}
        for k, shape in shapes.items():
            c = ops.constant(_stack(source, layer, k, range(experts), shape), shared_memory=True)
            c.set_friendly_name(labels[k])
            out[k] = c.output(0)
        return out
    gmms = {k: next(t.get_node() for t in p.output(0).get_target_inputs()
                    if t.get_node().get_type_name() == "GroupedMatMul") for k, p in params.items()}
    if compression.data_free:
        r = compression.resolved()
        schemes = {k: scheme_for("GroupedMatMul", shapes[k][2], r["mode"], r.get("group_size", -1),
                                 r.get("group_size_fallback", "error"), r.get("backup_precision"), labels[k])
                   for k in params}
        if all(s is not None for s in schemes.values()):  # None: NNCF leaves it as is (--group-size-fallback ignore)
            return {k: _quantised(source, layer, k, shapes[k], schemes[k], labels[k]) for k in params}
    per_expert = 4 * sum(s[1] * s[2] for s in shapes.values())
    whole = (compression.resolved().get("ratio", 1.0) < 1.0 or compression.awq
             or per_expert * experts <= SMALL_LAYER_BYTES)
    per_chunk = experts if whole else max(1, min(CHUNK_BYTES // per_expert, -(-experts // CHUNKS_PER_LAYER)))
    chunks: list[dict[str, ov.Output]] = []
    minis, sizes = [], []
    for start in range(0, experts, per_chunk):
        part = range(start, min(start + per_chunk, experts))
        offsets = ops.parameter(ov.PartialShape([len(part)]), gmms["w1"].get_input_element_type(2))
        inputs, results = [offsets], []
        for k, gmm in gmms.items():
            rows = ops.parameter(gmm.get_input_partial_shape(0), ov.Type.f32)
            weight = ops.constant(_stack(source, layer, k, part, shapes[k]), shared_memory=True)
            weight.set_friendly_name(labels[k])
            inputs.append(rows)
            results.append(ops.result(opset17.grouped_matmul(rows, weight, offsets)))
        mini = ov.Model(results, inputs)
        compress_with(mini, compression)
        chunks.append({k: r.input_value(0).get_node().input_value(1) for k, r in zip(gmms, mini.get_results())})
        minis.append(mini)
        sizes.append(len(part))
    return {k: _concat([c[k] for c in chunks], sizes) for k in gmms}


def _quantised(source, layer: str, proj: str, shape: tuple[int, ...], scheme, label: str) -> ov.Output:
    """One projection's stacked experts dequantised and quantised a few experts at a time
    (`quantise.CHUNK_BYTES` of FP32; V4-Flash: 8 experts of 2048 x 4096) into NNCF's constants and
    decompression subgraph for the whole stack (the GroupedMatMul's weight, port 1)."""
    q = QuantisedWeight(shape, scheme)
    per_chunk = max(1, quantise.CHUNK_BYTES // (4 * shape[1] * shape[2]))
    for start in range(0, shape[0], per_chunk):
        part = range(start, min(start + per_chunk, shape[0]))
        q.fill(start, torch.from_numpy(_stack(source, layer, proj, part, shape)))
    return q.subgraph(label, 1).output(0)


def _bytes_const(etype: ov.Type, shape: list[int], nodes: list[ov.Node]) -> ov.Node:
    """A constant of `etype` and `shape` holding the raw bytes of `nodes` one after another (packed 4-bit
    types included)."""
    t = ov.Tensor(etype, ov.Shape(shape))
    dst = np.asarray(t.data).view(np.uint8).reshape(-1)
    at = 0
    for n in nodes:
        b = n.get_data().view(np.uint8).reshape(-1)
        dst[at:at + b.size] = b
        at += b.size
    if at != dst.size:
        raise ValueError(f"{nodes[0].get_friendly_name()}: chunk constants do not tile {etype} {shape}")
    return ops.constant(t)


def _concat(outs: list[ov.Output], sizes: list[int]) -> ov.Output:
    """The decompression subgraph of the chunks (one structure in each) made whole, in place on the first
    chunk's subgraph: constants with the chunk's expert count as leading dimension become the
    concatenation over the chunks (raw bytes, so packed 4-bit types too), a 1-D shape constant that starts
    with it gets the total; anything else stays."""
    first = outs[0].get_node()
    for k in range(first.get_input_size()):
        sources = [o.get_node().input_value(k) for o in outs]
        node = sources[0].get_node()
        if node.get_type_name() != "Constant":
            _concat(sources, sizes)
            continue
        nodes = [s.get_node() for s in sources]
        shapes = [list(n.get_output_shape(0)) for n in nodes]
        etype = node.get_output_element_type(0)
        if len(shapes[0]) >= 2 and all(s[0] == n for s, n in zip(shapes, sizes)):
            new = _bytes_const(etype, [sum(sizes), *shapes[0][1:]], nodes)
        elif (len(shapes[0]) == 1 and shapes[0][0] > 1 and etype in (ov.Type.i64, ov.Type.i32)
              and all(int(n.get_data()[0]) == s for n, s in zip(nodes, sizes))):
            value = node.get_data().copy()
            value[0] = sum(sizes)
            new = ops.constant(value)
        else:
            continue
        new.set_friendly_name(node.get_friendly_name())
        for key, value in node.get_rt_info().items():
            new.get_rt_info()[key] = value
        first.input(k).replace_source_output(new.output(0))
    return outs[0]
