"""Soak of `turborank serve --ray` while its model replicas are killed: no accepted request is lost.

    python -m benchmarks.serve.ray_replica_soak [--seconds 120] [--clients 8] [--kill-every 15] \
        [--replicas 2] [--out benchmarks/results]

Starts `turborank serve --ray --replicas N` on a synthetic checkpoint (a local Ray cluster), runs
``--clients`` threads of rerank requests (TEI's and Jina's shapes, 4-32 documents) for ``--seconds``,
and every ``--kill-every`` seconds SIGKILLs one model replica process (``ray::ServeReplica:turborank:
turborank``, as a crash, an OOM kill or a lost node would end it). Each answer is counted as:
``ok`` (200 with every document scored), ``refused`` (the API's JSON 503 with ``Retry-After``: the
client is told to come back) or ``lost`` (anything else: a plain-text 500, a reset, a timeout, a
200 missing results). Writes the counts, p50/p99 of the ``ok`` ones, the kills and the machine
to a JSON file; exits 1 when a request was lost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.report import percentile
from turborank.cpu_features import cpu_identity
from turborank.testing import make_checkpoint
from turborank.testing_server import free_port, wait_until_ready

MODEL_REPLICA_TITLE = b"ray::ServeReplica:turborank:turborank"


def model_replica_pids() -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(MODEL_REPLICA_TITLE):
                pids.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return pids


def classify(response, documents: int, tei: bool) -> str:
    """ok, refused (JSON 503 with Retry-After) or lost."""
    if response is None:
        return "lost"
    if response.status_code == 503 and response.headers.get("retry-after"):
        try:
            response.json()
        except ValueError:
            return "lost"
        return "refused"
    if response.status_code != 200:
        return "lost"
    body = response.json()
    results = body if tei else body.get("results", [])
    return "ok" if len(results) == documents else "lost"


def run_soak(seconds: float, clients: int, kill_every: float, replicas: int, workdir: Path) -> dict:
    import httpx

    ckpt = make_checkpoint(workdir / "ckpt", "small", seed=5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "turborank", "serve", "--model", str(ckpt), "--device", "cpu"]
    command += ["--port", str(port), "--ray", "--replicas", str(replicas), "--max-client-batch-size", "64"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    counts = {"ok": 0, "refused": 0, "lost": 0}
    latencies: list[float] = []
    lost_examples: list[str] = []
    kills: list[float] = []
    lock = threading.Lock()
    try:
        wait_until_ready(proc, url, 300, lambda: proc.communicate()[1])
        started = time.monotonic()
        deadline = started + seconds

        def client(seed: int) -> None:
            n = 0
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < deadline:
                    n += 1
                    documents = 4 + (seed * 7 + n * 5) % 29
                    texts = [f"doc {seed} {n} {j} " + "word " * (20 + 9 * j) for j in range(documents)]
                    tei = n % 2 == 0
                    body = {"query": f"query {seed} {n}", ("texts" if tei else "documents"): texts}
                    sent = time.perf_counter()
                    try:
                        response = http.post(url + ("/rerank" if tei else "/v1/rerank"), json=body)
                    except httpx.HTTPError as exc:
                        response, error = None, repr(exc)
                    kind = classify(response, documents, tei)
                    with lock:
                        counts[kind] += 1
                        if kind == "ok":
                            latencies.append(time.perf_counter() - sent)
                        elif kind == "lost" and len(lost_examples) < 5:
                            lost_examples.append(error if response is None else response.text[:200])

        def killer() -> None:
            while time.monotonic() + kill_every < deadline:
                time.sleep(kill_every)
                pids = model_replica_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    kills.append(round(time.monotonic() - started, 1))

        with concurrent.futures.ThreadPoolExecutor(clients + 1) as pool:
            futures = [pool.submit(client, seed) for seed in range(clients)] + [pool.submit(killer)]
            for future in futures:
                future.result()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = proc.wait()
    return {
        "seconds": seconds,
        "clients": clients,
        "replicas": replicas,
        "kill_every_s": kill_every,
        "kills_at_s": kills,
        "counts": counts,
        "ok_p50_ms": round(1000 * percentile(latencies, 0.50), 1) if latencies else None,
        "ok_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "lost_examples": lost_examples,
        "server_exit_code": exit_code,
    }


def markdown(result: dict, label: str) -> str:
    counts, machine = result["counts"], result["machine"]
    return (
        f"# turborank serve --ray, model replicas killed under load{f' ({label})' if label else ''}\n\n"
        f"{time.strftime('%Y-%m-%d')}; {machine['cpu']}; Python {machine['python']}, Ray {machine['ray']}; "
        f"small synthetic checkpoint on CPU, {result['replicas']} replicas, {result['clients']} clients "
        f"for {result['seconds']:g} s, one model replica SIGKILLed every {result['kill_every_s']:g} s "
        f"(at {', '.join(f'{t:g}' for t in result['kills_at_s'])} s).\n\n"
        "| answered with scores | JSON 503 + Retry-After | lost (plain 500, reset, timeout) "
        "| p50 / p99 of the answered |\n|---|---|---|---|\n"
        f"| {counts['ok']} | {counts['refused']} | {counts['lost']} "
        f"| {result['ok_p50_ms']} / {result['ok_p99_ms']} ms |\n"
        + (f"\nLost, first answers: {result['lost_examples']}\n" if result["lost_examples"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=15)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and markdown results")
    parser.add_argument("--label", default="", help="a name part for the files (a variant under test)")
    args = parser.parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory() as workdir:
        result = run_soak(args.seconds, args.clients, args.kill_every, args.replicas, Path(workdir))
    result["machine"] = {
        "cpu": cpu_identity().describe(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "_".join(part for part in ("ray_replica_soak", args.label, time.strftime("%Y-%m-%d")) if part)
        (args.out / f"{name}.json").write_text(text + "\n")
        (args.out / f"{name}.md").write_text(markdown(result, args.label))
    return 1 if result["counts"]["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
