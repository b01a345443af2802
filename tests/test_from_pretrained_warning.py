"""Issue 21 item 6, loading as users load: what optimum-intel's own
`OVModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` logs for an exported folder.

It logs "The module name  (originally ) is not a valid Python identifier" twice, from
transformers.dynamic_module_utils, and nothing in the folder can avoid it: optimum's
`OptimizedModel.from_pretrained` reads the config from `os.path.join(folder, "")` (a path ending in "/")
and transformers 5.5 names the dynamic module after that path's basename, "" (docs/loading.md,
benchmarks/upstream/dynamic_module_name.py). So this test pins the documented cause: every warning the
load logs is one of the known upstream ones, with the expected count, and nothing else (no other log
record at WARNING or above, no Python warning). It fails when a change to the folder adds a warning, and
when an upgrade removes the upstream ones (then docs/loading.md and this test are to be updated).

The folder holds what the exporter writes besides the IR (config.json, the bundled configuration_/modeling_
files, generation_config.json, openvino_config.json: `write_folder`, the exporter's own writer) and a stand-in
stateful IR with the inputs and output optimum-intel reads, since a real export takes minutes and the
warnings come from reading config.json (loading a real `deepseek-v4-ov export` of the seed toy logs the same
three lines with HF_HUB_OFFLINE=1, two without).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import openvino as ov
import pytest

from conftest import ROOT
from deepseek_v4_ov.export.folder import IR_XML, openvino_config, write_folder

sys.path.insert(0, str(ROOT / "benchmarks" / "upstream"))
from dynamic_module_name import stand_in_ir  # noqa: E402  (the reproducer's stand-in IR)

MODULE_NAME = "The module name  (originally ) is not a valid Python identifier"
OFFLINE_NOTE = "Could not infer whether the model was already converted or not to the OpenVINO IR"


@pytest.fixture(scope="module")
def folder(toy, tmp_path_factory) -> Path:
    src, model = toy("seed")
    out = tmp_path_factory.mktemp("load") / "seed-ov"
    out.mkdir()
    write_folder(out, src, model.config, openvino_config("fp32", False, {}, 1, src, "fp32"), tokenizer=False)
    ov.save_model(stand_in_ir(model.config.vocab_size), out / IR_XML)
    return out


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record not in self.records:
            self.records.append(record)


def logged(call) -> list[tuple[str, str]]:
    """(logger name, first line of the message) of every record at WARNING or above that `call()` logs, and
    no Python warning. transformers' and optimum's library loggers do not propagate to the root logger, so
    the handler sits on all three."""
    capture = _Capture()
    loggers = [logging.getLogger(), logging.getLogger("transformers"), logging.getLogger("optimum")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
    assert not [str(w.message) for w in caught], "Python warnings while loading"
    return [(r.name, r.getMessage().splitlines()[0]) for r in capture.records]


def known_upstream() -> list[tuple[str, str]]:
    """What optimum-intel 2.2.0 + optimum 2.3.0 + transformers 5.5 log for any local trust_remote_code folder."""
    from huggingface_hub import is_offline_mode

    module_name = ("transformers.dynamic_module_utils",
                   MODULE_NAME + ". Please rename the original module to avoid import issues.")
    offline = [("optimum.intel.openvino.modeling_base", OFFLINE_NOTE + ", keeping `export=False`.")]
    return [*(offline if is_offline_mode() else []), module_name, module_name]


def test_optimum_intel_load_logs_only_the_documented_upstream_warnings(folder):
    from optimum.intel import OVModelForCausalLM

    models = []
    got = logged(lambda: models.append(OVModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True)))
    assert models[0].stateful and models[0].config.model_type == "deepseek_v4"
    assert got == known_upstream(), "not the upstream warnings docs/loading.md describes"


def test_the_module_name_warning_is_the_trailing_slash(folder):
    """The cause: the same config read from `folder` logs nothing, from `folder/` (what optimum passes) the
    warning twice; so config.json and the bundled files are not what transformers complains about."""
    from transformers import AutoConfig

    assert logged(lambda: AutoConfig.from_pretrained(str(folder), trust_remote_code=True)) == []
    slash = logged(lambda: AutoConfig.from_pretrained(os.path.join(folder, ""), trust_remote_code=True))
    assert [(name, msg.split(".")[0]) for name, msg in slash] == [("transformers.dynamic_module_utils",
                                                                    MODULE_NAME)] * 2


def test_load_ov_causal_lm_logs_nothing(folder):
    """The workaround docs/loading.md gives (our wrapper: the config passed in, read from `folder`)."""
    from deepseek_v4_ov.runtime.ov_load import load_ov_causal_lm

    assert logged(lambda: load_ov_causal_lm(folder)) == []
