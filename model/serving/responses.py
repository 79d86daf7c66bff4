"""Response bodies of the rerank APIs, as pydantic models for /openapi.json, and the builders the
handlers use (plain dicts: a thousand results are encoded off the event loop, unvalidated).

The Jina / Cohere routes answer one body that both kinds of client read: Jina's ``model``,
``results`` and ``usage``, Cohere's ``id``, ``results`` and ``meta``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from turborank.serving.errors import TEI_ERROR_TYPES

# Cohere bills one search unit per query with up to 100 documents.
DOCUMENTS_PER_SEARCH_UNIT = 100


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="sigmoid of the logit, in [0, 1]")
    document: dict[str, Any] | None = Field(
        default=None, description='with return_documents: {"text": ...} for a string, an object as sent'
    )


class Usage(BaseModel):
    total_tokens: int = Field(description="tokens scored, special tokens included")
    truncated_documents: int = Field(
        description="documents cut to fit max_input_length or max_tokens_per_doc"
    )


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int = Field(description="one per 100 documents, as Cohere counts them")


class MetaTokens(BaseModel):
    input_tokens: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: MetaTokens
    warnings: list[str] | None = None


class RerankResponse(BaseModel):
    """POST /v1/rerank and /v2/rerank."""

    id: str = Field(description="the request id (also the x-request-id header and in the server log)")
    model: str = Field(description="the model this server runs, whatever the request named")
    results: list[RerankResult] = Field(description="best first, top_n of them")
    usage: Usage
    meta: Meta


class TEIRank(BaseModel):
    index: int
    score: float = Field(description="sigmoid of the logit, or the logit with raw_scores")
    text: str | None = Field(default=None, description="with return_text")


class JinaCohereError(BaseModel):
    """An error on /v1/rerank or /v2/rerank."""

    detail: str = Field(description="what Jina's clients read")
    message: str = Field(description="what Cohere's API puts there")
    error: str
    error_type: str


class TEIError(BaseModel):
    """An error on /rerank and POST /, as text-embeddings-inference gives it."""

    error: str
    error_type: Literal[TEI_ERROR_TYPES]  # type: ignore[valid-type]


class Error(BaseModel):
    """An error on any other route."""

    error: str
    error_type: str


def rerank_body(
    request_id: str,
    model: str,
    api_version: str,
    results: list[dict[str, Any]],
    documents: int,
    tokens: int,
    truncated: int,
    warnings: list[str],
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "api_version": {"version": api_version},
        "billed_units": {"search_units": math.ceil(documents / DOCUMENTS_PER_SEARCH_UNIT)},
        "tokens": {"input_tokens": tokens},
    }
    if warnings:
        meta["warnings"] = warnings
    return {
        "id": request_id,
        "model": model,
        "results": results,
        "usage": {"total_tokens": tokens, "truncated_documents": truncated},
        "meta": meta,
    }
