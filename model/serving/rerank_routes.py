"""The rerank APIs on one engine: what each takes, what each answers.

- ``/v1/rerank``: Jina's API, which Cohere's v1 shares. ``return_documents`` defaults to true as
  Jina documents it, and to false as Cohere documents it for a request from Cohere's SDK (its
  ``X-Fern-SDK-Name`` header) or one using a Cohere-only field (``rank_fields``,
  ``max_chunks_per_doc``).
- ``/v2/rerank``: Cohere's v2 API (each document cut to ``max_tokens_per_doc`` tokens first).
- ``/rerank`` and ``POST /``: text-embeddings-inference's API, or vLLM's and infinity's when the
  body has ``documents`` (see ``vllm_infinity``); ``/score`` and ``/v1/score``: vLLM's.

vLLM's clients also send their options (``truncate_prompt_tokens``, ``use_activation``, ``top_n: 0``)
to ``/v1/rerank`` and ``/v2/rerank``, infinity's its ``raw_scores`` to ``/v1/rerank``: each is
honoured there.

Long documents are truncated on the Jina/Cohere routes, as the hosted APIs do (unless the server
runs with ``strict_input_length``), and refused on TEI's unless the request or ``--auto-truncate``
says to truncate, as TEI does.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import torch
from fastapi.responses import Response
from starlette.datastructures import Headers
from starlette.requests import Request

from turborank.ranking import best_first
from turborank.serving import errors
from turborank.serving.errors import APIError, Shape, request_shape
from turborank.serving.request_id import request_id_of
from turborank.serving.responses import rerank_body
from turborank.serving.schemas import (
    CohereV2RerankRequest,
    JinaRerankRequest,
    TEIRerankRequest,
    VLLMScoringOptions,
    is_infinity_body,
    is_vllm_body,
)
from turborank.serving.state import Scored, ScoreRequest, ServerState
from turborank.serving.vllm_infinity import (
    DocumentsRerankRequest,
    ScoreTextsRequest,
    documents_dialect_is_infinity,
    documents_rerank_body,
    score_body,
)

_STRICT_HINT = "this server refuses documents that do not fit (--strict-input-length); send a shorter one"
_TEI_HINT = "set truncate or start the server with --auto-truncate"
_VLLM_HINT = "set truncate_prompt_tokens (-1: max_input_length) to cut it"


def from_cohere_sdk(headers: Headers) -> bool:
    """Cohere's SDKs: Python's sends ``X-Fern-SDK-Name: cohere`` and ``User-Agent: cohere/...``,
    TypeScript's (npm ``cohere-ai``) ``cohere-ai`` and ``cohere-ai/...``."""
    sdk = headers.get("x-fern-sdk-name", "").lower()
    agent = headers.get("user-agent", "").lower()
    return sdk in ("cohere", "cohere-ai") or agent.startswith(("cohere/", "cohere-ai/"))


def _sigmoid(logits: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()


def _scores(scored: Scored, sigmoid: bool) -> list[float]:
    return _sigmoid(scored.logits) if sigmoid else scored.logits


# What one result costs in the JSON answer besides any document it echoes (index, score, keys).
_RESULT_BYTES = 64
# An answer of at most this many bytes is encoded on the event loop: orjson writes 660 KB of echoed
# documents in 66 us (2 Zen 4 cores), so the loop is held for about 50 us at most; a larger one
# goes to the tokenizer threads.
ANSWER_INLINE_BYTES = 512 * 1024


def encode_answer(content: Any) -> bytes:
    """``content`` as compact UTF-8 JSON. orjson writes an answer echoing 50 documents (67 KB) in
    9 us where the standard library takes 280. It refuses integers beyond 64 bits, which a client's
    own document object may hold: such an answer is written by the standard library, which keeps
    them. (Neither meets NaN or a lone surrogate: scores are finite by the scheduler's check, and
    document objects holding either are refused when the request is read.)"""
    try:
        return orjson.dumps(content)
    except orjson.JSONEncodeError:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _answer_size(results: list[dict[str, Any]], echoed: list[str | dict[str, Any]]) -> int:
    """About how large the JSON answer is, to decide where it is encoded: a document object (any
    fields a client sent) counts as large without being measured."""
    texts = sum(len(d) if isinstance(d, str) else 1 << 30 for d in echoed)
    return _RESULT_BYTES * len(results) + texts


@dataclasses.dataclass(frozen=True)
class Dialect:
    """How a body is read (``schema``), answered (``work``) and its errors shaped (``shape``)."""

    schema: type[Any]
    work: Callable[[Any, Request], Awaitable[Response]]
    shape: Shape


class RerankRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.settings = state.settings

    # Each route's dialects, told apart by the body's keys.

    def v1_dialect(self, raw: dict[str, Any]) -> Dialect:
        shape = Shape.JINA_COHERE
        if is_infinity_body(raw):
            shape = Shape.INFINITY
        elif is_vllm_body(raw):
            shape = Shape.VLLM
        return Dialect(JinaRerankRequest, self.jina_cohere_v1, shape)

    def v2_dialect(self, raw: dict[str, Any]) -> Dialect:
        shape = Shape.VLLM if is_vllm_body(raw) else Shape.JINA_COHERE
        return Dialect(CohereV2RerankRequest, self.cohere_v2, shape)

    def shared_dialect(self, raw: dict[str, Any]) -> Dialect:
        """/rerank and POST /: TEI's ``texts``, or vLLM's and infinity's ``documents``."""
        if "documents" not in raw:
            return Dialect(TEIRerankRequest, self.tei, Shape.TEI)
        if "texts" in raw:
            raise APIError(
                422,
                errors.VALIDATION,
                "texts and documents: send texts (text-embeddings-inference) or documents "
                "(vLLM, infinity), not both",
            )
        shape = Shape.INFINITY if documents_dialect_is_infinity(raw) else Shape.VLLM
        return Dialect(DocumentsRerankRequest, self.documents_rerank, shape)

    def score_dialect(self, raw: dict[str, Any]) -> Dialect:
        return Dialect(ScoreTextsRequest, self.score, Shape.VLLM)

    async def _json(self, content: Any, size: int) -> Response:
        # Off the loop unless small: echoing 16 MiB of documents is milliseconds of encoding.
        if size <= ANSWER_INLINE_BYTES:
            body = encode_answer(content)
        else:
            body = await self.state.off_loop(encode_answer, content)
        return Response(body, media_type="application/json")

    def _truncated(
        self, scored: Scored, documents: int, job: ScoreRequest, document_limit: int | None = None
    ) -> list[str]:
        """The answer's warning line when documents were cut (none when none was)."""
        if not scored.truncated:
            return []
        cut = "" if document_limit is None else f"max_tokens_per_doc={document_limit} tokens or to "
        return [
            f"{scored.truncated} of {documents} documents were truncated to {cut}fit "
            f"{self._pair_limit(job)} tokens with the query"
        ]

    def _pair_limit(self, job: ScoreRequest) -> str:
        """The pair limit a request's pairs were cut to, named by the setting that set it."""
        if job.max_length is not None:
            return f"truncate_prompt_tokens={job.max_length}"
        return f"max_input_length={self.settings.max_input_length}"

    def _pair_length(self, options: VLLMScoringOptions) -> int | None:
        """vLLM's truncate_prompt_tokens as a pair length (None: not set); -1 is max_input_length.
        vLLM refuses a length over the model's; so does this server, over max_input_length."""
        wanted = options.truncate_prompt_tokens
        if wanted is None:
            return None
        limit = self.settings.max_input_length
        if wanted == -1:
            return limit
        low = self.state.reranker.num_special_tokens + 1
        if not low <= wanted <= limit:
            raise APIError(
                422,
                errors.VALIDATION,
                f"truncate_prompt_tokens: {wanted} is outside {low}..{limit} (max_input_length), or -1",
            )
        return wanted

    def _job(
        self,
        query: str | list[str],
        documents: list[str],
        options: VLLMScoringOptions,
        *,
        truncate: bool,
        too_long_hint: str,
        max_document_tokens: int | None = None,
        field: str = "documents",
        query_field: str = "query",
    ) -> ScoreRequest:
        """A request of ``max_documents`` documents at most; a pair is cut when ``truncate`` says
        so or the request sets vLLM's truncate_prompt_tokens."""
        length = self._pair_length(options)
        return ScoreRequest(
            query=query,
            documents=documents,
            field=field,
            limit=self.settings.max_documents,
            limit_name="max_documents",
            truncate=truncate or length is not None,
            too_long_hint=too_long_hint,
            max_document_tokens=max_document_tokens,
            max_length=length,
            query_field=query_field,
        )

    def _jina_cohere_job(
        self,
        query: str,
        texts: list[str],
        options: VLLMScoringOptions,
        max_document_tokens: int | None = None,
    ) -> ScoreRequest:
        truncate = not self.settings.strict_input_length
        return self._job(
            query,
            texts,
            options,
            truncate=truncate,
            too_long_hint=_STRICT_HINT,
            max_document_tokens=max_document_tokens,
        )

    @staticmethod
    def _results(
        scores: list[float],
        top_n: int | None,
        documents: list[str | dict[str, Any]] | None,
        as_text: bool = False,
    ) -> list[dict[str, Any]]:
        """Best first, ``top_n`` of them (0 or None: all); with ``documents``, each result's
        document: ``{"text": ...}`` for a string, an object as sent, or the string with ``as_text``
        (infinity's form)."""
        results = []
        for index in best_first(scores)[: top_n or None]:
            item: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
            if documents is not None:
                document = documents[index]
                item["document"] = (
                    {"text": document} if isinstance(document, str) and not as_text else document
                )
            results.append(item)
        return results

    async def jina_cohere_v1(self, payload: JinaRerankRequest, request: Request) -> Response:
        infinity = request_shape(request.scope) is Shape.INFINITY
        cohere = payload.cohere_only_fields() or from_cohere_sdk(request.headers) or infinity
        return_documents = payload.return_documents if payload.return_documents is not None else not cohere
        job = self._jina_cohere_job(payload.query, payload.texts(), payload)
        scored = await self.state.score(request, job)
        warnings = self._truncated(scored, len(payload.documents), job)
        if scored.truncated and payload.max_chunks_per_doc is not None:
            warnings.append(
                "max_chunks_per_doc: each document is scored as one window of max_input_length tokens"
            )
        echoed = payload.documents if return_documents else None
        scores = _scores(scored, payload.sigmoid_wanted())
        results = self._results(scores, payload.top_n, echoed, as_text=infinity)
        body = self._body(request, "1", results, len(payload.documents), scored, warnings)
        return await self._json(
            body, _answer_size(results, [echoed[r["index"]] for r in results] if echoed else [])
        )

    async def cohere_v2(self, payload: CohereV2RerankRequest, request: Request) -> Response:
        limit = payload.document_token_limit
        job = self._jina_cohere_job(payload.query, payload.documents, payload, limit)
        scored = await self.state.score(request, job)
        warnings = self._truncated(scored, len(payload.documents), job, limit)
        return_documents = payload.return_documents
        if return_documents is None:
            return_documents = not from_cohere_sdk(request.headers)
        documents = payload.documents if return_documents else None
        scores = _scores(scored, payload.sigmoid_wanted())
        results = self._results(scores, payload.top_n, documents)  # type: ignore[arg-type]
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
            int(time.time()),
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

    async def documents_rerank(self, payload: DocumentsRerankRequest, request: Request) -> Response:
        """/rerank with ``documents``: vLLM's rerank, or infinity's (which cuts long pairs)."""
        infinity = request_shape(request.scope) is Shape.INFINITY
        job = self._job(
            payload.query, payload.documents, payload, truncate=infinity, too_long_hint=_VLLM_HINT
        )
        scored = await self.state.score(request, job)
        echoed: list[str] | None = payload.documents
        if infinity and not payload.return_documents:
            echoed = None
        scores = _scores(scored, payload.sigmoid_wanted())
        results = self._results(scores, payload.top_n, echoed, as_text=infinity)  # type: ignore[arg-type]
        body = documents_rerank_body(
            request_id_of(request.scope), self.settings.model_name, int(time.time()), results, scored.tokens
        )
        shown = [payload.documents[r["index"]] for r in results] if echoed is not None else []
        return await self._json(body, _answer_size(results, shown))  # type: ignore[arg-type]

    async def score(self, payload: ScoreTextsRequest, request: Request) -> Response:
        """vLLM's /score: the pairs' scores in request order."""
        queries, documents = payload.pairs()
        if not documents:
            raise APIError(400, errors.EMPTY, "text_2 is empty")
        one_query = len(set(queries)) == 1
        job = self._job(
            queries[0] if one_query else queries,
            documents,
            payload,
            truncate=False,
            too_long_hint=_VLLM_HINT,
            field="text_2",
            query_field="text_1",
        )
        scored = await self.state.score(request, job)
        body = score_body(
            request_id_of(request.scope),
            self.settings.model_name,
            int(time.time()),
            _scores(scored, payload.sigmoid_wanted()),
            scored.tokens,
        )
        return await self._json(body, _RESULT_BYTES * len(documents))
