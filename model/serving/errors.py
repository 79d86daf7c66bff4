"""Error responses in the shape each API's clients read, and the log line every 5xx gets.

- Jina / Cohere routes (``/v1/rerank``, ``/v2/rerank``): ``{"detail", "message", "error",
  "error_type"}``. Jina's clients (LlamaIndex, Haystack, LangChain) raise ``resp["detail"]``,
  Cohere's API puts its text in ``message``; ``error`` and ``error_type`` are ours.
- text-embeddings-inference routes (``/rerank``, ``POST /``): ``{"error", "error_type"}`` with TEI's
  own ``error_type`` names (its generated clients parse them as an enum) and 424 where TEI answers a
  backend failure with 424.
- vLLM's routes (``/score``, ``/v1/score``, ``/v1/models``) and a body in vLLM's dialect on a shared
  path: ``{"error": {"message", "type", "param", "code"}}`` as vLLM (and OpenAI) answers, with
  vLLM's 400 where we would answer 422.
- infinity's (``/models``) and a body in infinity's dialect: the same object, plus FastAPI's
  ``detail`` list that infinity's generated client parses from a 422.
- Everything else (health, readiness, info, unknown routes): ``{"detail", "error", "error_type"}``,
  ours with Jina's ``detail`` (a Jina client pointed at a wrong path reads it from the 404).

A path shared by two APIs (``/rerank``: TEI's ``texts``, vLLM's and infinity's ``documents``) answers
errors in the shape of the dialect its body was told to be (``SHAPE_KEY`` in the request's scope),
and in the path's own shape when the body cannot be read.
"""

from __future__ import annotations

import enum
import http
import logging
from typing import Any

from fastapi.responses import JSONResponse

logger = logging.getLogger("turborank.serving")

# Our error_type values, for every route that is not TEI's.
VALIDATION = "validation"
EMPTY = "empty"
PAYLOAD_TOO_LARGE = "payload_too_large"
TIMEOUT = "timeout"
OVERLOADED = "overloaded"
UNHEALTHY = "unhealthy"
BACKEND = "backend"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
UNAUTHORIZED = "unauthorized"

# TEI's ErrorType, whose six names are all a TEI client knows: our types without a TEI
# counterpart (a body too large, too slow, unauthorised, a wrong route) are the client's mistake,
# "Validation" as TEI's own 413 is.
TEI_ERROR_TYPES = ("Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty")
_TEI_NAMES = {EMPTY: "Empty", OVERLOADED: "Overloaded", UNHEALTHY: "Unhealthy", BACKEND: "Backend"}
# TEI answers every Backend error with 424 Failed Dependency.
TEI_BACKEND_STATUS = 424

TEI_PATHS = frozenset({"/rerank", "/"})
JINA_COHERE_PATHS = frozenset({"/v1/rerank", "/v2/rerank"})
VLLM_PATHS = frozenset({"/score", "/v1/score", "/v1/models"})
INFINITY_PATHS = frozenset({"/models"})
# The scoring POST routes (each also with a trailing slash).
SCORING_PATHS = JINA_COHERE_PATHS | TEI_PATHS | frozenset({"/score", "/v1/score"})
# Where a shared path's handler records the dialect it told the body to be.
SHAPE_KEY = "turborank.error_shape"


class Shape(enum.Enum):
    OURS = "ours"
    JINA_COHERE = "jina_cohere"
    TEI = "tei"
    VLLM = "vllm"
    INFINITY = "infinity"


def shape_of(path: str) -> Shape:
    if path in JINA_COHERE_PATHS:
        return Shape.JINA_COHERE
    if path in TEI_PATHS:
        return Shape.TEI
    if path in VLLM_PATHS or path.startswith("/v1/models/"):
        return Shape.VLLM
    if path in INFINITY_PATHS:
        return Shape.INFINITY
    return Shape.OURS


def request_shape(scope: dict[str, Any]) -> Shape:
    """The shape errors of this request take: its body's dialect when told, else its path's."""
    return scope.get(SHAPE_KEY) or shape_of(scope["path"])


class APIError(Exception):
    """A client-facing error. ``tei_type`` overrides the TEI name of ``error_type`` (a text the
    tokenizer cannot cut is TEI's "Tokenizer" but our "validation")."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        tei_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = dict(headers or {})
        self.tei_type = tei_type


class ClientDisconnectedError(Exception):
    """The client closed the connection: there is nobody to answer."""


def status_for(error: APIError, shape: Shape) -> int:
    if shape is Shape.TEI and error.status >= 500 and error.error_type == BACKEND:
        return TEI_BACKEND_STATUS
    if shape is Shape.VLLM and error.status == 422:
        return 400  # vLLM answers every request it cannot take with 400 BadRequestError
    return error.status


def _openai_error(error: APIError, status: int) -> dict[str, Any]:
    kind = http.HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    kind = kind if kind.endswith("Error") else kind + "Error"  # "InternalServerError", "BadRequestError"
    return {"message": error.message, "type": kind, "param": None, "code": status}


def tei_error_type(error: APIError) -> str:
    return error.tei_type or _TEI_NAMES.get(error.error_type, "Validation")


def error_body(error: APIError, shape: Shape) -> dict[str, Any]:
    if shape is Shape.VLLM:
        return {"error": _openai_error(error, status_for(error, shape))}
    if shape is Shape.INFINITY:
        detail = [{"loc": ["body"], "msg": error.message, "type": error.error_type}]
        return {"error": _openai_error(error, error.status), "detail": detail}
    if shape is Shape.TEI:
        return {"error": error.message, "error_type": tei_error_type(error)}
    body = {"detail": error.message, "error": error.message, "error_type": error.error_type}
    if shape is Shape.JINA_COHERE:
        return {"message": error.message, **body}
    return body


def error_response(error: APIError, shape: Shape = Shape.OURS) -> JSONResponse:
    return JSONResponse(error_body(error, shape), status_code=status_for(error, shape), headers=error.headers)


def log_server_error(request_id: str, method: str, path: str, error: APIError, status: int) -> None:
    """Every 5xx (and TEI's 424) leaves a line with its request id (the response carries it as
    x-request-id); with the traceback of what caused it when there is one."""
    cause = error.__cause__
    if error.status == 503:
        logger.warning("request %s: %s %s -> 503: %s", request_id, method, path, error.message)
    else:
        logger.error(
            "request %s: %s %s -> %d %s: %s",
            request_id,
            method,
            path,
            status,
            error.error_type,
            error.message,
            exc_info=cause if cause is not None else error,
        )
