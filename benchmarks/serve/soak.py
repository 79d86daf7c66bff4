"""Fairness and soak of `turborank serve` over loopback, against the clients a server is judged by.

    python -m benchmarks.serve.soak [--preset small] [--soak-seconds 180] [--out benchmarks/results]

Fairness: while two maximum-size requests (``max_client_batch_size`` documents filling
``--max-body-bytes``, truncated by the server) are in flight, one-pair requests are sent one after
another; their p99 is compared with the server's own mean forward duration in that time, and the
server's RSS is read before, at its peak, and after.

Soak: for ``--soak-seconds``, at once: valid requests of 1..16 documents, invalid ones (malformed
JSON, lone surrogates, deep nesting, huge numbers, wrong types, too many documents, wrong
method), uploads that stall (answered 408), uploads that trickle within the rate limit (answered
200), and clients that send a large request and hang up before the answer. Reports requests served,
4xx/5xx counts, p50/p99 of the valid ones, RSS at start and end, and the requests lost: a client
that waited for an answer and got none (a reset, a timeout). Everything stops by itself; the server
is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import json
import random
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import RESULTS, write_report
from benchmarks.serve.load_test import _percentile, _rss_mib
from benchmarks.serve.readiness import serve_command, wait_until_ready
from turborank.testing import free_port, make_checkpoint, random_text


def _forward_stats(metrics: str) -> tuple[float, int]:
    """(sum of seconds, count) of turborank_forward_duration_seconds in a /metrics text."""
    total = re.search(r"^turborank_forward_duration_seconds_sum (\S+)$", metrics, re.M)
    count = re.search(r"^turborank_forward_duration_seconds_count (\S+)$", metrics, re.M)
    return float(total.group(1)), int(float(count.group(1)))


def _huge_body(rng: random.Random, documents: int, max_bytes: int) -> bytes:
    """A /rerank body of ``documents`` texts that fills about 97% of ``max_bytes``."""
    chunk = random_text(rng, 20_000) + " "
    per_document = int(0.97 * max_bytes) // documents
    text = (chunk * (per_document // len(chunk) + 1))[:per_document]
    return json.dumps({"query": "a huge request", "texts": [text] * documents, "truncate": True}).encode()


async def fairness(url: str, pid: int, max_bytes: int, documents: int) -> dict[str, Any]:
    rng = random.Random(1)
    huge = _huge_body(rng, documents, max_bytes)
    small = {"query": "one pair", "texts": ["a short document about nothing much"]}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for _ in range(5):  # warm the small path
            (await client.post("/rerank", json=small)).raise_for_status()
        baseline = _rss_mib(pid)
        forward_sum, forward_count = _forward_stats((await client.get("/metrics")).text)
        big = [
            asyncio.create_task(
                client.post("/rerank", content=huge, headers={"content-type": "application/json"})
            )
            for _ in range(2)
        ]
        peak = baseline or 0.0
        latencies = []
        while not all(task.done() for task in big):
            start = time.perf_counter()
            response = await client.post("/rerank", json=small)
            response.raise_for_status()
            if not all(task.done() for task in big):
                latencies.append(time.perf_counter() - start)
            peak = max(peak, _rss_mib(pid) or 0.0)
            # Random spacing: sent right after the previous answer, every request would land at the
            # start of a forward, the worst phase, and measure that instead of a random arrival.
            await asyncio.sleep(rng.uniform(0.0, 1.0))
        statuses = [(await task).status_code for task in big]
        forward_sum_after, forward_count_after = _forward_stats((await client.get("/metrics")).text)
        await asyncio.sleep(3)  # the server trims its heap a second after a large request
        after = _rss_mib(pid)
    forwards = forward_count_after - forward_count
    mean_forward = (forward_sum_after - forward_sum) / max(forwards, 1)
    p99 = _percentile(latencies, 0.99)
    return {
        "phase": "fairness",
        "huge_requests": f"2 x {documents} documents, {len(huge) / 2**20:.1f} MiB each: {statuses}",
        "small_requests": len(latencies),
        "small_p50_ms": 1e3 * _percentile(latencies, 0.5) if latencies else None,
        "small_p99_ms": 1e3 * p99 if latencies else None,
        "mean_forward_ms": 1e3 * mean_forward,
        "p99_over_forward": p99 / mean_forward if latencies else None,
        "forwards": forwards,
        "rss_start_mib": baseline,
        "rss_peak_mib": peak,
        "rss_end_mib": after,
    }


_INVALID = [
    ("POST", "/rerank", b"{not json"),
    ("POST", "/rerank", b'{"query": "q\\ud800", "texts": ["a"]}'),
    ("POST", "/v1/rerank", b'{"query": "q", "documents": ["\\udfff"]}'),
    ("POST", "/rerank", b"[" * 50_000 + b"]" * 50_000),
    ("POST", "/rerank", b'{"query": ' + b"7" * 5001 + b"}"),
    ("POST", "/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": "1"}'),
    ("POST", "/rerank", b'{"query": "", "texts": ["a"]}'),
    ("POST", "/rerank", json.dumps({"query": "q", "texts": ["d"] * 100}).encode()),
    ("POST", "/rerank", b'{"query": "q", "texts": 5}'),
    ("GET", "/rerank", b""),
    ("GET", "/no/such/route", b""),
]


async def _raw_upload(port: int, body: bytes, pace: list[tuple[int, float]]) -> tuple[int | None, str]:
    """Send the headers, then ``pace``: (bytes, seconds to wait after them); read the status line.
    Returns (status or None when the connection ended without one, what happened)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /rerank HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        sent = 0
        for size, pause in pace:
            writer.write(body[sent : sent + size])
            sent += size
            await writer.drain()
            await asyncio.sleep(pause)
        line = await asyncio.wait_for(reader.readline(), 60)
        return (int(line.split()[1]), "answered") if line else (None, "closed without an answer")
    except (ConnectionError, asyncio.TimeoutError) as exc:
        return None, type(exc).__name__
    finally:
        writer.close()


async def soak(url: str, pid: int, seconds: float, workers: dict[str, int]) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    codes: collections.Counter = collections.Counter()
    lost: collections.Counter = collections.Counter()
    latencies: list[float] = []
    rss: list[float] = []
    stop = time.monotonic() + seconds
    counts: collections.Counter = collections.Counter()

    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=200)
    ) as client:

        async def valid(rng: random.Random) -> None:
            body = {
                "query": random_text(rng, rng.randint(2, 10)),
                "texts": [random_text(rng, rng.randint(5, 400)) for _ in range(rng.randint(1, 16))],
                "truncate": True,
            }
            start = time.perf_counter()
            response = await client.post("/rerank", json=body)
            codes[response.status_code] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)

        async def invalid(rng: random.Random) -> None:
            method, path, body = rng.choice(_INVALID)
            response = await client.request(
                method, path, content=body or None, headers={"content-type": "application/json"}
            )
            codes[response.status_code] += 1

        async def stalled(rng: random.Random) -> None:
            body = json.dumps({"query": "q", "texts": ["stalled upload"]}).encode()
            status, what = await _raw_upload(port, body, [(10, 0.0)])
            codes[status if status is not None else what] += 1
            if status is None:
                lost["stalled: " + what] += 1

        async def trickle(rng: random.Random) -> None:
            text = random_text(rng, 300)
            body = json.dumps({"query": "q", "texts": [text], "truncate": True}).encode()
            pieces = [(len(body) // 4 + 1, 0.5)] * 4  # well within the body timeout and rate
            status, what = await _raw_upload(port, body, pieces)
            codes[status if status is not None else what] += 1
            if status is None:
                lost["trickle: " + what] += 1

        async def disconnecting(rng: random.Random) -> None:
            body = {"query": "q", "texts": [random_text(rng, 2000) for _ in range(16)], "truncate": True}
            try:
                await client.post("/rerank", json=body, timeout=rng.uniform(0.05, 0.5))
                codes["answered before hanging up"] += 1
            except httpx.TimeoutException:
                codes["hung up"] += 1

        kinds = {
            "valid": valid,
            "invalid": invalid,
            "stalled": stalled,
            "trickle": trickle,
            "disconnecting": disconnecting,
        }

        async def worker(kind: str, seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                counts[kind] += 1
                try:
                    await kinds[kind](rng)
                except httpx.HTTPError as exc:
                    lost[f"{kind}: {type(exc).__name__}"] += 1
                await asyncio.sleep(rng.uniform(0.0, 0.2))

        async def sample() -> None:
            while time.monotonic() < stop:
                rss.append(_rss_mib(pid) or 0.0)
                await asyncio.sleep(5)

        tasks = [
            asyncio.create_task(worker(kind, 1000 * i + n))
            for i, (kind, n_workers) in enumerate(workers.items())
            for n in range(n_workers)
        ]
        await asyncio.gather(sample(), *tasks)
        rss.append(_rss_mib(pid) or 0.0)
        await asyncio.sleep(12)  # past the server's 10 s heap trim
        idle = _rss_mib(pid)
    under_load = rss[1:-1]
    half = len(under_load) // 2
    # TEI's routes answer a failed forward with 424: a server error, though its code is a 4xx.
    failed = {code for code in codes if isinstance(code, int) and (code >= 500 or code == 424)}
    server_errors = sum(codes[code] for code in failed)
    client_errors = sum(
        v for k, v in codes.items() if isinstance(k, int) and 400 <= k < 500 and k not in failed
    )
    return {
        "phase": "soak",
        "seconds": seconds,
        "clients": dict(workers),
        "requests": sum(counts.values()),
        "served_200": codes.get(200, 0),
        "4xx": client_errors,
        "5xx": server_errors,
        "lost": sum(lost.values()),
        "by_code": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "lost_by_kind": dict(lost),
        "valid_p50_ms": 1e3 * _percentile(latencies, 0.5) if latencies else None,
        "valid_p99_ms": 1e3 * _percentile(latencies, 0.99) if latencies else None,
        "rss_start_mib": rss[0],
        "rss_load_first_half_mib": sum(under_load[:half]) / max(half, 1),
        "rss_load_second_half_mib": sum(under_load[half:]) / max(len(under_load) - half, 1),
        "rss_max_mib": max(rss),
        "rss_end_mib": rss[-1],
        "rss_idle_after_mib": idle,
        "rss_every_5s_mib": [round(x) for x in rss],
    }


def _start_server(checkpoint: Path, port: int, log: Path, options: list[str]) -> subprocess.Popen:
    """`turborank serve` with its log in a file (a pipe nobody reads would block it when full)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            serve_command(checkpoint, port, "--log-level", "warning", *options),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until_ready(proc, f"http://127.0.0.1:{port}", 120, log.read_text)
    return proc


def _versions() -> str:
    names = ("fastapi", "starlette", "uvicorn", "h11", "pydantic", "tokenizers", "httpx")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="synthetic checkpoint shapes")
    parser.add_argument("--soak-seconds", type=float, default=180.0)
    parser.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--max-client-batch-size", type=int, default=32)
    parser.add_argument("--max-concurrent-requests", type=int, default=64)
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--machine", default="cpu", help="machine kind, for the report's name")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    port = free_port()
    work = Path(tempfile.mkdtemp())
    checkpoint = make_checkpoint(work / "checkpoint", args.preset)
    log = work / "server.log"
    server_args = [
        "--max-body-bytes",
        str(args.max_body_bytes),
        "--max-client-batch-size",
        str(args.max_client_batch_size),
        "--max-concurrent-requests",
        str(args.max_concurrent_requests),
    ]
    proc = _start_server(checkpoint, port, log, server_args)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        if not args.skip_fairness:
            rows.append(asyncio.run(fairness(url, proc.pid, args.max_body_bytes, args.max_client_batch_size)))
            print(json.dumps(rows[-1]), flush=True)
        if args.soak_seconds > 0:
            workers = {"valid": 6, "invalid": 3, "stalled": 4, "trickle": 2, "disconnecting": 2}
            rows.append(asyncio.run(soak(url, proc.pid, args.soak_seconds, workers)))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(timeout=120)
    server_log = log.read_text().splitlines()
    print(f"server log: {len(server_log)} lines", *server_log[-20:], sep="\n")
    columns = [
        "phase",
        "huge_requests",
        "small_requests",
        "small_p50_ms",
        "small_p99_ms",
        "mean_forward_ms",
        "p99_over_forward",
        "forwards",
        "seconds",
        "clients",
        "requests",
        "served_200",
        "4xx",
        "5xx",
        "lost",
        "by_code",
        "lost_by_kind",
        "valid_p50_ms",
        "valid_p99_ms",
        "rss_start_mib",
        "rss_peak_mib",
        "rss_load_first_half_mib",
        "rss_load_second_half_mib",
        "rss_max_mib",
        "rss_end_mib",
        "rss_idle_after_mib",
    ]
    write_report(
        args.out,
        f"soak_{args.machine}_{args.preset}",
        rows,
        columns,
        notes=[
            f"machine: {_cpu_model()}; server and clients on the same cores, over loopback",
            f"server: `turborank serve` on a synthetic {args.preset} checkpoint, CPU, float32, "
            f"defaults except {' '.join(server_args)}; it exited {exit_code} after SIGTERM and logged "
            f"{len(server_log)} lines at warning level and above",
            f"versions: {_versions()}",
            "fairness: p99_over_forward is the one-pair requests' p99 over the server's mean forward "
            "duration while the huge requests ran (from its /metrics)",
            "soak: `lost` counts clients that waited for an answer and got none; 'hung up' are the "
            "clients that left on purpose before theirs; RSS is sampled every 5 s (the series is in the "
            "JSON), its means over the first and second half of the load show whether it grows, and it is "
            "read again 12 s after the load stops",
        ],
    )


if __name__ == "__main__":
    main()
