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


def load_ov_causal_lm(folder: Path | str, last_logits: bool = False, **kwargs):
    """`OVModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs)` for an exported folder,
    without the spurious warnings listed in the module docstring. `last_logits`: every call returns the last
    position's logits only (`[B, 1, vocab]`; the head runs on that position, as in GenAI's LLMPipeline), which
    is all `generate` reads; perplexity through `forward` needs the default (every position)."""
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoConfig

    from deepseek_v4_ov.runtime.ov_lm import keep_last_logits

    folder = Path(folder).resolve()
    if not (folder / "openvino_model.xml").is_file():
        raise FileNotFoundError(f"{folder}: no openvino_model.xml (export the model first)")
    kwargs.setdefault("trust_remote_code", True)
    kwargs.setdefault("config", AutoConfig.from_pretrained(str(folder), trust_remote_code=kwargs["trust_remote_code"]))
    note_filter = _DropOfflineNote()
    logger = logging.getLogger("optimum.intel.openvino.modeling_base")
    logger.addFilter(note_filter)
    compile_now = kwargs.pop("compile", True)
    try:
        model = OVModelForCausalLM.from_pretrained(str(folder), export=False, compile=False, **kwargs)
    finally:
        logger.removeFilter(note_filter)
    if last_logits:
        keep_last_logits(model.model, last=1)
    if compile_now:
        model.compile()
    return model
