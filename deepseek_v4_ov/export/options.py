"""The options of one export, built once (by the CLI or the Python API) and checked before any work."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepseek_v4_ov.compress.formats import AUTO, DATA_AWARE_FORMATS, FP32, WeightFormat, default_format, format_named
from deepseek_v4_ov.compress.native import check_native_options
from deepseek_v4_ov.compress.policy import CompressionOptions
from deepseek_v4_ov.model.configuration_deepseek_v4 import DSPARK, MTP

AUTO_DRAFTER = "auto"
NO_DRAFTER = "none"
DRAFTERS = (AUTO_DRAFTER, MTP, DSPARK, NO_DRAFTER)
"""`--drafter`: `mtp` / `dspark` export the checkpoint's MTP block / DSpark stages as the drafter IR (and
the target's `drafter_taps` output), `auto` the checkpoint's drafter if it has one, `none` (the default)
the target alone."""


@dataclass(frozen=True)
class ExportOptions:
    """`deepseek-v4-ov export` in one object. `weight_format` names the output format (`format`, its record
    in `compress/formats.py`): a policy format (`compress/policy.py`), `native` (the release's own codes,
    `compress/native.py`), which takes none of the NNCF options, or `auto` (the default: `default_format` of
    the source, fixed by `resolved` once the source is read). `whole` traces the model as one piece
    (default: one piece per unit, so that memory is bounded by the largest layer); both give the same IR.
    `drafter` is one of DRAFTERS (`drafter_for` resolves it).
    `jobs`: pieces converted at once (None: `export.memory.default_jobs`; 1: in this process)."""

    src: Path
    output: Path
    weight_format: str = AUTO.name
    group_size: int | None = None
    sym: bool | None = None
    ratio: float | None = None
    backup_precision: str | None = None
    all_layers: bool = False
    awq: bool = False
    group_size_fallback: str | None = None
    head_precision: str | None = None
    prefill_only: bool = False
    overwrite: bool = False
    convert_tokenizer: bool = True
    whole: bool = False
    drafter: str = NO_DRAFTER
    jobs: int | None = None
    dataset: str | None = None  # data-aware int4 (`compress/calibrate.py`): "corpus" or a .txt/.jsonl file
    num_samples: int | None = None  # calibration windows (default calibrate.DEFAULT_SAMPLES)
    scale_estimation: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", Path(self.src))
        object.__setattr__(self, "output", Path(self.output))
        if self.weight_format is None:
            object.__setattr__(self, "weight_format", AUTO.name)
        format_named(self.weight_format)
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs {self.jobs}: at least 1")
        if self.drafter not in DRAFTERS:
            raise ValueError(f"--drafter {self.drafter}: choose one of {', '.join(DRAFTERS)}")
        if self.num_samples is not None and (self.dataset is None or self.num_samples < 1):
            raise ValueError(f"--num-samples {self.num_samples}: " + ("a positive number of calibration windows"
                                                                     if self.dataset else "only with --dataset"))
        if self.prefill_only and self.drafter in (MTP, DSPARK):
            raise ValueError(f"--drafter {self.drafter} needs the stateful IR (the drafter keeps state); not "
                             "with --prefill-only")

    def drafter_for(self, has: str | None) -> str | None:
        """The drafter to export for a checkpoint whose drafter is `has` ("mtp", "dspark" or None, its
        `config.drafter`): "mtp", "dspark" or None. `auto` is the checkpoint's (none for a prefill-only
        export); an explicit drafter the checkpoint lacks raises ValueError."""
        if self.drafter in (MTP, DSPARK) and has != self.drafter:
            names = {MTP: "MTP block", DSPARK: "DSpark drafter"}
            raise ValueError(f"--drafter {self.drafter}: the checkpoint has no {names[self.drafter]}"
                             + (f" (it has a {names[has]}: --drafter {has})" if has else ""))
        if self.drafter in (MTP, DSPARK) or (self.drafter == AUTO_DRAFTER and not self.prefill_only):
            return has
        return None

    @property
    def format(self) -> WeightFormat:
        return format_named(self.weight_format)

    @property
    def native(self) -> bool:
        return self.format.keeps_release_codes

    @property
    def auto(self) -> bool:
        return self.format.resolved_from_source

    def resolved(self, storage_format: str) -> ExportOptions:
        """These options with `auto` replaced by the format it stands for on a source stored as
        `storage_format`; explicit formats are returned unchanged."""
        return replace(self, weight_format=default_format(storage_format).name) if self.auto else self

    def compression(self) -> CompressionOptions:
        """The NNCF options (fp32, i.e. none, for `native`); raises ValueError naming a misapplied option."""
        if self.auto:
            raise ValueError("--weight-format auto is resolved from the source; call resolved(checkpoint.fmt) first")
        nncf = (self.group_size, self.sym, self.ratio, self.backup_precision, self.all_layers, self.awq,
                self.group_size_fallback, self.head_precision)
        if self.native:
            check_native_options(*nncf)
        if self.dataset is not None and not self.format.data_aware:
            raise ValueError(f"--dataset applies to {', '.join(DATA_AWARE_FORMATS)} (NNCF's data-aware 4-bit "
                             f"algorithms), not {self.weight_format}")
        if self.scale_estimation and self.dataset is None:
            raise ValueError("--scale-estimation is data-aware: it needs --dataset")
        opts = CompressionOptions(FP32.name if self.native else self.weight_format, *nncf,
                                  scale_estimation=self.scale_estimation)
        opts.validate()
        return opts

    @property
    def samples(self) -> int:
        """Calibration windows of a data-aware export."""
        from deepseek_v4_ov.compress.calibrate import DEFAULT_SAMPLES

        return self.num_samples or DEFAULT_SAMPLES

    def quantization_config(self) -> dict[str, Any]:
        """The resolved compression options as openvino_config.json records them."""
        if self.native:
            return {"weight_format": self.weight_format}
        data = {"dataset": self.dataset, "num_samples": self.samples} if self.dataset else {}
        return {**self.compression().resolved(), **data}
