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
import logging
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response

from turborank.serving import errors
from turborank.serving.errors import APIError, ClientDisconnectedError, error_response, shape_of
from turborank.serving.request_body import CLOSE, read_body
from turborank.serving.settings import ServeSettings

logger = logging.getLogger("turborank.serving")
# Tries after the first when the replica holding a request is lost.
RETRIES = 2
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
    """Run one HTTP request through the ASGI ``app`` in this process: (status, headers, body)."""
    delivered = False
    never = asyncio.Event()  # the front's caller going away cancels this whole call instead

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    answer: dict[str, Any] = {"status": 500, "headers": [], "body": []}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            answer["body"].append(message.get("body", b""))

    await app(dict(scope), receive, send)
    return answer["status"], answer["headers"], b"".join(answer["body"])


def _lost_replica_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as ray_errors

    return tuple(
        getattr(ray_errors, name)
        for name in ("ActorDiedError", "ActorUnavailableError", "RayActorError")
        if hasattr(ray_errors, name)
    )


async def forward(
    model: Any, scope: dict[str, Any], body: bytes, lost: tuple[type[BaseException], ...]
) -> Response:
    """The model replicas' answer to one request; again on another replica when the one holding it
    is lost; the API's JSON 503 when none answers."""
    method, path = scope.get("method", "-"), scope.get("path", "-")
    for attempt in range(RETRIES + 1):
        try:
            status, headers, content = await model.handle_http.remote(scope, body)
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
            return _failure(method, path, APIError(500, errors.BACKEND, "internal error"), exc)
        response = Response(content, status_code=status)
        response.raw_headers = headers
        return response
    message = f"the replicas holding this request were lost {RETRIES + 1} times; retry"
    error = APIError(503, errors.UNHEALTHY, message, {"Retry-After": "1"})
    return _failure(method, path, error, None)


def _failure(method: str, path: str, error: APIError, cause: BaseException | None) -> Response:
    request_id = uuid.uuid4().hex
    error.message = f"{error.message} (request id {request_id})"
    error.__cause__ = cause
    errors.log_server_error(request_id, method, path, error, error.status)
    response = error_response(error, shape_of(path))
    response.headers["x-request-id"] = request_id
    return response


class RayFront:
    """The ASGI app this process serves: read a request under the body limits, forward it.

    ``draining`` and ``active`` are what ``server.DrainingServer`` reads: while draining, new
    requests are answered 503 with Retry-After here, and the process exits once ``active`` (requests
    forwarded and not yet answered) is 0 or ``settings.drain_timeout_s`` has passed."""

    def __init__(self, model: Any, settings: ServeSettings) -> None:
        self.model = model  # DeploymentHandle of the model deployment
        self.settings = settings
        self.draining = False
        self.active = 0
        self._lost = _lost_replica_errors()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        self.active += 1
        try:
            response = await self._answer(scope, receive)
        finally:
            self.active -= 1
        await response(scope, receive, send)

    async def _answer(self, scope: dict[str, Any], receive: Any) -> Response:
        settings = self.settings
        try:
            if self.draining:
                raise APIError(503, errors.UNHEALTHY, "the server is draining", {"Retry-After": "5", **CLOSE})
            body = await read_body(
                receive,
                Headers(scope=scope).get("content-length"),
                settings.max_body_bytes,
                settings.body_timeout_s,
                settings.min_body_rate,
            )
        except APIError as error:
            return error_response(error, shape_of(scope["path"]))
        except ClientDisconnectedError:
            return Response(status_code=499)  # nobody receives it
        return await forward(self.model, portable_scope(scope), body, self._lost)
