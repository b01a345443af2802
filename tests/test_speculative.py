"""Speculative decoding on OpenVINO (`export --drafter mtp`, runtime/speculative.py, `generate`): the drafter
IR against the port's `mtp_logits`, speculative output token for token equal to plain greedy decoding across
the sliding-window and ratio-128 boundaries (with the MTP drafter, and with a scripted drafter of K drafts
that accepts and rejects on a pattern), the CLI's JSON, and the refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import openvino as ov
import pytest
import torch

from conftest import prompt
from deepseek_v4_ov.checkpoint.layout import CheckpointError
from deepseek_v4_ov.cli import main as cli
from deepseek_v4_ov.convert.stateful import TAPS
from deepseek_v4_ov.export.folder import DRAFTER_XML
from deepseek_v4_ov.export.pipeline import export
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM
from deepseek_v4_ov.runtime.speculative import MTPDrafter, speculative_greedy

# FP32 IR against the FP32 port: the same operations, summed in a different order by OpenVINO's kernels;
# measured ~6e-6 on logits of magnitude ~5 (the port's chunked-vs-whole tolerance in test_mtp is 1e-4 too).
TOL = 1e-4
PROMPT, NEW = 100, 60  # positions 100..160: the window (16) is crossed many times and the HCA ratio 128 once


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory):
    """The `full` toy (window 16, ratios [0,0,4,128,4,128], one MTP block) exported with its MTP drafter."""
    folder, model = toy("full")
    out = tmp_path_factory.mktemp("spec") / "full-mtp"
    export(folder, out, log=lambda line: None, drafter="mtp", convert_tokenizer=False, whole=True)
    return folder, model, out


@pytest.fixture(scope="module")
def runtime(exported):
    _, _, out = exported
    core = ov.Core()
    return OVCausalLM(out, config=F32_CONFIG, core=core), MTPDrafter(out / DRAFTER_XML, core, config=F32_CONFIG)


class ScriptedDrafter:
    """Proposes the next K tokens of a known sequence, wrong where `wrong(step, k)` says: every acceptance
    length 0..K occurs. It checks that it is fed exactly the committed tokens, in order, once."""

    def __init__(self, sequence: list[int], prompt_len: int, k: int, wrong) -> None:
        self.sequence, self.prompt_len, self.drafts_per_step, self.wrong = sequence, prompt_len, k, wrong

    def reset(self) -> None:
        self.seen, self.step = 1, 0  # positions t whose token t+1 has been fed: t < seen - 1

    def propose(self, taps: np.ndarray, next_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert taps.shape[:2] == next_ids.shape and taps.shape[1] >= 1
        assert next_ids[0].tolist() == self.sequence[self.seen: self.seen + next_ids.shape[1]]
        self.seen += next_ids.shape[1]
        drafts = [t + 1 if self.wrong(self.step, k) else t
                  for k, t in enumerate(self.sequence[self.seen: self.seen + self.drafts_per_step])]
        drafts += [0] * (self.drafts_per_step - len(drafts))  # past the known sequence: anything
        self.step += 1
        return np.array([drafts]), np.ones((1, self.drafts_per_step))


def test_drafter_ir_equals_port(exported, runtime):
    _, model, _ = exported
    target, drafter = runtime
    ids = prompt(PROMPT + 41, seed=31)
    with torch.no_grad():
        out = model(ids[:, :-1])
        ref = model.mtp_logits(out.streams, ids[:, 1:], model.empty_cache(1)).numpy()
    target.reset()
    target(ids[:, :-1].numpy())
    taps = target.output(TAPS)
    assert np.abs(taps - out.streams.numpy()).max() <= TOL
    drafter.reset()
    parts = [drafter.logits(taps[:, :37], ids[:, 1:38].numpy()).copy()]  # chunks, as the loop feeds them
    parts += [drafter.logits(taps[:, t: t + 1], ids[:, t + 1: t + 2].numpy()).copy() for t in range(37, PROMPT + 40)]
    got = np.concatenate(parts, 1)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL


def test_speculative_equals_plain_greedy(runtime):
    target, drafter = runtime
    ids = prompt(PROMPT, seed=32).numpy()
    _, plain = target.greedy(ids, NEW)
    plain = plain[0].tolist()
    spec, stats = speculative_greedy(target, drafter, ids, NEW)
    assert spec == plain
    # one draft per call with drafts; the calls without (re-feeding a rejection's committed tokens) have none
    assert stats.proposed == len(stats.accepted_per_step) <= stats.steps
    assert stats.snapshot_saves + stats.snapshot_restores == stats.steps
    # K = 3 scripted drafts: all right, all wrong, and every split, so that full acceptance (snapshot
    # retaken) and rejections at each offset (snapshot restored, committed tokens re-fed) all occur
    sequence = ids[0].tolist() + plain
    scripted = ScriptedDrafter(sequence, PROMPT, 3, lambda step, k: (step % 5) == k + 1)
    spec, stats = speculative_greedy(target, scripted, ids, NEW)
    assert spec == plain
    assert set(stats.accepted_per_step) == {0, 1, 2, 3}
    assert stats.snapshot_saves > 3 and stats.snapshot_restores > 3


def test_generate_cli_json(exported, tmp_path, capsys):
    _, _, out = exported
    ids = ",".join(map(str, prompt(20, seed=33)[0].tolist()))
    results = {}
    for flag in ([], ["--mtp"]):
        path = tmp_path / f"gen{len(flag)}.json"
        assert cli(["generate", "--model", str(out), "--prompt-ids", ids, "--max-new-tokens", "24",
                    "--ignore-eos", "--json", str(path), *flag]) == 0
        results[bool(flag)] = json.loads(path.read_text())
        printed = capsys.readouterr().out.split()  # no tokenizer: the ids
        assert printed == [str(t) for t in results[bool(flag)]["tokens"]]
    plain, mtp = results[False], results[True]
    assert len(plain["tokens"]) == 24 and mtp["tokens"] == plain["tokens"]
    for r in (plain, mtp):
        assert r["ttft_s"] > 0 and r["tokens_per_s"] > 0
    assert "mtp_acceptance" not in plain and 0 <= mtp["mtp_acceptance"] <= 1
    assert 0 < mtp["speculative"]["proposed"] <= mtp["speculative"]["steps"]


def test_refusals(toy, exported, runtime, tmp_path, capsys):
    folder, _, out = exported
    target, drafter = runtime
    with pytest.raises(ValueError, match="batch|one sequence"):
        speculative_greedy(target, drafter, prompt(10, batch=2).numpy(), 4)
    ids = ["--prompt-ids", "5 6 7", "--max-new-tokens", "4"]
    cases = {
        ("--mtp", "--do-sample"): "greedy only; drop --do-sample",
        ("--mtp", "--temperature", "0.5"): "greedy only; drop --temperature",
        ("--dspark",): f"{out}: no dspark drafter",
        ("--top-k", "5"): "--top-k apply to sampling: pass --do-sample",
    }
    for flags, message in cases.items():
        assert cli(["generate", "--model", str(out), *ids, *flags]) == 2
        assert message in capsys.readouterr().err
    assert cli(["generate", "--model", str(out), "--prompt-ids", "5,9999"]) == 2
    assert "outside [0, 512)" in capsys.readouterr().err
    record = json.loads((out / "openvino_config.json").read_text())
    assert record["drafter"] == {"kind": "mtp", "ir": DRAFTER_XML, "drafts_per_step": 1, "taps": TAPS}
    plain = tmp_path / "plain"  # the folder as an export without a drafter records it
    shutil.copytree(out, plain)
    (plain / "openvino_config.json").write_text(json.dumps({**record, "drafter": None}))
    assert cli(["generate", "--model", str(plain), *ids, "--mtp"]) == 2
    assert f"{plain}: no mtp drafter (it has no drafter)" in capsys.readouterr().err
    seed, _ = toy("seed")  # no MTP block: refused before any work, naming SRC
    with pytest.raises(CheckpointError, match=f"{seed}: --drafter mtp: the checkpoint has no MTP block"):
        export(seed, tmp_path / "seed", log=lambda line: None, drafter="mtp")
    assert not (tmp_path / "seed").exists()


# ------------------------------------------------------------------------------------------------------
# DSpark (the -DSpark/-0731 layout: `toy --drafter dspark`, `export --drafter dspark`)
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dspark_exported(tmp_path_factory):
    """The `full` geometry in the -0731 layout (3 DSpark stages tapping layers 3-5), exported piece by piece
    (so the taps travel from layer piece to layer piece) with its drafter, and as one piece without."""
    from deepseek_v4_ov.toys.writer import toy_config, write_toy
    from deepseek_v4_ov.toys.presets import PRESETS

    root = tmp_path_factory.mktemp("dspark")
    model = write_toy(root / "toy", toy_config(PRESETS["full"], drafter="dspark"), seed=4, fmt="fp32")
    export(root / "toy", root / "ov", log=lambda line: None, drafter="dspark", convert_tokenizer=False)
    export(root / "toy", root / "ov-plain", log=lambda line: None, convert_tokenizer=False, whole=True)
    return model.eval(), root


def test_dspark_drafter_ir_equals_port(dspark_exported):
    """Target taps and the drafter IR's drafts, logits and confidences against `dspark_draft`, fed as the
    loop feeds them (the prompt's taps, then a few committed positions)."""
    from deepseek_v4_ov.runtime.speculative import DSparkDrafter

    model, root = dspark_exported
    ids = prompt(PROMPT + 3, seed=33)
    with torch.no_grad():
        out = model(ids)
        cache = model.empty_cache(1)
        refs = [model.dspark_draft(out.dspark_hidden[:, :PROMPT], ids[:, PROMPT:PROMPT + 1], cache),
                model.dspark_draft(out.dspark_hidden[:, PROMPT:], out.logits[:, -1:].argmax(-1), cache)]
    core = ov.Core()
    target = OVCausalLM(root / "ov", config=F32_CONFIG, core=core)
    target(ids.numpy())
    taps = target.output(TAPS)
    assert np.abs(taps - out.dspark_hidden.numpy()).max() <= TOL
    drafter = DSparkDrafter(root / "ov" / DRAFTER_XML, core, config=F32_CONFIG)
    drafter.reset()
    feeds = [(taps[:, :PROMPT], ids[:, PROMPT:PROMPT + 1].numpy()),
             (taps[:, PROMPT:], out.logits[:, -1:].argmax(-1).numpy())]
    for (t, bonus), ref in zip(feeds, refs):
        drafts, confidence = drafter.propose(t, bonus)
        assert drafts.tolist() == ref.tokens.tolist()
        assert np.abs(drafter.request.get_tensor("logits").data - ref.logits.numpy()).max() <= TOL
        assert np.abs(confidence - ref.confidence.numpy()).max() <= 1e-5  # sigmoid outputs in (0, 1)
    assert ov.Core().read_model(root / "ov-plain" / "openvino_model.xml").outputs[0].get_any_name() == "logits"
    assert TAPS not in {o.get_any_name() for o in ov.Core().read_model(root / "ov-plain" / "openvino_model.xml").outputs}


@pytest.mark.parametrize("threshold", [0.0, 0.6])
def test_dspark_speculative_equals_plain_greedy(dspark_exported, threshold):
    """Across the window and ratio-128 boundaries; with a confidence threshold the blocks are cut short
    (variable verify lengths) and the output is still plain greedy."""
    from deepseek_v4_ov.runtime.speculative import DSparkDrafter

    model, root = dspark_exported
    ids = prompt(PROMPT, seed=34)
    core = ov.Core()
    target = OVCausalLM(root / "ov", config=F32_CONFIG, core=core)
    _, plain = target.greedy(ids.numpy(), NEW)
    drafter = DSparkDrafter(root / "ov" / DRAFTER_XML, core, config=F32_CONFIG, threshold=threshold,
                            drafts_per_step=model.config.dspark_block_size)
    tokens, stats = speculative_greedy(target, drafter, ids.numpy(), NEW)
    assert tokens == plain[0].tolist()
    assert stats.proposed > 0 and stats.steps < NEW
    if threshold:
        assert stats.proposed < model.config.dspark_block_size * len(stats.accepted_per_step)


def test_dspark_toy_generates_with_and_without_drafter(dspark_exported, tmp_path):
    _, root = dspark_exported
    ids = " ".join(str(t) for t in prompt(20, seed=35)[0].tolist())
    for folder, flags, name in ((root / "ov", ["--dspark"], "spec"), (root / "ov-plain", [], "plain")):
        assert cli(["generate", "--model", str(folder), "--prompt-ids", ids, "--max-new-tokens", "24",
                    "--json", str(tmp_path / f"{name}.json"), *flags]) == 0
    spec, plain = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("spec", "plain"))
    assert spec["tokens"] == plain["tokens"] and len(plain["tokens"]) == 24
    assert spec["drafter"] == "dspark" and "dspark_mean_accepted" in spec and "dspark_acceptance" in spec
    assert cli(["generate", "--model", str(root / "ov-plain"), "--prompt-ids", ids, "--dspark"]) == 2
    assert cli(["generate", "--model", str(root / "ov"), "--prompt-ids", ids, "--mtp"]) == 2
    with pytest.raises(CheckpointError, match=r"--drafter mtp: the checkpoint has no MTP block \(it has a DSpark"):
        export(root / "toy", tmp_path / "refused", log=lambda line: None, drafter="mtp")
    assert not (tmp_path / "refused").exists()
