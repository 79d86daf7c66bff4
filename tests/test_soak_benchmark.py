"""The soak benchmark end to end, a few seconds of it: both attackers run, the legitimate client is
served and its figures are reported apart from theirs."""

from __future__ import annotations

import pytest

from tests.helpers import benchmark_rows

pytest.importorskip("fastapi")


@pytest.mark.slow
def test_soak_with_both_attackers_runs_end_to_end(tmp_path):
    calm, attacked = benchmark_rows(
        "benchmarks.serve.soak",
        tmp_path,
        *("--soak-seconds", "4", "--skip-fairness", "--idle-wait", "0.5"),
        # 64 slots (the benchmark's default) all wanted by the slot hog; 300 files leave room for
        # 236 connections: the header hog's 200 and the others' 64 + ~20 need evictions.
        *("--slot-hogs", "64", "--header-hogs", "200", "--open-files", "300"),
    )
    assert (calm["phase"], attacked["phase"]) == ("soak", "soak, attacked")
    for row in (calm, attacked):
        assert row["served_200"] > 0 and row["5xx"] == 0 and row["lost"] == 0, row
    assert calm["slot_hog"] == {} and calm["header_hog"] == {}
    assert set(attacked["slot_hog"]) <= {"408", "429"} and attacked["slot_hog"]
    # "reset": a connection closed to make room before the server had read its bytes (TCP resets
    # a peer whose data arrives at a closed socket); seen on a loaded two-core machine.
    assert set(attacked["header_hog"]) <= {"408", "closed", "reset"} and attacked["header_hog"]
