"""``turborank serve --front-ends N``: N front-end processes feeding one model process.

One process's GIL bounds what the host does per request (HTTP, JSON, validation, the Python
around tokenising, answers): on a fast GPU a small model's forward costs less than that, so one
process caps requests/s whatever the device. With front ends, this process (the model process)
loads the model, binds the listening socket and starts N front-end processes (``front_end``;
spawned, never forked, so CUDA state is never copied). Each is a whole ``turborank serve`` app on
the shared socket, the kernel handing each new connection to one of them; only the forwards come
here, over a pipe per front end. The model thread runs them one at a time, joining the batches
waiting from several front ends into one forward while they fit ``max_batch_tokens``.

What stays as in one process: the routes, the answers, the errors, the per-request limits, the
drain (SIGTERM or SIGINT here is passed to every front end, which drains as one process does; this
process exits once all have, 0 when each exited 0). What differs: the limits that count across
requests are split between the front ends, each holding its share of ``max_concurrent_requests``
and ``max_connections``; ``max_requests_per_client`` and fairness between clients hold within each
front end. ``/metrics`` on any front end is the sum over all of them (the others' counters as
they sent them at most ``front_end.METRICS_PUSH_S`` ago). A front end that dies is logged and
started again; one that dies before it served (it cannot: the socket, the tokenizer) or for the
fourth time in a minute stops the server with exit status 1.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from turborank.reranker import Reranker
from turborank.scoring_options import NonFiniteScoreError
from turborank.serving.front_end import FAILED, NON_FINITE, OK, FrontEndSpec, run_front_end
from turborank.serving.metrics import MetricsSnapshot, merge_snapshots
from turborank.serving.settings import Listener, ServeSettings
from turborank.serving.tokenizing import concatenate
from turborank.tokenization import EncodedPairs

logger = logging.getLogger("turborank.serving")
# A front end that exits more often than this is not started again: the server stops.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0
# uvicorn's own backlog.
_BACKLOG = 2048


class ForwardService:
    """The model process's side of the forward pipes: one model thread waits on every front end's
    pipe, reads what each has sent (one batch per front end at most: a front end waits for its
    answer before it sends again) and runs them in turn, several front ends'
    batches in one forward while they fit ``max_batch_tokens``."""

    def __init__(self, reranker: Reranker, max_batch_tokens: int) -> None:
        self._reranker = reranker
        self._max_batch_tokens = max_batch_tokens
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        # Wakes the model thread from its wait when a front end is attached or on stop.
        self._wake_here, self._wake_there = multiprocessing.Pipe(duplex=False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="turborank-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def attach(self, connection: Connection) -> None:
        with self._lock:
            self._connections.append(connection)
        self._wake_there.send_bytes(b"attach")

    def stop(self) -> None:
        self._stopping = True
        self._wake_there.send_bytes(b"stop")
        self._thread.join()

    def _run(self) -> None:
        waiting: list[tuple[Connection, EncodedPairs]] = []
        while not self._stopping:
            batch: list[tuple[Connection, EncodedPairs]] = []
            try:
                self._read_into(waiting)
                if waiting:
                    batch = self._take(waiting)
                    self._forward(batch)
            except Exception:  # the thread goes on: every front end depends on it
                # Never leaves a front end waiting for its answer: the batch taken if the failure
                # came with it, else (reading, taking) every batch waiting.
                logger.exception("the model thread failed outside a forward")
                for connection, _ in batch or waiting:
                    _answer(connection, (FAILED, "internal error in the model process"))
                if not batch:
                    waiting.clear()

    def _read_into(self, waiting: list[tuple[Connection, EncodedPairs]]) -> None:
        """What the front ends have sent, after ``waiting``; blocks only when nothing waits."""
        with self._lock:
            connections = list(self._connections)
        for ready in wait([self._wake_here, *connections], timeout=0 if waiting else None):
            if ready is self._wake_here:
                self._wake_here.recv_bytes()
                continue
            try:
                waiting.append((ready, ready.recv()))
            except (EOFError, OSError):  # the front end is gone
                with self._lock:
                    self._connections.remove(ready)
            except Exception:  # a message that does not unpickle: its front end is answered
                logger.exception("a batch from a front end could not be read")
                _answer(ready, (FAILED, "the model process could not read the batch"))

    def _take(self, waiting: list[tuple[Connection, EncodedPairs]]) -> list[tuple[Connection, EncodedPairs]]:
        """The first waiting batch and the next ones after it while they fit one forward."""
        batch = [waiting.pop(0)]
        tokens = sum(batch[0][1].lengths)
        while waiting and tokens + sum(waiting[0][1].lengths) <= self._max_batch_tokens:
            tokens += sum(waiting[0][1].lengths)
            batch.append(waiting.pop(0))
        return batch

    def _forward(self, batch: list[tuple[Connection, EncodedPairs]]) -> None:
        try:
            joined = concatenate([encoded for _, encoded in batch])
            logits = self._reranker.logits(
                joined, batch_size=1024, max_batch_tokens=self._max_batch_tokens
            ).tolist()
        except Exception as exc:
            if len(batch) > 1:  # each front end's batch alone: one's bad input fails only its own
                for one in batch:
                    self._forward([one])
                return
            if isinstance(exc, NonFiniteScoreError):
                _answer(batch[0][0], (NON_FINITE, str(exc)))
            else:
                _answer(batch[0][0], (FAILED, f"{type(exc).__name__}: {exc}"))
            return
        start = 0
        for connection, encoded in batch:
            _answer(connection, (OK, logits[start : start + len(encoded.input_ids)]))
            start += len(encoded.input_ids)


def _answer(connection: Connection, message: tuple[bool, Any]) -> None:
    with contextlib.suppress(OSError):  # the front end is gone; its requests went with it
        connection.send(message)


class MetricsRelay:
    """Keeps each front end's latest metrics; answers a push with the model's ``describe()`` (for
    /info: its CUDA-graph counters move) and a scrape with the other front ends' metrics. A front
    end that is gone keeps its counters and histograms in the sum, folded into one snapshot (a
    restarted one starts from 0, and a sum that went down would read as a reset to Prometheus);
    its gauges go with it. Each start of a front end is its own entry, so a restarted one never
    takes the place of the one before it."""

    def __init__(self, describe: Callable[[], dict[str, Any]]) -> None:
        self._describe = describe
        self._latest: dict[tuple[int, int], MetricsSnapshot] = {}  # by (index, start)
        self._current: dict[int, int] = {}  # each index's latest start
        self._pushed: set[tuple[int, int]] = set()
        self._retired: MetricsSnapshot | None = None
        self._starts = itertools.count()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def attach(self, index: int, connection: Connection) -> None:
        with self._lock:
            key = (index, next(self._starts))
            self._current[index] = key[1]
        thread = threading.Thread(
            target=self._serve, args=(key, connection), name="turborank-metrics", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def join(self, timeout_s: float) -> None:
        """Wait for each front end's relay thread to end (its pipe is closed once the front end has
        exited). Before the interpreter exits: a relay thread ending during its shutdown would drop
        the last reference to the model (``describe`` is the Reranker's) there, and freeing a tensor
        while the interpreter finalises aborts the process (SIGABRT, status -6, not the status
        the server chose)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def has_pushed(self, index: int) -> bool:
        """Whether front end ``index``, as last started, has sent its metrics: it got as far as
        serving, its first push coming ``front_end.METRICS_PUSH_S`` after its app was built."""
        with self._lock:
            return (index, self._current.get(index)) in self._pushed

    def _serve(self, key: tuple[int, int], connection: Connection) -> None:
        try:
            while True:
                kind, snapshot = connection.recv()
                with self._lock:
                    self._latest[key] = snapshot
                    self._pushed.add(key)
                    others = [s for k, s in self._latest.items() if k != key]
                    if self._retired is not None:
                        others.append(self._retired)
                connection.send(others if kind == "scrape" else self._describe())
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("the metrics of front end %d could not be relayed", key[0])
        with self._lock:
            last = self._latest.pop(key, None)  # (whether it pushed stays known: the watcher asks)
            if last is not None:
                kept = [_without_gauges(last)] + ([] if self._retired is None else [self._retired])
                self._retired = merge_snapshots(kept)


def _without_gauges(snapshot: MetricsSnapshot) -> MetricsSnapshot:
    families, tei_counts = snapshot
    return [family for family in families if family[1] != "gauge"], tei_counts


def listening_socket(listener: Listener) -> socket.socket:
    """Bound and listening as uvicorn binds (SO_REUSEADDR); shared by every front end."""
    family, kind, proto, _, address = socket.getaddrinfo(
        listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(_BACKLOG)
    return sock


class FrontEnds:
    """Starts, watches, restarts and drains the front-end processes."""

    def __init__(
        self,
        reranker: Reranker,
        settings: ServeSettings,
        listener: Listener,
        count: int,
        checkpoint: str,
        json_logs: bool,
    ) -> None:
        self._reranker, self._settings, self._listener = reranker, settings, listener
        self._count, self._checkpoint, self._json_logs = count, checkpoint, json_logs
        self._context = multiprocessing.get_context("spawn")
        self._service = ForwardService(reranker, settings.max_batch_tokens)
        self._metrics = MetricsRelay(reranker.describe)
        self._socket: socket.socket | None = None
        self._processes: dict[int, tuple[Any, float]] = {}
        self._restarts: dict[int, list[float]] = {}
        self._signals = 0
        self._starting = False

    def run(self) -> int:
        """Serve until every front end has exited after SIGTERM/SIGINT; the exit status."""
        self._socket = listening_socket(self._listener)
        address = self._socket.getsockname()[:2]  # a signal may close the socket before the log line
        self._service.start()
        engine = self._reranker.describe()
        original = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self._count):
                self._start(index, engine)
            logger.info("serving with %d front-end processes on %s:%d", self._count, *address)
            return self._watch(engine)
        except BaseException:
            # Failing here (a start that cannot spawn: no memory, no file descriptors) must not
            # leave front ends serving without a model, nor this process waiting for them.
            logger.error("stopping the front ends: the model process is leaving on an error")
            self._stop_now()
            raise
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
            self._service.stop()
            self._socket.close()
            self._metrics.join(timeout_s=10.0)

    def _stop_now(self, wait_s: float = 10.0) -> None:
        """Every front end told to stop at once, then killed if still there after ``wait_s``."""
        self._tell_all_to_stop()
        deadline = time.monotonic() + wait_s
        for process, _ in list(self._processes.values()):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()

    def _tell_all_to_stop(self) -> None:
        """SIGTERM twice to every front end (uvicorn's second signal: no drain), and to any started
        after this."""
        self._signals = 2
        self._pass_on(signal.SIGTERM)
        self._pass_on(signal.SIGTERM)

    def _start(self, index: int, engine: dict[str, Any]) -> None:
        # From here to the spawn a signal leaves the socket open, for this start to hand over.
        self._starting = True
        try:
            self._spawn(index, engine)
        finally:
            self._starting = False
            if self._signals:
                self._close_socket()

    def _spawn(self, index: int, engine: dict[str, Any]) -> None:
        if self._signals:
            return  # no front end starts after a signal: it would only be told to stop
        forwards_here, forwards_there = self._context.Pipe()
        metrics_here, metrics_there = self._context.Pipe()
        spec = FrontEndSpec(
            index=index,
            checkpoint=self._checkpoint,
            config=self._reranker.config,
            engine=engine,
            name=self._settings.model_name,
            server_settings=self._settings,
            count=self._count,
            listener=self._listener,
            json_logs=self._json_logs,
        )
        process = self._context.Process(
            target=run_front_end,
            args=(spec, self._socket, forwards_there, metrics_there),
            name=f"turborank-front-end-{index}",
        )
        process.start()
        forwards_there.close()
        metrics_there.close()
        self._service.attach(forwards_here)
        self._metrics.attach(index, metrics_here)
        self._processes[index] = (process, time.monotonic())
        # A signal that came while it started was not passed on to it: it is now.
        for _ in range(min(self._signals, 2)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    def _watch(self, engine: dict[str, Any]) -> int:
        status = 0
        while self._processes:
            sentinels = {process.sentinel: index for index, (process, _) in self._processes.items()}
            for sentinel in wait(list(sentinels), timeout=0.5):
                index = sentinels[sentinel]
                process, started = self._processes.pop(index)
                process.join()
                if self._signals:
                    # Killed by the signal passed on before it could set its handlers: it held nothing.
                    status = status or process.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)
                    continue
                problem = self._cannot_restart(index, started)
                if problem:
                    why = f"front end {index} exited with status {process.exitcode} {problem}"
                    logger.error("%s: stopping the server", why)
                    self._tell_all_to_stop()
                    status = 1
                    continue
                logger.error("front end %d exited with status %s: starting it again", index, process.exitcode)
                self._start(index, engine)
        return int(status)

    def _cannot_restart(self, index: int, started: float) -> str | None:
        """Why front end ``index``, just exited, is not started again: it never got as far as
        serving (the socket, the tokenizer: it would fail again), or it keeps dying."""
        if not self._metrics.has_pushed(index):
            return f"{time.monotonic() - started:.1f} s after its start, before it served"
        now = time.monotonic()
        recent = [t for t in self._restarts.get(index, []) if now - t < RESTART_WINDOW_S]
        self._restarts[index] = [*recent, now]
        if len(recent) >= MAX_RESTARTS:
            return f"for the {len(recent) + 1}th time in {RESTART_WINDOW_S:.0f} s"
        return None

    def _on_signal(self, sig: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("draining %d front ends", len(self._processes))
        # SIGTERM whichever came: a front end drains on either, and a SIGINT reaching one still
        # starting would be a KeyboardInterrupt (exit status 1) instead of a quiet exit.
        self._pass_on(signal.SIGTERM)
        # No front end starts after a signal, so this process's copy of the listening socket has no
        # use left. Kept open, it would hold the port open after the front ends closed theirs:
        # the kernel would take connections that nobody answers, reset when this process exits.
        # A start under way still hands it over (closed, the spawn fails): it closes it after.
        if not self._starting:
            self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def _pass_on(self, sig: int) -> None:
        for process, _ in list(self._processes.values()):
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)


def serve_with_front_ends(
    reranker: Reranker,
    settings: ServeSettings,
    listener: Listener,
    count: int,
    checkpoint: str,
    json_logs: bool = False,
) -> int:
    """Serve ``reranker`` from this process through ``count`` front-end processes; the exit status."""
    return FrontEnds(reranker, settings, listener, count, checkpoint, json_logs).run()
