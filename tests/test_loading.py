"""Loading a toy folder offline in a fresh process, and bad input named by the error."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import prompt
from deepseek_v4_ov.checkpoint.layout import CheckpointError, CheckpointReader, read_config
from deepseek_v4_ov.model.configuration_deepseek_v4 import DeepseekV4Config

LOAD_SCRIPT = """
import sys, numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    np.save(sys.argv[3], model(ids).logits.numpy())
"""


def test_fresh_process_loads_toy_with_trust_remote_code(toy, tmp_path):
    folder, model = toy("full")
    copy = tmp_path / "only-generated-files"
    shutil.copytree(folder, copy)
    ids = prompt(150)
    np.save(tmp_path / "ids.npy", ids.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    # run outside the repo so that nothing but the folder's own .py files can provide the model
    subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(copy), str(tmp_path / "ids.npy"), str(tmp_path / "out.npy")],
                   check=True, cwd=tmp_path, env=env)
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="compress_ratios.*needs num_hidden_layers"):
        DeepseekV4Config(num_hidden_layers=4, compress_ratios=[0, 0, 4], num_nextn_predict_layers=0)
    with pytest.raises(ValueError, match="unknown ratio.*16"):
        DeepseekV4Config(num_hidden_layers=2, compress_ratios=[0, 16], num_nextn_predict_layers=0, num_hash_layers=0)
    with pytest.raises(ValueError, match="index_topk"):
        DeepseekV4Config(index_topk=0)
    with pytest.raises(ValueError, match="o_groups"):
        DeepseekV4Config(num_attention_heads=6, o_groups=4)


def test_bad_config_json_is_named(toy, tmp_path):
    folder = toy("seed")[0]
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["compress_ratios"] = [0, 0, 4]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*compress_ratios"):
        read_config(broken)
    cfg["model_type"] = "llama"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type is 'llama'"):
        read_config(broken)


def test_missing_shard_is_named(toy, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(toy("seed")[0], broken)
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}: shard listed .* missing"):
        CheckpointReader(broken)


def test_misshaped_tensor_is_named(toy, tmp_path):
    folder, model = toy("seed")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    reader = CheckpointReader(broken)
    name = "layers.2.attn.wq_b.weight"
    shard = broken / reader.weight_map[name]
    tensors = load_file(shard)
    tensors[name] = tensors[name][:-1]
    save_file(tensors, shard, metadata={"format": "pt"})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor '{name}' has shape \[127, 64\], expected \[128, 64\]"):
        CheckpointReader(broken).check_against(expected)
    # transformers' own loader refuses it too, naming the parameter
    from transformers import AutoModelForCausalLM

    with pytest.raises(Exception, match="wq_b"):
        AutoModelForCausalLM.from_pretrained(broken, trust_remote_code=True, dtype=torch.float32)


def test_toy_is_deterministic_and_not_degenerate(toy, tmp_path):
    from deepseek_v4_ov.toys.writer import write_toy
    from deepseek_v4_ov.toys.presets import PRESETS

    folder, model = toy("full")
    again = write_toy(tmp_path / "again", PRESETS["full"], seed=0, fmt="fp32")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
        if a.is_floating_point() and a.numel() > 1:
            assert a.std() > 0, f"{name} is constant"
    assert (model.layers[0].ffn.gate.tid2eid.sort(-1).values.diff(dim=-1) > 0).all(), "tid2eid rows repeat an expert"
    with torch.no_grad():
        logits = model(prompt(64)).logits
    assert logits.std() > 0.5 and logits.softmax(-1).amax() < 0.99  # not saturated
    assert len(set(logits.argmax(-1)[0].tolist())) > 20  # greedy tokens vary
    assert Path(folder, "model.safetensors.index.json").is_file()
