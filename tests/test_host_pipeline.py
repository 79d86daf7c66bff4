"""The stand-in device the host-side benchmarks run the server in front of, and the benchmark itself."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks.gpu.targets import PROJECTED_FIXED_S, projected_forward_seconds
from benchmarks.serve import stand_in
from tests.helpers import ROOT, benchmark_rows, sample_pairs
from turborank import Reranker
from turborank.packing import cu_seqlens


def test_projected_forward_time_grows_with_the_work():
    one = projected_forward_seconds([40])
    card = projected_forward_seconds([300] * 50)
    assert PROJECTED_FIXED_S < one < card
    assert 0.5e-3 < card < 2e-3  # 1 query x 50 documents of 300 tokens: about a millisecond
    assert projected_forward_seconds([600] * 25) > card  # the same tokens in longer pairs: more attention


def test_stand_in_forward_sleeps_the_projection_and_counts_it(tmp_path):
    stats = tmp_path / "stats"
    forward = stand_in.StandInForward(str(stats))
    lengths = [300] * 20
    logits = forward(torch.zeros(sum(lengths), dtype=torch.long), cu_seqlens(lengths), 300)
    assert logits.shape == (20,) and logits.dtype == torch.float32
    assert forward.forwards == 1 and forward.busy_s >= projected_forward_seconds(lengths)
    assert stand_in.read_stats(stats) == (1, forward.busy_s, projected_forward_seconds(lengths))


def test_installed_stand_in_leaves_everything_else_to_the_product(small_ckpt):
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu")
    device = stand_in.install(reranker)
    pairs = sample_pairs(9, seed=3)
    assert reranker.predict(pairs) == [0.5] * 9  # sigmoid of the stand-in's zero logits
    assert device.forwards >= 1
    assert [r["corpus_id"] for r in reranker.rank("q", ["a", "b", "c"])] == [0, 1, 2]  # ties keep order


@pytest.mark.slow
def test_host_pipeline_benchmark_runs_end_to_end(tmp_path):
    rows = benchmark_rows(
        "benchmarks.serve.host_pipeline",
        tmp_path,
        *("--seconds", "0.5", "--clients", "2", "--one-pair-requests", "20", "--fifty-doc-requests", "3"),
        *("--library-pairs", "200"),
    )
    cases = [row["case"] for row in rows]
    assert cases[:2] == ["1 pair, 30 words", "1 x 50 docs of ~300 tokens"]
    assert all("error" not in row for row in rows), rows
    assert all(0 < row["device_busy"] < 1 for row in rows)


@pytest.mark.slow
def test_host_pipeline_counts_the_front_ends_cpu_and_the_model_process_apart(tmp_path):
    rows = benchmark_rows(
        "benchmarks.serve.host_pipeline",
        tmp_path,
        *("--seconds", "0.3", "--clients", "2", "--one-pair-requests", "10", "--fifty-doc-requests", "2"),
        *("--no-library", "--", "--front-ends", "2"),
    )
    assert len(rows) == 5 and all("error" not in row for row in rows), rows
    for row in rows:
        assert 0 <= row["model_process_cpu_ms_per_request"] <= row["server_cpu_ms_per_request"]


@pytest.mark.slow
def test_host_pipeline_on_a_real_device_measures_the_forward_instead(tmp_path):
    """``--device cpu`` runs the same cases with the real model (as ``--device cuda`` does on a GPU):
    the device's share of a request is the forward measured in process, nothing from a stand-in."""
    rows = benchmark_rows(
        "benchmarks.serve.host_pipeline",
        tmp_path,
        *("--device", "cpu", "--preset", "small", "--seconds", "0.3", "--clients", "2"),
        *("--one-pair-requests", "10", "--fifty-doc-requests", "2", "--no-library"),
    )
    assert [row["case"] for row in rows] == [
        "1 pair, 30 words",
        "1 x 50 docs of ~300 tokens",
        "1 pair, 30 words",
        "50 x ~300 tokens",
        "10 x 512 tokens",
    ]
    one, fifty = rows[:2]
    assert 0 < one["forward_ms_per_request"] < fifty["forward_ms_per_request"]
    assert fifty["p50_target_ms"] > fifty["forward_ms_per_request"] + fifty["tokenise_2_threads_ms"]
    assert all(row["stand_in_ms_per_request"] is None and row["device_busy"] is None for row in rows)
    assert all(row["server_cpu_ms_per_request"] > 0 and not row.get("errors") for row in rows)


@pytest.mark.slow
def test_host_floor_benchmark_runs_both_servers(tmp_path):
    rows = benchmark_rows("benchmarks.serve.host_floor", tmp_path, "--requests", "20", "--rounds", "1")
    assert [row["server"] for row in rows] == ["floor app", "turborank serve"]
    for row in rows:
        # Each server's stand-in ran the forwards, and what is left of a request is the host's.
        assert 0 < row["stand_in_ms_per_request"] < row["p50_ms"]
        # CPU time comes from /proc in clock ticks (10 ms): 20 requests may read as none.
        assert row["overhead_p50_ms"] > 0 and row["server_cpu_ms_per_request"] >= 0


def test_host_floor_names_the_floor_servers_it_can_run(tmp_path):
    for servers, message in (
        ("nginx", "--floor-servers: 'nginx'; each of uvicorn, granian at most once"),
        ("uvicorn,uvicorn", "each of uvicorn, granian at most once"),
    ):
        command = [sys.executable, "-m", "benchmarks.serve.host_floor", "--floor-servers", servers]
        done = subprocess.run(
            [*command, "--out", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not list(tmp_path.iterdir())  # refused before anything ran


def test_host_floor_runs_the_floor_app_under_granian_too(tmp_path):
    pytest.importorskip("granian")
    options = ["--requests", "20", "--rounds", "1", "--floor-servers", "uvicorn,granian"]
    rows = benchmark_rows("benchmarks.serve.host_floor", tmp_path, *options)
    assert [row["server"] for row in rows] == ["floor app", "floor app on granian", "turborank serve"]
    for row in rows:
        assert 0 < row["stand_in_ms_per_request"] < row["p50_ms"]
