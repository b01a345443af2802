"""Loading an exported folder through optimum-intel without its spurious warnings.

`OVModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` prints, for every local folder:

* "The module name  (originally ) is not a valid Python identifier" twice: optimum 2.3 reads the config as
  `AutoConfig.from_pretrained(os.path.join(folder, subfolder))` with `subfolder=""`, i.e. a path ending in
  "/", whose basename (transformers' dynamic-module name) is empty. Passing the config ourselves skips that
  call; the config is read from `folder` itself, so the module name is the folder's name.
* "Path.replace() takes 2 positional arguments" when `folder` is a `pathlib.Path` (optimum-intel calls
  `str.replace` on it while looking for IR files): passing `str(folder)` avoids it.
* with HF_HUB_OFFLINE=1, "Could not infer whether the model was already converted or not to the OpenVINO
  IR": huggingface_hub's offline lookup of a local path fails inside optimum-intel, which then keeps
  `export=False` (the right answer for a folder holding openvino_model.xml). `load_ov_causal_lm` checks that
  file itself and drops exactly that message while it loads.
"""

from __future__ import annotations

import logging
from pathlib import Path

_OFFLINE_NOTE = "Could not infer whether the model was already converted or not to the OpenVINO IR"


class _DropOfflineNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_OFFLINE_NOTE)


def load_ov_causal_lm(folder: Path | str, **kwargs):
    """`OVModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs)` for an exported folder,
    without the spurious warnings listed in the module docstring."""
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoConfig

    folder = Path(folder).resolve()
    if not (folder / "openvino_model.xml").is_file():
        raise FileNotFoundError(f"{folder}: no openvino_model.xml (export the model first)")
    kwargs.setdefault("trust_remote_code", True)
    kwargs.setdefault("config", AutoConfig.from_pretrained(str(folder), trust_remote_code=kwargs["trust_remote_code"]))
    note_filter = _DropOfflineNote()
    logger = logging.getLogger("optimum.intel.openvino.modeling_base")
    logger.addFilter(note_filter)
    try:
        return OVModelForCausalLM.from_pretrained(str(folder), export=False, **kwargs)
    finally:
        logger.removeFilter(note_filter)
