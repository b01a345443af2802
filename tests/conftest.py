"""Shared fixtures: toys generated once per session, the transformers 5.23 reference runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))  # the training scripts, for the trained toys' tests
sys.path.insert(0, str(ROOT / "benchmarks"))  # nncf_reference, the benchmarks' helpers
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from deepseek_v4_ov.toys.writer import write_toy  # noqa: E402
from deepseek_v4_ov.toys.presets import PRESETS  # noqa: E402

TOY_SEED = 0


def prompt(length: int, batch: int = 1, seed: int = 1, vocab: int = 512) -> torch.Tensor:
    """A fixed random prompt (ids 2.. so that bos/eos never appear)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, length), generator=g)


@torch.no_grad()
def greedy(model, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation with the model's own cache, no EOS stop: `[B, new_tokens]`."""
    out = model(input_ids)
    cache, tokens = out.past_key_values, []
    for _ in range(new_tokens):
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
        out = model(tokens[-1], past_key_values=cache)
    return torch.cat(tokens, 1)


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """toy(name) -> (folder, in-memory FP32 model) for a preset, generated once per session (fp32 storage)."""
    made: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(name: str):
        if name not in made:
            folder = tmp_path_factory.mktemp("toys") / name
            model = write_toy(folder, PRESETS[name], seed=TOY_SEED, fmt="fp32")
            made[name] = (folder, model)
        return made[name]

    return get


def reference_python() -> str:
    """The transformers 5.23 interpreter (built by `make setup` as .venv-ref)."""
    python = os.environ.get("DSV4_REF_PYTHON", str(ROOT / ".venv-ref" / "bin" / "python"))
    if not Path(python).exists():
        pytest.fail(f"reference interpreter {python} missing: run `make setup` (it builds .venv-ref)")
    return python


def run_reference(folder: Path, jobs: list[dict], workdir: Path) -> dict[str, np.ndarray]:
    """Run transformers 5.23's native DeepseekV4ForCausalLM on `folder` (tests/reference/hf_v4_runner.py)."""
    requests, out = workdir / "requests.json", workdir / "reference.npz"
    requests.write_text(json.dumps({"jobs": jobs}))
    cmd = [reference_python(), str(ROOT / "tests" / "reference" / "hf_v4_runner.py"),
           "--model", str(folder), "--requests", str(requests), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode:
        pytest.fail(f"reference runner failed:\n{result.stderr[-4000:]}")
    return dict(np.load(out))
