"""An 8,192-token pair on CPU with turbo shapes stays well under 2 GB (no [heads, L, L] tensor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_8k_pair_peak_memory(turbo_ckpt):
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "benchmarks.cpu.measure",
            str(turbo_ckpt),
            "--workload",
            "1x8192",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    # Whole process, torch and fp32 weights included. A dense fp32 [12, 8192, 8192] bias alone is 3 GiB.
    assert report["peak_rss_mib"] < 2048
    if report["forward_peak_over_resident_mib"] is not None:
        assert report["forward_peak_over_resident_mib"] < 768
