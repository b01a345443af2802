"""Which drafter a checkpoint carries under `mtp.*`, as config.json says and as the index holds, and whether
the two agree.

Three layouts: none (a target-only folder), MTP (the base release `DeepSeek-V4-Flash`: `mtp.0` with
`e_proj`/`h_proj`/`enorm`/`hnorm`) and DSpark (the `-DSpark` and `-0731` releases: the `dspark_*` config
keys and stages `mtp.0..` with `main_proj`/`main_norm` on the first and `markov_head`/`confidence_head` on the
last). The number of blocks is counted from the index's `mtp.N` prefixes and compared with the config's
(`DeepseekV4Config.drafter_blocks`); `num_nextn_predict_layers`, which still says 1 in the DSpark releases, is
never taken for the DSpark stage count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deepseek_v4_ov.checkpoint.layout import INDEX_NAME, CheckpointError
from deepseek_v4_ov.model.configuration_deepseek_v4 import DSPARK, MTP, DeepseekV4Config

STAGE_RE = re.compile(r"mtp\.(\d+)\.(\w+)")
MARKERS = {DSPARK: ("main_proj", "main_norm", "markov_head", "confidence_head"),
           MTP: ("e_proj", "h_proj", "enorm", "hnorm")}
"""Module names under `mtp.N.` that only one kind of drafter has."""
ARTICLED = {MTP: "an MTP", DSPARK: "a DSpark"}


@dataclass(frozen=True)
class IndexDrafter:
    """The drafter tensors a checkpoint's index lists: tensors per `mtp.N` stage (file tensors, scales
    included), the kind their names show (None if there are none, "unknown" if they show neither), and one
    name that shows it."""

    stage_tensors: dict[int, int]
    kind: str | None
    evidence: str | None

    @property
    def stages(self) -> int:
        return len(self.stage_tensors)

    def describe(self) -> str:
        if not self.stage_tensors:
            return "no mtp.* tensor"
        numbers = sorted(self.stage_tensors)
        names = (f"mtp.0..mtp.{numbers[-1]}" if len(numbers) > 1 and numbers == list(range(len(numbers)))
                 else ", ".join(f"mtp.{n}" for n in numbers))
        kind = (f"{ARTICLED[self.kind]} drafter (e.g. {self.evidence!r})" if self.kind in ARTICLED
                else f"a drafter of neither kind (no {', '.join(MARKERS[DSPARK] + MARKERS[MTP])})")
        return f"{sum(self.stage_tensors.values()):,} mtp.* tensors in {self.stages} stage(s) {names}: {kind}"


def index_drafter(names: Iterable[str]) -> IndexDrafter:
    """What the checkpoint's tensor names (`mtp.N.*`) show of its drafter."""
    counts: dict[int, int] = {}
    found: dict[str, str] = {}
    for name in names:
        m = STAGE_RE.match(name)
        if m:
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
            for kind, modules in MARKERS.items():
                if m.group(2) in modules:
                    found.setdefault(kind, name)
    if not counts:
        return IndexDrafter({}, None, None)
    kind = DSPARK if DSPARK in found else MTP if MTP in found else "unknown"
    return IndexDrafter(dict(sorted(counts.items())), kind, found.get(kind))


def config_drafter_text(config: DeepseekV4Config) -> str:
    """What config.json says of the drafter, with the keys it is read from."""
    n = config.drafter_blocks
    if config.drafter == DSPARK:
        return (f"a DSpark drafter of {n} stage(s) (dspark_* keys; compress_ratios has {len(config.compress_ratios)} "
                f"entries for {config.num_hidden_layers} decoder layers)")
    if config.drafter == MTP:
        return f"an MTP drafter of {n} block(s) (num_nextn_predict_layers={n}, no dspark_* keys)"
    return "no drafter (num_nextn_predict_layers=0, no dspark_* keys)"


def check_drafter(config: DeepseekV4Config, names: Iterable[str], folder: Path) -> None:
    """CheckpointError naming the folder and both descriptions unless the index's `mtp.N` stages (numbered
    0..n-1) are of the kind config.json declares and as many as it implies."""
    found = index_drafter(names)
    if (found.kind, found.stages) == (config.drafter, config.drafter_blocks) and \
            sorted(found.stage_tensors) == list(range(found.stages)):
        return
    hint = ""
    if config.drafter == DSPARK and found.kind == DSPARK:
        hint = ("; the DSpark stage count is len(compress_ratios) - num_hidden_layers (num_nextn_predict_layers "
                "is not used for it)")
    elif found.kind == DSPARK:
        hint = "; a DSpark checkpoint's config.json needs the dspark_* keys"
    raise CheckpointError(f"{folder}: config.json declares {config_drafter_text(config)} but {INDEX_NAME} has "
                          f"{found.describe()}{hint}")


@dataclass(frozen=True)
class DrafterSummary:
    """A checked checkpoint's drafter for reports: kind (None, "mtp", "dspark"), tensors per stage, and the
    DSpark parameters (None for the others)."""

    kind: str | None
    stage_tensors: tuple[int, ...]
    block_size: int | None = None
    target_layers: tuple[int, ...] | None = None
    markov_rank: int | None = None
    noise_token_id: int | None = None

    def describe(self) -> str:
        if self.kind is None:
            return "none"
        per_stage = (f"tensors per {'stage' if self.kind == DSPARK else 'block'} "
                     f"{'/'.join(f'mtp.{j}' for j in range(len(self.stage_tensors)))}: "
                     + " / ".join(f"{n:,}" for n in self.stage_tensors))
        if self.kind == MTP:
            return f"MTP-{len(self.stage_tensors)} (base release), {per_stage}"
        return (f"DSpark (-DSpark/-0731 releases), {len(self.stage_tensors)} stages, block size {self.block_size}, "
                f"target layers {list(self.target_layers)}, Markov rank {self.markov_rank}, noise token "
                f"{self.noise_token_id}; {per_stage}")


def drafter_summary(config: DeepseekV4Config, names: Iterable[str]) -> DrafterSummary:
    """The drafter of a checkpoint whose `names` were checked against `config` (`check_drafter`)."""
    stages = tuple(index_drafter(names).stage_tensors.values())
    if config.drafter != DSPARK:
        return DrafterSummary(config.drafter, stages)
    return DrafterSummary(DSPARK, stages, config.dspark_block_size, tuple(config.dspark_target_layer_ids),
                          config.dspark_markov_rank, config.dspark_noise_token_id)
