"""Response bodies of the rerank APIs, as pydantic models for /openapi.json, and the builders the
handlers use (plain dicts: a thousand results are encoded off the event loop, unvalidated).

The Jina / Cohere routes answer one body that both kinds of client read: Jina's ``model``,
``results`` and ``usage``, Cohere's ``id``, ``results`` and ``meta``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from turborank.serving.errors import TEI_ERROR_TYPES

# Cohere bills one search unit per query with up to 100 documents.
DOCUMENTS_PER_SEARCH_UNIT = 100


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(
        description="sigmoid of the logit, in [0, 1]; the logit with raw_scores or use_activation false"
    )
    document: dict[str, Any] | str | None = Field(
        default=None,
        description='with return_documents: {"text": ...} for a string, an object as sent; '
        "infinity's requests (raw_scores) get the string itself",
    )


class Usage(BaseModel):
    """``truncated_documents`` on the Jina / Cohere routes only."""

    prompt_tokens: int = Field(description="the same as total_tokens (infinity's and vLLM's name)")
    total_tokens: int = Field(description="tokens scored, special tokens included")
    truncated_documents: int | None = Field(
        default=None, description="documents cut to fit max_input_length or max_tokens_per_doc"
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
    object: Literal["rerank"] = Field(description="infinity's clients check it")
    created: int = Field(description="when the answer was made, in Unix seconds (infinity's field)")
    model: str = Field(description="the model this server runs, whatever the request named")
    results: list[RerankResult] = Field(description="best first, top_n of them")
    usage: Usage
    meta: Meta


class DocumentsRerankResponse(BaseModel):
    """POST /rerank with documents (vLLM's and infinity's rerank): what both clients read."""

    id: str
    object: Literal["rerank"]
    created: int = Field(description="when the answer was made, in Unix seconds")
    model: str
    usage: Usage
    results: list[RerankResult] = Field(
        description='best first, top_n of them; vLLM\'s with document {"text": ...}, '
        "infinity's with the text as document when return_documents"
    )


class ScoreItem(BaseModel):
    index: int
    object: Literal["score"]
    score: float = Field(description="sigmoid of the logit; the logit with use_activation false")


class ScoreResponse(BaseModel):
    """POST /score and /v1/score (vLLM): one score per pair, in request order."""

    id: str
    object: Literal["list"]
    created: int
    model: str
    data: list[ScoreItem]
    usage: dict[str, int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int = Field(description="when the server started, in Unix seconds")
    owned_by: str | None = Field(
        default=None, description="on /v1/models only (infinity's client refuses it)"
    )
    max_model_len: int = Field(description="max_input_length")
    capabilities: list[str]
    stats: dict[str, Any]


class ModelList(BaseModel):
    """GET /v1/models (OpenAI, vLLM) and /models (infinity)."""

    object: Literal["list"]
    data: list[ModelCard]


class TEIModelType(BaseModel):
    reranker: dict[str, Any]


class InfoResponse(BaseModel):
    """GET /info: text-embeddings-inference's Info, with this server's own keys beside it (every
    setting of ``turborank serve``, the device, dtype, backends, CPU)."""

    model_config = ConfigDict(extra="allow")

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: TEIModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None


class OpenAIErrorInfo(BaseModel):
    message: str
    type: str = Field(description='"BadRequestError", "ServiceUnavailableError", ...')
    param: str | None
    code: int


class OpenAIStyleError(BaseModel):
    """An error on vLLM's and infinity's routes, or for a body in their dialect on a shared path
    (infinity's also carry FastAPI's ``detail`` list)."""

    error: OpenAIErrorInfo
    detail: list[dict[str, Any]] | None = None


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
    created: int,
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
        "object": "rerank",
        "created": created,
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_documents": truncated},
        "meta": meta,
    }
