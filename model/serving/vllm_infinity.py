"""vLLM's and infinity's APIs: the request bodies they share ``/rerank`` with TEI's in, their score
routes, and the response bodies their clients parse (their model routes: ``model_routes``).

- ``/rerank`` (and ``POST /``) with ``documents`` instead of TEI's ``texts``: vLLM's rerank body, or
  infinity's when it carries ``return_documents`` or ``raw_scores`` (infinity's client always sends
  them). Both get one answer that both clients read: ``id``, ``object: "rerank"``, ``created``,
  ``model``, ``usage`` with ``prompt_tokens`` and ``total_tokens``, and ``results`` best first, where
  vLLM's results always carry ``document: {"text": ...}`` and infinity's carry the text itself
  with ``return_documents``.
- ``/score`` and ``/v1/score``: vLLM's ``text_1`` against ``text_2`` (1:1, 1:N or N:N), the scores
  in request order.
- ``/v1/models`` (OpenAI's and vLLM's list) and ``/models`` (infinity's): this server's one model
  (``models_body``; the routes are ``model_routes``'). infinity's client refuses any ``owned_by``
  but its own name, so ``/models`` leaves it out.

vLLM refuses a pair over the model's length unless ``truncate_prompt_tokens`` says where to cut;
infinity cuts, as sentence-transformers does.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from turborank.serving.schemas import (
    InfinityScoringOptions,
    Text,
    VLLMScoringOptions,
    is_infinity_body,
    strings_only,
)


class DocumentsRerankRequest(InfinityScoringOptions):
    """POST /rerank with ``documents``: vLLM's rerank body, or infinity's (``return_documents``,
    ``raw_scores``)."""

    model: Text | None = Field(default=None, description="ignored: the server answers with its own model")
    query: Text
    documents: list[Text]
    top_n: StrictInt | None = Field(default=None, ge=0, description="0 or absent: every document")
    return_documents: StrictBool | None = Field(
        default=None, description="infinity: the text of each result as its document (default false)"
    )
    priority: StrictInt | None = Field(default=None, description="vLLM: accepted and ignored")

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        return strings_only(value, "documents takes strings here")


class ScoreTextsRequest(VLLMScoringOptions):
    """POST /score and /v1/score, as vLLM defines them: ``text_1`` one text or a list, ``text_2``
    likewise; one text_1 scores against every text_2, else the two lists pair up one to one."""

    model: Text | None = Field(default=None, description="ignored: the server answers with its own model")
    text_1: Text | list[Text]
    text_2: Text | list[Text]
    priority: StrictInt | None = Field(default=None, description="vLLM: accepted and ignored")

    @model_validator(mode="after")
    def _lengths(self) -> ScoreTextsRequest:
        first, second = self.pairs()
        if len(first) != len(second):
            raise PydanticCustomError(
                "lengths",
                "text_1 has {first} texts and text_2 {second}: one text_1 for any number of text_2, "
                "or as many of each",
                {"first": len(first), "second": len(second)},
            )
        return self

    def pairs(self) -> tuple[list[str], list[str]]:
        """(the query of each pair, the document of each pair)."""
        first = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        second = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if len(first) == 1:
            first = first * len(second)
        return first, second


def documents_dialect_is_infinity(raw: dict[str, Any]) -> bool:
    """The one rule, on the raw body; the handler reads the decision from the request's scope."""
    return is_infinity_body(raw) or "return_documents" in raw


def documents_rerank_body(
    request_id: str,
    model: str,
    created: int,
    results: list[dict[str, Any]],
    tokens: int,
) -> dict[str, Any]:
    return {
        "id": f"rerank-{request_id}",
        "object": "rerank",
        "created": created,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }


def score_body(request_id: str, model: str, created: int, scores: list[float], tokens: int) -> dict[str, Any]:
    return {
        "id": f"score-{request_id}",
        "object": "list",
        "created": created,
        "model": model,
        "data": [{"index": i, "object": "score", "score": score} for i, score in enumerate(scores)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


def models_body(model: str, created: int, max_model_len: int, owned_by: str | None) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": model,
        "object": "model",
        "created": created,
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "backend": "turborank",
        "capabilities": ["rerank"],
        "stats": {},
    }
    if owned_by is not None:
        card["owned_by"] = owned_by
    return {"object": "list", "data": [card]}
