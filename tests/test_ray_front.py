"""``serve --ray``'s front (``serving.ray_front``) against a stand-in deployment handle: what it
answers itself, and what it passes to and takes from the replicas, as one process answers."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

from ray.serve.exceptions import BackPressureError

from turborank.serving.ray_front import RayFront, call_app
from turborank.serving.settings import ServeSettings

BODY = json.dumps({"query": "q", "documents": ["a", "b"]}).encode()


class _Call:
    """What ``handle.handle_http.remote`` returns: awaitable once, cancellable."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.cancelled = False

    def __await__(self):
        return self._run().__await__()

    async def _run(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if self.outcome is None:
            await asyncio.Event().wait()  # a replica that never answers
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """A deployment handle whose replica answers ``outcome`` (a (status, headers, body) tuple, an
    exception to raise, or None: never); it keeps every call's scope and body."""

    def __init__(self, outcome: Any = (200, [(b"content-type", b"application/json")], b"[]")) -> None:
        self.outcome = outcome
        self.calls: list[tuple[dict, bytes, _Call]] = []
        self.handle_http = self

    def remote(self, scope: dict, body: bytes) -> _Call:
        call = _Call(self.outcome)
        self.calls.append((scope, body, call))
        return call


def _request(
    front: RayFront,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict | None = None,
    leave: bool = False,
) -> tuple[dict, list[str]]:
    """One request through the front's ASGI app: the answer (status, headers, body) and the
    messages the front asked ``receive`` for. ``leave``: the client disconnects after its body."""
    sent_headers = [
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": sent_headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    asked: list[str] = []
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict:
        if not asked:
            asked.append("body")
            return {"type": "http.request", "body": body, "more_body": False}
        asked.append("disconnect")
        if not leave:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    asyncio.run(asyncio.wait_for(front(scope, receive, send), 10))
    return answer, asked


def test_the_replica_gets_the_requests_id_and_the_front_logs_its_line(caplog):
    handle = _Handle()
    front = RayFront(handle, ServeSettings("m"))
    with caplog.at_level(logging.INFO, logger="turborank.access"):
        answer, _ = _request(front, "POST", "/v1/rerank", BODY, {"x-request-id": "abc-1"})
    ((scope, body, _),) = handle.calls
    assert answer["status"] == 200 and answer["headers"]["x-request-id"] == "abc-1"
    assert dict(scope["headers"])[b"x-request-id"] == b"abc-1" and body == BODY
    assert any(
        "POST /v1/rerank 200" in r.getMessage() and "id=abc-1" in r.getMessage() for r in caplog.records
    )


def test_the_fronts_own_answers_carry_an_id_and_a_log_line(caplog):
    """413 (and 408, 503 while draining) were answered without x-request-id or access line."""
    front = RayFront(_Handle(), ServeSettings("m", max_body_bytes=10))
    with caplog.at_level(logging.INFO, logger="turborank.access"):
        answer, _ = _request(front, "POST", "/v1/rerank", BODY)
    assert answer["status"] == 413 and len(answer["headers"]["x-request-id"]) == 32
    assert any(" 413 " in r.getMessage() for r in caplog.records)


def test_the_api_key_is_asked_for_before_the_body_is_read():
    handle = _Handle()
    front = RayFront(handle, ServeSettings("m", api_key="K", max_body_bytes=10))
    answer, asked = _request(front, "POST", "/rerank/", BODY)
    assert answer["status"] == 401 and asked == [] and not handle.calls
    answer, _ = _request(front, "POST", "/v1/rerank", b"{}", {"authorization": "Bearer K"})
    assert answer["status"] == 200
    assert _request(front, "GET", "/health")[0]["status"] == 200  # open routes stay open


def test_metrics_are_scraped_while_draining_and_the_rest_refused():
    handle = _Handle()
    front = RayFront(handle, ServeSettings("m"))
    front.draining = True
    assert _request(front, "GET", "/metrics")[0]["status"] == 200
    answer, _ = _request(front, "POST", "/v1/rerank", BODY)
    assert answer["status"] == 503 and answer["headers"]["retry-after"] == "5"
    assert [scope["path"] for scope, _, _ in handle.calls] == ["/metrics"]


def test_full_replica_queues_are_a_429_in_the_routes_shape():
    """Serve's back-pressure error was a 500 ("internal error")."""
    front = RayFront(_Handle(BackPressureError(4, 4)), ServeSettings("m"))
    answer, _ = _request(front, "POST", "/v1/rerank", BODY)
    assert answer["status"] == 429 and answer["headers"]["retry-after"] == "1"
    assert set(json.loads(answer["body"])) >= {"detail", "message"}
    answer, _ = _request(front, "GET", "/ready")  # no free slot: 503, as one process's /ready
    assert answer["status"] == 503 and answer["headers"]["retry-after"] == "1"


def test_a_client_that_leaves_cancels_its_replica_call():
    """Its queued pairs were scored and its slot held to the end, the request counted as 200."""
    handle = _Handle(outcome=None)
    front = RayFront(handle, ServeSettings("m"))
    answer, asked = _request(front, "POST", "/v1/rerank", BODY, leave=True)
    ((_, _, call),) = handle.calls
    assert answer["status"] == 499 and asked == ["body", "disconnect"]
    assert call.cancelled and front.active == 0


def test_a_replicas_5xx_is_logged_here_with_its_id(caplog):
    failed = (500, [(b"content-type", b"application/json")], b'{"detail": "forward failed: boom"}')
    front = RayFront(_Handle(failed), ServeSettings("m"))
    with caplog.at_level(logging.ERROR, logger="turborank.serving"):
        answer, _ = _request(front, "POST", "/v1/rerank", BODY, {"x-request-id": "r-9"})
    assert answer["status"] == 500
    assert any(
        "request r-9: POST /v1/rerank -> 500" in r.getMessage() and "boom" in r.getMessage()
        for r in caplog.records
    )


def test_a_cancelled_replica_call_reads_as_the_client_leaving_in_the_app():
    """The replica's app saw no disconnect (its receive waited forever) and was cut instead."""
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])  # waits until the client leaves
        await send({"type": "http.response.start", "status": 499, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        call = asyncio.ensure_future(call_app(app, {"type": "http"}, b"x"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(main())
    assert seen == ["http.request", "http.disconnect"]


def test_the_scoring_paths_the_front_guards_are_the_apps(reranker):
    from turborank.serving.app import create_app
    from turborank.serving.errors import SCORING_PATHS

    assert set(create_app(reranker, ServeSettings("m")).rerank_routes) == SCORING_PATHS


def test_probes_do_not_wait_behind_requests_queued_for_a_replica(monkeypatch):
    """/health waited 15 s behind requests Serve held for busy replicas. The front answers it; /ready
    is 503 when no replica answers it at once, as one process's is with every slot in use."""
    from turborank.serving import ray_front

    monkeypatch.setattr(ray_front, "READY_WAIT_S", 0.05)
    handle = _Handle(outcome=None)  # every replica busy: nothing answers
    front = RayFront(handle, ServeSettings("m"))
    assert _request(front, "GET", "/health")[0]["status"] == 200
    assert _request(front, "HEAD", "/")[0]["status"] == 200
    assert not handle.calls
    answer, _ = _request(front, "GET", "/ready")
    ((_, _, call),) = handle.calls
    assert answer["status"] == 503 and answer["headers"]["retry-after"] == "1" and call.cancelled
    assert json.loads(answer["body"])["error_type"] == "overloaded"
