"""``--api-key``: the scoring routes, /info and the model routes need ``Authorization: Bearer <key>``,
as TEI and the hosted APIs ask; health, readiness, metrics and the API docs stay open for probes
and scrapers."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from turborank.serving.errors import UNAUTHORIZED, APIError
from turborank.serving.request_body import CLOSE


def authorized(headers: Headers, api_key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    # Header values arrive as latin-1 text: back to their bytes, compared in constant time.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("latin-1"), api_key.encode("ascii")
    )


def unauthorized() -> APIError:
    # Answered before the body is read: the connection closes (the rest of the body is not worth
    # reading).
    return APIError(
        401,
        UNAUTHORIZED,
        "missing or wrong API key: send the header 'Authorization: Bearer <key>' (the server was started "
        "with --api-key)",
        {"WWW-Authenticate": "Bearer", **CLOSE},
    )
