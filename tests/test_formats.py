"""Output weight formats as records (`compress/formats.py`): no module but the records' own compares a format
name; every other stage asks the record."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

from deepseek_v4_ov.compress.formats import OUTPUT_FORMATS, WEIGHT_FORMATS, format_named
from deepseek_v4_ov.compress.policy import CompressionOptions

PACKAGE = ROOT / "deepseek_v4_ov"
RECORDS = PACKAGE / "compress" / "formats.py"
NAMES = {f.name for f in OUTPUT_FORMATS}
OTHER_VOCABULARIES = {"source_format", "head_precision", "mode"}
"""Values compared against strings that share a spelling with a format name but name something else: a source
checkpoint's storage format (fp32), the LM head's precision (int8, int4), a quantiser/NNCF mode (mxfp4)."""


def _literals(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*map(_literals, node.elts))
    return set()


def _subject(node: ast.AST) -> str | None:
    """The name a compared value goes by (`opts.head_precision` -> head_precision; `x or "int8"` -> x's)."""
    if isinstance(node, ast.BoolOp):
        return _subject(node.values[0])
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None


def format_name_comparisons(source: str, filename: str = "<string>") -> list[str]:
    """`file:line: code` of every comparison of a value with a format-name literal (==, !=, in, not in, also a
    tuple of names) and every dict keyed by format names, except comparisons of OTHER_VOCABULARIES."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            pairs = [p for a, b in zip(operands, operands[1:]) for p in ((a, b), (b, a))]
            if any(_literals(lit) & NAMES and _subject(other) not in OTHER_VOCABULARIES for lit, other in pairs):
                found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
        elif isinstance(node, ast.Dict) and any(k is not None and _literals(k) & NAMES for k in node.keys):
            found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_no_format_name_compared_outside_the_records():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != RECORDS:
            found += format_name_comparisons(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "ask the format's record (compress/formats.py) instead:\n" + "\n".join(found)


def test_scanner_catches_a_planted_comparison():
    planted = '''
def f(opts, fmt, head_precision, storage):
    a = opts.weight_format == "int4"
    b = fmt in ("int8", "mxfp4")
    c = "native" != opts.weight_format
    d = {"auto": 1}
    e = head_precision == "int4" or storage.source_format == "fp32" or opts.mode == "mxfp4"
    return fmt == "bf16"
'''
    found = format_name_comparisons(planted)
    assert [line.split(":")[1] for line in found] == ["3", "4", "5", "6"], found


def test_records():
    assert WEIGHT_FORMATS == ("fp32", "fp16", "int8", "int4", "mxfp4")
    assert format_named("auto").resolved_from_source and format_named("native").keeps_release_codes
    assert [f.name for f in OUTPUT_FORMATS if f.quantised] == ["int8", "int4", "mxfp4"]
    with pytest.raises(ValueError, match="unsupported weight format 'int3'; choose one of fp32, fp16, int8"):
        format_named("int3")
    with pytest.raises(ValueError, match="unsupported weight format 'native'"):
        CompressionOptions("native").validate()
    opts = CompressionOptions("int4", sym=False, group_size=32)
    assert opts.format is format_named("int4") and opts.resolved()["mode"] == "int4_asym"
    assert CompressionOptions("int4").resolved()["group_size"] == 64
    assert CompressionOptions("int8").resolved()["mode"] == "int8_asym"
