"""The front of ``serve --ray``: this process's own HTTP server, in place of Ray Serve's proxy,
handing each request to a model replica through a deployment handle, and to another replica when
the one holding it is lost.

Ray's proxy answers a request whose replica died (killed, out of memory, node lost) with a plain-text
500 and never retries it, and a proxy or router replica of Ray's own can die the same way. So
``serve --ray`` runs no Ray proxy: this process listens (uvicorn, with the connection limits of one
``turborank serve`` process: ``--header-timeout``, ``--max-connections``), reads each body under
``--max-body-bytes``, ``--body-timeout`` and ``--min-body-rate``, and passes the whole request
(scope and body) to a model replica. Scoring is a pure function of the request, so a request is safe
to run twice: when its replica is lost before it answers, it goes again (``RETRIES`` more times, the
handle choosing a live replica); when none answers, the client gets the API's JSON 503 with
``Retry-After``, logged with a request id. If this process dies the endpoint is gone, as one
``turborank serve`` process's is.

A model replica runs the request through its FastAPI app in process (``call_app``): routes, limits,
per-client slots (the client's own address travels in the scope), errors and metrics are exactly
those of one ``turborank serve`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from turborank.serving import errors
from turborank.serving.access_log import RequestLogMiddleware
from turborank.serving.auth import authorized, unauthorized
from turborank.serving.errors import APIError, ClientDisconnectedError, error_response, shape_of
from turborank.serving.request_body import CLOSE, read_body
from turborank.serving.request_id import HEADER, request_id_of, with_request_id
from turborank.serving.settings import ServeSettings

logger = logging.getLogger("turborank.serving")
# Tries after the first when the replica holding a request is lost.
RETRIES = 2
# How long /ready waits for a replica to answer it: past that every replica is full, and it says so.
READY_WAIT_S = 1.0
# The parts of an HTTP scope a model replica needs (all picklable).
_SCOPE_KEYS = (
    "type",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)


def portable_scope(scope: dict[str, Any]) -> dict[str, Any]:
    passed = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
    passed["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    passed["asgi"] = {"version": "3.0", "spec_version": "2.3"}
    return passed


async def call_app(
    app: Any, scope: dict[str, Any], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one HTTP request through the ASGI ``app`` in this process: (status, headers, body).

    The front cancels the call when its client leaves: the app then sees the client disconnect,
    as in one process (its queued pairs dropped, 499 in its metrics), and the call ends with it."""
    delivered = False
    left = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    answer: dict[str, Any] = {"status": 500, "headers": [], "body": []}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            answer["body"].append(message.get("body", b""))

    running = asyncio.ensure_future(app(dict(scope), receive, send))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        left.set()
        await running
        raise
    return answer["status"], answer["headers"], b"".join(answer["body"])


def _back_pressure_errors() -> tuple[type[BaseException], ...]:
    from ray.serve import exceptions

    return tuple(getattr(exceptions, name) for name in ("BackPressureError",) if hasattr(exceptions, name))


def _lost_replica_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as ray_errors

    return tuple(
        getattr(ray_errors, name)
        for name in ("ActorDiedError", "ActorUnavailableError", "RayActorError")
        if hasattr(ray_errors, name)
    )


async def forward(
    model: Any,
    scope: dict[str, Any],
    body: bytes,
    lost: tuple[type[BaseException], ...],
    busy: tuple[type[BaseException], ...] = (),
) -> Response:
    """The model replicas' answer to one request; again on another replica when the one holding it
    is lost; the API's JSON 503 when none answers, 429 when the replicas' queues are full
    (``busy``: Serve's back-pressure errors)."""
    method, path = scope.get("method", "-"), scope.get("path", "-")
    for attempt in range(RETRIES + 1):
        call = None
        try:
            call = model.handle_http.remote(scope, body)
            status, headers, content = await call
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()  # the client left: the replica's app sees it leave
            raise
        except busy:
            # Every replica full and Serve's queue too; /ready says so as one process does, 503.
            status = 503 if path == "/ready" else 429
            message = "every replica's request slots and Serve's queue are full; retry"
            return error_response(
                APIError(status, errors.OVERLOADED, message, {"Retry-After": "1"}), shape_of(path)
            )
        except lost as exc:
            logger.warning(
                "%s %s: the replica holding it was lost (%s); try %d of %d",
                method,
                path,
                type(exc).__name__,
                attempt + 1,
                RETRIES + 1,
            )
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        except Exception as exc:  # a failure of Ray itself, not of the request: JSON, logged
            return _failure(scope, APIError(500, errors.BACKEND, "internal error"), exc)
        if status >= 500 or status == errors.TEI_BACKEND_STATUS:
            _log_replica_failure(scope, status, content)
        response = Response(content, status_code=status)
        response.raw_headers = headers
        return response
    message = f"the replicas holding this request were lost {RETRIES + 1} times; retry"
    error = APIError(503, errors.UNHEALTHY, message, {"Retry-After": "1"})
    return _failure(scope, error, None)


def _passed_id(scope: dict[str, Any]) -> str:
    """The request id the front passed to the replica in the scope's headers ("" if none)."""
    return dict(scope.get("headers", [])).get(HEADER, b"").decode()


def _log_replica_failure(scope: dict[str, Any], status: int, content: bytes) -> None:
    """A replica's 5xx in this process's log too, with its id: the replica logged its traceback
    where Ray keeps the replicas' output (its session's logs), which the operator may not read."""
    request_id = _passed_id(scope) or "-"
    detail = content[:300].decode("utf-8", "backslashreplace")
    method, path = scope.get("method", "-"), scope.get("path", "-")
    logger.error(
        "request %s: %s %s -> %d from a model replica: %s (its traceback is in the replica's log)",
        request_id,
        method,
        path,
        status,
        detail,
    )


def _failure(scope: dict[str, Any], error: APIError, cause: BaseException | None) -> Response:
    """The JSON error, logged with the id the request carries to the replica (or a new one)."""
    method, path = scope.get("method", "-"), scope.get("path", "-")
    request_id = _passed_id(scope) or uuid.uuid4().hex
    error.message = f"{error.message} (request id {request_id})"
    error.__cause__ = cause
    errors.log_server_error(request_id, method, path, error, error.status)
    response = error_response(error, shape_of(path))
    response.headers["x-request-id"] = request_id
    return response


class RayFront:
    """The ASGI app this process serves: read a request under the body limits, forward it.

    As one ``turborank serve`` process does, it gives each request its id (passed on to the replica,
    so the answer and the replica's log carry the same) and its access-log line, answers a request
    cut at the end of the drain with the API's JSON 503, asks for the API key before reading a
    scoring body, and tells the replica when the client leaves. ``draining`` and ``active`` are what
    ``server.DrainingServer`` reads: while draining, new requests but ``/metrics`` are answered 503
    with Retry-After here, and the process exits once ``active`` (requests forwarded and not yet
    answered) is 0 or ``settings.drain_timeout_s`` has passed."""

    def __init__(self, model: Any, settings: ServeSettings) -> None:
        self.model = model  # DeploymentHandle of the model deployment
        self.settings = settings
        self.draining = False
        self.active = 0
        self._lost = _lost_replica_errors()
        self._busy = _back_pressure_errors()
        self._logged = RequestLogMiddleware(self._serve)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http":
            await self._logged(scope, receive, send)

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.active += 1
        try:
            response = await self._answer(scope, receive)
        finally:
            self.active -= 1
        await response(scope, receive, send)

    async def _answer(self, scope: dict[str, Any], receive: Any) -> Response:
        settings, path = self.settings, scope["path"]
        try:
            if self.draining and path != "/metrics":
                raise APIError(503, errors.UNHEALTHY, "the server is draining", {"Retry-After": "5", **CLOSE})
            headers = Headers(scope=scope)
            scoring = scope["method"] == "POST" and (path.rstrip("/") or "/") in errors.SCORING_PATHS
            if scoring and settings.api_key is not None and not authorized(headers, settings.api_key):
                raise unauthorized()
            body = await read_body(
                receive,
                headers.get("content-length"),
                settings.max_body_bytes,
                settings.body_timeout_s,
                settings.min_body_rate,
            )
        except APIError as error:
            return error_response(error, shape_of(path))
        except ClientDisconnectedError:
            return Response(status_code=499)  # nobody receives it
        if scope["method"] in ("GET", "HEAD") and path in ("/health", "/"):
            # The process is up: answered here, not behind requests waiting for a replica.
            return JSONResponse({"status": "ok"})
        passed = portable_scope(scope)
        passed["headers"] = with_request_id(passed["headers"], request_id_of(scope))
        call = asyncio.ensure_future(forward(self.model, passed, body, self._lost, self._busy))
        left = asyncio.ensure_future(_client_left(receive))
        # /ready, as one process's answers 503 with no free slot: a replica must answer it at once.
        wait = READY_WAIT_S if path == "/ready" else None
        try:
            await asyncio.wait({call, left}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The client left, the drain's end cuts this request, or /ready waited too long: the
            # replica's call goes too.
            for task in (call, left):
                task.cancel()
        if not call.cancelled() and call.done():
            return call.result()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        if not left.cancelled() and left.done():
            return Response(status_code=499)  # nobody receives it
        message = f"no replica free to answer within {READY_WAIT_S:g} s (every request slot in use)"
        return error_response(APIError(503, errors.OVERLOADED, message, {"Retry-After": "1"}), shape_of(path))


async def _client_left(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
