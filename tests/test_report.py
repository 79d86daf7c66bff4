"""benchmarks.report.run_sections: a failed or interrupted section never loses the finished ones."""

from __future__ import annotations

import json

from benchmarks.report import run_sections


def test_failed_section_becomes_a_row_and_the_others_stay(tmp_path, capsys):
    seen_on_disk = []

    def first():
        return [{"case": "a", "ms": 1.0}]

    def broken():
        raise RuntimeError("out of memory at 8192")

    def third():
        # The report already holds the first section and the failure when this one starts.
        (report,) = tmp_path.glob("demo_*.json")
        seen_on_disk.append([row["case"] for row in json.loads(report.read_text())["rows"]])
        return [{"case": "c", "ms": 3.0}]

    status, rows = run_sections(
        tmp_path, "demo", ["case", "ms", "error"], ["note"], [("a", first), ("b", broken), ("c", third)]
    )
    assert status == 1
    assert rows == [
        {"case": "a", "ms": 1.0},
        {"case": "b", "error": "RuntimeError: out of memory at 8192"},
        {"case": "c", "ms": 3.0},
    ]
    assert seen_on_disk == [["a", "b"]]
    (report,) = tmp_path.glob("demo_*.md")
    assert "| b |  | RuntimeError: out of memory at 8192 |" in report.read_text()
    assert "Traceback" in capsys.readouterr().err
    assert run_sections(tmp_path, "ok", ["case"], [], [("a", first)])[0] == 0
