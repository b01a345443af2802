"""`--weight-format native`: the release's FP4/FP8 codes and E8M0 scales carried into the IR bit for bit,
the same model numerically (greedy tokens equal to the port on the exactly dequantised weights, logits
within FP32 accumulation noise), an IR the size of the checkpoint, and f4e2m1 experts that OpenVINO's CPU
plugin keeps compressed at run time. Toy: `full` (every feature, hash layers, MTP in the checkpoint) in
the release layout (`write_toy(fmt="fp8")`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import greedy, prompt  # noqa: E402
from deepseek_v4_ov import cli  # noqa: E402
from deepseek_v4_ov.compress import native  # noqa: E402
from deepseek_v4_ov.checkpoint import quant  # noqa: E402
from deepseek_v4_ov.checkpoint.layout import CheckpointReader  # noqa: E402
from deepseek_v4_ov.compress.policy import precision_report  # noqa: E402
from deepseek_v4_ov.checkpoint.release import BF16, FP4, FP8, check_folder, logical_tensors, scale_name, storage_class  # noqa: E402
from deepseek_v4_ov.runtime.ov_lm import F32_CONFIG, OVCausalLM  # noqa: E402
from deepseek_v4_ov.toys.writer import write_toy  # noqa: E402
from deepseek_v4_ov.toys.presets import PRESETS  # noqa: E402

# Measured on `full` (FP32 inference on CPU): native IR vs the port, max |logit difference| 3.6e-6 with
# logits of magnitude ~4, the same size as the FP32 IR's own difference from the port (FP32 accumulation
# order). Bound used: 2e-5 absolute.
LOGIT_BOUND = 2e-5


def _raw(node) -> np.ndarray:
    """A constant's bytes as stored (sub-byte types packed as OpenVINO packs them)."""
    t = node.get_tensor_view()
    return np.asarray(t.data).view(np.uint8).reshape(-1)[: t.get_byte_size()]


@pytest.fixture(scope="module")
def native_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("native")
    src = base / "full-fp8"
    model = write_toy(src, PRESETS["full"], seed=0, fmt="fp8")  # holds the exactly dequantised weights
    out = base / "full-native"
    assert cli.main(["export", "--model", str(src), str(out), "--weight-format", "native"]) == 0
    fp32 = base / "full-fp32"
    assert cli.main(["export", "--model", str(src), str(fp32), "--weight-format", "fp32",
                     "--disable-convert-tokenizer"]) == 0
    return src, model.eval(), out, fp32


def _constants(xml: Path) -> dict[str, object]:
    m = ov.Core().read_model(str(xml))
    return {op.get_friendly_name(): op for op in m.get_ops() if op.get_type_name() == "Constant"}


def test_layout_and_codes_bit_exact(native_export):
    """Every FP4 expert is f4e2m1 [O, K/32, 32] + f8e8m0 [O, K/32, 1], every FP8 linear f8e4m3 + f8e8m0,
    their bytes equal to the checkpoint's; no FP4/FP8-class weight left in f32."""
    src, model, out, _ = native_export
    consts = _constants(out / "openvino_model.xml")
    reader = CheckpointReader(src)
    names = [n for n in logical_tensors(model.config) if not n.startswith("mtp.")]
    seen = {FP4: 0, FP8: 0}
    for name in names:
        kind = storage_class(name)
        if kind not in (FP4, FP8):
            continue
        q, sc = reader.get(name), reader.get(scale_name(name))
        rows, cols = model.state_dict()[name].shape
        if kind == FP4 and f"self.model.{name}" not in consts:
            # grouped form (MoE.grouped_experts): one stacked constant [E, O, K/32, 32] per projection
            ffn, _, e, proj, _ = name.rsplit(".", 4)
            w, s = consts[f"self.model.{ffn}.experts.{proj}.weight"], consts[f"self.model.{ffn}.experts.{proj}.weight/scale"]
            experts = model.config.n_routed_experts
            assert w.get_output_element_type(0) == ov.Type.f4e2m1
            assert list(w.get_output_shape(0)) == [experts, rows, cols // 32, 32]
            assert list(s.get_output_shape(0)) == [experts, rows, cols // 32, 1]
            assert np.array_equal(_raw(w).reshape(experts, -1)[int(e)], q.view(torch.uint8).numpy().reshape(-1)), name
            assert np.array_equal(_raw(s).reshape(experts, -1)[int(e)], sc.view(torch.uint8).numpy().reshape(-1))
            seen[kind] += 1
            continue
        w, s = consts[f"self.model.{name}"], consts[f"self.model.{name}/scale"]
        if kind == FP4:
            assert w.get_output_element_type(0) == ov.Type.f4e2m1
            assert list(w.get_output_shape(0)) == [rows, cols // 32, 32]
            assert list(s.get_output_shape(0)) == [rows, cols // 32, 1]
            expected_scale = sc.view(torch.uint8).numpy().reshape(-1)
        else:
            assert w.get_output_element_type(0) == ov.Type.f8e4m3
            g = int(w.get_output_shape(0)[2])
            assert g == np.gcd(cols, 128)
            per_row = sc.view(torch.uint8).repeat_interleave(128, 0)[:rows]
            expected_scale = per_row.repeat_interleave(128 // g, 1)[:, : cols // g].numpy().reshape(-1)
        assert s.get_output_element_type(0) == ov.Type.f8e8m0
        assert np.array_equal(_raw(w), q.view(torch.uint8).numpy().reshape(-1)), name
        assert np.array_equal(_raw(s), expected_scale), name
        seen[kind] += 1
    assert seen[FP4] == sum(storage_class(n) == FP4 for n in names) > 0
    assert seen[FP8] == sum(storage_class(n) == FP8 for n in names) > 0
    f32_matrices = [n for n, c in consts.items() if c.get_output_element_type(0) == ov.Type.f32
                    and n.startswith("self.model.") and storage_class(n[len("self.model."):]) in (FP4, FP8, BF16)
                    and len([d for d in c.get_output_shape(0) if d != 1]) >= 2]
    assert f32_matrices == []
    report = precision_report(ov.Core().read_model(str(out / "openvino_model.xml")))
    assert set(report["routed experts"].weights) == {"f4e2m1"}, report["routed experts"]


def test_decompression_is_exact(native_export):
    """The IR's decompressed weights equal the exact FP32 dequantisation (the port's weights), bit for bit:
    evaluate each decompression subgraph of one layer in OpenVINO."""
    src, model, out, _ = native_export
    m = ov.Core().read_model(str(out / "openvino_model.xml"))
    state = model.state_dict()
    checked = 0
    for op in m.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() != "Reshape" or not op.input_value(0).get_node().get_friendly_name().endswith("/decompress"):
            continue
        official = op.input_value(0).get_node().get_friendly_name()[len("self.model."):-len("/decompress")]
        if not official.startswith("layers.3."):
            continue
        sub = ov.Model([ops.result(op)], [])
        got = ov.Core().compile_model(sub, "CPU", F32_CONFIG)({})[0]
        if official in state:
            expected = [(official, state[official])]
        else:  # stacked routed experts `<ffn>.experts.<proj>.weight`: one slice per expert
            ffn, _, proj, _ = official.rsplit(".", 3)
            expected = [(f"{ffn}.experts.{e}.{proj}.weight", state[f"{ffn}.experts.{e}.{proj}.weight"])
                        for e in range(got.shape[0])]
            got = list(got)
        for (n, ref), g in zip(expected, got if isinstance(got, list) else [got]):
            assert np.array_equal(g.view(np.uint32), ref.numpy().view(np.uint32)), (name, n)
            checked += 1
    assert checked >= 3 * PRESETS["full"]["n_routed_experts"]


def test_same_model_as_port(native_export):
    """Greedy tokens equal the port's on the exactly dequantised weights; prompt and decode logits within
    FP32 accumulation noise; the FP32 IR differs from the port by the same order."""
    src, model, out, fp32 = native_export
    lm, ref32 = OVCausalLM(out, "CPU", F32_CONFIG), OVCausalLM(fp32, "CPU", F32_CONFIG)
    for length, seed in ((7, 1), (45, 2)):
        ids = prompt(length, seed=seed)
        with torch.no_grad():
            port_logits = model(ids).logits.numpy()
        expected = greedy(model, ids, 12).numpy()
        logits, tokens = lm.greedy(ids.numpy(), 12)
        np.testing.assert_array_equal(tokens, expected)
        diff = float(np.abs(logits - port_logits).max())
        base = float(np.abs(ref32.greedy(ids.numpy(), 0)[0] - port_logits).max())
        assert diff <= LOGIT_BOUND, (diff, base)
        # decode steps: the full sequence through the port vs one token at a time through the IR
        seq = torch.cat([ids, torch.from_numpy(tokens)], 1)
        with torch.no_grad():
            full = model(seq).logits[0, length:].numpy()
        lm.reset()
        lm(ids.numpy())
        steps = np.concatenate([lm(tokens[:, i:i + 1])[0] for i in range(tokens.shape[1])])
        assert float(np.abs(steps - full).max()) <= LOGIT_BOUND


def test_ir_size_matches_checkpoint(native_export):
    """The weights file (openvino_model.bin) is within 10% of the checkpoint's payload without the MTP
    block (the IR has none). The .xml (graph text, ~4.6 MB here, independent of weight sizes) is not
    counted: on a toy it outweighs the weights, on V4-Flash it is negligible."""
    src, _, out, fp32 = native_export
    headers = check_folder(src).headers
    trunk = sum(h.nbytes for n, h in headers.items() if not n.startswith("mtp."))
    weights = (out / "openvino_model.bin").stat().st_size
    assert abs(weights / trunk - 1) <= 0.10, (weights, trunk)
    assert weights < 0.5 * (fp32 / "openvino_model.bin").stat().st_size


def test_cpu_keeps_experts_compressed(native_export):
    """After compile, the CPU plugin's runtime graph still holds the experts as f4e2m1 constants feeding
    FullyConnected nodes (weights decompressed inside the kernel), one per routed-expert weight."""
    _, model, out, _ = native_export
    xml = str(out / "openvino_model.xml")
    in_ir = sum(op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f4e2m1
                for op in ov.Core().read_model(xml).get_ops())
    compiled = ov.Core().compile_model(xml, "CPU", F32_CONFIG)
    f4 = 0
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) == "Const" and rt["outputPrecisions"].astype(str) == "f4e2m1":
            f4 += 1
            users = {p.get_node().get_rt_info()["layerType"].astype(str) for p in op.output(0).get_target_inputs()}
            if users == {"Convert"}:
                pytest.xfail("grouped MoE form: CPU 2026.4 keeps the f4e2m1 constant but decompresses it with a "
                             "run-time Convert before GatherMatmul (not inside the kernel); the loop form's "
                             "FullyConnected decompresses in-kernel")
            assert users <= {"FullyConnected", "GatherMatmul"}, users
    c = model.config
    assert in_ir in (3 * c.num_hidden_layers, 3 * c.n_routed_experts * c.num_hidden_layers)  # grouped / loop form
    assert f4 == in_ir


def test_native_errors(tmp_path, capsys):
    """native takes no NNCF option, and needs release-layout FP8/FP4 codes: one line, nothing left behind."""
    src = tmp_path / "seed-bf16"
    write_toy(src, PRESETS["seed"], seed=0, fmt="bf16")
    assert cli.main(["export", "--model", str(src), str(tmp_path / "o1"), "--weight-format", "native",
                     "--group-size", "32"]) == 2
    assert "--group-size does not apply to --weight-format native" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(src), str(tmp_path / "o2"), "--weight-format", "native"]) == 2
    assert "native needs a checkpoint in the release layout" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed-bf16"]


def test_subgraph_builders_handle_edge_shapes():
    """FP8 with input sizes that are not multiples of 128 (group gcd(K, 128)) and FP4 round trips."""
    torch.manual_seed(0)
    for rows, cols in ((200, 96), (130, 64), (256, 384)):
        w = torch.randn(rows, cols) * 0.05
        q, s = quant.quantize_fp8(w)
        sub = ov.Model([ops.result(native.fp8_subgraph(q, s, "w"))], [])
        got = ov.Core().compile_model(sub, "CPU", F32_CONFIG)({})[0]
        assert np.array_equal(got, quant.dequantize_fp8(q, s).numpy()), (rows, cols)
    q, s = quant.quantize_fp4(torch.randn(64, 96))
    sub = ov.Model([ops.result(native.fp4_subgraph(q, s, "w"))], [])
    got = ov.Core().compile_model(sub, "CPU", F32_CONFIG)({})[0]
    assert np.array_equal(got, quant.dequantize_fp4(q, s).numpy())
