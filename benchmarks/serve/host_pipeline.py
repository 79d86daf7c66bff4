"""The host side of turborank serving, measured in front of a stand-in device.

    python -m benchmarks.serve.host_pipeline [--seconds 10] [--clients 8,32] [--out DIR] [-- SERVE_OPTIONS]
    python -m benchmarks.serve.host_pipeline --device cuda    # the same cases on a real GPU

On a GPU the turbo forward of a request takes a fraction of a millisecond to about one; what costs
latency is the host: HTTP, JSON, tokenising, scheduling, packing. This drives `turborank serve`,
started with its forward replaced by ``benchmarks.serve.stand_in`` (the projected H200 time in a
sleep that burns no CPU), over loopback, with raw-socket HTTP/1.1 keep-alive clients (a few us
of client work per request, so the figures are the server's):

- one pair (a query of 6 words, a document of 30): sequential requests, p50/p99 latency, and the
  server's overhead: latency minus the stand-in's forward time per request;
- 1 query x 50 documents of about 300 tokens: sequential, p50/p99, against the forward's projected
  GPU time plus tokenising the request's pairs on 2 threads in this process (``Reranker.encode``)
  plus 1 ms. The projection, not the stand-in's sleeps as they took: while the tokenizer threads
  keep both cores busy, the forward's thread wakes from its sleep late, by up to a millisecond a
  forward here, and that lateness is the host's, not the device's;
- throughput with N concurrent clients at one pair, 10 x 512 tokens and 50 x 300: requests/s, pairs/s,
  p50/p99;

each with the server's CPU time per request (/proc/PID/stat) and the share of the wall time the
stand-in device was busy. Then the library path in this process, on the stand-in: ``predict`` and
``rank`` over 100k pairs, and ``turborank eval`` (BM25 top 100) on a synthetic BEIR set. Writes
``host_pipeline_<date>.{json,md}`` under ``--out``, again after each case (a run stopped by a time
limit keeps the cases it finished).

``--device cuda`` (or ``cpu``) runs the same cases with the real model on that device instead of the
stand-in, from a checkpoint of ``--preset`` shapes (turbo by default there): what the stand-in
projects, measured. The device's share of a request is then its forward measured in this process
before the server starts (``forward_ms_per_request``: ``Reranker.logits`` on the request's pairs,
synchronised, median of the requests), and the overhead and the 1 x 50 target are taken against it;
the device's busy share is not known from outside the server and is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from benchmarks.gpu.targets import H200_BF16_TFLOPS, PROJECTED_EFFICIENCY, PROJECTED_FIXED_S
from benchmarks.report import LOCAL_RESULTS, percentile, write_report
from benchmarks.serve import stand_in
from turborank.testing import make_checkpoint, random_text
from turborank.testing_server import serve_process

ROOT = Path(__file__).resolve().parents[2]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """User + system CPU clock ticks, threads included, of a process and (summed) of its live
    child processes (``serve --front-ends``), in one pass: whole ticks, so that the process's own
    share of a difference can never come out above the total's through rounding."""
    children = sum(sum(cpu_ticks(child)) for child in _child_processes(pid))
    return _own_ticks(pid), children


def _own_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0  # it has exited
    return int(fields[11]) + int(fields[12])


def _child_processes(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                children += [int(p) for p in (task / "children").read_text().split()]
    return children


class Connection:
    """One keep-alive HTTP/1.1 connection on a raw socket: a request is one sendall, the answer is
    read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length")
        )
        while len(self.buffer) < length:
            self._read()
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, payload

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _body(rng: random.Random, documents: int, words: int) -> bytes:
    return json.dumps(
        {"query": random_text(rng, 6), "documents": [random_text(rng, words) for _ in range(documents)]}
    ).encode()


STAND_IN = "stand-in"


@contextlib.contextmanager
def stand_in_server(
    checkpoint: Path, stats: Path | None, log: Path, options: list[str], device: str = STAND_IN
) -> Iterator[tuple[int, int]]:
    """`turborank serve` on the stand-in device (or, with ``device`` "cuda" or "cpu", the real model
    there, ``stats`` then unused); yields (pid, port) once /ready answers."""
    options = ("--log-level", "warning", *options)
    if device == STAND_IN:
        environment = {**os.environ, stand_in.STATS_ENV: str(stats)}
        server = serve_process(
            checkpoint, log, *options, env=environment, cwd=ROOT, entry="benchmarks.serve.stand_in"
        )
    else:
        server = serve_process(checkpoint, log, *options, cwd=ROOT, device=device)
    with server as (proc, url):
        try:
            yield proc.pid, int(url.rsplit(":", 1)[1])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


class Phase:
    """Server CPU and stand-in busy time over a phase of requests (``stats`` None: a real device,
    whose forwards, busy and projected seconds stay None)."""

    def __init__(self, pid: int, stats: Path | None) -> None:
        self.pid, self.stats = pid, stats
        self.forwards = self.busy = self.projected = None

    def __enter__(self) -> Phase:
        self.ticks0, self.wall0 = cpu_ticks(self.pid), time.perf_counter()
        self.start = None if self.stats is None else stand_in.read_stats(self.stats)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        (own1, children1), (own0, children0) = cpu_ticks(self.pid), self.ticks0
        own = own1 - own0
        # A child that exited in between takes its ticks with it: what it spent is lost, never negative.
        self.cpu = (own + max(0, children1 - children0)) / _CLOCK_TICKS
        # With front ends (child processes), the model process's own part: the one GIL they share.
        self.model_process_cpu = own / _CLOCK_TICKS if _child_processes(self.pid) else None
        if self.start is not None:
            end = stand_in.read_stats(self.stats)
            self.forwards = end.forwards - self.start.forwards
            self.busy = end.busy_s - self.start.busy_s
            self.projected = end.projected_s - self.start.projected_s


class Served(NamedTuple):
    """A server under measurement: its process, its port and the stand-in's counters file (None
    on a real device)."""

    pid: int
    port: int
    stats: Path | None


def _per(value: float | None, count: int, scale: float = 1.0) -> float | None:
    return None if value is None else scale * value / max(count, 1)


def sequential(
    served: Served,
    bodies: list[bytes],
    case: str,
    pairs: int,
    forward_ms: float | None = None,
) -> dict:
    """``forward_ms``: the device's time per request on a real device (see ``forward_ms_per_request``);
    on the stand-in its sleeps are that time."""
    connection = Connection(served.port)
    connection.post("/v1/rerank", bodies[0])  # the connection and the first request's caches
    latencies = []
    with Phase(served.pid, served.stats) as phase:
        for body in bodies:
            start = time.perf_counter()
            status, _ = connection.post("/v1/rerank", body)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"{case}: status {status}")
    connection.close()
    n = len(bodies)
    stand_in_ms = _per(phase.busy, n, 1e3)
    device_ms = stand_in_ms if forward_ms is None else forward_ms
    p50 = percentile(latencies, 0.5)
    return {
        "case": case,
        "clients": 1,
        "requests": n,
        "requests_per_s": n / phase.wall,
        "pairs_per_s": n * pairs / phase.wall,
        "p50_ms": 1e3 * p50,
        "p99_ms": 1e3 * percentile(latencies, 0.99),
        "stand_in_ms_per_request": stand_in_ms,
        "projected_ms_per_request": _per(phase.projected, n, 1e3),
        "forward_ms_per_request": forward_ms,
        "overhead_p50_ms": 1e3 * p50 - device_ms,
        "server_cpu_ms_per_request": 1e3 * phase.cpu / n,
        "model_process_cpu_ms_per_request": _per(phase.model_process_cpu, n, 1e3),
        "device_busy": _per(phase.busy, 1, 1 / phase.wall),
        "forwards_per_request": _per(phase.forwards, n),
    }


def concurrent(
    served: Served,
    bodies: list[bytes],
    case: str,
    pairs: int,
    clients: int,
    seconds: float,
) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = Connection(served.port)
        mine = []
        try:
            i = index
            while time.perf_counter() < stop:
                start = time.perf_counter()
                status, _ = connection.post("/v1/rerank", bodies[i % len(bodies)])
                if status != 200:
                    errors.append(str(status))
                mine.append(time.perf_counter() - start)
                i += clients
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    with Phase(served.pid, served.stats) as phase, ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    n = len(latencies)
    return {
        "case": case,
        "clients": clients,
        "requests": n,
        "errors": len(errors),
        "requests_per_s": n / phase.wall,
        "pairs_per_s": n * pairs / phase.wall,
        "p50_ms": 1e3 * percentile(latencies, 0.5),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
        "stand_in_ms_per_request": _per(phase.busy, n, 1e3),
        "server_cpu_ms_per_request": 1e3 * phase.cpu / max(n, 1),
        "model_process_cpu_ms_per_request": _per(phase.model_process_cpu, n, 1e3),
        "device_busy": _per(phase.busy, 1, 1 / phase.wall),
        "forwards_per_request": _per(phase.forwards, n),
    }


def tokenise_on_two_threads(checkpoint: Path, bodies: list[bytes], max_length: int) -> list[float]:
    """Seconds to tokenise each request's pairs with ``Reranker.encode`` split over 2 threads."""
    from turborank import Reranker

    reranker = Reranker.from_pretrained(checkpoint, device="cpu", linear="aten")
    times = []
    with ThreadPoolExecutor(2) as pool:
        for body in bodies:
            request = json.loads(body)
            pairs = [(request["query"], d) for d in request["documents"]]
            half = len(pairs) // 2
            start = time.perf_counter()
            list(
                pool.map(
                    lambda part: reranker.encode(part, max_length, warn=False), (pairs[:half], pairs[half:])
                )
            )
            times.append(time.perf_counter() - start)
    return times


def forward_ms_per_request(checkpoint: Path, device: str, bodies: list[bytes], max_length: int) -> float:
    """The real device's share of a request: ``Reranker.logits`` on the request's tokenised pairs
    (the server's batch settings), synchronised on CUDA, median over ``bodies`` after one warm-up
    pass; tokenising is not in it. The model is freed before returning, so the server has the GPU."""
    import torch

    from turborank import Reranker

    reranker = Reranker.from_pretrained(checkpoint, device=device)
    encoded = []
    for body in bodies:
        request = json.loads(body)
        encoded.append(reranker.encode([(request["query"], d) for d in request["documents"]], max_length)[0])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for warm_up in (True, False):
        for pairs in encoded:
            sync()
            start = time.perf_counter()
            reranker.logits(pairs, batch_size=1024)
            sync()
            if not warm_up:
                times.append(time.perf_counter() - start)
    del reranker
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return 1e3 * statistics.median(times)


def library_path(checkpoint: Path, data: Path, pairs: int, device: str = STAND_IN) -> Iterator[dict]:
    """predict and rank over ``pairs`` pairs in this process, and `turborank eval`, on the stand-in
    (or the real model on ``device``): a row per case, each as it is measured."""
    from turborank import Reranker

    real = device != STAND_IN
    reranker = Reranker.from_pretrained(checkpoint, device=device if real else "cpu")
    stand_in_forward = None if real else stand_in.install(reranker)
    rng = random.Random(1)
    documents = [random_text(rng, rng.randint(20, 200)) for _ in range(pairs)]
    query = random_text(rng, 6)
    for name, call in (
        ("predict", lambda: reranker.predict([(query, d) for d in documents], batch_size=256)),
        ("rank", lambda: reranker.rank(query, documents, top_k=10)),
    ):
        busy0 = None if stand_in_forward is None else stand_in_forward.busy_s
        start = time.perf_counter()
        call()
        wall = time.perf_counter() - start
        yield {
            "case": f"library {name}, {pairs} pairs of 20-200 words",
            "pairs_per_s": pairs / wall,
            "wall_s": wall,
            "device_busy": None if busy0 is None else (stand_in_forward.busy_s - busy0) / wall,
        }
    stats = data / "eval-stats"
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "turborank.cli" if real else "benchmarks.serve.stand_in",
            "eval",
            "--model",
            str(checkpoint),
            "--data",
            str(data),
            "--bm25",
            "--top-k",
            "100",
            "--output",
            str(data / "run.trec"),
            "--device",
            device if real else "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, stand_in.STATS_ENV: str(stats)},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        yield {"case": "eval", "error": done.stderr.strip().splitlines()[-1][:300]}
    else:
        yield {
            "case": "turborank eval (BM25 top 100, whole process)",
            "wall_s": wall,
            "device_busy": None if real else stand_in.read_stats(stats).busy_s / wall,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput phase")
    parser.add_argument("--clients", default="8,32", help="concurrent clients of the throughput phases")
    parser.add_argument("--one-pair-requests", type=int, default=500)
    parser.add_argument("--fifty-doc-requests", type=int, default=40)
    parser.add_argument("--library-pairs", type=int, default=100_000)
    parser.add_argument("--no-library", action="store_true")
    parser.add_argument(
        "--device",
        default=STAND_IN,
        help=f"{STAND_IN} (default: the projected GPU time, slept), or cuda / cpu: the real model there",
    )
    parser.add_argument(
        "--preset",
        choices=("small", "turbo"),
        help="checkpoint shapes (default: small on the stand-in, else turbo)",
    )
    parser.add_argument("--name", default="host_pipeline", help="report name (a date is added)")
    parser.add_argument("--out", type=Path, default=LOCAL_RESULTS)
    parser.add_argument("serve_options", nargs="*", help="extra `turborank serve` options, after --")
    args = parser.parse_args()
    device = args.device
    if device != STAND_IN and device.split(":")[0] not in ("cuda", "cpu"):
        parser.error(f"--device: {device!r} is not {STAND_IN}, cuda or cpu")
    real = device != STAND_IN
    preset = args.preset or ("turbo" if real else "small")
    rng = random.Random(0)
    rows: list[dict] = []

    def save() -> None:  # after every case: a run stopped by a time limit keeps what it finished
        write_report(args.out, args.name, rows, COLUMNS, notes(args, device, preset), echo=False)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        checkpoint = make_checkpoint(tmp_path / "ckpt", preset, seed=0)
        stats = None if real else tmp_path / "stats"
        one_pair = [_body(rng, 1, 30) for _ in range(args.one_pair_requests)]
        fifty = [_body(rng, 50, 180) for _ in range(args.fifty_doc_requests)]  # ~300 tokens a pair
        # ~512 tokens a pair (500-533 with this tokenizer). Runs before 2026-12-07 evening sent 600
        # words, ~950-1,000 tokens a pair, under this label: results/README.md says which.
        ten_512 = [_body(rng, 10, 310) for _ in range(20)]
        one_pair_ms = fifty_ms = None
        if real:
            one_pair_ms = forward_ms_per_request(checkpoint, device, one_pair[:50], 8192)
            fifty_ms = forward_ms_per_request(checkpoint, device, fifty[:10], 8192)
        # Measured before the server starts and again right after its 1 x 50 phase (the server
        # idle), the median of both: this machine's speed drifts by 10-15% within minutes.
        tokenise_times = tokenise_on_two_threads(checkpoint, fifty[:10], 8192)
        log = tmp_path / "server.log"
        with stand_in_server(checkpoint, stats, log, args.serve_options, device) as (pid, port):
            served = Served(pid, port, stats)
            rows.append(sequential(served, one_pair, "1 pair, 30 words", 1, one_pair_ms))
            save()
            row = sequential(served, fifty, "1 x 50 docs of ~300 tokens", 50, fifty_ms)
            tokenise_times += tokenise_on_two_threads(checkpoint, fifty[:10], 8192)
            tokenise_s = statistics.median(tokenise_times)
            row["tokenise_2_threads_ms"] = 1e3 * tokenise_s
            device_ms = fifty_ms if real else row["projected_ms_per_request"]
            row["p50_target_ms"] = device_ms + 1e3 * tokenise_s + 1.0
            rows.append(row)
            save()
            cases = (
                (one_pair, "1 pair, 30 words", 1),
                (fifty, "50 x ~300 tokens", 50),
                (ten_512, "10 x 512 tokens", 10),
            )
            for clients in (int(c) for c in args.clients.split(",")):
                for bodies, case, pairs in cases:
                    rows.append(concurrent(served, bodies, case, pairs, clients, args.seconds))
                    save()
        if not args.no_library:
            from turborank.testing import make_beir_dataset

            data = make_beir_dataset(tmp_path / "beir")
            for row in library_path(checkpoint, data, args.library_pairs, device):
                rows.append(row)
                save()
    write_report(args.out, args.name, rows, COLUMNS, notes(args, device, preset))


COLUMNS = [
    "case",
    "clients",
    "requests",
    "requests_per_s",
    "pairs_per_s",
    "p50_ms",
    "p99_ms",
    "stand_in_ms_per_request",
    "projected_ms_per_request",
    "forward_ms_per_request",
    "overhead_p50_ms",
    "tokenise_2_threads_ms",
    "p50_target_ms",
    "server_cpu_ms_per_request",
    "model_process_cpu_ms_per_request",
    "device_busy",
    "forwards_per_request",
    "wall_s",
    "errors",
    "error",
]


def notes(args: argparse.Namespace, device: str, preset: str) -> list[str]:
    if device == STAND_IN:
        first = [
            f"stand-in device: the turbo forward's FLOPs at {PROJECTED_EFFICIENCY:.0%} of an H200's "
            f"{H200_BF16_TFLOPS:.0f} TFLOP/s bf16 plus {PROJECTED_FIXED_S * 1e6:.0f} us per forward "
            "(benchmarks.gpu.targets.projected_forward_seconds), slept without CPU; the server and the "
            "clients share this machine's cores",
            "1 x 50's p50_target_ms: the forwards' projected GPU time + tokenise_2_threads_ms + 1 ms",
        ]
    else:
        first = [
            f"device: the real model ({preset} shapes, synthetic weights) on {device}; "
            "forward_ms_per_request: Reranker.logits on a request's tokenised pairs in this process, "
            "synchronised, median (50 one-pair requests, 10 of the 1 x 50), measured before the server "
            "started; overhead_p50_ms is p50 minus it; the server and the clients share this machine's cores",
            "1 x 50's p50_target_ms: forward_ms_per_request + tokenise_2_threads_ms + 1 ms",
        ]
    return [
        *first,
        "tokenise_2_threads_ms is the median of 10 requests tokenised before the server started and "
        "the same 10 right after its 1 x 50 phase",
        "server_cpu_ms_per_request: every process of the server (with --front-ends, the front ends "
        "too); model_process_cpu_ms_per_request: with --front-ends, the model process alone",
        f"checkpoint: {preset} shapes; serve options: {' '.join(args.serve_options) or '(defaults)'}",
    ]


if __name__ == "__main__":
    main()
