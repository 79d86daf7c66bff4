"""Every response carries ``x-request-id``: the client's own when it sent a usable one, else a new one.
The same id is in the server's log line of any 5xx, so a user's report finds its traceback."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

logger = logging.getLogger("turborank.serving")

HEADER = b"x-request-id"
# What a proxy or client may send and we may echo into headers and logs as is.
_USABLE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_of(scope: dict[str, Any]) -> str:
    return scope.get("state", {}).get("request_id", "-")


class HttpMiddleware:
    """A pure ASGI middleware (no body buffering, disconnects pass through untouched) that sees
    HTTP requests in ``handle`` and passes everything else (lifespan) straight on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise NotImplementedError


class RequestIdMiddleware(HttpMiddleware):
    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        sent = dict(scope["headers"]).get(HEADER)
        request_id = sent.decode() if sent is not None and _USABLE.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # What escaped every handler: Starlette's last-resort handler has answered 500 already;
            # the log line carries the id that answer has, and uvicorn need not log it again.
            logger.exception("request %s: %s %s failed", request_id, scope["method"], scope["path"])
