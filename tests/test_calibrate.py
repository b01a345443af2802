"""Data-aware INT4 streamed piece by piece (`compress/calibrate.py`, `export --dataset`): bad input refused
before any work with the option named; on the trained toy the export runs, records its dataset, and each
piece was compressed with data (its constants differ from the data-free export's)."""

from __future__ import annotations

import json

import pytest

from deepseek_v4_ov.cli import main as cli
from deepseek_v4_ov.compress import calibrate
from deepseek_v4_ov.export.options import ExportOptions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from deepseek_v4_ov.toys.trained import write_trained_toy

    folder = tmp_path_factory.mktemp("calib") / "trained"
    write_trained_toy(folder, "trained", "fp8")
    return folder


@pytest.mark.parametrize("args,message", [
    (["--weight-format", "int8", "--dataset", "corpus"], "--dataset applies to int4"),
    (["--weight-format", "int4", "--scale-estimation"], "--scale-estimation is data-aware: it needs --dataset"),
    (["--weight-format", "int4", "--num-samples", "4"], "--num-samples 4: only with --dataset"),
    (["--weight-format", "int4", "--dataset", "corpus", "--num-samples", "0"], "--num-samples 0: a positive"),
    (["--weight-format", "int4", "--dataset", "/nonexistent.txt"], "--dataset /nonexistent.txt: no such file"),
    (["--weight-format", "int4", "--dataset", "README.md"], "--dataset README.md: a .txt/.jsonl file, not .md"),
])
def test_unusable_calibration_input_is_refused_before_any_work(trained, tmp_path, capsys, args, message):
    assert cli(["export", "--model", str(trained), str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_short_or_malformed_files_are_named(trained, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"--dataset .*short.txt: 6 characters are too few for --num-samples 2"):
        calibrate.samples(str(short), trained, 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not a JSON object with a \"text\" field"):
        calibrate.samples(str(bad), trained, 1)


def test_builtin_corpus_is_training_text_not_heldout(trained):
    from deepseek_v4_ov.toys.trained import heldout_text, training_text

    windows = calibrate.samples(calibrate.BUILTIN, trained, 4)
    assert [w.shape for w in windows] == [(1, calibrate.SAMPLE_TOKENS)] * 4
    assert len({w.tobytes() for w in windows}) == 4
    assert heldout_text()[200:2000] not in training_text()


def test_data_aware_export_runs_piece_by_piece(trained, tmp_path):
    from deepseek_v4_ov.export.pipeline import run
    from test_weights import compressed_constants

    plain = run(ExportOptions(trained, tmp_path / "plain", weight_format="int4", awq=True, convert_tokenizer=False),
                log=lambda line: None)
    data = run(ExportOptions(trained, tmp_path / "data", weight_format="int4", awq=True, dataset="corpus",
                             num_samples=4, scale_estimation=True, convert_tokenizer=False), log=lambda line: None)
    record = json.loads((data.output / "openvino_config.json").read_text())["quantization_config"]
    assert record["dataset"] == "corpus" and record["num_samples"] == 4 and record["scale_estimation"]
    import openvino as ov

    a = compressed_constants(ov.Core().read_model(str(plain.output / "openvino_model.xml")))
    b = compressed_constants(ov.Core().read_model(str(data.output / "openvino_model.xml")))
    differ = [name for name, part in a if a[name, part] != b.get((name, part))]
    assert any(".ffn.experts." in name for name in differ), differ  # the experts calibrated on data
