"""Machine facts and JSON + markdown output shared by the benchmark scripts.

python -m benchmarks.report junit RESULTS.xml   # pytest's JUnit XML as a table per test file
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from turborank.cpu_features import cpu_identity

# Where a script writes when no --out is given: inside the clone whatever the working directory,
# and ignored by git (committed results go to benchmarks/results/ by name).
RESULTS = Path(__file__).resolve().parent / "results"
LOCAL_RESULTS = RESULTS / "local"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1): a value that was measured; None for no values. Every
    benchmark's p50/p99 comes from here, so two reports' p99 of the same latencies agree."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def rss_mib(pid: int) -> float | None:
    """A process's resident set in MiB, from /proc (None where there is none, or it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        # Vendor, family, model and ISA: CPU figures hold for the CPU they were taken on only.
        "cpu": cpu_identity().describe(),
        "torch_threads": torch.get_num_threads(),
        "commit": _commit(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def _commit() -> str | None:
    """The checkout's commit (with "+changes" when the tree differs from it), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    name: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    notes: list[str] | None = None,
    echo: bool = True,
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    name = f"{name}_{info['date'][:10]}"  # results are kept per day, never overwritten by a later one
    (out / f"{name}.json").write_text(
        json.dumps({"machine": info, "rows": rows, "notes": notes or []}, indent=2)
    )
    header = f"# {name}\n\n" + ", ".join(f"{k}: {v}" for k, v in info.items()) + "\n\n"
    body = markdown_table(rows, columns) + "\n"
    tail = "".join(f"\n- {note}" for note in notes or []) + ("\n" if notes else "")
    (out / f"{name}.md").write_text(header + body + tail)
    if echo:
        print(header + body + tail, flush=True)


def run_sections(
    out_dir: str | Path,
    name: str,
    columns: list[str],
    notes: list[str],
    sections: list[tuple[str, Callable[[], list[dict[str, Any]]]]],
) -> tuple[int, list[dict[str, Any]]]:
    """Run each section, rewriting the report after each: a step killed at its time limit, or a
    section that fails, still leaves every finished row on disk. A failed section becomes a row
    naming it and its error. Returns (exit status: 1 if any section failed, all rows)."""
    rows: list[dict[str, Any]] = []
    failed = False
    for label, make in sections:
        try:
            rows += make()
        except Exception as exc:  # one failed section must not lose the others; its row says why
            failed = True
            traceback.print_exc()
            rows.append({columns[0]: label, "error": f"{type(exc).__name__}: {exc}"[:300]})
        write_report(out_dir, name, rows, columns, notes, echo=False)
        print(f"[{name}] {label}: done", flush=True)
    write_report(out_dir, name, rows, columns, notes)
    return (1 if failed else 0), rows


def junit_by_file(path: str | Path) -> str:
    """Passed / failed / skipped counts per test file from pytest's ``--junitxml`` output, as a
    markdown table, failures named."""
    counts: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    for case in ET.parse(path).iter("testcase"):
        # pytest writes classname "tests.test_x" (or "tests.test_x.TestClass") per test.
        module = ".".join(part for part in case.get("classname", "").split(".") if not part[:1].isupper())
        name = module.replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failures.append(f"{name}::{case.get('name')}: {(child.get('message') or '')[:200]}")
            elif child.tag == "skipped":
                outcome = "skipped"
        row = counts.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})
        row[outcome] += 1
    rows = [{"file": name, **row} for name, row in sorted(counts.items())]
    table = markdown_table(rows, ["file", "passed", "failed", "skipped"])
    return table + "".join(f"\n- FAILED {line}" for line in failures) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "junit":
        sys.exit("usage: python -m benchmarks.report junit RESULTS.xml")
    print(junit_by_file(sys.argv[2]), end="")
