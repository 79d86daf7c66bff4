"""Fairness and soak of `turborank serve` over loopback, against the clients a server is judged by.

    python -m benchmarks.serve.soak [--preset small] [--soak-seconds 180] [--out benchmarks/results]

Fairness: while two maximum-size requests (``max_client_batch_size`` documents filling
``--max-body-bytes``, truncated by the server) are in flight, one-pair requests are sent one after
another; their p99 is compared with the server's own mean forward duration in that time, and the
server's RSS is read before, at its peak, and after.

Soak: for ``--soak-seconds``, at once: valid requests of 1..16 documents, invalid ones (malformed
JSON, lone surrogates, deep nesting, huge numbers, wrong types, too many documents, wrong
method), uploads that stall (answered 408), uploads that trickle within the rate limit (answered
200), and clients that send a large request and hang up before the answer; these are the
legitimate client, on 127.0.0.1. Beside them two attackers, each its own client address: the slot
hog (127.0.0.2) keeps ``--slot-hogs`` uploads that send their headers and 5 bytes of body, each
reopened as soon as it is answered, to hold every request slot; the header hog (127.0.0.3) keeps
``--header-hogs`` connections that send a request line and half a header, reopened when closed,
against a server started with ``ulimit -n`` of ``--open-files``, to exhaust its file descriptors.
The server makes room by closing the hog's oldest connections; on a busy server some of those were
accepted but not yet read, and TCP answers their bytes with a reset, so the hog sees "closed",
"reset" or a 408.
Reports requests served, 4xx/5xx counts, p50/p99 of the valid ones, RSS at start and end, the
requests lost (a client that waited for an answer and got none: a reset, a timeout), and what the
attackers got. Everything stops by itself; the server is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import importlib.metadata
import json
import multiprocessing
import random
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import RESULTS, percentile, rss_mib, write_report
from turborank.testing import make_checkpoint, random_text
from turborank.testing_server import serve_process


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
        baseline = rss_mib(pid)
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
            peak = max(peak, rss_mib(pid) or 0.0)
            # Random spacing: sent right after the previous answer, every request would land at the
            # start of a forward, the worst phase, and measure that instead of a random arrival.
            await asyncio.sleep(rng.uniform(0.0, 1.0))
        statuses = [(await task).status_code for task in big]
        forward_sum_after, forward_count_after = _forward_stats((await client.get("/metrics")).text)
        await asyncio.sleep(3)  # the server trims its heap a second after a large request
        after = rss_mib(pid)
    forwards = forward_count_after - forward_count
    mean_forward = (forward_sum_after - forward_sum) / max(forwards, 1)
    p99 = percentile(latencies, 0.99)
    return {
        "phase": "fairness",
        "huge_requests": f"2 x {documents} documents, {len(huge) / 2**20:.1f} MiB each: {statuses}",
        "small_requests": len(latencies),
        "small_p50_ms": 1e3 * percentile(latencies, 0.5) if latencies else None,
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


SLOT_HOG = "127.0.0.2"
HEADER_HOG = "127.0.0.3"


async def _raw_upload(
    port: int, body: bytes, pace: list[tuple[int, float]], source: str = "127.0.0.1"
) -> tuple[int | None, str]:
    """Send the headers, then ``pace``: (bytes, seconds to wait after them); read the status line.
    Returns (status or None when the connection ended without one, what happened)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
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


async def _half_headers(port: int) -> str:
    """A connection that sends a request line and half a header, then waits; what ended it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(HEADER_HOG, 0))
    except OSError as exc:
        return f"connect: {type(exc).__name__}"
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: hog\r\nX-Wait: ")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 120)
        return line.split(b" ", 2)[1].decode() if line else "closed"
    except ConnectionResetError:
        return "reset"
    except (ConnectionError, asyncio.TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


def attack(port: int, seconds: float, slot_hogs: int, header_hogs: int) -> dict[str, dict[str, int]]:
    """The two attackers, for ``seconds``, in a process of their own (their reconnect loops would
    otherwise slow the event loop that times the legitimate client): what each got, by outcome."""

    async def run() -> dict[str, collections.Counter]:
        got = {"slot_hog": collections.Counter(), "header_hog": collections.Counter()}
        stop = time.monotonic() + seconds
        body = json.dumps({"query": "q", "texts": ["a slot hog"]}).encode()

        async def slot_hog() -> None:
            while time.monotonic() < stop:
                status, what = await _raw_upload(port, body, [(5, 0.0)], SLOT_HOG)
                got["slot_hog"][status if status is not None else what] += 1

        async def header_hog() -> None:
            while time.monotonic() < stop:
                got["header_hog"][await _half_headers(port)] += 1

        hogs = [slot_hog() for _ in range(slot_hogs)] + [header_hog() for _ in range(header_hogs)]
        await asyncio.gather(*hogs)
        return got

    return {
        name: {str(k): v for k, v in sorted(c.items(), key=str)} for name, c in asyncio.run(run()).items()
    }


async def soak(
    url: str,
    pid: int,
    seconds: float,
    workers: dict[str, int],
    slot_hogs: int = 0,
    header_hogs: int = 0,
    idle_wait_s: float = 12.0,
) -> dict[str, Any]:
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
                rss.append(rss_mib(pid) or 0.0)
                await asyncio.sleep(5)

        attackers = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        attacked = asyncio.get_running_loop().run_in_executor(
            attackers, attack, port, seconds, slot_hogs, header_hogs
        )
        tasks = [
            asyncio.create_task(worker(kind, 1000 * i + n))
            for i, (kind, n_workers) in enumerate(workers.items())
            for n in range(n_workers)
        ]
        await asyncio.gather(sample(), *tasks)
        attacks = await attacked
        attackers.shutdown()
        rss.append(rss_mib(pid) or 0.0)
        await asyncio.sleep(idle_wait_s)  # by default past the server's 10 s heap trim
        idle = rss_mib(pid)
    under_load = rss[1:-1]
    half = len(under_load) // 2
    # TEI's routes answer a failed forward with 424: a server error, though its code is a 4xx.
    failed = {code for code in codes if isinstance(code, int) and (code >= 500 or code == 424)}
    server_errors = sum(codes[code] for code in failed)
    client_errors = sum(
        v for k, v in codes.items() if isinstance(k, int) and 400 <= k < 500 and k not in failed
    )
    return {
        "phase": "soak, attacked" if slot_hogs or header_hogs else "soak",
        "seconds": seconds,
        "clients": dict(workers),
        "requests": sum(counts.values()),
        "served_200": codes.get(200, 0),
        "4xx": client_errors,
        "5xx": server_errors,
        "lost": sum(lost.values()),
        "by_code": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "lost_by_kind": dict(lost),
        "valid_p50_ms": 1e3 * percentile(latencies, 0.5) if latencies else None,
        "valid_p99_ms": 1e3 * percentile(latencies, 0.99) if latencies else None,
        "rss_start_mib": rss[0],
        "rss_load_first_half_mib": sum(under_load[:half]) / max(half, 1),
        "rss_load_second_half_mib": sum(under_load[half:]) / max(len(under_load) - half, 1),
        "rss_max_mib": max(rss),
        "rss_end_mib": rss[-1],
        "rss_idle_after_mib": idle,
        "rss_every_5s_mib": [round(x) for x in rss],
        **attacks,
    }


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
    parser.add_argument("--slot-hogs", type=int, default=64, help="the slot hog's uploads (0: none)")
    parser.add_argument("--header-hogs", type=int, default=450, help="the header hog's connections")
    parser.add_argument("--open-files", type=int, default=400, help="the server's ulimit -n")
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--linear", default="auto", help="the server's --linear engine")
    parser.add_argument("--idle-wait", type=float, default=12.0, help="seconds before the idle RSS reading")
    parser.add_argument("--machine", default="cpu", help="machine kind, for the report's name")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

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
        "--linear",
        args.linear,
    ]
    options = ("--log-level", "warning", *server_args)
    with serve_process(checkpoint, log, *options, open_files=args.open_files, ready_within_s=120) as (
        proc,
        url,
    ):
        rows = []
        try:
            if not args.skip_fairness:
                rows.append(
                    asyncio.run(fairness(url, proc.pid, args.max_body_bytes, args.max_client_batch_size))
                )
                print(json.dumps(rows[-1]), flush=True)
            if args.soak_seconds > 0:
                workers = {"valid": 6, "invalid": 3, "stalled": 4, "trickle": 2, "disconnecting": 2}
                # The same load without and then with the attackers: what they cost the legitimate client.
                for hogs in ((0, 0), (args.slot_hogs, args.header_hogs)):
                    run = soak(url, proc.pid, args.soak_seconds, workers, *hogs, idle_wait_s=args.idle_wait)
                    rows.append(asyncio.run(run))
                    print(json.dumps(rows[-1]), flush=True)
                    if hogs == (0, 0) and not any((args.slot_hogs, args.header_hogs)):
                        break
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
        "slot_hog",
        "header_hog",
    ]
    write_report(
        args.out,
        f"soak_{args.machine}_{args.preset}",
        rows,
        columns,
        notes=[
            f"machine: {_cpu_model()}; server and clients on the same cores, over loopback",
            f"attackers: the slot hog ({SLOT_HOG}) keeps {args.slot_hogs} uploads that stop after 5 bytes "
            f"of body, the header hog ({HEADER_HOG}) {args.header_hogs} connections that stop halfway "
            f"through a header, each reopened at once; the server runs under ulimit -n {args.open_files}; "
            "`requests`, `4xx`, `5xx`, `lost` and the latencies are the legitimate client's (127.0.0.1), "
            "the slot_hog and header_hog columns what the attackers got",
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
