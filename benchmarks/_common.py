"""Shared helpers of the benchmark scripts: the machine line every table carries, child processes with
their own peak RSS, toy checkpoints and exports cached in a work folder, plain-text tables.

Nothing here imports torch or openvino at module level, so the helper scripts that run in `.venv-ref`
can import it too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv" / "bin" / "python"
REF_PY = ROOT / ".venv-ref" / "bin" / "python"
# Where the scripts' generated blocks live (`--results`); never the README.
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


def python_main() -> str:
    """The interpreter of the port's environment (this one when it is not a repo venv)."""
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                                if f in flags)
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    """Date, CPU model, cores, RAM, library versions and the load average (other processes share the CPU)."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram_gib(), 1),
        "host": platform.node(),
        "python": platform.python_version(),
    }
    for mod in ("openvino", "torch", "transformers", "nncf"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (not installed in this environment)
            info[mod] = None
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        info["loadavg_1m"] = None
    return info


def memory_mb() -> dict[str, float]:
    """This process's resident memory (MB) from /proc/self/smaps_rollup: `private` = anonymous pages (what
    the process itself allocated), `file` = file-backed resident pages (memory-mapped weights, libraries;
    the kernel can drop and re-read them), `rss` = both."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "private": fields["Anonymous"], "file": fields["Rss"] - fields["Anonymous"]}


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['date']} | {info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {info['ram_gib']} GiB RAM"
            f" | OpenVINO {info.get('openvino')}, torch {info.get('torch')}, transformers {info.get('transformers')}"
            f" | load avg at start {info.get('loadavg_1m')}")


def run_child(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              timeout: float | None = None) -> tuple[int, float, float, str]:
    """Run `cmd`; return (exit status, wall seconds, peak RSS MB of the child (ru_maxrss via wait4), output)."""
    start = time.perf_counter()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                          cwd=str(ROOT)) as proc:
        lines = []
        deadline = None if timeout is None else start + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if log is not None:
                with log.open("a") as fh:
                    fh.write(line)
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                break
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    return proc.returncode, wall, usage.ru_maxrss / 1024, "".join(lines)


def last_json(output: str) -> dict[str, Any]:
    """The last line of a child's output that starts with 'RESULT ' holds its JSON result."""
    for line in reversed(output.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError("child printed no RESULT line:\n" + output[-4000:])


def ensure_toy(workdir: Path, preset: str, fmt: str, seed: int = 0) -> Path:
    """A toy checkpoint of `preset` in `workdir/<preset>-<fmt>` (written once, in a child process)."""
    folder = workdir / f"{preset}-{fmt}"
    if (folder / "config.json").is_file():
        return folder
    workdir.mkdir(parents=True, exist_ok=True)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from pathlib import Path\n"
            "from deepseek_v4_ov.toys.presets import PRESETS\n"
            "from deepseek_v4_ov.toys.writer import write_toy\n"
            "write_toy(Path(%r), PRESETS[%r], %d, fmt=%r, max_shard_bytes=2 << 30, overwrite=True)\n"
            ) % (str(ROOT), str(folder), preset, seed, fmt)
    rc, wall, rss, out = run_child([python_main(), "-c", code])
    if rc != 0:
        raise RuntimeError(f"writing the {preset} toy failed:\n{out[-4000:]}")
    print(f"  wrote toy {folder} ({fmt}) in {wall:.1f}s, peak RSS {rss:,.0f} MB", flush=True)
    return folder


EXPORT_CODE = """import json, sys, time, resource
sys.path.insert(0, {root!r})
from deepseek_v4_ov.export.pipeline import export
t = time.perf_counter()
r = export({src!r}, {out!r}, weight_format={fmt!r}, prefill_only={prefill_only!r}, overwrite=True,
           whole={whole!r}, convert_tokenizer=False, drafter={drafter!r})
print("RESULT " + json.dumps({{"wall_s": time.perf_counter() - t, "ir_bytes": r.ir_bytes, "times": r.times,
                               "files": r.files}}))
"""


def export_child(src: Path, out: Path, fmt: str, prefill_only: bool = False, whole: bool = False,
                 drafter: str = "none") -> dict[str, Any]:
    """Export in a child process; returns its RESULT plus the child's wall time and peak RSS."""
    code = EXPORT_CODE.format(root=str(ROOT), src=str(src), out=str(out), fmt=fmt, prefill_only=prefill_only,
                              whole=whole, drafter=drafter)
    rc, wall, rss, output = run_child([python_main(), "-c", code])
    if rc != 0:
        raise RuntimeError(f"export {src} -> {out} ({fmt}) failed (exit {rc}):\n{output[-4000:]}")
    res = last_json(output)
    res.update(child_wall_s=wall, peak_rss_mb=rss)
    return res


def ensure_export(workdir: Path, src: Path, fmt: str, prefill_only: bool = False, whole: bool = False,
                  reuse: bool = True, drafter: str = "none") -> Path:
    """`src` exported into `workdir` (in a child process), reused only while the export key recorded there
    is the one this export would record (`deepseek_v4_ov.export.identity`: the source's digest, the
    options, the package version)."""
    from deepseek_v4_ov.export.identity import expected, recorded, why_stale

    suffix = ("-prefill" if prefill_only else "") + ("" if drafter == "none" else f"-{drafter}")
    out = workdir / f"{src.name}-ov-{fmt}{suffix}"
    _, want = expected(src, out, weight_format=fmt, prefill_only=prefill_only, whole=whole, convert_tokenizer=False,
                       drafter=drafter)
    stale = why_stale(recorded(out), want)
    if reuse and stale is None:
        return out
    if reuse:
        print(f"  re-exporting {out.name}: {stale}", flush=True)
    res = export_child(src, out, fmt, prefill_only, whole, drafter)
    print(f"  exported {out.name} in {res['child_wall_s']:.1f}s, IR {res['ir_bytes'] / 1e6:,.1f} MB, "
          f"peak RSS {res['peak_rss_mb']:,.0f} MB", flush=True)
    return out


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table (readable as plain text too)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, cells)])


def replace_results_block(name: str, block: str, path: Path = RESULTS_MD) -> None:
    """Replace the generated block `name` of `path` (benchmarks/RESULTS.md: between the lines
    `<!-- NAME: generated, do not edit -->` and `<!-- NAME: end -->`) with `block`."""
    begin = f"<!-- {name}: generated, do not edit -->"
    end = f"<!-- {name}: end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin!r} ... {end!r} block")
    head, rest = text.split(begin, 1)
    path.write_text(head + begin + "\n" + block.strip("\n") + "\n" + end + rest.split(end, 1)[1])
    print(block)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")
