"""benchmarks/gpu/gpu_check.sh, the one script a lent GPU runs: its plan is checked here, on CPU, so
that its few minutes are never lost to a step that starts with no time left or selects no tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "gpu_check.sh"


def _plan(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), "--plan"], capture_output=True, text=True, timeout=60)


def test_plan_lists_every_step_and_the_limits_sum_to_the_budget():
    done = _plan(SCRIPT)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = dict(re.findall(r"^  (\w+)\s+(\d+)s$", done.stdout, re.M))
    assert list(steps)[:2] == ["install", "gpu_tests"]  # correctness before speed
    assert {"gpu_kernels", "gpu_model", "suite", "tune_attention"} <= set(steps)
    budget, reserve = map(int, re.search(r"budget (\d+)s = steps \+ (\d+)s reserve", done.stdout).groups())
    assert sum(map(int, steps.values())) == budget - reserve
    assert "install route: " in done.stdout


def test_plan_fails_when_the_limits_do_not_sum_to_the_budget(tmp_path):
    script = tmp_path / "benchmarks" / "gpu" / "gpu_check.sh"
    script.parent.mkdir(parents=True)
    text = SCRIPT.read_text()
    script.write_text(text.replace('"gpu_tests 150"', '"gpu_tests 250"', 1))
    assert text != script.read_text()
    done = _plan(script)
    assert done.returncode == 1 and "FAIL: the step limits sum to 600s" in done.stdout


def test_gpu_tests_are_selected_by_marker_band_tests_included():
    """gpu_check runs `pytest -m gpu tests`: the kernel, band, Triton-model, fused-GEMM model,
    CUDA-graph and pinned-copy tests, and no CPU-only file."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "tests",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    assert files == {
        "tests/test_attention_band.py",
        "tests/test_cuda_graphs.py",
        "tests/test_gelu_glu_linear.py",
        "tests/test_modeling.py",  # the whole model with the fused GEGLU GEMM against without
        "tests/test_packing.py",  # the pinned host-to-device copies
        "tests/test_tokenise_ahead.py",  # predict's chunks tokenised ahead, on CUDA by default
        "tests/test_triton_kernels.py",
        "tests/test_triton_model.py",
    }


def test_install_route_without_new_setuptools_uses_a_carried_wheel(tmp_path):
    """pyproject's SPDX license string needs setuptools >= 77 to build; on an image with an older
    one the script must take the carried wheel, or say it cannot install, before any step runs."""
    fake = tmp_path / "bin"
    fake.mkdir()
    python = fake / "python3"
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *setuptools*) echo 69.5.1 ;; *) exec ' + shutil.which("python3") + ' "$@" ;; esac\n'
    )
    python.chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    done = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, env=env)
    if (ROOT / ".device-wheels").is_dir() and list((ROOT / ".device-wheels").glob("setuptools-*.whl")):
        assert "install route: carried-setuptools (image has 69.5.1)" in done.stdout
    else:
        assert "install route: none: the image has setuptools 69.5.1 (< 77)" in done.stdout


def test_the_summary_is_written_after_a_step_that_left_no_report(tmp_path):
    """summary.md is rewritten after every step so that a device call stopped early brings back what
    finished; after install and the GPU tests no report exists yet, and the summary's last command
    (a loop over the reports) failed, so only summary.md.part was left."""
    functions = re.search(r"^summarise\(\) \{\n.*?^\}\n", SCRIPT.read_text(), re.M | re.S).group(0)
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "machine.txt").write_text("2026-01-01T00:00:00Z\nNVIDIA H100\n")
    (work / "steps.txt").write_text("== install: rc=0 in 5s (limit 20s)\n")
    part, summary = out / "summary.md.part", out / "summary.md"
    script = f"{functions}\nWORK={work}\nsummarise > {part} && mv {part} {summary}\n"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]
    assert "== install: rc=0" in summary.read_text()
