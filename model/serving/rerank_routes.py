"""The three rerank APIs on one engine: what each takes, what each answers.

- ``/v1/rerank``: Jina's API, which Cohere's v1 shares. ``return_documents`` defaults to true as
  Jina documents it, and to false as Cohere documents it for a request from Cohere's SDK (its
  ``X-Fern-SDK-Name`` header) or one using a Cohere-only field (``rank_fields``,
  ``max_chunks_per_doc``).
- ``/v2/rerank``: Cohere's v2 API (each document cut to ``max_tokens_per_doc`` tokens first).
- ``/rerank`` and ``POST /``: text-embeddings-inference's API.

Long documents are truncated on the Jina/Cohere routes, as the hosted APIs do (unless the server
runs with ``strict_input_length``), and refused on TEI's unless the request or ``--auto-truncate``
says to truncate, as TEI does.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from fastapi.responses import Response
from starlette.datastructures import Headers
from starlette.requests import Request

from turborank.ranking import best_first
from turborank.serving.request_id import request_id_of
from turborank.serving.responses import rerank_body
from turborank.serving.schemas import CohereV2RerankRequest, JinaRerankRequest, TEIRerankRequest
from turborank.serving.state import Scored, ScoreRequest, ServerState

_STRICT_HINT = "this server refuses documents that do not fit (--strict-input-length); send a shorter one"
_TEI_HINT = "set truncate or start the server with --auto-truncate"


def from_cohere_sdk(headers: Headers) -> bool:
    sdk = headers.get("x-fern-sdk-name", "")
    agent = headers.get("user-agent", "")
    return sdk.lower() == "cohere" or agent.lower().startswith("cohere/")


def _sigmoid(logits: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()


# What one result costs in the JSON answer besides any document it echoes (index, score, keys).
_RESULT_BYTES = 64


def _answer_size(results: list[dict[str, Any]], echoed: list[str | dict[str, Any]]) -> int:
    """About how large the JSON answer is, to decide where it is encoded: a document object (any
    fields a client sent) counts as large without being measured."""
    texts = sum(len(d) if isinstance(d, str) else 1 << 30 for d in echoed)
    return _RESULT_BYTES * len(results) + texts


class RerankRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.settings = state.settings

    async def _json(self, content: Any, size: int) -> Response:
        # Off the loop unless small: echoing 16 MiB of documents is tens of milliseconds of encoding.
        body = await self.state.small_or_off_loop(
            size,
            lambda: json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
        )
        return Response(body, media_type="application/json")

    def _jina_cohere_job(
        self, query: str, texts: list[str], max_document_tokens: int | None = None
    ) -> ScoreRequest:
        return ScoreRequest(
            query=query,
            documents=texts,
            field="documents",
            limit=self.settings.max_documents,
            limit_name="max_documents",
            truncate=not self.settings.strict_input_length,
            too_long_hint=_STRICT_HINT,
            max_document_tokens=max_document_tokens,
        )

    def _results(
        self, scored: Scored, top_n: int | None, documents: list[str | dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        scores = _sigmoid(scored.logits)
        results = []
        for index in best_first(scores)[:top_n]:
            item: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
            if documents is not None:
                document = documents[index]
                item["document"] = {"text": document} if isinstance(document, str) else document
            results.append(item)
        return results

    async def jina_cohere_v1(self, payload: JinaRerankRequest, request: Request) -> Response:
        cohere = payload.cohere_only_fields() or from_cohere_sdk(request.headers)
        return_documents = payload.return_documents if payload.return_documents is not None else not cohere
        scored = await self.state.score(request, self._jina_cohere_job(payload.query, payload.texts()))
        warnings = []
        if scored.truncated:
            limit = self.settings.max_input_length
            warnings.append(
                f"{scored.truncated} of {len(payload.documents)} documents were truncated to fit "
                f"max_input_length={limit} tokens with the query"
            )
            if payload.max_chunks_per_doc is not None:
                warnings.append(
                    "max_chunks_per_doc: each document is scored as one window of max_input_length tokens"
                )
        echoed = payload.documents if return_documents else None
        results = self._results(scored, payload.top_n, echoed)
        body = self._body(request, "1", results, len(payload.documents), scored, warnings)
        return await self._json(
            body, _answer_size(results, [echoed[r["index"]] for r in results] if echoed else [])
        )

    async def cohere_v2(self, payload: CohereV2RerankRequest, request: Request) -> Response:
        limit = payload.document_token_limit
        scored = await self.state.score(
            request, self._jina_cohere_job(payload.query, payload.documents, limit)
        )
        warnings = []
        if scored.truncated:
            warnings.append(
                f"{scored.truncated} of {len(payload.documents)} documents were truncated to "
                f"max_tokens_per_doc={limit} tokens or to fit max_input_length="
                f"{self.settings.max_input_length} tokens with the query"
            )
        documents = payload.documents if payload.return_documents else None
        results = self._results(scored, payload.top_n, documents)  # type: ignore[arg-type]
        body = self._body(request, "2", results, len(payload.documents), scored, warnings)
        echoed = [documents[r["index"]] for r in results] if documents else []
        return await self._json(body, _answer_size(results, echoed))

    def _body(
        self,
        request: Request,
        api_version: str,
        results: list[dict[str, Any]],
        documents: int,
        scored: Scored,
        warnings: list[str],
    ) -> dict[str, Any]:
        return rerank_body(
            request_id_of(request.scope),
            self.settings.model_name,
            api_version,
            results,
            documents,
            scored.tokens,
            scored.truncated,
            warnings,
        )

    async def tei(self, payload: TEIRerankRequest, request: Request) -> Response:
        truncate = self.settings.auto_truncate if payload.truncate is None else payload.truncate
        job = ScoreRequest(
            query=payload.query,
            documents=payload.texts,
            field="texts",
            limit=self.settings.max_client_batch_size,
            limit_name="max_client_batch_size",
            truncate=truncate,
            too_long_hint=_TEI_HINT,
            direction=payload.truncation_direction,
        )
        scored = await self.state.score(request, job)
        scores = scored.logits if payload.raw_scores else _sigmoid(scored.logits)
        results = []
        for index in best_first(scores):
            item: dict[str, Any] = {"index": index, "score": scores[index]}
            if payload.return_text:
                item["text"] = payload.texts[index]
            results.append(item)
        echoed = [payload.texts[r["index"]] for r in results] if payload.return_text else []
        return await self._json(results, _answer_size(results, echoed))
