"""NNCF 3.4.0's `compress_weights`, the reference the exact quantiser (compress/quantise.py) is held to: the
same call signature as `quantise.compress_ops`, so that a test can run the whole precision policy on NNCF
(`monkeypatch.setattr(policy, "compress_ops", nncf_reference.compress_ops)`)."""

from __future__ import annotations

import contextlib
import io

import openvino as ov

WEIGHTED = {"MatMul", "GroupedMatMul", "Gather"}


def compress_ops(ov_model: ov.Model, op_names: set[str], mode: str, group_size: int = -1, fallback: str = "error",
                 backup: str | None = None) -> ov.Model:
    """`nncf.compress_weights` in place on the weights of the ops `op_names` (every other weighted op in the
    ignored scope), all_layers, ratio 1, as the policy calls it."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    nncf.set_log_level(40)
    kwargs = {}
    if not mode.startswith("int8"):
        kwargs = dict(all_layers=True, ratio=1.0, group_size=group_size, backup_mode=nncf.BackupMode(backup or "none"),
                      advanced_parameters=AdvancedCompressionParameters(
                          group_size_fallback_mode=GroupSizeFallbackMode(fallback)))
    ignored = [op.get_friendly_name() for op in ov_model.get_ops()
               if op.get_type_name() in WEIGHTED and op.get_friendly_name() not in op_names]
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bar
        out = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode(mode),
                                    ignored_scope=nncf.IgnoredScope(names=ignored, validate=False), **kwargs)
    assert out is ov_model  # the OpenVINO backend works in place, as the policy relies on
    return out
