"""turborank on a local Ray cluster: `eval --ray` gives the single-process run byte for byte, also
when a worker is killed mid-group; `serve --ray` answers each request with its own scores through
Ray Serve's proxy and drains on shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
from turborank.testing import make_beir_dataset, make_checkpoint
from turborank.testing_server import free_port, wait_until_ready

pytestmark = pytest.mark.slow  # each test starts a local Ray cluster (10-25 s)

TASK_TITLE = "ray::turborank-group"  # the process title of a Ray worker running a group


def _env(threads: int = 1) -> dict[str, str]:
    # One torch thread in the single process as in each Ray task (--ray-cpus-per-worker 1): the same
    # accumulation order, hence the same bytes.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
    return {**env, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}


def _eval_command(ckpt: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "turborank",
        "eval",
        "--model",
        str(ckpt),
        "--data",
        str(data),
        "--bm25",
        "--top-k",
        "10",
        "--group-pairs",
        "10",
        "--device",
        "cpu",
        # One engine everywhere: "auto" times both at load, and on a loaded machine the single
        # process and a Ray task may pick differently (the same scores to rounding, not to the byte).
        "--linear",
        "aten",
        "--json",
        "--output",
        str(output),
        *extra,
    ]


def _metrics(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    ckpt = make_checkpoint(root / "ckpt", "small", seed=3)
    data = make_beir_dataset(root / "beir", n_queries=12, n_documents=80, long_documents=0)
    single = root / "single.trec"
    done = subprocess.run(
        _eval_command(ckpt, data, single), capture_output=True, text=True, env=_env(), timeout=600
    )
    assert done.returncode == 0, done.stderr
    return ckpt, data, single, _metrics(done.stdout)


def test_eval_on_ray_equals_the_single_process_run(inputs, tmp_path):
    ckpt, data, single, metrics = inputs
    output = tmp_path / "ray.trec"
    command = _eval_command(ckpt, data, output, "--ray", "--ray-workers", "2")
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert output.read_bytes() == single.read_bytes()
    assert _metrics(done.stdout) == metrics
    assert "on Ray" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.trec"]  # no shard files left behind


def _task_pids() -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().replace(b"\0", b" ").startswith(TASK_TITLE.encode()):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray's workers through /proc")
def test_eval_on_ray_survives_a_worker_killed_mid_group(inputs, tmp_path):
    """SIGKILL a worker while it runs a group (as a preempted node would): Ray retries the group,
    the shard on disk is never half-written, and the run is the same bytes."""
    ckpt, data, single, metrics = inputs
    output = tmp_path / "ray.trec"
    command = _eval_command(ckpt, data, output, "--ray", "--ray-workers", "2")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        for pid in _task_pids():
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed is not None, "no worker was caught running a group"
    assert proc.returncode == 0, stderr
    assert output.read_bytes() == single.read_bytes()
    assert _metrics(stdout) == metrics


def test_failed_ray_job_leaves_the_earlier_output(inputs, tmp_path):
    ckpt, data, _, _ = inputs
    output = tmp_path / "ray.trec"
    output.write_text("an earlier run\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((ckpt / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    command = _eval_command(broken, data, output, "--ray", "--ray-workers", "2")
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 1
    assert "model.safetensors" in done.stderr
    assert output.read_text() == "an earlier run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "ray.trec"]


def test_serve_on_ray_answers_each_request_with_its_own_scores_and_drains(inputs):
    """Two replicas behind Ray Serve's proxy: concurrent requests each get the library's scores for
    their own documents; on SIGTERM a request in flight is answered, new ones get 503, exit 0."""
    import concurrent.futures

    import httpx

    from turborank import Reranker

    ckpt = inputs[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "turborank", "serve", "--model", str(ckpt), "--device", "cpu"]
    command += ["--port", str(port), "--ray", "--replicas", "2", "--max-client-batch-size", "64"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        wait_until_ready(proc, url, 300, lambda: proc.communicate()[1])
        reranker = Reranker.from_pretrained(ckpt, device="cpu")
        requests = [
            (f"query {i}", [f"document {i} {j} " + "word " * (3 * j + i) for j in range(5)])
            for i in range(16)
        ]

        def ask(request):
            query, documents = request
            body = {"query": query, "texts": documents}
            answer = httpx.post(url + "/rerank", json=body, timeout=120)
            assert answer.status_code == 200, answer.text
            return {item["index"]: item["score"] for item in answer.json()}

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, requests))
        for (query, documents), got in zip(requests, answers, strict=True):
            want = reranker.predict([(query, d) for d in documents])
            assert [got[i] for i in range(len(documents))] == pytest.approx(want, abs=1e-5)

        # Drain: a long request in flight when SIGTERM arrives is answered; a new one gets 503.
        long_documents = [f"long {i} " + "word " * 300 for i in range(48)]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post, url + "/rerank", json={"query": "q", "texts": long_documents}, timeout=300
            )
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            refused = None
            while refused is None and not in_flight.done():
                answer = httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=30)
                if answer.status_code == 503:
                    refused = answer
                time.sleep(0.2)
            answered = in_flight.result()
            finished = time.monotonic()
        assert answered.status_code == 200 and len(answered.json()) == 48
        assert finished > signalled  # it was in flight across the signal
        assert refused is not None and refused.headers.get("retry-after")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
