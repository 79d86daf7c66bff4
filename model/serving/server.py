"""Run the app under uvicorn; SIGTERM/SIGINT drain in-flight work, then the process exits 0."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn

from turborank.reranker import Reranker
from turborank.serving.app import ServeSettings, create_app


class _DrainingServer(uvicorn.Server):
    """Marks the app as draining the moment a shutdown signal arrives, so requests that still reach
    it on open connections get 503 while in-flight work finishes (uvicorn waits for it, then the
    lifespan shutdown drains the scheduler)."""

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig, frame) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)

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


def serve(
    reranker: Reranker,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
) -> None:
    app = create_app(reranker, settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None, access_log=False
    )
    _DrainingServer(config, app.state.turborank).run()
