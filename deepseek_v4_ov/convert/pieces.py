"""Streaming conversion: the stateful IR built piece by piece, in memory bounded by the largest piece.

The model is cut into pieces that are traced, compressed and written one at a time, each with only its
own weights loaded (`official.iter_state_dict(prefixes=...)`):

    embed      input_ids, attention_mask, position_ids, beam_idx; state `length`
               -> streams [B, S, hc, hidden], positions [B, S], state_init_guard
    layers.i   input_ids, beam_idx, streams, positions, state_init_guard; states `layers.i.*`
               -> streams, state_init_guard (this piece's guard added)
    head       streams -> logits

Each piece is made stateful on its own with `ov_convert.make_stateful` (same variables, same `beam_idx`
gather, same zero initialisers as the whole-model IR); the per-piece `state_init_guard` outputs are chained
into one. The pieces' IRs are then stitched at the file level: their XML graphs are merged (a piece's
Parameter named like an earlier piece's output is replaced by that output; Parameters named like a model
input are merged into it) and their .bin files are concatenated with the Const offsets shifted. No step
holds more than one piece's weights: the stitch never loads a weight.

Result: the same graph as `ov_convert.convert(model)` (+ the same compression), except that constants are
no longer folded across piece boundaries; logits agree to FP32 rounding (tests/test_streaming.py).
"""

from __future__ import annotations

import gc
import json
import re
import types
import resource
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import openvino as ov
import openvino.opset13 as ops
import torch
from torch import nn

from deepseek_v4_ov.checkpoint.layout import CONFIG_NAME, CheckpointReader, atomic_output_dir
from deepseek_v4_ov.model.configuration_deepseek_v4 import SLIDING
from deepseek_v4_ov.model.modeling_deepseek_v4 import Block, HcHead, RMSNorm, Rope, linear

IR_XML, IR_BIN = "openvino_model.xml", "openvino_model.bin"
LINKS = ("streams", "positions")  # piece outputs that later pieces read as Parameters of the same name
TRACE_TOKENS, TRACE_BATCH = 133, 2  # as ov_convert: trace from a cache holding 133 tokens, 5 new, batch 2


# ------------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------------
class _EmbedPiece(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.hc = config.hc_mult

    def forward(self, input_ids, attention_mask, position_ids, length):
        length = length.long()
        positions = length.unsqueeze(1) + torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.model.embed(input_ids)
        streams = h.unsqueeze(2).expand(-1, -1, self.hc, -1).contiguous()
        return streams, positions, (length + input_ids.shape[1]).int()


class _BlockPiece(nn.Module):
    def __init__(self, block: Block, index: int, rope: Rope, names: list[str]) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleDict({str(index): block})
        self.rope, self.names, self.index = rope, names, index

    def forward(self, input_ids, streams, positions, *cache):
        tensors = dict(zip(self.names, cache))
        block = self.model.layers[str(self.index)]
        out = block(streams, positions, input_ids, self.rope, tensors, f"layers.{self.index}.")
        return (out, *(tensors[n] for n in self.names))


class _HeadPiece(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hd, n = config.hidden_size, config.hc_mult
        self.model = nn.Module()
        self.model.norm = RMSNorm(hd, config.rms_norm_eps)
        self.model.head = linear(hd, config.vocab_size)
        self.model.hc_head_fn = nn.Parameter(torch.zeros(n, n * hd))
        self.model.hc_head_base = nn.Parameter(torch.zeros(n))
        self.model.hc_head_scale = nn.Parameter(torch.ones(1))
        self.eps, self.hc_eps = config.rms_norm_eps, config.hc_eps

    def forward(self, streams):
        m = self.model
        y = HcHead.collapse(streams, m.hc_head_fn, m.hc_head_base, m.hc_head_scale, self.eps, self.hc_eps)
        return m.head(m.norm(y)).float()


_EXPERT_RE = re.compile(r"(.*\.ffn)\.experts\.(\d+)\.(w[123])\.weight")


def _grouped_moe_form():
    """How `ov_convert.convert` traces the routed experts: moe_patch's grouped form (stacked [E, out, in]
    weights, GroupedMatMul) when ov_convert uses it, else the port's per-expert loop (None)."""
    from deepseek_v4_ov.convert import trace as ov_convert

    if not hasattr(ov_convert, "grouped_moe"):
        return None
    from deepseek_v4_ov.convert import moe_patch

    return moe_patch


def _load(module: nn.Module, source, config, prefixes: list[str], strip: str = "", stacked: dict | None = None
          ) -> None:
    """Load the checkpoint tensors under `prefixes` into `module` (built on the meta device), FP32. With
    `stacked` ({ffn prefix: (w1, w3, w2) [E, out, in] tensors}), routed-expert weights go straight into
    those stacks (no per-expert copies)."""
    from deepseek_v4_ov.checkpoint.release import iter_state_dict

    state = {}
    for name, t in iter_state_dict(source, config, prefixes=prefixes):
        if name.startswith("mtp."):
            continue
        m = _EXPERT_RE.fullmatch(name) if stacked is not None else None
        if m:
            stacked[m.group(1)]["w1w3w2".index(m.group(3)) // 2][int(m.group(2))].copy_(t)
            continue
        state[name.removeprefix(strip)] = t.to(torch.float32) if t.is_floating_point() else t
    missing, unexpected = module.load_state_dict(state, strict=stacked is None, assign=True)
    if stacked is not None:
        bad = [k for k in missing if ".experts." not in k] + list(unexpected)
        if bad:
            raise RuntimeError(f"state dict mismatch loading {prefixes}: {bad[:5]}")


def _rope(config, ratio: int) -> Rope:
    if ratio == SLIDING:
        return Rope(config.qk_rope_head_dim, config.rope_theta, None)
    return Rope(config.qk_rope_head_dim, config.compress_rope_theta, config.yarn_scaling)


def _chain_guard(ov_model: ov.Model) -> None:
    """Turn the piece's `state_init_guard` output into guard_in + own guard, guard_in a new scalar input."""
    from deepseek_v4_ov.convert.trace import GUARD_NAME

    (res,) = [r for r in ov_model.get_results() if GUARD_NAME in r.input_value(0).get_names()]
    local = res.input_value(0)
    local.get_tensor().set_names(set())
    guard_in = ops.parameter(ov.PartialShape([]), ov.Type.f32, name=GUARD_NAME)
    guard_in.output(0).get_tensor().set_names({GUARD_NAME})
    ov_model.add_parameters([guard_in])
    total = ops.add(guard_in, local)
    total.output(0).get_tensor().set_names({GUARD_NAME})
    res.input(0).replace_source_output(total.output(0))
    ov_model.validate_nodes_and_infer_types()


def _seq_spec():
    return ov.PartialShape([-1, -1]), ov.Type.i64


def _cache_spec(empty: torch.Tensor, name: str):
    grows = empty.dim() > 1 and empty.shape[1] == 0
    dims = [-1 if i == 0 or (i == 1 and grows) else d for i, d in enumerate(empty.shape)]
    return ov.PartialShape(dims), ov.Type.i32 if name == "length" else ov.Type.f32


def convert_embed(source, config) -> ov.Model:
    from deepseek_v4_ov.convert.trace import INPUT_PREFIX, OUTPUT_PREFIX, _name_ports, make_stateful

    with torch.device("meta"):
        piece = _EmbedPiece(config)
    _load(piece.model, source, config, ["embed."])
    piece.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, config.vocab_size, (TRACE_BATCH, 5), generator=g)
    mask = torch.ones(TRACE_BATCH, TRACE_TOKENS + 5, dtype=torch.long)
    pos = torch.arange(TRACE_TOKENS, TRACE_TOKENS + 5).expand(TRACE_BATCH, -1)
    length = torch.full((TRACE_BATCH,), TRACE_TOKENS, dtype=torch.int32)
    with torch.no_grad():
        m = ov.convert_model(piece, example_input=(ids, mask, pos, length),
                             input=[_seq_spec(), _seq_spec(), _seq_spec(), (ov.PartialShape([-1]), ov.Type.i32)])
    _name_ports(m, ["input_ids", "attention_mask", "position_ids", INPUT_PREFIX + "length"],
                ["streams", "positions", OUTPUT_PREFIX + "length"])
    make_stateful(m, {"length": ()})
    return m


def convert_block(source, config, index: int) -> ov.Model:
    from deepseek_v4_ov.convert.trace import INPUT_PREFIX, OUTPUT_PREFIX, _make_topk_stable, _name_ports, make_stateful

    ratio = config.layer_ratios[index]
    prefix = f"layers.{index}."
    with torch.device("meta"):
        block = Block(config, ratio, hashed=index < config.num_hash_layers)
    grouped = _grouped_moe_form()
    e, hd, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
    if grouped is not None and hd % 4 == 0 and inter % 4 == 0:
        # the grouped form, built directly: stacked weights filled from the checkpoint, no per-expert modules
        stacks = (torch.empty(e, inter, hd), torch.empty(e, inter, hd), torch.empty(e, hd, inter))
        _load(block, source, config, [prefix], strip=prefix, stacked={f"{prefix}ffn": stacks})
        moe = block.ffn
        moe.experts = nn.ModuleList()
        setattr(moe, grouped._STACK, stacks)
        moe.forward = types.MethodType(grouped.grouped_forward, moe)
    else:
        _load(block, source, config, [prefix], strip=prefix)
    block.eval()
    rope = _rope(config, ratio)
    empty = block.attn.empty_state(prefix, 1, None)
    names = list(empty)
    piece = _BlockPiece(block, index, rope, names).eval()
    n, hd = config.hc_mult, config.hidden_size
    g = torch.Generator().manual_seed(index)
    with torch.no_grad():  # the cache after TRACE_TOKENS tokens, so that every traced tensor is non-empty
        state = block.attn.empty_state(prefix, 1, None)
        warm_ids = torch.randint(2, config.vocab_size, (1, TRACE_TOKENS), generator=g)
        warm = torch.randn(1, TRACE_TOKENS, n, hd, generator=g)
        block(warm, torch.arange(TRACE_TOKENS)[None], warm_ids, rope, state, prefix)
        example = {k: v.expand(TRACE_BATCH, *v.shape[1:]).contiguous() for k, v in state.items()}
        del warm, state
    ids = torch.randint(2, config.vocab_size, (TRACE_BATCH, 5), generator=g)
    streams = torch.randn(TRACE_BATCH, 5, n, hd, generator=g)
    pos = torch.arange(TRACE_TOKENS, TRACE_TOKENS + 5).expand(TRACE_BATCH, -1)
    specs = [_seq_spec(), (ov.PartialShape([-1, -1, n, hd]), ov.Type.f32), _seq_spec(),
             *(_cache_spec(empty[k], k) for k in names)]
    with torch.no_grad():
        m = ov.convert_model(piece, example_input=(ids, streams, pos, *(example[k] for k in names)), input=specs)
    _name_ports(m, ["input_ids", "streams", "positions", *(INPUT_PREFIX + k for k in names)],
                ["streams", *(OUTPUT_PREFIX + k for k in names)])
    _make_topk_stable(m)
    make_stateful(m, {k: tuple(empty[k].shape[1:]) for k in names})
    _chain_guard(m)
    return m


def convert_head(source, config) -> ov.Model:
    from deepseek_v4_ov.convert.trace import _name_ports

    with torch.device("meta"):
        piece = _HeadPiece(config)
    _load(piece.model, source, config, ["head.", "norm.", "hc_head_"])
    piece.eval()
    streams = torch.randn(TRACE_BATCH, 5, config.hc_mult, config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        m = ov.convert_model(piece, example_input=(streams,),
                             input=[(ov.PartialShape([-1, -1, config.hc_mult, config.hidden_size]), ov.Type.f32)])
    _name_ports(m, ["streams"], ["logits"])
    return m


# ------------------------------------------------------------------------------------------------------
# Stitching IR files
# ------------------------------------------------------------------------------------------------------
def _port_names(layer: ET.Element, port_id: str) -> set[str]:
    out = layer.find("output")
    for port in out.findall("port") if out is not None else []:
        if port.get("id") == port_id:
            return {n for n in (port.get("names") or "").split(",") if n}
    return set()


def stitch(pieces: list[Path], xml_out: Path) -> None:
    """Merge piece IRs (in order) into one IR at `xml_out` (+ .bin): see the module docstring. The weights
    are copied file to file, never loaded."""
    from deepseek_v4_ov.convert.trace import GUARD_NAME

    links = (*LINKS, GUARD_NAME)
    bin_out = xml_out.with_suffix(".bin")
    net, rt = None, None
    layers_out: list[ET.Element] = []
    edges_out: list[tuple[str, str, str, str]] = []
    next_id = 0
    inputs: dict[str, tuple[str, str]] = {}  # model input name -> (layer id, port)
    current: dict[str, tuple[str, str, str]] = {}  # link name -> (producer id, port, Result id), latest
    consumed: set[str] = set()  # Result ids whose value a later piece reads: dropped at the end
    bin_base = 0
    with open(bin_out, "wb") as fbin:
        for xml in pieces:
            root = ET.parse(xml).getroot()
            if net is None:
                net, rt = ET.Element("net", dict(root.attrib)), root.find("rt_info")
            layers = {lay.get("id"): lay for lay in root.find("layers")}
            edges = [(e.get("from-layer"), e.get("from-port"), e.get("to-layer"), e.get("to-port"))
                     for e in root.find("edges")]
            ids: dict[str, str] = {}
            redirect: dict[str, tuple[str, str]] = {}  # dropped Parameter -> (producer id, port)
            for lid, lay in layers.items():
                if lay.get("type") == "Parameter":
                    port = lay.find("output/port").get("id")
                    names = _port_names(lay, port)
                    link = next((n for n in names if n in current), None)
                    if link is not None:
                        producer, pport, result = current[link]
                        redirect[lid] = (producer, pport)
                        consumed.add(result)
                        continue
                    known = next((n for n in names if n in inputs), None)
                    if known is not None:
                        redirect[lid] = inputs[known]
                        continue
                    ids[lid] = str(next_id)
                    inputs.update(dict.fromkeys(names, (str(next_id), port)))
                else:
                    ids[lid] = str(next_id)
                next_id += 1
            for lid, lay in layers.items():
                if lid in redirect:
                    continue
                lay.set("id", ids[lid])
                if lay.get("type") == "Const":
                    data = lay.find("data")
                    data.set("offset", str(int(data.get("offset")) + bin_base))
                layers_out.append(lay)
            for f, fp, t, tp in edges:
                src = redirect.get(f, (ids.get(f), fp))
                edges_out.append((src[0], src[1], ids[t], tp))
                if layers[t].get("type") == "Result":
                    for n in _port_names(layers[f], fp) & set(links):
                        current[n] = (src[0], src[1], ids[t])
            with open(xml.with_suffix(".bin"), "rb") as fin:
                shutil.copyfileobj(fin, fbin, 16 << 20)
            bin_base = fbin.tell()
    layers_out = [lay for lay in layers_out if lay.get("id") not in consumed]
    edges_out = [e for e in edges_out if e[2] not in consumed]
    # tensor names: model inputs and outputs keep theirs; elsewhere a name is kept once (pieces are traced
    # separately, so internal names may repeat) and link names are removed
    result_ids = {lay.get("id") for lay in layers_out if lay.get("type") == "Result"}
    outputs = {(e[0], e[1]) for e in edges_out if e[2] in result_ids}
    input_ids = {i for i, _ in inputs.values()}
    seen: set[str] = set()
    for lay in layers_out:
        out = lay.find("output")
        for port in out.findall("port") if out is not None else []:
            if "names" not in port.attrib:
                continue
            key = (lay.get("id"), port.get("id"))
            names = [n for n in port.get("names").split(",") if n]
            if lay.get("id") not in input_ids and key not in outputs:
                names = [n for n in names if n not in seen and n not in links]
            seen.update(names)
            if names:
                port.set("names", ",".join(names))
            else:
                del port.attrib["names"]
    # outputs in the whole-model IR's order: logits first, then state_init_guard
    results = {lay.get("id"): lay for lay in layers_out if lay.get("type") == "Result"}
    producer_names = {e[2]: _port_names(next(x for x in layers_out if x.get("id") == e[0]), e[1])
                      for e in edges_out if e[2] in results}
    order = sorted(results, key=lambda r: "logits" not in producer_names.get(r, set()))
    layers_out = [lay for lay in layers_out if lay.get("type") != "Result"] + [results[r] for r in order]
    layers_el = ET.SubElement(net, "layers")
    layers_el.extend(layers_out)
    edges_el = ET.SubElement(net, "edges")
    for f, fp, t, tp in edges_out:
        ET.SubElement(edges_el, "edge", {"from-layer": f, "from-port": fp, "to-layer": t, "to-port": tp})
    if rt is not None:
        net.append(rt)
    ET.ElementTree(net).write(xml_out, encoding="utf-8", xml_declaration=True)


# ------------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------------
def _trim() -> None:
    """Release what a finished piece leaves behind: TorchScript's global JIT state keeps every traced
    graph, and with it the tensors the trace captured as constants (the grouped form's stacked expert
    weights: a layer's routed experts in FP32, measured +1.57 GB per `mid` layer without this); then give
    freed heap memory back to the OS."""
    try:
        torch._C._jit_clear_class_registry()
        torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
        torch.jit._state._clear_class_state()
    except AttributeError:  # private torch API: a version without it keeps the ratchet, not an error
        pass
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve every allocation of `nbytes` or more by mmap (returned to the OS on free): glibc's default
    threshold grows after the first large free, and the heap then keeps each piece's weights."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export_streaming(src, output, weight_format: str = "fp32", group_size=None, sym=False, ratio=None,
                     backup_precision=None, all_layers=False, awq=False, group_size_fallback=None,
                     prefill_only: bool = False, overwrite: bool = False, convert_tokenizer: bool = True,
                     log: Callable[[str], None] | None = None, keep_pieces: bool = False):
    """`exporter.export` built piece by piece (stateful IR only); returns an `exporter.ExportResult`."""
    from deepseek_v4_ov.export import pipeline as exporter
    from deepseek_v4_ov.compress.policy import compress_with, precision_report
    from deepseek_v4_ov.compress.native import NATIVE, nativize
    from deepseek_v4_ov.convert.trace import BUNDLED_FILES

    if prefill_only:
        raise ValueError("--streaming builds the stateful IR; --prefill-only is not supported with it")
    _fixed_mmap_threshold()
    log = log or (lambda line: print(line, flush=True))
    src, output = Path(src), Path(output)
    is_native = weight_format == NATIVE
    opts = exporter.resolve_options(weight_format, group_size, sym, ratio, backup_precision, all_layers, awq,
                                    group_size_fallback)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    config, fmt = exporter.validate(src, output, opts, overwrite, convert_tokenizer)
    if is_native and fmt != "fp8":
        from deepseek_v4_ov.checkpoint.layout import CheckpointError

        raise CheckpointError(f"{src}: --weight-format native needs a checkpoint in the release layout (FP8/FP4 "
                              f"with E8M0 scales); this one is {fmt}")
    for key in exporter.STORAGE_ONLY_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    times["validate"] = time.perf_counter() - t0
    reader = CheckpointReader(src)
    units = ["embed", *(f"layers.{i}" for i in range(config.num_hidden_layers)), "head"]
    precision = {}
    with atomic_output_dir(output, overwrite) as tmp:
        work = tmp / ".pieces"
        work.mkdir()
        paths = []
        t0 = time.perf_counter()
        for k, unit in enumerate(units):
            start = time.perf_counter()
            if unit == "embed":
                m = convert_embed(reader, config)
            elif unit == "head":
                m = convert_head(reader, config)
            else:
                m = convert_block(reader, config, int(unit.split(".")[1]))
            if is_native:
                nativize(m, reader)
            else:
                m = compress_with(m, opts)
            for g, p in precision_report(m).items():
                acc = precision.setdefault(g, type(p)())
                for t, c in p.weights.items():
                    acc.weights[t] = acc.weights.get(t, 0) + c
                for t, c in p.scales.items():
                    acc.scales[t] = acc.scales.get(t, 0) + c
                acc.nbytes += p.nbytes
                acc.group_sizes |= p.group_sizes
            path = work / f"{k:04d}_{unit}.xml"
            ov.save_model(m, path, compress_to_fp16=False)
            paths.append(path)
            del m
            gc.collect()
            _trim()
            log(f"      piece {unit}: {time.perf_counter() - start:.1f}s, peak RSS so far {_rss_mb():,.0f} MB, "
                f"now {_current_rss_mb():,.0f} MB")
        times["convert+compress"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stitch(paths, tmp / IR_XML)
        if keep_pieces:
            shutil.copytree(work, Path(str(output) + ".pieces"), dirs_exist_ok=True)
        shutil.rmtree(work)
        (tmp / CONFIG_NAME).write_text(json.dumps(exporter.output_config(src, True), indent=2) + "\n")
        package = Path(__file__).resolve().parents[1] / "model"
        for name in BUNDLED_FILES:
            shutil.copyfile(package / name, tmp / name)
        if (src / exporter.GENERATION_CONFIG).is_file():
            shutil.copyfile(src / exporter.GENERATION_CONFIG, tmp / exporter.GENERATION_CONFIG)
        resolved = {"weight_format": NATIVE} if is_native else opts.resolved()
        ov_config = {"dtype": weight_format, "ir": "stateful", "quantization_config": resolved,
                     "streaming": True, "source": {"path": str(src), "storage_format": fmt}}
        (tmp / exporter.OV_CONFIG_NAME).write_text(json.dumps(ov_config, indent=2) + "\n")
        if convert_tokenizer and exporter._has_tokenizer(src):
            from deepseek_v4_ov.checkpoint.tokenizer import convert_tokenizer as to_ov_tokenizer

            with exporter._tokenizer_only(src) as tok:
                for name in exporter.TOKENIZER_FILES:
                    if (tok / name).is_file():
                        shutil.copyfile(tok / name, tmp / name)
                to_ov_tokenizer(tok, tmp)
        times["stitch+write"] = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in sorted(output.iterdir()) if p.is_file()}
    result = exporter.ExportResult(output, files, precision, times, _rss_mb())
    log(result.format())
    return result


__all__ = ["export_streaming", "stitch", "convert_embed", "convert_block", "convert_head"]
