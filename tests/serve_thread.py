"""The app under uvicorn in a thread of the test process, on a free loopback port: for tests that
reach into the server's state (a failing forward, draining, a slowed scheduler)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import uvicorn

from turborank import Reranker
from turborank.serving.app import ServeSettings, create_app
from turborank.serving.server import uvicorn_config
from turborank.serving.settings import Listener
from turborank.testing_server import free_port

__all__ = ["free_port", "metric", "running_server"]


@contextlib.contextmanager
def running_server(reranker: Reranker, before_start=None, wait_for="/ready", **limits):
    """uvicorn serving the app in a thread on a free port; yields (url, server state)."""
    settings = ServeSettings(model_name="test-model", **limits)
    app = create_app(reranker, settings)
    if before_start is not None:
        before_start(app.state.turborank)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, Listener("127.0.0.1", port, "warning")))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + wait_for, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.05)
    try:
        yield url, app.state.turborank
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
