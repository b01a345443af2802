"""Export, or reuse a kept export whose recorded export key (`export/identity.py`) is this export's: parity's
--workdir, the demo's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepseek_v4_ov.export.folder import has_tokenizer
from deepseek_v4_ov.export.identity import expected, recorded, why_stale
from deepseek_v4_ov.export.pipeline import export


def ensure_export(src: Path | str, output: Path | str, log: Callable[[str], None] = print,
                  **options) -> tuple[dict[str, Any], bool]:
    """`output` exported from `src` with `options` (`export`'s keywords): reused when its recorded key is
    the expected one, else exported afresh (replacing it). Returns (the identity, reused)."""
    opts, want = expected(src, output, **options)
    stale = why_stale(recorded(Path(output)), want)
    if stale is None and opts.convert_tokenizer and has_tokenizer(opts.src) and not has_tokenizer(Path(output)):
        stale = "the export there has no tokenizer"
    if stale is None:
        log(f"reusing {output} (export key {want['key']})")
        return want, True
    log(f"exporting {output} (export key {want['key']}; {stale})")
    export(src, output, overwrite=True, log=lambda line: None, **options)
    return want, False
