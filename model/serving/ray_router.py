"""The front deployment of ``serve --ray``: it takes each HTTP request from Ray Serve's proxy and
hands it to a model replica, again on another replica when the one holding it is lost.

Ray's proxy answers a request whose replica died (killed, out of memory, node lost) with a plain-text
500 and never retries it. Scoring is a pure function of the request, so a request is safe to run
twice: the router passes the whole request (scope and body) to a model replica through a deployment
handle, and when the replica is lost before it answers, passes it again (``RETRIES`` more times, the
handle choosing a live replica). When none answers, the client gets the API's JSON 503 with
``Retry-After``, logged with a request id. The router holds no model and no state, so it is cheap to
run beside each model replica.

The model replica runs the request through its FastAPI app in process (``call_app``): the app, its
limits, errors and metrics are exactly those of one ``turborank serve`` process.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from turborank.serving import errors
from turborank.serving.errors import APIError, error_response, shape_of

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
    never = asyncio.Event()  # the router's caller going away cancels this whole call instead

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


class Router:
    """The ingress deployment: every request to a model replica, again to another when it is lost."""

    def __init__(self, model: Any) -> None:
        self._model = model  # DeploymentHandle of the model deployment
        self._lost = _lost_replica_errors()

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        scope = portable_scope(request.scope)
        for attempt in range(RETRIES + 1):
            try:
                status, headers, content = await self._model.handle_http.remote(scope, body)
            except self._lost as exc:
                logger.warning(
                    "%s %s: the replica holding it was lost (%s); try %d of %d",
                    request.method,
                    request.url.path,
                    type(exc).__name__,
                    attempt + 1,
                    RETRIES + 1,
                )
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            except Exception as exc:  # a failure of Ray itself, not of the request: JSON, logged
                return self._failure(request, 500, errors.BACKEND, "internal error", exc)
            response = Response(content, status_code=status)
            response.raw_headers = headers
            return response
        message = f"the replicas holding this request were lost {RETRIES + 1} times; retry"
        return self._failure(request, 503, errors.UNHEALTHY, message, None, {"Retry-After": "1"})

    @staticmethod
    def _failure(
        request: Request,
        status: int,
        error_type: str,
        message: str,
        cause: BaseException | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        request_id = uuid.uuid4().hex
        error = APIError(status, error_type, f"{message} (request id {request_id})", headers)
        error.__cause__ = cause
        errors.log_server_error(request_id, request.method, request.url.path, error, status)
        response = error_response(error, shape_of(request.url.path))
        response.headers["x-request-id"] = request_id
        return response
