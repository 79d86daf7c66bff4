"""Error responses: JSON ``{"error", "error_type"}`` with the request id, and the log line every 5xx gets."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

logger = logging.getLogger("turborank.serving")

# The error_type values, in one place for every API shape.
VALIDATION = "validation"
EMPTY = "empty"
PAYLOAD_TOO_LARGE = "payload_too_large"
TIMEOUT = "timeout"
OVERLOADED = "overloaded"
UNHEALTHY = "unhealthy"
BACKEND = "backend"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"


class APIError(Exception):
    def __init__(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = dict(headers or {})


class ClientDisconnectedError(Exception):
    """The client closed the connection: there is nobody to answer."""


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        {"error": error.message, "error_type": error.error_type},
        status_code=error.status,
        headers=error.headers,
    )


def log_server_error(request_id: str, method: str, path: str, error: APIError) -> None:
    """Every 5xx leaves a line with its request id (the response carries it as x-request-id); with
    the traceback of what caused it when there is one."""
    cause = error.__cause__
    if error.status == 503:
        logger.warning("request %s: %s %s -> 503: %s", request_id, method, path, error.message)
    else:
        logger.error(
            "request %s: %s %s -> %d %s: %s",
            request_id,
            method,
            path,
            error.status,
            error.error_type,
            error.message,
            exc_info=cause if cause is not None else error,
        )
