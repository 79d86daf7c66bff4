"""Bounded load test of `turborank serve` over loopback: throughput, latency percentiles, errors by
code at several request rates, then a soak that watches the server's memory.

    python -m benchmarks.serve.load_test [--preset small] [--rates 5,10,20,40] [--seconds 10] [--soak 60]
    python -m benchmarks.serve.load_test --url http://127.0.0.1:8080 ...   # an already running server

Arrivals are open-loop (Poisson at the given rate), so a slow server shows up as latency and 429s
rather than as a politely reduced offered load. Each request is one query and ``--docs`` documents
of 20..200 words. Everything stops by itself; the server started here is stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.report import LOCAL_RESULTS, percentile, rss_mib, write_report
from turborank.testing import make_checkpoint, random_text
from turborank.testing_server import serve_process


async def _phase(url: str, rate: float, seconds: float, docs: int, seed: int) -> dict:
    rng = random.Random(seed)
    latencies: list[float] = []
    codes: collections.Counter = collections.Counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1000)) as client:

        async def one(body: dict) -> None:
            start = time.perf_counter()
            try:
                response = await client.post(url + "/v1/rerank", json=body)
                codes[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1

        tasks = []
        start = time.perf_counter()
        next_at = start
        while next_at - start < seconds:
            body = {
                "query": random_text(rng, rng.randint(3, 10)),
                "documents": [random_text(rng, rng.randint(20, 200)) for _ in range(docs)],
            }
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(body)))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "offered_rps": rate,
        "sent": len(tasks),
        "ok": codes.get(200, 0),
        "throughput_rps": codes.get(200, 0) / elapsed,
        "p50_ms": None if not latencies else 1e3 * statistics.median(latencies),
        "p90_ms": None if not latencies else 1e3 * percentile(latencies, 0.90),
        "p99_ms": None if not latencies else 1e3 * percentile(latencies, 0.99),
        "errors": {str(k): v for k, v in codes.items() if k != 200},
    }


def _run(args: argparse.Namespace, url: str, proc: subprocess.Popen | None) -> list[dict]:
    """The rate phases, then the soak; ``proc`` (when the server was started here) is sampled for RSS."""
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        row = asyncio.run(_phase(url, rate, args.seconds, args.docs, seed=int(rate * 1000)))
        row["phase"] = "rate"
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.soak > 0:
        best = max(r["throughput_rps"] for r in rows) if rows else 5.0
        rate = args.soak_rate or max(1.0, best / 2)
        samples = []

        async def soak() -> dict:
            async def sample() -> None:
                while True:
                    if proc is not None:
                        samples.append(rss_mib(proc.pid))
                    await asyncio.sleep(args.soak / 10)

            sampler = asyncio.create_task(sample())
            result = await _phase(url, rate, args.soak, args.docs, seed=7)
            sampler.cancel()
            return result

        row = asyncio.run(soak())
        rss = [s for s in samples if s is not None]
        row.update(
            phase="soak",
            seconds=args.soak,
            rss_first_mib=rss[0] if rss else None,
            rss_last_mib=rss[-1] if rss else None,
            rss_max_mib=max(rss) if rss else None,
        )
        row["5xx"] = sum(v for k, v in row["errors"].items() if k.isdigit() and k.startswith("5"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="test a running server instead of starting one")
    parser.add_argument(
        "--preset", default="small", help="synthetic checkpoint shapes for the started server"
    )
    parser.add_argument("--rates", default="5,10,20,40")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate")
    parser.add_argument("--soak", type=float, default=60.0, help="soak seconds (0 to skip)")
    parser.add_argument(
        "--soak-rate", type=float, default=None, help="default: half the best throughput seen"
    )
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="for the started server"
    )
    parser.add_argument("--server-args", default="", help="extra `turborank serve` arguments")
    parser.add_argument("--out", default=str(LOCAL_RESULTS))
    args = parser.parse_args()

    server = contextlib.nullcontext((None, args.url))
    if args.url is None:
        work = Path(tempfile.mkdtemp())
        checkpoint = make_checkpoint(work / "checkpoint", args.preset)
        options = ("--log-level", "warning", *args.server_args.split())
        server = serve_process(
            checkpoint, work / "server.log", *options, ready_within_s=120, device=args.device
        )
    with server as (proc, url):
        try:
            rows = _run(args, url, proc)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                print(f"server exit code after SIGTERM: {proc.wait(timeout=120)}")
    origin = "external" if args.url else f"started here: synthetic {args.preset} checkpoint, {args.device}"
    columns = [
        "phase",
        "offered_rps",
        "sent",
        "ok",
        "throughput_rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "errors",
        "rss_first_mib",
        "rss_last_mib",
        "rss_max_mib",
        "5xx",
    ]
    write_report(
        args.out,
        f"load_test_{args.device}_{args.preset}",
        rows,
        columns,
        notes=[
            f"server: {url} ({origin}); "
            f"{args.docs} documents of 20..200 words per request, Poisson arrivals, /v1/rerank"
        ],
    )


if __name__ == "__main__":
    main()
