"""The FastAPI application: both rerank APIs, health, readiness, info and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from turborank import __version__, cpu_bf16_support
from turborank.reranker import Reranker
from turborank.serving.metrics import ServerMetrics
from turborank.serving.scheduler import BatchError, BatchScheduler
from turborank.serving.schemas import JinaRerankRequest, TEIRerankRequest
from turborank.tokenization import EncodedPairs


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Limits of one server; the defaults follow text-embeddings-inference where it has one."""

    model_name: str
    max_batch_tokens: int = 16384
    max_client_batch_size: int = 32
    max_concurrent_requests: int = 512
    max_input_length: int = 8192
    auto_truncate: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    ready_max_age_s: float = 30.0
    drain_timeout_s: float = 60.0


class APIError(Exception):
    def __init__(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.headers = status, error_type, message, headers


class ServerState:
    """What the handlers share: model, scheduler, limits, counters. Lives on the event loop."""

    def __init__(self, reranker: Reranker, settings: ServeSettings) -> None:
        if settings.max_input_length > reranker.max_length:
            raise ValueError(
                f"max_input_length {settings.max_input_length} exceeds the model limit {reranker.max_length}"
            )
        self.reranker = reranker
        self.settings = settings
        self.metrics = ServerMetrics()
        self.scheduler = BatchScheduler(
            lambda encoded: reranker.score_encoded(
                encoded, batch_size=1024, max_batch_tokens=settings.max_batch_tokens
            ),
            settings.max_batch_tokens,
            observe=self.metrics.observe,
        )
        self.tokenizer_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="turborank-tokenize")
        self.active = 0
        self.draining = False
        self.started = False
        self.warmed = False  # the first (warm-up) forward succeeded

    async def score(
        self, request: Request, query: str, documents: list[str], truncate: bool, direction: str
    ) -> tuple[list[float], int]:
        """Validated, tokenised off the loop, batched on the model thread: (logits, total tokens)."""
        limits = self.settings
        if not query.strip():
            raise APIError(400, "empty", "query is empty")
        if not documents:
            raise APIError(400, "empty", "documents is empty")
        if len(documents) > limits.max_client_batch_size:
            raise APIError(
                422,
                "validation",
                f"{len(documents)} documents exceed max_client_batch_size={limits.max_client_batch_size}",
            )
        loop = asyncio.get_running_loop()
        pairs = [(query, doc) for doc in documents]
        encoded: EncodedPairs = await loop.run_in_executor(
            self.tokenizer_pool,
            lambda: self.reranker.tokenizer.encode_pairs(
                pairs, limits.max_input_length, "longest_first", direction, warn=False
            ),
        )
        if encoded.truncated:
            if not truncate:
                first = encoded.was_truncated.index(True)
                raise APIError(
                    422,
                    "validation",
                    f"document {first}: the pair is longer than max_input_length="
                    f"{limits.max_input_length} tokens ({encoded.truncated} of {len(pairs)} are); "
                    "set truncate or start the server with --auto-truncate",
                )
            self.metrics.truncated.inc(encoded.truncated)
        ticket = self.scheduler.submit(encoded)
        self.metrics.queued_pairs.set(self.scheduler.queued_pairs)
        try:
            while True:
                done, _ = await asyncio.wait({ticket.future}, timeout=0.05)
                if done:
                    break
                if await request.is_disconnected():
                    self.metrics.dropped.inc(self.scheduler.cancel(ticket))
                    raise APIError(499, "cancelled", "client disconnected")
            logits = ticket.future.result()
        except BatchError as exc:
            raise APIError(500, "backend", str(exc)) from None
        finally:
            self.metrics.queued_pairs.set(self.scheduler.queued_pairs)
        return logits, sum(encoded.lengths)

    async def probe(self) -> bool:
        """One real one-pair forward through the scheduler."""
        encoded = self.reranker.tokenizer.encode_pairs([("ready?", "probe")], warn=False)
        try:
            logits = await asyncio.wait_for(self.scheduler.submit(encoded).future, timeout=30)
        except (asyncio.TimeoutError, BatchError, RuntimeError):
            return False
        return all(math.isfinite(x) for x in logits)


def _error_response(state: ServerState | None, endpoint: str, error: APIError) -> JSONResponse:
    if state is not None:
        state.metrics.errors.labels(str(error.status), error.error_type).inc()
    return JSONResponse(
        {"error": error.message, "error_type": error.error_type},
        status_code=error.status,
        headers=error.headers,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "payload_too_large", f"request body of {declared} bytes exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(model: type[pydantic.BaseModel], body: bytes) -> Any:
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, "validation", f"malformed JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise APIError(400, "validation", "the request body must be a JSON object")
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise APIError(422, "validation", problems) from None


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def create_app(reranker: Reranker, settings: ServeSettings) -> FastAPI:
    state = ServerState(reranker, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.scheduler.start()
        state.started = True

        async def warm_up() -> None:
            state.warmed = await state.probe()

        warmup = asyncio.create_task(warm_up())
        yield
        state.draining = True
        warmup.cancel()
        await asyncio.get_running_loop().run_in_executor(
            None, state.scheduler.drain, settings.drain_timeout_s
        )
        state.scheduler.stop()
        state.tokenizer_pool.shutdown(wait=False)

    app = FastAPI(title="turborank", version=__version__, lifespan=lifespan)
    app.state.turborank = state

    async def handle(request: Request, endpoint: str, work) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            if state.draining:
                raise APIError(503, "unhealthy", "the server is draining", {"Retry-After": "5"})
            if not state.warmed:
                raise APIError(503, "unhealthy", "the model is not ready yet", {"Retry-After": "1"})
            if state.active >= settings.max_concurrent_requests:
                raise APIError(
                    429,
                    "overloaded",
                    f"more than {settings.max_concurrent_requests} requests in flight",
                    {"Retry-After": "1"},
                )
            state.active += 1
            state.metrics.active.set(state.active)
            try:
                body = await _read_body(request, settings.max_body_bytes)
                response = await work(body, request)
            finally:
                state.active -= 1
                state.metrics.active.set(state.active)
            status = response.status_code
            return response
        except APIError as error:
            status = error.status
            return _error_response(state, endpoint, error)
        except Exception as exc:  # a bug must not take the server down; the client gets the reason
            return _error_response(state, endpoint, APIError(500, "backend", f"internal error: {exc!r}"))
        finally:
            state.metrics.requests.labels(endpoint, str(status)).inc()
            state.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

    async def jina_rerank(body: bytes, request: Request) -> Response:
        payload: JinaRerankRequest = _parse(JinaRerankRequest, body)
        texts = payload.texts()
        logits, tokens = await state.score(request, payload.query, texts, settings.auto_truncate, "right")
        scores = torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()
        results = []
        for index in _order(scores)[: payload.top_n]:
            item: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
            if payload.return_documents:
                item["document"] = {"text": texts[index]}
            results.append(item)
        return JSONResponse(
            {
                "model": payload.model or settings.model_name,
                "results": results,
                "usage": {"total_tokens": tokens},
            }
        )

    async def tei_rerank(body: bytes, request: Request) -> Response:
        payload: TEIRerankRequest = _parse(TEIRerankRequest, body)
        truncate = settings.auto_truncate if payload.truncate is None else payload.truncate
        logits, _ = await state.score(
            request, payload.query, payload.texts, truncate, payload.truncation_direction
        )
        scores = logits if payload.raw_scores else torch.sigmoid(torch.tensor(logits)).tolist()
        results = []
        for index in _order(scores):
            item: dict[str, Any] = {"index": index, "score": scores[index]}
            if payload.return_text:
                item["text"] = payload.texts[index]
            results.append(item)
        return JSONResponse(results)

    @app.post("/v1/rerank")
    async def v1_rerank(request: Request) -> Response:
        return await handle(request, "/v1/rerank", jina_rerank)

    @app.post("/rerank")
    async def rerank(request: Request) -> Response:
        return await handle(request, "/rerank", tei_rerank)

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        last = state.scheduler.last_success
        fresh = last is not None and time.monotonic() - last < settings.ready_max_age_s
        if state.draining or not state.started:
            return _error_response(state, "/ready", APIError(503, "unhealthy", "not accepting requests"))
        if not fresh and not await state.probe():
            return _error_response(
                state, "/ready", APIError(503, "unhealthy", "a probe forward did not succeed")
            )
        state.warmed = True
        return JSONResponse({"status": "ready"})

    @app.get("/info")
    async def info() -> Response:
        cfg = reranker.config
        return JSONResponse(
            {
                "model": settings.model_name,
                "version": __version__,
                "device": str(reranker.device),
                "dtype": str(reranker.dtype).removeprefix("torch."),
                "cpu_bf16": cpu_bf16_support().describe(),
                "backends": reranker.model.ops.backends,
                "alibi_scheme": cfg.alibi_scheme,
                "max_input_length": settings.max_input_length,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_client_batch_size": settings.max_client_batch_size,
                "max_concurrent_requests": settings.max_concurrent_requests,
                "auto_truncate": settings.auto_truncate,
                "max_body_bytes": settings.max_body_bytes,
                "cuda_graphs": None
                if reranker.cuda_graphs is None
                else {
                    "max_pairs": reranker.cuda_graphs.max_pairs,
                    "max_tokens": reranker.cuda_graphs.max_tokens,
                    "captured_buckets": reranker.cuda_graphs.captured,
                    "graphed_batches": reranker.cuda_graphs.batches,
                },
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.queued_pairs.set(state.scheduler.queued_pairs)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error_response(
            state, request.url.path, APIError(404, "not_found", f"no route {request.url.path}")
        )

    return app
