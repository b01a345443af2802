"""Join piece IRs (`convert/pieces.py`) at the file level into one IR, without loading a weight.

XML: the pieces' graphs are merged in order; a piece's Parameter named like an earlier piece's link output
(`streams`, `positions`, `state_init_guard`, a DSpark target's `drafter_taps`) is replaced by that output, and one named like a model input
is merged into it. Outputs keep the whole-model order (logits first).

.bin: canonical. Every constant's bytes are hashed; identical blobs are stored once (within and across
pieces, as `ov.save_model` does within one model), in order of their SHA-256, and each Const points at
its blob. The file therefore depends only on the set of constants, not on how the model was cut into
pieces: a one-piece and a per-layer export of the same model give the same bytes.

One read of every byte: a piece is written by `save_piece`, which hashes each constant from memory as the
piece is saved (a `.hashes.json` beside the piece: offset -> digest); `stitch` then reads each piece's `.bin`
once, copying its blobs into the final `.bin`.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openvino as ov

from deepseek_v4_ov.convert.pieces import LINKS
from deepseek_v4_ov.convert.stateful import GUARD_NAME, TAPS

_CHUNK = 16 << 20


def hashes_path(xml: Path) -> Path:
    return xml.with_suffix(".hashes.json")


def save_piece(model: ov.Model, xml: Path) -> None:
    """`ov.save_model` (no FP16 compression) plus the piece's constant hashes, taken from memory: the saved
    XML's Const layers are the model's Constants in topological order (checked by name and size)."""
    ov.save_model(model, xml, compress_to_fp16=False)
    consts = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    layers = [lay for lay in ET.parse(xml).getroot().find("layers") if lay.get("type") == "Const"]
    if len(consts) != len(layers):
        raise RuntimeError(f"{xml}: {len(layers)} Const layers saved for {len(consts)} constants")
    hashes: dict[str, str] = {}
    for op, lay in zip(consts, layers):
        data = lay.find("data")
        offset, size = data.get("offset"), int(data.get("size"))
        raw = np.ascontiguousarray(op.get_data()).view(np.uint8).reshape(-1)
        if raw.size == 0 and size:  # an empty constant is saved as a placeholder byte: hash what was saved
            with open(xml.with_suffix(".bin"), "rb") as f:
                f.seek(int(offset))
                raw = np.frombuffer(f.read(size), dtype=np.uint8)
        if lay.get("name") != op.get_friendly_name() or raw.size != size:
            raise RuntimeError(f"{xml}: Const {lay.get('name')!r} ({size} bytes) saved where constant "
                               f"{op.get_friendly_name()!r} ({raw.size} bytes) was expected")
        if offset not in hashes:  # save_model stores identical constants once
            hashes[offset] = f"{hashlib.sha256(raw).hexdigest()}:{size}"
    hashes_path(xml).write_text(json.dumps(hashes))


class _Blobs:
    """Constant blobs of the pieces by content: `add` each Const's data element (its hash from the piece's
    `.hashes.json`), then `write` the .bin reading each blob once."""

    def __init__(self) -> None:
        self.where: dict[str, tuple[Path, int, int]] = {}  # sha256:size -> (piece .bin, offset, size)
        self.users: dict[str, list[ET.Element]] = {}
        self.hashes: dict[Path, dict[str, str]] = {}

    def add(self, data: ET.Element, xml: Path) -> None:
        if xml not in self.hashes:
            try:
                self.hashes[xml] = json.loads(hashes_path(xml).read_text())
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{hashes_path(xml)}: missing; pieces are written by save_piece") from err
        offset, size = int(data.get("offset")), int(data.get("size"))
        key = self.hashes[xml][data.get("offset")]
        if not key.endswith(f":{size}"):
            raise ValueError(f"{xml}: constant at {offset} (+{size}) does not match its hash entry {key}")
        self.where.setdefault(key, (xml.with_suffix(".bin"), offset, size))
        self.users.setdefault(key, []).append(data)

    def write(self, bin_out: Path) -> None:
        with open(bin_out, "wb") as out:
            for key in sorted(self.where):
                path, offset, size = self.where[key]
                for data in self.users[key]:
                    data.set("offset", str(out.tell()))
                with open(path, "rb") as f:
                    f.seek(offset)
                    left = size
                    while left:
                        chunk = f.read(min(left, _CHUNK))
                        if not chunk:
                            raise ValueError(f"{path}: constant at {offset} (+{size}) lies past the end of the file")
                        out.write(chunk)
                        left -= len(chunk)


def _port_names(layer: ET.Element, port_id: str) -> set[str]:
    out = layer.find("output")
    for port in out.findall("port") if out is not None else []:
        if port.get("id") == port_id:
            return {n for n in (port.get("names") or "").split(",") if n}
    return set()


def stitch(pieces: list[Path], xml_out: Path, labels: list[str] | None = None) -> None:
    """Merge piece IRs (in order) into one IR at `xml_out` (+ .bin): see the module docstring. The weights
    are copied file to file, never loaded. With `labels` (one per piece, e.g. "layers.3"), the link tensors
    between pieces keep a name, `<label>.<link>` ("layers.3.streams"), so that a per-layer check can read
    them from the shipped graph (`eval/parity.layer_drift`)."""
    links = (*LINKS, GUARD_NAME, TAPS)  # TAPS: the DSpark taps so far, from piece to piece
    net, rt = None, None
    layers_out: list[ET.Element] = []
    edges_out: list[tuple[str, str, str, str]] = []
    next_id = 0
    inputs: dict[str, tuple[str, str]] = {}  # model input name -> (layer id, port)
    current: dict[str, tuple[str, str, str]] = {}  # link name -> (producer id, port, Result id), latest
    consumed: set[str] = set()  # Result ids whose value a later piece reads: dropped at the end
    blobs = _Blobs()
    origin: dict[str, str] = {}  # layer id -> label of its piece
    names: set[str] = set()  # layer (friendly) names so far
    for k, xml in enumerate(pieces):
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
            if labels is not None:
                origin[ids[lid]] = labels[k]
            if lay.get("type") == "Const":
                blobs.add(lay.find("data"), xml)
            name = lay.get("name")
            if name in names:  # pieces are traced apart: a generated name may repeat (NNCF wants them unique)
                lay.set("name", f"{name}/piece{k}")
            names.add(lay.get("name"))
            layers_out.append(lay)
        for f, fp, t, tp in edges:
            src = redirect.get(f, (ids.get(f), fp))
            edges_out.append((src[0], src[1], ids[t], tp))
            if layers[t].get("type") == "Result":
                for n in _port_names(layers[f], fp) & set(links):
                    current[n] = (src[0], src[1], ids[t])
    layers_out = [lay for lay in layers_out if lay.get("id") not in consumed]
    edges_out = [e for e in edges_out if e[2] not in consumed]
    # tensor names: model inputs and outputs keep theirs; elsewhere a name is kept once (pieces are traced
    # separately, so internal names may repeat) and link names are removed or, with labels, qualified
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
                names = [n if n not in links else f"{origin[lay.get('id')]}.{n}"
                         for n in names if n not in seen and (n not in links or lay.get("id") in origin)]
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
    blobs.write(xml_out.with_suffix(".bin"))
    ET.ElementTree(net).write(xml_out, encoding="utf-8", xml_declaration=True)
