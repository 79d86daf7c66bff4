"""Run the app under uvicorn. SIGTERM/SIGINT drain: the listener stays open and every request that
arrives, on a new or a kept-alive connection, gets 503 with Retry-After and Connection: close, until
the requests in flight are answered (or ``drain_timeout_s`` passes); then uvicorn closes the
connections, the scheduler drains, and the process exits 0. A second signal stops waiting."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from turborank.reranker import Reranker
from turborank.serving.app import ServerState, ServeSettings, create_app
from turborank.serving.connections import uvicorn_options
from turborank.serving.settings import Listener

logger = logging.getLogger("turborank.serving")


# The most uvicorn's own shutdown waits after the drain (see _config).
AFTER_DRAIN_S = 1.0


class DrainingServer(uvicorn.Server):
    """uvicorn draining ``state`` (a ServerState, or the Ray front: ``draining``, ``active``,
    ``settings``) on the first signal, exiting 0 once it is drained."""

    def __init__(self, config: uvicorn.Config, state: ServerState | Any) -> None:
        super().__init__(config)
        self._state = state
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        now = time.monotonic()
        if self._drain_deadline is None:
            self._state.draining = True
            self._drain_deadline = now + self._state.settings.drain_timeout_s
            logger.info("draining: %d requests in flight, new ones get 503", self._state.active)
            return
        if self._drain_deadline > now:
            # A second signal stops waiting: the shutdown starts at the next tick, and what is in
            # flight is answered 503 when uvicorn cuts it (RequestLogMiddleware).
            logger.info("second signal: %d requests in flight are cut", self._state.active)
            self._drain_deadline = now
            return
        super().handle_exit(sig, frame)

    def run_as_the_process(self, sockets: list[socket.socket] | None = None) -> None:
        """``run``, in a process that exists to serve. What is alive by now (the model, the app,
        every imported module: hundreds of thousands of objects) lives as long as the process, so
        it is moved out of the garbage collector's sight first (``gc.freeze``); otherwise each
        full collection walks all of it again while requests wait: on 2 Zen 3 cores, about 0.05 ms
        of each one-pair request's latency and CPU (alternating A/B)."""
        gc.collect()  # garbage frozen now would never be freed
        gc.freeze()
        try:
            self.run(sockets=sockets)
        finally:
            # Back in the collector's sight for the interpreter's exit, which then frees it: left
            # frozen, Triton's bindings (nanobind) found their objects alive at exit and printed
            # some 30 lines of "leaked function" warnings on every shutdown.
            gc.unfreeze()

    async def on_tick(self, counter: int) -> bool:
        # uvicorn's main loop calls this every 0.1 s; returning True starts its shutdown.
        deadline = self._drain_deadline
        if deadline is not None and (self._state.active == 0 or time.monotonic() > deadline):
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after a graceful shutdown, so the process would die of it;
        # a drained server has done its job and exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(reranker: Reranker, settings: ServeSettings, listener: Listener | None = None) -> None:
    """Serve until SIGTERM/SIGINT. uvicorn's records go to the root logger, whose handlers are the
    caller's (the command line sets them up with ``turborank.serving.logs.serve_logging``)."""
    app = create_app(reranker, settings)
    config = uvicorn_config(app, listener or Listener())
    DrainingServer(config, app.state.turborank).run_as_the_process()


def uvicorn_config(app, listener: Listener) -> uvicorn.Config:
    """How every turborank server runs under uvicorn (this module's ``serve`` and the tests' own
    threads): our connection limits, our logs."""
    state: ServerState = app.state.turborank
    metrics = state.metrics
    options = uvicorn_options(state.settings, lambda reason: metrics.closed_connections.labels(reason).inc())
    guard = options["http"].guard
    metrics.open_connections.set_function(lambda: guard.count)
    return _config(app, listener, state.settings, options)


def front_config(front: Any, listener: Listener) -> uvicorn.Config:
    """The same for the front of ``serve --ray`` (its metrics are the replicas')."""
    options = uvicorn_options(front.settings, lambda reason: logger.debug("closed a connection: %s", reason))
    return _config(front, listener, front.settings, options)


def _config(app, listener: Listener, settings: ServeSettings, options: dict) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=listener.host,
        port=listener.port,
        log_level=listener.log_level,
        # uvicorn's records propagate to the root's handlers, in the same format as ours.
        log_config=None,
        # In-flight work was waited for while draining (up to drain_timeout_s, on_tick): what uvicorn
        # waits for after it is the last bytes of answers already given, or, past the deadline, the
        # requests it then cuts. A second full drain_timeout_s here made the drain last twice as long.
        timeout_graceful_shutdown=min(settings.drain_timeout_s, AFTER_DRAIN_S),  # type: ignore[arg-type]
        access_log=False,  # turborank.access logs every request, with its pairs, tokens and timings
        **options,
    )
