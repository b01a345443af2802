"""`deepseek-v4-ov export`: error paths (before any work, nothing left behind), the precision policy read
back from the IR's constants, IR sizes next to the public toy's, and compressed IRs that still run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, prompt
from deepseek_v4_ov import cli
from deepseek_v4_ov.export import pipeline as exporter
from deepseek_v4_ov.checkpoint.layout import INDEX_NAME, read_config
from deepseek_v4_ov.compress.policy import (
    CompressionOptions,
    compress,
    precision_report,
    report_dict,
    theoretical_bytes,
    weight_constants,
)
from deepseek_v4_ov.checkpoint.release import check_folder, group_of, logical_tensors
from deepseek_v4_ov.toys.writer import write_toy
from deepseek_v4_ov.export.options import ExportOptions
from deepseek_v4_ov.toys.presets import PRESETS

PUBLIC_MB = {"fp32": 6.33, "int8": 3.03, "int4": 2.71}  # the public seed toy's IR sizes (.bin + .xml)
F32_HINT = {"INFERENCE_PRECISION_HINT": "f32"}


def run_cli(*argv: str) -> int:
    return cli.main(["export", *map(str, argv)])


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-"))


def copy_toy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def first_logits(xml: Path, ids: torch.Tensor) -> np.ndarray:
    """Last-position logits of one prefill through an IR (stateful or prefill-only), FP32 inference."""
    compiled = ov.Core().compile_model(str(xml), "CPU", F32_HINT)
    n = ids.shape[1]
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, n), np.int64)}
    names = {i.get_any_name() for i in compiled.inputs}
    if "position_ids" in names:
        feed.update(position_ids=np.arange(n)[None], beam_idx=np.zeros(1, np.int32))
    return compiled.create_infer_request().infer(feed)["logits"][0, -1]


# ------------------------------------------------------------------------------------------------------
# Error paths: one line, exit code 2, before any work, no OUTPUT and no partial folder
# ------------------------------------------------------------------------------------------------------
def _break_model_type(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "deepseek_v3"
    (folder / "config.json").write_text(json.dumps(cfg))


def _break_config(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 5  # compress_ratios still lists 4 layers
    (folder / "config.json").write_text(json.dumps(cfg))


def _rewrite_tensor(folder: Path, name: str, new: torch.Tensor | None) -> None:
    index = json.loads((folder / INDEX_NAME).read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(str(shard))
    if new is None:
        del tensors[name], index["weight_map"][name]
        (folder / INDEX_NAME).write_text(json.dumps(index))
    else:
        tensors[name] = new
    save_file(tensors, str(shard), metadata={"format": "pt"})


BAD_SOURCES = {
    "model_type": (_break_model_type, "model_type is 'deepseek_v3', expected 'deepseek_v4'"),
    "config": (_break_config, "compress_ratios"),
    "missing tensor": (lambda f: _rewrite_tensor(f, "layers.1.attn.wkv.weight", None),
                       "tensor 'layers.1.attn.wkv.weight' (F32[32, 128]) is missing"),
    "misshaped tensor": (lambda f: _rewrite_tensor(f, "layers.2.ffn.gate.weight", torch.zeros(8, 64)),
                         "tensor 'layers.2.ffn.gate.weight' is F32[8, 64], expected F32[8, 128]"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_source_fails_before_work(toy, tmp_path, capsys, case):
    src = copy_toy(toy("seed")[0], tmp_path / "src")
    breaker, expected = BAD_SOURCES[case]
    breaker(src)
    assert run_cli("--model", src, "--weight-format", "int4", tmp_path / "out") == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("deepseek-v4-ov export: error: "), err
    assert expected in err, err
    assert "Traceback" not in err and "[2/5]" not in out  # nothing loaded
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("argv, expected", [
    (["--weight-format", "int3"], "unsupported weight format 'int3'; choose one of fp32, fp16, int8, int4, mxfp4"),
    (["--weight-format", "fp16", "--sym"], "--sym applies to int8/int4/mxfp4 weight formats, not fp16"),
    (["--weight-format", "int8", "--ratio", "0.5"], "--ratio applies to 4-bit weight formats"),
    (["--weight-format", "mxfp4", "--group-size", "64"], "mxfp4 uses groups of 32"),
    (["--weight-format", "int4", "--backup-precision", "fp8"], "--backup-precision 'fp8': choose one of"),
    (["--weight-format", "int4", "--group-size", "128"],
     "--group-size 128 does not divide the input size of 32 weight(s), e.g. layers.0.ffn.experts.0.w2.weight"),
])
def test_bad_options(toy, tmp_path, capsys, argv, expected):
    assert run_cli("--model", toy("seed")[0], *argv, tmp_path / "out") == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and expected in err, err
    assert "[2/5]" not in out and leftovers(tmp_path, "out") == []


def test_bad_output(toy, tmp_path, capsys):
    src = toy("seed")[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run_cli("--model", src, out) == 2
    assert "out exists and is not empty; pass --overwrite to replace it" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious" and leftovers(tmp_path, "out") == ["out"]
    assert run_cli("--model", src, "--overwrite", src) == 2
    assert "is SRC or contains it" in capsys.readouterr().err
    assert run_cli("--model", tmp_path / "nowhere", tmp_path / "o2") == 2
    assert "no such folder" in capsys.readouterr().err


def test_export_that_does_not_fit_is_refused(toy, tmp_path, capsys, monkeypatch):
    """An export whose projected files (twice the IR weights: pieces + stitched) exceed the free space where
    OUTPUT goes is refused before any work, naming the space needed and found; nothing is written. The
    dry run with OUTPUT makes the same check."""
    src = toy("seed")[0]
    needed = exporter.projection_of(check_folder(src), ExportOptions(src, tmp_path / "o").resolved("fp32")).disk_bytes
    free = {"bytes": needed - 1}
    real = exporter.shutil.disk_usage
    seen = []

    def disk_usage(path):
        seen.append(Path(path))
        return real(path)._replace(free=free["bytes"])

    monkeypatch.setattr(exporter.shutil, "disk_usage", disk_usage)
    out = tmp_path / "new" / "out"  # the nearest existing folder is asked
    assert run_cli("--model", src, out) == 2
    stdout, err = capsys.readouterr()
    assert err.count("\n") == 1 and "the fp32 export needs ~" in err and f"but {tmp_path} has" in err, err
    assert seen == [tmp_path] and "[2/" not in stdout and list(tmp_path.iterdir()) == []
    assert run_cli("--model", src, "--dry-run", out) == 2
    assert "the fp32 export needs ~" in capsys.readouterr().err
    free["bytes"] = needed
    assert run_cli("--model", src, "--dry-run", out) == 0
    assert "fits:" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_native_refused_where_the_cpu_would_expand_it_beyond_memory(tmp_path, capsys, monkeypatch):
    """`native`/`mxfp4`: the CPU plugin expands f4e2m1 experts to f32 (cpu_expansion, measured); an export
    whose expanded weights exceed this machine's memory is refused before any work, naming the factor and
    int4; the dry run too. Where they fit (the toys) the export runs."""
    src = tmp_path / "seed-fp8"
    write_toy(src, PRESETS["seed"], seed=0, fmt="fp8")
    smallest = min(exporter.projection_of(check_folder(src), ExportOptions(src, tmp_path / "o", weight_format=fmt)
                                          .resolved("fp8")).cpu_private_bytes for fmt in ("native", "mxfp4"))
    monkeypatch.setattr(exporter, "physical_memory", lambda: smallest - 1)
    for fmt in ("native", "mxfp4"):
        assert run_cli("--model", src, tmp_path / "out", "--weight-format", fmt) == 2, fmt
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "expands f4e2m1" in err and "export int4" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed-fp8"]
    assert run_cli("--model", src, "--weight-format", "native", "--dry-run") == 2
    assert "expands f4e2m1" in capsys.readouterr().err


def test_weight_format_default_is_resolved_from_the_source(tmp_path):
    """`auto` (the default): int4 for a release-layout (FP8/FP4) source, fp32 for BF16/FP32 sources;
    explicit formats stay as given."""
    opts = ExportOptions(tmp_path, tmp_path / "out")
    assert opts.weight_format == "auto" and opts.auto
    assert opts.resolved("fp8").weight_format == "int4"
    assert opts.resolved("bf16").weight_format == opts.resolved("fp32").weight_format == "fp32"
    for fmt in ("fp32", "int8", "native"):
        assert ExportOptions(tmp_path, tmp_path / "o", weight_format=fmt).resolved("fp8").weight_format == fmt
    with pytest.raises(ValueError, match="resolved"):
        opts.compression()


def test_auto_options_checked_against_the_resolved_format(toy, tmp_path, capsys):
    """An NNCF option that does not apply to what `auto` chose is named with the choice."""
    assert run_cli("--model", toy("seed")[0], "--sym", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--sym applies to int8/int4/mxfp4 weight formats, not fp32 (--weight-format auto is fp32 for this " \
           "fp32 checkpoint)" in err, err
    assert leftovers(tmp_path, "out") == []
    assert run_cli("--model", toy("seed")[0], "--sym", "--dry-run") == 2
    assert "(--weight-format auto is fp32 for this fp32 checkpoint)" in capsys.readouterr().err


def test_python_m_export_reports_one_line(toy, tmp_path):
    """`python -m deepseek_v4_ov export`: exit code 2 and one stderr line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "deepseek_v4_ov", "export", "--model", str(toy("seed")[0]),
                           "--weight-format", "nf4", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "deepseek-v4-ov export: error: unsupported weight format 'nf4'; choose one of fp32, fp16, int8, int4, mxfp4"]


# ------------------------------------------------------------------------------------------------------
# One real FP32 export of the seed toy; compressed variants from its IR
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_export(toy, tmp_path_factory):
    src = toy("seed")[0]
    out = tmp_path_factory.mktemp("export") / "seed-fp32"
    assert run_cli("--model", src, out) == 0
    return src, out


@pytest.fixture(scope="module")
def variants(fp32_export, tmp_path_factory):
    """fmt -> folder holding the seed IR compressed with `compress` (the exporter's stage 4) and saved as
    the exporter saves it."""
    _, fp32 = fp32_export
    base = ov.Core().read_model(str(fp32 / exporter.IR_XML))
    out = {"fp32": fp32}
    for fmt in ("int8", "int4", "mxfp4"):
        folder = tmp_path_factory.mktemp(f"seed-{fmt}")
        ov.save_model(compress(base.clone(), fmt), str(folder / exporter.IR_XML), compress_to_fp16=False)
        out[fmt] = folder
    return out


def test_fp32_export_folder(fp32_export):
    src, out = fp32_export
    names = {p.name for p in out.iterdir()}
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "generation_config.json",
            "openvino_config.json", "configuration_deepseek_v4.py", "modeling_deepseek_v4.py",
            "openvino_tokenizer.xml", "openvino_detokenizer.xml", "tokenizer.json"} <= names
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_deepseek_v4.DeepseekV4ForCausalLM"
    assert cfg == {**src_cfg, "use_cache": True}  # the source's keys (no storage-only keys in a fp32 toy)
    assert read_config(out).num_hidden_layers == 4
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_ir_constants_map_to_official_tensors(fp32_export):
    """Every weight matrix of the port is found in the IR under its tensor group, element for element:
    the name mapping the ignored scopes are built from is complete and exact."""
    src, out = fp32_export
    seen: dict[str, int] = {}
    for wc in weight_constants(ov.Core().read_model(str(out / exporter.IR_XML))):
        shape = tuple(wc.node.get_output_partial_shape(0).to_shape())
        if wc.name is not None and len([d for d in shape if d != 1]) >= 2:
            seen[wc.group] = seen.get(wc.group, 0) + int(np.prod(shape))
    want: dict[str, int] = {}
    for name, shape in logical_tensors(read_config(src)).items():
        if len(shape) == 2:
            want[group_of(name)] = want.get(group_of(name), 0) + int(np.prod(shape))
    assert seen == want


def _main_types(report: dict, group: str) -> set[str]:
    w = report[group]["weights"]
    return {t for t, n in w.items() if n >= 0.01 * sum(w.values())}


def test_precision_policy(variants):
    """The release-mirroring policy, read from the saved IRs' constants."""
    reports = {fmt: report_dict(precision_report(ov.Core().read_model(str(d / exporter.IR_XML))))
               for fmt, d in variants.items()}
    for fmt, r in reports.items():
        print(f"\n{fmt}:\n" + "\n".join(f"  {g:<38} {v['weights']} scales {v['scales']} groups {v['group_sizes']}"
                                        for g, v in r.items()))
    assert all(_main_types(reports["fp32"], g) == {"f32"} for g in reports["fp32"] if g != "other constants")
    expert = {"int8": ("u8", [-1]), "int4": ("i4", [64]), "mxfp4": ("f4e2m1", [32])}
    for fmt, (dtype, groups) in expert.items():
        r = reports[fmt]
        assert _main_types(r, "routed experts") == {dtype} and r["routed experts"]["group_sizes"] == groups, fmt
        assert _main_types(r, "shared expert") == {"u8"}, fmt  # release FP8 -> 8 bit
        assert "u8" in _main_types(r, "attention core"), fmt
        assert _main_types(r, "mHC (hc_*)") == {"f32"}, fmt  # release F32
        assert _main_types(r, "router (gate weight, bias, tid2eid)") == {"f16"}, fmt  # release BF16
        assert _main_types(r, "embed / head") == {"f16", "u8"}, fmt  # BF16 embed f16, head INT8 (default)
        assert _main_types(r, "compressor") <= {"f16", "f32"}, fmt
    assert set(reports["int4"]["routed experts"]["scales"]) == {"f16"}  # sym: an f16 scale, no zero point
    assert set(reports["mxfp4"]["routed experts"]["scales"]) == {"f8e8m0"}


def test_ir_sizes(fp32_export, variants):
    config = read_config(fp32_export[0])
    rows, over = [], []
    for fmt in ("fp32", "int8", "int4", "mxfp4"):
        d = variants[fmt]
        xml, binary = (d / exporter.IR_XML).stat().st_size / 1e6, (d / exporter.IR_BIN).stat().st_size / 1e6
        theory = sum(theoretical_bytes(config, CompressionOptions(fmt)).values()) / 1e6
        public = PUBLIC_MB.get(fmt)
        rows.append(f"  {fmt:<6} {xml + binary:6.2f} MB (bin {binary:5.2f} + xml {xml:4.2f})   theoretical weights "
                    f"{theory:5.2f} MB   public {public if public else '-':>5} MB")
        assert binary <= theory * 1.05 + 0.05, (fmt, binary, theory)  # weights as the policy says, no more
        if public is not None:
            assert binary <= public, (fmt, binary, public)
            if xml + binary > public:
                over.append(f"{fmt} {xml + binary:.2f} MB > {public} MB")
    print("\nseed IR sizes (.bin + .xml):\n" + "\n".join(rows))
    if over:
        pytest.xfail("IR over the public toy's size because of the graph (.xml), not the weights: "
                     + "; ".join(over))


# ------------------------------------------------------------------------------------------------------
# Compressed IRs still run: first greedy token of a 300-token prompt against PyTorch
# ------------------------------------------------------------------------------------------------------
def test_compressed_first_token(toy, variants):
    model = toy("seed")[1]
    ids = prompt(300)
    with torch.no_grad():
        ref = model(ids).logits[0, -1].numpy()
    lines, got = [], {}
    for fmt in ("fp32", "int8", "int4", "mxfp4"):
        logits = first_logits(variants[fmt] / exporter.IR_XML, ids)
        got[fmt] = logits
        top = np.argsort(-logits)[:3]
        lines.append(f"  {fmt:<6} first token {top[0]:>3} (PyTorch {ref.argmax()}), PyTorch's token ranked "
                     f"{int(np.where(np.argsort(-logits) == ref.argmax())[0][0]) + 1}, max |dlogit| "
                     f"{np.abs(logits - ref).max():.3f}")
    print("\nfirst greedy token, 300-token prompt, seed toy (FP32 weights), f32 inference:\n" + "\n".join(lines))
    np.testing.assert_allclose(got["fp32"], ref, atol=1e-4)
    assert got["int8"].argmax() == ref.argmax()
    # 4-bit on random FP32 weights: the toy's top-2 margin here (0.30) is below the INT4 logit error
    # (~0.5), so only closeness is required; exactness is shown on a release-layout source below
    for fmt in ("int4", "mxfp4"):
        assert ref.argmax() in np.argsort(-got[fmt])[:3], fmt


def test_fp8_source_mxfp4_is_lossless(tmp_path, capsys):
    """An FP8 release-layout source exported with mxfp4 and no 8-bit backup keeps every weight exactly
    (FP4 experts are MXFP4 blocks already; FP8 and BF16 tensors fit f16), through the prefill-only IR
    and the whole CLI path; config.json loses the source's quantization_config."""
    src = tmp_path / "seed-fp8"
    model = write_toy(src, PRESETS["seed"], seed=0, fmt="fp8")
    out = tmp_path / "out"
    assert run_cli("--model", src, "--weight-format", "mxfp4", "--backup-precision", "none", "--prefill-only",
                   out) == 0
    log = capsys.readouterr().out
    assert "routed experts" in log and "f4e2m1" in log and "peak memory" in log
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and "expert_dtype" not in cfg and cfg["use_cache"] is False
    assert json.loads((out / "openvino_config.json").read_text())["quantization_config"]["mode"] == "mxfp4"
    ids = prompt(300)
    with torch.no_grad():
        ref = model(ids).logits[0, -1].numpy()
    logits = first_logits(out / exporter.IR_XML, ids)
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert logits.argmax() == ref.argmax()


def test_interrupted_overwrite_keeps_old_output(fp32_export, tmp_path, monkeypatch):
    """An export that dies while writing (here: Ctrl-C after the IR is written into the temporary folder)
    leaves the previous OUTPUT as it was and no partial folder."""
    src, fp32 = fp32_export

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "write_folder", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        exporter.export(src, out, weight_format="int8", overwrite=True, log=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path, "out") == ["out"]


def test_cli_dry_run_reads_no_weights(toy, tmp_path, capsys):
    """`export --dry-run` checks the index from the headers alone: it works with every shard's data cut off."""
    folder = toy("full")[0]
    stubs = tmp_path / "headers-only"
    shutil.copytree(folder, stubs)
    for shard in stubs.glob("model-*.safetensors"):
        header = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
        with open(shard, "r+b") as f:  # keep the header, drop the data, keep the declared size (sparse)
            size = f.seek(0, 2)
            f.truncate(header)
            f.truncate(size)
    assert cli.main(["export", "--model", str(stubs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mtp.* tensors 53" in out and "projected per --weight-format" in out
    assert "this export: fp32: IR weights ~" in out and "conversion peak ~" in out and "runtime ~" in out
    assert cli.main(["export", "--model", str(folder)]) == 2
    assert "OUTPUT is required" in capsys.readouterr().err
