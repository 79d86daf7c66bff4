"""Request bodies to validated models; every client mistake a 400 or 422 that names the field.

Runs on a tokenizer thread for a large body (decoding 16 MiB of JSON takes tens of milliseconds),
on the event loop for a small one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pydantic
from fastapi.exceptions import RequestValidationError

from turborank.serving.errors import VALIDATION, APIError

Model = TypeVar("Model", bound=pydantic.BaseModel)
# Enough for the messages to name every problem of an ordinary mistake, not a novel.
_MAX_PROBLEMS = 5


def decode_json(body: bytes) -> dict[str, Any]:
    """The body's JSON object; APIError 400 for anything else (not UTF-8, malformed, not an object)."""
    if b"\x00" in body:  # valid UTF-8, but never in JSON: UTF-16 or UTF-32 text
        raise APIError(400, VALIDATION, "the body is not UTF-8 text: it holds NUL bytes (UTF-16 or UTF-32?)")
    try:
        # JSON between systems is UTF-8 (RFC 8259); json.loads would take UTF-16 and UTF-32 bytes
        # too. A byte-order mark is allowed and dropped.
        raw = json.loads(body.decode("utf-8-sig"))
    except RecursionError:
        raise APIError(400, VALIDATION, "malformed JSON: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise APIError(
            400, VALIDATION, f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except json.JSONDecodeError as exc:
        raise APIError(400, VALIDATION, f"malformed JSON: {exc}") from None
    except ValueError:  # what json.loads raises for an integer longer than Python converts
        raise APIError(
            400, VALIDATION, f"malformed JSON: a number of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if not isinstance(raw, dict):
        raise APIError(400, VALIDATION, f"the request body must be a JSON object, got {type(raw).__name__}")
    return raw


class Readable(Protocol):
    """What a body is read as: a dialect of the API with its request schema."""

    schema: type[Any]


Chosen = TypeVar("Chosen", bound=Readable)


def read_as(body: bytes, choose: Callable[[dict[str, Any]], Chosen]) -> tuple[Chosen, Any, APIError | None]:
    """The body decoded (``decode_json``'s APIError 400 raised), the dialect ``choose`` picks by its
    keys, and the body validated by that dialect's schema: (dialect, request, None), or (dialect,
    None, the 422) for the caller to answer in the dialect's shape. One call, so a large body makes
    one trip to a tokenizer thread, not two."""
    raw = decode_json(body)
    dialect = choose(raw)
    try:
        return dialect, validate(dialect.schema, raw), None
    except APIError as invalid:
        return dialect, None, invalid


def validate(model: type[Model], raw: dict[str, Any]) -> Model:
    """``raw`` as ``model``; APIError 422 naming the fields otherwise."""
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise APIError(422, VALIDATION, describe(exc)) from None


def describe(error: pydantic.ValidationError | RequestValidationError) -> str:
    """'field.path: problem; ...' for the first few problems."""
    items = error.errors()
    problems = []
    for item in items[:_MAX_PROBLEMS]:
        where = ".".join(str(part) for part in item["loc"] if not _is_validator_tag(part)) or "body"
        problems.append(f"{where}: {item['msg']}")
    more = len(items) - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def _is_validator_tag(part: object) -> bool:
    # pydantic puts the validator of an Annotated type in the location ("function-after[...]"), and
    # the member of a union ("list[function-after[...]]"); field names hold no brackets.
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)
