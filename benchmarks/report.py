"""Machine facts and JSON + markdown output shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
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
