"""Every response carries ``x-request-id``: the client's own when it sent a usable one, else a new one.
The same id is in the server's log line of any 5xx, so a user's report finds its traceback. The
outermost middleware (``access_log.RequestLogMiddleware``) assigns it and sets the header."""

from __future__ import annotations

import re
import uuid
from typing import Any

HEADER = b"x-request-id"
# What a proxy or client may send and we may echo into headers and logs as is.
_USABLE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_of(scope: dict[str, Any]) -> str:
    return scope.get("state", {}).get("request_id", "-")


def assign_request_id(scope: dict[str, Any]) -> str:
    """The request's id, kept on its scope: the client's ``x-request-id`` when usable, else a new one."""
    sent = dict(scope["headers"]).get(HEADER)  # ASGI servers give header names in lower case
    request_id = sent.decode() if sent is not None and _USABLE.fullmatch(sent) else uuid.uuid4().hex
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id


def with_request_id(headers: list[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
    """Response headers with ``x-request-id`` set to ``request_id`` (any the app set replaced)."""
    return [*(pair for pair in headers if pair[0].lower() != HEADER), (HEADER, request_id.encode())]
