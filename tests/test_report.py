"""Reports of the benchmark scripts: a failed or interrupted section or case never loses the finished ones."""

from __future__ import annotations

import json
import sys

import pytest

import benchmarks.cpu.run as suite
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


def test_suite_writes_its_report_after_every_case(tmp_path, monkeypatch):
    """gpu_check.sh stops the suite at its step limit: the cases measured by then must be on disk,
    marked incomplete."""
    measured = []

    def fake_measure(python, checkpoint, engine, workload, repeats, device, dtype, threads, *options):
        if len(measured) == 2:
            raise KeyboardInterrupt  # the step's time limit, as far as this process can tell
        measured.append(workload)
        return {"engine": engine, "workload": workload, "pairs": 10, "median_s": 0.5}

    monkeypatch.setattr(suite, "_run_measure", fake_measure)
    monkeypatch.setattr(suite, "_checkpoints", lambda models, reference, root: {"turbo": root})
    # The ceiling's own script has its tests (test_gemm_rates); here it only has to reach the report.
    monkeypatch.setattr(suite, "_gemm_rates", lambda threads, model: {"error": "not measured here"})
    monkeypatch.setattr(sys, "argv", ["benchmarks.cpu.run", "--quick", "--out", str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        suite.main()
    (report,) = tmp_path.glob("cpu_*_quick.json")
    data = json.loads(report.read_text())
    assert [row["workload"] for row in data["rows"]] == measured
    assert data["cases_done"].startswith("2 of ") and data["cases_done"].endswith("(incomplete)")
    (markdown,) = tmp_path.glob("cpu_*_quick.md")
    assert "(incomplete)" in markdown.read_text()
    assert "GEMM ceiling (turbo, before): failed: not measured here" in markdown.read_text()


def test_junit_results_by_file(tmp_path):
    from benchmarks.report import junit_by_file

    xml = tmp_path / "results.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_attention_band" name="test_a"/>'
        '<testcase classname="tests.test_attention_band" name="test_b"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_triton_kernels" name="test_c"><skipped message="no"/></testcase>'
        "</testsuite></testsuites>"
    )
    table = junit_by_file(xml)
    assert "| tests/test_attention_band.py | 1 | 1 | 0 |" in table
    assert "| tests/test_triton_kernels.py | 0 | 0 | 1 |" in table
    assert "FAILED tests/test_attention_band.py::test_b: boom" in table
