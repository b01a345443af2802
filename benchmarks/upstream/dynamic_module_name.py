"""Upstream reproducer: optimum-intel's own load of a local `trust_remote_code` folder warns
"The module name  (originally ) is not a valid Python identifier" twice (transformers 5.5.4, optimum 2.3.0,
optimum-intel 2.2.0).

Standalone (transformers, optimum-intel and openvino only): it writes a folder holding a one-line custom
config (config.json `auto_map.AutoConfig` -> configuration_repro.py) and a 4-input stateful stand-in IR,
then loads it three ways and prints every warning each load logs (without optimum-intel installed, only
the first two):

1. `AutoConfig.from_pretrained(folder)`: none.
2. `AutoConfig.from_pretrained(folder + "/")`: the warning twice. transformers'
   `dynamic_module_utils.get_cached_module_file` names the dynamic module after
   `os.path.basename(path)` (lines 380 and 416 in 5.5.4), which is "" for a path ending in "/", and
   `_sanitize_module_name("")` warns that "" is no identifier. The module then lands directly in
   `transformers_modules/` instead of `transformers_modules/<folder name>/`; the classes are the same.
3. `OVModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`: the warning twice, because
   optimum's `OptimizedModel.from_pretrained` (optimum/modeling_base.py) reads the config with
   `AutoConfig.from_pretrained(os.path.join(model_id, config_folder))` and `config_folder` is "" for a
   config at the top of the folder, so the path it hands over ends in "/".

With HF_HUB_OFFLINE=1, load 3 also logs optimum-intel's "Could not infer whether the model was already
converted or not to the OpenVINO IR, keeping `export=False`" (`OVBaseModel.from_pretrained` looks the
local path up in the hub cache as if it were a repo id); `export=False` is right for a folder holding
openvino_model.xml.

transformers 5.23.0 (the reference venv) names the module after `os.path.basename(os.path.normpath(path))`
and logs nothing in load 2; optimum-intel 2.2.0 requires transformers<5.6, so that is out of reach here.

Run: python benchmarks/upstream/dynamic_module_name.py
"""

import logging
import os
import tempfile
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

CONFIG_PY = """from transformers import PretrainedConfig


class ReproConfig(PretrainedConfig):
    model_type = "repro_remote"
"""


def stand_in_ir(vocab: int):
    """input_ids/attention_mask/position_ids/beam_idx -> logits, one state: what optimum-intel expects."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    params = [ops.parameter([-1, -1], ov.Type.i64, name=n) for n in ("input_ids", "attention_mask", "position_ids")]
    params.append(ops.parameter([-1], ov.Type.i32, name="beam_idx"))
    for p in params:
        p.output(0).get_tensor().set_names({p.get_friendly_name()})
    info = VariableInfo()
    info.data_shape, info.data_type, info.variable_id = ov.PartialShape([-1, -1]), ov.Type.f32, "past"
    var = Variable(info)
    state = ops.gather(ops.read_value(ops.convert(params[0], ov.Type.f32), var), params[3], 0)
    logits = ops.gather(ops.constant(np.eye(vocab, dtype=np.float32)), params[0], 0)
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits.output(0)], [ops.assign(state, var)], params, "stand_in")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        if record not in self.records:
            self.records.append(record)


def load(title: str, call) -> None:
    capture = Capture()
    # transformers' and optimum's library loggers do not propagate to the root logger
    loggers = [logging.getLogger(), logging.getLogger("transformers"), logging.getLogger("optimum")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        call()
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
    print(f"{title}: {len(capture.records)} warning(s)")
    for r in capture.records:
        print(f"    [{r.name}] {r.getMessage().splitlines()[0]}")


def main() -> None:
    from transformers import AutoConfig

    folder = Path(tempfile.mkdtemp()) / "repro-model"
    folder.mkdir()
    (folder / "configuration_repro.py").write_text(CONFIG_PY)
    (folder / "config.json").write_text(
        '{"model_type": "repro_remote", "vocab_size": 8,'
        ' "auto_map": {"AutoConfig": "configuration_repro.ReproConfig"}}\n')
    has_optimum = find_spec("optimum") is not None and find_spec("optimum.intel") is not None
    names = ("transformers", "optimum", "optimum-intel") if has_optimum else ("transformers",)
    print(", ".join(f"{name} {version(name)}" for name in names),
          f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}")
    load(f"1. AutoConfig.from_pretrained({str(folder)!r})",
         lambda: AutoConfig.from_pretrained(str(folder), trust_remote_code=True))
    load(f"2. AutoConfig.from_pretrained({str(folder) + '/'!r})",
         lambda: AutoConfig.from_pretrained(str(folder) + "/", trust_remote_code=True))
    if not has_optimum:
        print("3. skipped: optimum-intel is not installed")
        return
    import openvino as ov
    from optimum.intel import OVModelForCausalLM

    ov.save_model(stand_in_ir(8), folder / "openvino_model.xml")
    load("3. OVModelForCausalLM.from_pretrained(folder, trust_remote_code=True)",
         lambda: OVModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True))


if __name__ == "__main__":
    main()
