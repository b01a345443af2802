"""What an exported folder was made from, so that a kept export is reused only for the same source, the
same options and the same exporter (parity's --workdir, the demo, the benchmarks' caches).

    source digest   sha256 of SRC's config.json and index, and per shard its size, its header and its data:
                    all of it up to FULL_DIGEST_BYTES, above that SAMPLE_BLOCKS blocks of SAMPLE_BYTES at
                    evenly spaced offsets (two checkpoints of one geometry, e.g. the `seed` and `trained`
                    toys, have the same config and headers but differ in every block of weights; V4-Flash's
                    ~46 shards cost ~46 MiB of reads)
    code version    the package's `__version__` and a digest of its own .py sources: an edited exporter is
                    another version, whatever `__version__` says
    export key      sha256 of the three: the source digest, the export options that shape the IR (format
                    resolved, every compression option, prefill-only, drafter, calibration; not the paths nor
                    whether the tokenizer was converted: `reuse.ensure_export` checks that it is there when asked),
                    the code version

`export` records the key in openvino_config.json (`export_key`, with its parts under `identity`);
`export/reuse.ensure_export` reuses a folder whose recorded key is the expected one and re-exports it
otherwise, saying why.
Nothing here imports torch or openvino at module level (the benchmark helpers import it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

FULL_DIGEST_BYTES = 64 << 20
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 64 << 10
OV_CONFIG_NAME = "openvino_config.json"
# where it goes, files beside the IR, how many pieces at once (the same IR)
NOT_IR_FIELDS = ("src", "output", "overwrite", "convert_tokenizer", "jobs")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shard_digest(path: Path, h: Any) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as f:
        if size <= FULL_DIGEST_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return
        head = int.from_bytes(f.read(8), "little")
        h.update(f.read(head))  # the JSON header: names, dtypes, shapes, offsets
        start, span = 8 + head, max(0, size - 8 - head - SAMPLE_BYTES)
        for k in range(SAMPLE_BLOCKS):  # the first block starts the data, the last one ends the file
            f.seek(start + span * k // (SAMPLE_BLOCKS - 1))
            h.update(f.read(SAMPLE_BYTES))


def source_digest(src: Path | str) -> str:
    """The identity of a checkpoint folder (module docstring); 64 hex digits."""
    src = Path(src)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        if (src / name).is_file():
            h.update(f"{name}\n".encode() + (src / name).read_bytes())
    for shard in sorted(src.glob("*.safetensors")):
        _shard_digest(shard, h)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """`__version__+<12 hex digits of the package's .py sources>`."""
    import deepseek_v4_ov

    root = Path(deepseek_v4_ov.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\n" + path.read_bytes())
    return f"{deepseek_v4_ov.__version__}+{h.hexdigest()[:12]}"


def identity(source: str, options: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The parts of an export key and the key itself (`key`)."""
    parts = {"source_digest": source, "options": options, "code_version": version or code_version()}
    return {**parts, "key": _sha(json.dumps(parts, sort_keys=True, default=str).encode())[:16]}


def options_record(opts) -> dict[str, Any]:
    """The options of a resolved `ExportOptions` that shape the IR (all but NOT_IR_FIELDS), with the digest of
    a calibration file (`--dataset FILE`: its content calibrates the IR, not its name)."""
    record = {k: v for k, v in asdict(opts).items() if k not in NOT_IR_FIELDS}
    if opts.dataset is not None and Path(opts.dataset).is_file():
        record["dataset_digest"] = _sha(Path(opts.dataset).read_bytes())
    return record


def recorded(folder: Path) -> dict[str, Any] | None:
    """The identity an export recorded in its openvino_config.json (None: no export there, or one made
    before keys were recorded)."""
    path = Path(folder) / OV_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        ident = json.loads(path.read_text()).get("identity")
    except (json.JSONDecodeError, AttributeError):
        return None
    return ident if isinstance(ident, dict) and "key" in ident else None


def why_stale(have: dict[str, Any] | None, want: dict[str, Any]) -> str | None:
    """None when `have` is `want`, else what differs, in words."""
    if have is None:
        return "no export recorded there"
    if have.get("key") == want["key"]:
        return None
    what = [name for name, part in (("source checkpoint", "source_digest"), ("export options", "options"),
                                    ("package version", "code_version")) if have.get(part) != want[part]]
    return f"recorded key {have.get('key')} != {want['key']} ({', '.join(what) or 'key'} differ)"


def expected(src: Path | str, output: Path | str, **options) -> tuple[Any, dict[str, Any]]:
    """The resolved `ExportOptions` of `export(src, output, **options)` and the identity it would record."""
    from deepseek_v4_ov.checkpoint.release import check_folder
    from deepseek_v4_ov.export.options import ExportOptions

    opts = ExportOptions(Path(src), Path(output), **options)
    opts = opts.resolved(check_folder(opts.src).fmt)
    return opts, identity(source_digest(opts.src), options_record(opts))
