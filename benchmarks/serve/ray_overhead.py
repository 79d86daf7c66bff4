"""What the Ray paths cost against one process on the same machine.

    python -m benchmarks.serve.ray_overhead [--out DIR] [--preset small] [--requests 200] [--queries 24]

- eval: `turborank eval` on a synthetic BEIR set, one process against `--ray` (2 workers of 1 core);
  documents per second of reranking (as each run reports it) and the whole command's wall time
  (Ray's start included).
- serving: sequential one-request-at-a-time latency (the model card's query and ten documents) of
  `turborank serve` against `serve --ray` with 1 and 2 replicas: p50 / p99 over ``--requests``.
Synthetic checkpoint (random weights); a small model by default, so the proxy's cost is not hidden
behind a long forward.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import percentile, write_report
from turborank.testing_server import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _eval(ckpt: Path, data: Path, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "turborank", "eval", "--model", str(ckpt), "--data", str(data)]
    command += ["--bm25", "--top-k", "20", "--device", "cpu", "--output", str(out), "--json", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    rate = float(re.search(r"\(([\d.]+) docs/s", done.stderr).group(1))
    return {"docs_per_s": rate, "wall_s": wall}


def _latencies(ckpt: Path, extra: list[str], requests: int) -> list[float]:
    import httpx

    from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY

    port = free_port()
    command = [sys.executable, "-m", "turborank", "serve", "--model", str(ckpt), "--device", "cpu"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, 600)
        body = {"query": MODEL_CARD_QUERY, "documents": MODEL_CARD_DOCUMENTS}
        seconds = []
        with httpx.Client(timeout=60) as client:
            for _ in range(20):  # warm-up: every replica's first forwards
                client.post(url + "/v1/rerank", json=body).raise_for_status()
            for _ in range(requests):
                start = time.perf_counter()
                client.post(url + "/v1/rerank", json=body).raise_for_status()
                seconds.append(time.perf_counter() - start)
        return seconds
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write ray_overhead_<date>.{json,md} here")
    parser.add_argument("--preset", default="small", choices=["small", "tiny-en", "turbo"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--queries", type=int, default=24)
    args = parser.parse_args()
    from turborank.testing import make_beir_dataset, make_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root / "ckpt", args.preset, seed=0)
        data = make_beir_dataset(
            root / "beir", n_queries=args.queries, n_documents=10 * args.queries, long_documents=0
        )
        for label, extra in (
            ("eval, one process (2 threads)", []),
            ("eval --ray (2 workers x 1 core)", ["--ray", "--ray-workers", "2", "--group-pairs", "80"]),
        ):
            rows.append({"case": label, **_eval(ckpt, data, root / "run.trec", extra)})
            print(rows[-1], flush=True)
        for label, extra in (
            ("serve, one process", []),
            ("serve --ray, 1 replica", ["--ray", "--replicas", "1"]),
            ("serve --ray, 2 replicas", ["--ray", "--replicas", "2"]),
        ):
            seconds = _latencies(ckpt, extra, args.requests)
            rows.append(
                {
                    "case": label,
                    "p50_ms": 1e3 * statistics.median(seconds),
                    "p99_ms": 1e3 * percentile(seconds, 0.99),
                    "requests": len(seconds),
                }
            )
            print(rows[-1], flush=True)
    notes = [
        f"synthetic {args.preset} checkpoint (random weights), CPU; eval: {args.queries} queries x top-20 "
        "BM25 documents; serving: the model card's query and 10 documents, one request at a time after 20 "
        "warm-up",
        "docs_per_s is the reranking rate each run reports; wall_s is the whole command, Ray's start "
        "included",
    ]
    columns = ["case", "docs_per_s", "wall_s", "p50_ms", "p99_ms", "requests"]
    if args.out is not None:
        write_report(args.out, f"ray_overhead_{args.preset}", rows, columns, notes)


if __name__ == "__main__":
    main()
