"""The floor under a one-pair request of `turborank serve`: the same work without the server's features.

    python -m benchmarks.serve.host_floor [--requests 1000] [--rounds 3] [--out DIR]

``app`` below is the least a server of turborank's shape does for one request: uvicorn with
httptools and uvloop, the body read and decoded, the pair tokenised on the event loop
(``Reranker.encode``), handed to a model thread that scores it (``Reranker.logits``, on the
stand-in device of ``benchmarks.serve.stand_in``) and handed back, the sigmoid score written as
JSON. Nothing else: no validation, limits, admission, fair scheduling, disconnect watch, metrics,
logs or request ids. It runs in turn with `turborank serve` on the same stand-in, each for
``--requests`` sequential one-pair requests per round over one raw keep-alive connection (the
client of ``host_pipeline``), and both get p50/p99, overhead (p50 minus the stand-in's forward)
and server CPU per request. The difference between the two rows is what the features cost.

``--floor-servers uvicorn,granian`` runs the floor app under granian too (a Rust HTTP server with
an ASGI interface, installed separately: ``pip install granian``), one worker and one runtime
thread, as a row of its own: whether another ASGI server would give turborank a lower floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.report import LOCAL_RESULTS, write_report
from benchmarks.serve import stand_in
from benchmarks.serve.host_pipeline import ROOT, Served, _body, sequential, stand_in_server
from turborank.testing import make_checkpoint
from turborank.testing_server import free_port

MODEL_ENV = "HOST_FLOOR_MODEL"
FLOOR_SERVERS = ("uvicorn", "granian")


def _serve_model(reranker: Any, jobs: queue.SimpleQueue) -> None:
    while True:
        loop, future, encoded = jobs.get()
        logits = reranker.logits(encoded)
        loop.call_soon_threadsafe(future.set_result, logits)


def _load() -> tuple[Any, queue.SimpleQueue] | None:
    if MODEL_ENV not in os.environ:
        return None
    from turborank import Reranker

    reranker = Reranker.from_pretrained(os.environ[MODEL_ENV])
    stand_in.install(reranker, os.environ.get(stand_in.STATS_ENV))
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_serve_model, args=(reranker, jobs), daemon=True).start()
    return reranker, jobs


_MODEL = _load()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One pair: ``{"query": str, "documents": [str]}`` in, ``{"results": [{"index", "relevance_score"}]}``
    out."""
    if scope["type"] != "http" or _MODEL is None:
        return
    reranker, jobs = _MODEL
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request = json.loads(body)
    encoded, _ = reranker.encode([(request["query"], request["documents"][0])], warn=False)
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    jobs.put((loop, future, encoded))
    score = (await future).sigmoid().tolist()[0]
    answer = json.dumps({"results": [{"index": 0, "relevance_score": score}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def _floor_command(server: str, port: int) -> list[str]:
    app = "benchmarks.serve.host_floor:app"
    if server == "uvicorn":
        options = ["--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
        return [sys.executable, "-m", "uvicorn", app, "--port", str(port), *options]
    # One worker (a process of its own: its CPU counts as the server's) and one runtime thread, as
    # uvicorn serves on one event loop.
    command = [sys.executable, "-m", "granian", "--interface", "asgi", "--port", str(port), "--no-ws"]
    command += ["--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--log-level", "warning"]
    return [*command, app]


@contextlib.contextmanager
def floor_server(
    checkpoint: Path, stats: Path, log: Path, server: str = "uvicorn"
) -> Iterator[tuple[int, int]]:
    """``app`` under ``server`` (uvicorn with httptools and uvloop, or granian) on the stand-in;
    yields (pid, port) once it answers."""
    port = free_port()
    environment = {**os.environ, MODEL_ENV: str(checkpoint), stand_in.STATS_ENV: str(stats)}
    command = _floor_command(server, port)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log_file, stderr=log_file)
    try:
        _wait_for_answer(proc, port, log)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait_for_answer(proc: subprocess.Popen, port: int, log: Path) -> None:
    import http.client
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the floor server exited: {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", "/", body=json.dumps({"query": "q", "documents": ["d"]}))
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the floor server did not answer within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="sequential one-pair requests a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each server in turn")
    parser.add_argument(
        "--floor-servers",
        default="uvicorn",
        help=f"comma-separated, the floor app under each of {', '.join(FLOOR_SERVERS)}",
    )
    parser.add_argument("--name", default="host_floor", help="report name (a date is added)")
    parser.add_argument("--out", type=Path, default=LOCAL_RESULTS)
    args = parser.parse_args()
    floor_servers = args.floor_servers.split(",")
    unknown = sorted(set(floor_servers) - set(FLOOR_SERVERS))
    if unknown or len(set(floor_servers)) != len(floor_servers):
        choices = ", ".join(FLOOR_SERVERS)
        parser.error(f"--floor-servers: {args.floor_servers!r}; each of {choices} at most once")
    if "granian" in floor_servers and importlib.util.find_spec("granian") is None:
        parser.error("--floor-servers granian: granian is not installed (pip install granian)")
    rng = random.Random(0)
    bodies = [_body(rng, 1, 30) for _ in range(args.requests)]
    # "floor app" alone is uvicorn's, as in the reports before granian was an option.
    names = {
        server: "floor app" if server == "uvicorn" else f"floor app on {server}" for server in floor_servers
    }
    rounds: dict[str, list[dict]] = {name: [] for name in [*names.values(), "turborank serve"]}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        tmp_path = Path(tmp)
        checkpoint = make_checkpoint(tmp_path / "ckpt", "small", seed=0)
        running = []
        for server, name in names.items():
            stats = tmp_path / f"{server}.stats"
            log = tmp_path / f"{server}.log"
            running.append((name, servers.enter_context(floor_server(checkpoint, stats, log, server)), stats))
        serve_stats = tmp_path / "serve.stats"
        served = servers.enter_context(stand_in_server(checkpoint, serve_stats, tmp_path / "serve.log", []))
        running.append(("turborank serve", served, serve_stats))
        for _ in range(args.rounds):
            for name, (pid, port), stats in running:
                rounds[name].append(sequential(Served(pid, port, stats), bodies, name, 1))
    keys = ["p50_ms", "p99_ms", "stand_in_ms_per_request", "overhead_p50_ms", "server_cpu_ms_per_request"]
    rows = []
    for name, measured in rounds.items():
        row: dict[str, Any] = {"server": name, "rounds": len(measured), "requests_per_round": args.requests}
        for key in keys:
            row[key] = statistics.median(m[key] for m in measured)
            row[f"{key}_rounds"] = " / ".join(f"{m[key]:.3f}" for m in measured)
        rows.append(row)
    columns = ["server", "rounds", "requests_per_round"] + [c for k in keys for c in (k, f"{k}_rounds")]
    notes = [
        "one pair (a query of 6 words, a document of 30), sequential, one keep-alive connection; "
        "medians over the rounds; the servers ran in turn, the clients on the same cores",
        "floor app: uvicorn (httptools, uvloop), json, Reranker.encode on the event loop, "
        "Reranker.logits on a model thread (queue.SimpleQueue, call_soon_threadsafe), torch sigmoid, "
        "json; nothing else",
    ]
    if "granian" in names:
        notes.append(
            "floor app on granian: the same app under granian's ASGI interface (one worker process, "
            "one runtime thread, uvloop; the worker's CPU counted)"
        )
    write_report(args.out, args.name, rows, columns, notes)


if __name__ == "__main__":
    main()
