"""The README's commands exist as written, and the docs' links resolve.

Every command in the README's ```bash blocks is checked without running it: `deepseek-v4-ov ...` and
`python -m deepseek_v4_ov[.cli] ...` are parsed by the CLI's own parser (`deepseek_v4_ov.cli.build_parser`,
so a subcommand or option that does not exist fails here), `make TARGET` needs the target in the Makefile,
`python SCRIPT ...` / `bash SCRIPT` need the file (and each `--option` given to a script must appear in
it), `python -m MODULE` needs the module. Any other kind of command fails: the README keeps to these. The
```python blocks must compile. The README stays within 200 lines and holds no generated benchmark block
(those live in benchmarks/RESULTS.md, where the scripts' `--results` writers put them); every relative link
of the README and docs/ points at a file that exists, and at a heading of it when it names one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MAX_README_LINES = 200
PYTHONS = re.compile(r"^(python3?|(\S*/)?\.venv(-ref)?/bin/python3?)$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|"}
CLI_MODULES = {"deepseek_v4_ov", "deepseek_v4_ov.cli"}
MARKER = re.compile(r"^<!-- [\w-]+: generated, do not edit -->$", re.M)


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped, `&&`/`;`
    chains split, leading VAR=value assignments removed."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in words + [";"]:
            if word in SEPARATORS:
                while command and ENV_ASSIGNMENT.match(command[0]):
                    command.pop(0)
                if command:
                    out.append(command)
                command = []
            else:
                command.append(word)
    return out


def readme_commands() -> list[list[str]]:
    return [c for block in fenced(README.read_text(), "bash") for c in commands(block)]


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-/ ]+?)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return targets


def parse_cli(args: list[str]) -> str | None:
    """None when the CLI's parser accepts `args` (or prints its help), else argparse's message."""
    from deepseek_v4_ov.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip() or f"exit {exc.code}"
    return None


def check(command: list[str]) -> str | None:
    """None when `command` exists as written, else what is wrong."""
    head, args = command[0], command[1:]
    if head == "make":
        missing = [t for t in args if not t.startswith("-") and not ENV_ASSIGNMENT.match(t) and t not in make_targets()]
        return f"no Makefile target {missing}" if missing else None
    if head == "deepseek-v4-ov":
        if 'deepseek-v4-ov = "deepseek_v4_ov.cli:main"' not in (ROOT / "pyproject.toml").read_text():
            return "pyproject.toml declares no deepseek-v4-ov console script"
        return parse_cli(args)
    if head == "bash":
        return None if args and (ROOT / args[0]).is_file() else f"no script {args[:1]}"
    if PYTHONS.match(head):
        if args[:1] == ["-m"]:
            module, rest = args[1], args[2:]
            if module in CLI_MODULES:
                return parse_cli(rest)
            return None if importlib.util.find_spec(module) else f"no module {module}"
        if not args or not (ROOT / args[0]).is_file():
            return f"no script {args[:1]}"
        source = (ROOT / args[0]).read_text()
        unknown = [a.split("=")[0] for a in args[1:] if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
        return f"{args[0]} has no option {unknown}" if unknown else None
    return f"unknown kind of command {head!r} (the README keeps to make, deepseek-v4-ov, python, bash)"


def test_readme_has_commands():
    kinds = {c[0] for c in readme_commands()}
    assert {"make", "deepseek-v4-ov"} <= kinds, kinds
    assert [c for c in readme_commands() if c[:1] == ["make"] and c[1:] in (["demo"], ["test"])], \
        "the README's set-up is `make demo` / `make test`"


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c)[:70])
def test_readme_command_exists(command):
    problem = check(command)
    assert problem is None, f"README: `{shlex.join(command)}`: {problem}"


def test_check_catches_what_does_not_exist():
    """The checker itself: each of these must be refused."""
    assert check(["deepseek-v4-ov", "export", "--model", "x", "--no-such-option", "out"])
    assert check(["deepseek-v4-ov", "no-such-subcommand"])
    assert check(["deepseek-v4-ov", "toy", "out/x", "--preset", "no-such-preset"])
    assert check(["make", "no-such-target"])
    assert check(["python", "benchmarks/no_such_script.py"])
    assert check(["python", "benchmarks/quality.py", "--no-such-option"])
    assert check(["python", "-m", "no_such_module_of_ours", "--model", "x", "out"])
    assert check(["pip", "install", "x"])
    assert check(["deepseek-v4-ov", "toy", "out/x", "--preset", "seed"]) is None
    assert check(["deepseek-v4-ov", "export", "--help"]) is None
    assert commands("A=1 make test PYTEST_ARGS='-m slow' && bash x.sh  # c\n") == [
        ["make", "test", "PYTEST_ARGS=-m slow"], ["bash", "x.sh"]]


def test_readme_python_blocks_compile():
    for i, block in enumerate(fenced(README.read_text(), "python")):
        compile(block, f"README.md python block {i}", "exec")


def test_readme_is_short_and_holds_no_generated_block():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert not MARKER.search(text), "generated blocks belong in benchmarks/RESULTS.md"


def test_generated_blocks_live_in_results():
    """Every block a benchmark script writes (`replace_results_block("NAME", ...)`) has its markers in
    benchmarks/RESULTS.md, and no README or docs page holds one."""
    names = set()
    for script in (ROOT / "benchmarks").glob("*.py"):
        names.update(re.findall(r'replace_results_block\(\s*"([\w-]+)"', script.read_text()))
    assert names, "no benchmark script writes a RESULTS.md block"
    results = RESULTS.read_text()
    for name in sorted(names):
        assert f"<!-- {name}: generated, do not edit -->" in results and f"<!-- {name}: end -->" in results, name
    for page in [README, *DOCS]:
        assert not MARKER.search(page.read_text()), page


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(m) for m in re.findall(r"^#+\s+(.*?)\s*$", text, flags=re.M)}


@pytest.mark.parametrize("page", [README, *DOCS, RESULTS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target}: no such heading")
    assert not bad, bad
