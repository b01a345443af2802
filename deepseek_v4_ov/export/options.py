"""The options of one export, built once (by the CLI or the Python API) and checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseek_v4_ov.compress.native import NATIVE, check_native_options
from deepseek_v4_ov.compress.policy import CompressionOptions


@dataclass(frozen=True)
class ExportOptions:
    """`deepseek-v4-ov export` in one object. `weight_format` is an NNCF format (`compress/policy.py`) or
    `native` (the release's own codes, `compress/native.py`), which takes none of the NNCF options.
    `whole` traces the model as one piece (default: one piece per unit, so that memory is bounded by the
    largest layer); both give the same IR."""

    src: Path
    output: Path
    weight_format: str = "fp32"
    group_size: int | None = None
    sym: bool = False
    ratio: float | None = None
    backup_precision: str | None = None
    all_layers: bool = False
    awq: bool = False
    group_size_fallback: str | None = None
    prefill_only: bool = False
    overwrite: bool = False
    convert_tokenizer: bool = True
    whole: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", Path(self.src))
        object.__setattr__(self, "output", Path(self.output))

    @property
    def native(self) -> bool:
        return self.weight_format == NATIVE

    def compression(self) -> CompressionOptions:
        """The NNCF options (fp32, i.e. none, for `native`); raises ValueError naming a misapplied option."""
        nncf = (self.group_size, self.sym, self.ratio, self.backup_precision, self.all_layers, self.awq,
                self.group_size_fallback)
        if self.native:
            check_native_options(*nncf)
        opts = CompressionOptions("fp32" if self.native else self.weight_format, *nncf)
        opts.validate()
        return opts

    def quantization_config(self) -> dict[str, Any]:
        """The resolved compression options as openvino_config.json records them."""
        return {"weight_format": NATIVE} if self.native else self.compression().resolved()
