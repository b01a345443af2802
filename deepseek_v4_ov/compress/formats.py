"""The output weight formats (`--weight-format`) as records: what each stage asks of a format is a field or a
property here, and this is the one module that compares format names (`tests/test_formats.py` checks).

Adding an output format: one `WeightFormat` record below, listed in `OUTPUT_FORMATS` (the CLI, the dry run's
projections and `format_named` follow), plus its compression code: for a format the precision policy
compresses, its quantiser scheme (`compress/quantise.py`, keyed by `nncf_mode`) or NNCF mode; for one that
keeps the source's own encodings, its subgraphs (as `compress/native.py`). Every stage reads the record's
fields (`quantised`, `bits`, `default_group_size`, ...), so no stage changes unless the format needs a new
kind of answer, which is then a new field.

(Not to be confused with a source checkpoint's storage format, `checkpoint.release.STORAGE_FORMATS`: bf16,
fp32 or fp8, the release layout.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFormat:
    """One `--weight-format`. `bits`: bits per element of the primary matrices (the routed experts, stored
    in 4 bit by the release) as the IR stores them, scales apart (None: not known before the source is)."""

    name: str
    bits: int | None
    quantised: bool = False  # codes + scales written by the policy's quantiser or NNCF (int8, int4, mxfp4)
    integer: bool = False  # integer codes: --sym / --asym choose whether a zero point is stored
    default_sym: bool = False  # symmetric unless --sym / --asym says
    default_group_size: int | None = None  # inputs per scale without --group-size (-1: per output channel)
    group_rule: str = ""  # why --group-size can only be `default_group_size` ("": any group)
    scale_bits: int = 0  # bits of one scale: f16, or E8M0 for the MX format
    takes_awq: bool = False  # NNCF's AWQ (--awq)
    data_aware: bool = False  # NNCF's data-aware algorithms (--dataset, --scale-estimation)
    nncf_mode: str = ""  # NNCF's CompressWeightsMode (integer formats: plus _sym / _asym, `mode`)
    keeps_release_codes: bool = False  # the release's FP4/FP8 codes carried into the IR (`compress/native.py`)
    resolved_from_source: bool = False  # stands for `default_format` of the source
    cpu_expansion: float | None = None
    """Private memory per byte of IR weights that OpenVINO 2026.4.1's CPU plugin holds for a format whose routed
    experts it expands when compiling (None: kept compressed, ~1.0-1.15x): f4e2m1 experts in GatherMatmul
    become f32. Measured with `benchmarks/upstream/compressed_moe.py --form grouped --weights f4e2m1` (256
    experts 2048 x 4096; form "experts grouped f4e2m1 (native)" in
    benchmarks/results/v4_flash_projection.json)."""

    @property
    def policy(self) -> bool:
        """Compressed under the precision policy (`compress/policy.py`, `CompressionOptions`)."""
        return not (self.keeps_release_codes or self.resolved_from_source)

    @property
    def compressed(self) -> bool:
        """Whether the policy changes any weight (every policy format but fp32)."""
        return self.policy and self.bits < 32

    @property
    def eight_bit_primary(self) -> bool:
        """The primary matrices in 8 bit: the policy's 8-bit tensors take the format itself."""
        return self.quantised and self.bits == 8

    @property
    def four_bit(self) -> bool:
        return self.quantised and self.bits == 4

    def mode(self, sym: bool) -> str:
        """NNCF's CompressWeightsMode name (the quantiser's scheme mode)."""
        return f"{self.nncf_mode}_{'sym' if sym else 'asym'}" if self.integer else self.nncf_mode

    def stored_bits(self, sym: bool, group: int) -> float:
        """Storage bits per weight element with `group` inputs per scale: the codes, the scale and (asymmetric
        integer formats) the zero point."""
        return self.bits + (self.scale_bits + (self.bits if self.integer and not sym else 0)) / group


FP32 = WeightFormat("fp32", 32)
FP16 = WeightFormat("fp16", 16)
INT8 = WeightFormat("int8", 8, quantised=True, integer=True, default_group_size=-1,
                    group_rule="int8 is per output channel (-1) here", scale_bits=16, nncf_mode="int8")
INT4 = WeightFormat("int4", 4, quantised=True, integer=True, default_sym=True, default_group_size=64, scale_bits=16,
                    takes_awq=True, data_aware=True, nncf_mode="int4")
MXFP4 = WeightFormat("mxfp4", 4, quantised=True, default_group_size=32,
                     group_rule="mxfp4 uses groups of 32 (the MX block size)", scale_bits=8, nncf_mode="mxfp4",
                     cpu_expansion=14.6)
NATIVE = WeightFormat("native", 4, keeps_release_codes=True, cpu_expansion=14.6)
AUTO = WeightFormat("auto", None, resolved_from_source=True)

OUTPUT_FORMATS = (FP32, FP16, INT8, INT4, MXFP4, NATIVE, AUTO)
"""Every `--weight-format`."""
WEIGHT_FORMATS = tuple(f.name for f in OUTPUT_FORMATS if f.policy)
"""The formats the precision policy compresses: fp32, fp16, int8, int4, mxfp4."""
QUANTISED_FORMATS = tuple(f.name for f in OUTPUT_FORMATS if f.quantised)
FOUR_BIT_FORMATS = tuple(f.name for f in OUTPUT_FORMATS if f.four_bit)
DATA_AWARE_FORMATS = tuple(f.name for f in OUTPUT_FORMATS if f.data_aware)
RELEASE_DEFAULT = INT4
"""`auto` for a release-layout (FP8/FP4) source: the runnable 4-bit format (as optimum-cli defaults large
models to int8); sources in BF16/FP32 (the toys) keep fp32."""
_BY_NAME = {f.name: f for f in OUTPUT_FORMATS}


def format_named(name: str, policy: bool = False) -> WeightFormat:
    """The record of `--weight-format name` (`policy`: one the precision policy compresses); ValueError
    naming the choices otherwise."""
    fmt = _BY_NAME.get(name)
    if fmt is None or (policy and not fmt.policy):
        raise ValueError(f"unsupported weight format {name!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    return fmt


def default_format(source_format: str) -> WeightFormat:
    """The format `auto` stands for, given the source's validated storage format (`Checkpoint.fmt`)."""
    return RELEASE_DEFAULT if source_format == "fp8" else FP32
