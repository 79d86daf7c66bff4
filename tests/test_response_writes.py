"""A response leaves the server in one write: uvicorn writes a response's head and body apart, and
each write is a TCP segment and a wakeup of the client (``connections.HeadHeldTransport``)."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_thread import running_server  # noqa: E402
from turborank.serving import connections  # noqa: E402
from turborank.serving.server import DrainingServer  # noqa: E402


class RecordingTransport:
    """Stands for the socket's transport: keeps every write."""

    def __init__(self, transport: Any = None) -> None:
        self.inner = transport
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        if self.inner is not None:
            self.inner.write(data)

    def close(self) -> None:
        self.closed = True
        if self.inner is not None:
            self.inner.close()

    def is_closing(self) -> bool:
        return self.closed if self.inner is None else self.inner.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_each_response_of_a_kept_alive_connection_is_one_write(reranker, monkeypatch):
    recorded: list[RecordingTransport] = []

    class Recorded(connections.HeadHeldTransport):
        def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
            recorded.append(RecordingTransport(transport))
            super().__init__(recorded[-1], loop)

    with running_server(reranker) as (url, _):
        monkeypatch.setattr(connections, "HeadHeldTransport", Recorded)
        with httpx.Client(base_url=url, timeout=30) as client:
            ranked = client.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
            refused = client.post("/rerank", json={"query": "q"})
            health = client.get("/health")
    assert (ranked.status_code, refused.status_code, health.status_code) == (200, 422, 200)
    assert [len(r.writes) for r in recorded] == [1, 1, 1]
    for transport, response in zip(recorded, (ranked, refused, health), strict=True):
        head, _, body = transport.writes[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d" % response.status_code)
        assert b"x-request-id: " + response.headers["x-request-id"].encode() in head
        assert body == response.content


def test_a_head_without_a_body_is_written_at_the_end_of_the_loops_turn():
    async def scenario() -> RecordingTransport:
        socket_side = RecordingTransport()
        held = connections.HeadHeldTransport(socket_side, asyncio.get_running_loop())
        held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # a HEAD answer: no body follows
        assert socket_side.writes == []
        await asyncio.sleep(0)
        return socket_side

    assert asyncio.run(scenario()).writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]


def test_writes_keep_their_order_and_closing_writes_what_is_held():
    async def scenario() -> RecordingTransport:
        socket_side = RecordingTransport()
        held = connections.HeadHeldTransport(socket_side, asyncio.get_running_loop())
        held.write(b"head;")
        held.write(b"body 1;")
        held.write(b"body 2;")
        assert socket_side.writes == [b"head;body 1;", b"body 2;"]
        closing = connections.HeadHeldTransport(socket_side, asyncio.get_running_loop())
        closing.write(b"head of a HEAD answer;")
        closing.close()  # Connection: close, no body: the head still goes out first
        assert socket_side.writes[-1] == b"head of a HEAD answer;" and socket_side.closed
        await asyncio.sleep(0)  # the end of the turn writes nothing twice
        return socket_side

    assert asyncio.run(scenario()).writes == [b"head;body 1;", b"body 2;", b"head of a HEAD answer;"]


def test_a_large_body_is_written_as_it_is_after_the_head():
    """Joining would copy megabytes on the event loop: a large body goes out as its own write."""

    async def scenario() -> RecordingTransport:
        socket_side = RecordingTransport()
        held = connections.HeadHeldTransport(socket_side, asyncio.get_running_loop())
        held.write(b"head;")
        held.write(large)
        await asyncio.sleep(0)
        return socket_side

    large = b"x" * (connections.JOIN_MAX_BYTES + 1)
    assert asyncio.run(scenario()).writes == [b"head;", large]


def test_a_head_request_gets_its_head_alone_and_the_connection_goes_on(reranker):
    """A HEAD answer has no body to wait for: its head is written all the same, before the answer
    of the request behind it."""
    with running_server(reranker) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
        expected = httpx.get(url + "/health").content
    first, second = (b"HTTP/1.1 " + part for part in data.split(b"HTTP/1.1 ")[1:])
    assert first.endswith(b"\r\n\r\n") and first.count(b"\r\n\r\n") == 1  # a head, no body
    assert second.startswith(b"HTTP/1.1 200") and second.partition(b"\r\n\r\n")[2] == expected


def test_a_serving_process_freezes_what_it_has_built_before_serving(monkeypatch):
    """``gc.freeze`` once the app is built: full collections then skip the model and the modules."""
    frozen_at_run = []
    monkeypatch.setattr(
        DrainingServer, "run", lambda self, sockets=None: frozen_at_run.append(gc.get_freeze_count())
    )
    try:
        DrainingServer.run_as_the_process(object.__new__(DrainingServer))
    finally:
        gc.unfreeze()
    assert frozen_at_run and frozen_at_run[0] > 10_000
