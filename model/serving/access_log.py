"""One log line per request: route, status, pairs, tokens, queue and total milliseconds, request id.

The handlers ``note`` what they know (pairs, tokens, queue time) on the request's scope; the
middleware writes the line when the response has gone, whatever answered it (a handler, the
routing, the last-resort error handler). The same middleware gives the request its id and the
response its ``x-request-id``: one layer around the app, not two, as each layer costs every
request a coroutine and a wrapper of each message it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from typing import Any

from starlette.requests import Request

from turborank.serving.errors import UNHEALTHY, APIError, error_response, request_shape
from turborank.serving.request_id import assign_request_id, request_id_of, with_request_id

logger = logging.getLogger("turborank.access")
errors_logger = logging.getLogger("turborank.serving")
_KEY = "turborank_access"


def note(request: Request, **values: float) -> None:
    request.scope.setdefault("state", {}).setdefault(_KEY, {}).update(values)


class RequestLogMiddleware:
    """The outermost layer of the app (a pure ASGI middleware: no body buffering, disconnects pass
    through untouched). For each HTTP request: its id, ``x-request-id`` on its response, its
    access-log line once the response has gone, and the id in the log of what escaped every
    handler. Everything else (lifespan) passes straight on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = assign_request_id(scope)
        status = 500  # what the client gets when the app raised before answering
        status_sent: int | None = None

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status = status_sent = message["status"]
                message = {**message, "headers": with_request_id(message.get("headers", []), request_id)}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn's shutdown cuts what is still in flight past the drain: answered here, in the
            # API's shape with this id, instead of by uvicorn's bare 500; the task ends with it.
            if status_sent is not None:
                raise  # part of the answer is out: uvicorn closes the connection
            status = 503
            await _answer_cut(scope, receive, send_with_id)
        except Exception:
            # What escaped every handler: Starlette's last-resort handler has answered 500 already;
            # the log line carries the id that answer has, and uvicorn need not log it again.
            errors_logger.exception("request %s: %s %s failed", request_id, scope["method"], scope["path"])
        finally:
            _log(scope, status, (time.perf_counter() - start) * 1000)


async def _answer_cut(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """503 in the error shape of the request's route (``Retry-After``, ``Connection: close``)."""
    error = APIError(
        503,
        UNHEALTHY,
        "the server is shutting down and stopped this request before its answer; retry",
        {"Retry-After": "1", "Connection": "close"},
    )
    with contextlib.suppress(Exception):  # the client may be gone too
        await error_response(error, request_shape(scope))(scope, receive, send)


def log_connection_answer(status: int, request_id: str, client: str, reason: str) -> None:
    """The access-log line of an answer the connection gave before any request reached the app
    (408 slow headers, 431 headers too large, 503 no connection left): no method or route is
    known, so both are "-"."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = {"request_id": request_id, "method": "-", "route": "-", "status": status}
    fields |= {"client": client, "closed": reason}
    line = "- - %d closed=%s client=%s id=%s"
    logger.info(line, status, reason, client, request_id, extra={"fields": fields})


def logged_path(scope: dict[str, Any]) -> str:
    """The request's path as it came on the wire, still percent-encoded: one field of a log line
    whatever the client put in it (decoded, ``%20200%20id=...`` would read as further fields)."""
    raw = scope.get("raw_path")
    if raw:
        return raw.decode("ascii", "backslashreplace")
    return urllib.parse.quote(scope["path"], safe="/:@!$&'()*+,;=-._~")


def _log(scope: dict[str, Any], status: int, total_ms: float) -> None:
    if not logger.isEnabledFor(logging.INFO):  # --log-level warning: no line, nothing to build
        return
    noted = scope.get("state", {}).get(_KEY, {})
    fields: dict[str, Any] = {
        "request_id": request_id_of(scope),
        "method": scope["method"],
        "route": logged_path(scope),
        "status": status,
        "pairs": noted.get("pairs"),
        "tokens": noted.get("tokens"),
        "queue_ms": None if noted.get("queue_ms") is None else round(noted["queue_ms"], 1),
        "total_ms": round(total_ms, 1),
    }

    def shown(name: str, unit: str) -> str:
        value = fields[name]
        return f"-{unit}" if value is None else f"{value}{unit}"

    logger.info(
        "%s %s %d pairs=%s tokens=%s queue=%s total=%s id=%s",
        fields["method"],
        fields["route"],
        status,
        shown("pairs", ""),
        shown("tokens", ""),
        shown("queue_ms", "ms"),
        shown("total_ms", "ms"),
        fields["request_id"],
        extra={"fields": fields},
    )
