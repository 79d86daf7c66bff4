"""The FastAPI application: both rerank APIs, health, readiness, info and metrics.

A request holds one of ``max_concurrent_requests`` slots from admission to its answer. Its body
must keep arriving (``request_body``), its JSON is decoded and it is tokenised on the tokenizer
threads in bounded pieces shared fairly with other requests (``tokenizing``), and its pairs are
scored in forwards shared round-robin with other requests (``scheduler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from turborank import __version__
from turborank.reranker import Reranker
from turborank.serving import errors
from turborank.serving.errors import APIError, ClientDisconnectedError, error_response, log_server_error
from turborank.serving.memory import release_free_memory
from turborank.serving.metrics import ServerMetrics
from turborank.serving.parsing import parse_body
from turborank.serving.request_body import CLOSE, read_body
from turborank.serving.request_id import RequestIdMiddleware, request_id_of
from turborank.serving.scheduler import BatchError, BatchScheduler
from turborank.serving.schemas import JinaRerankRequest, TEIRerankRequest
from turborank.serving.settings import ServeSettings
from turborank.serving.tokenizing import tokenize_in_pieces
from turborank.tokenization import EncodedPairs, UncuttableTextError

__all__ = ["APIError", "ServeSettings", "create_app"]
logger = logging.getLogger("turborank.serving")
# A body this large leaves megabytes of freed heap behind (its text, tokens, response): trimmed a
# second later. Smaller requests add up too, so any request schedules a trim, at most every 10 s.
LARGE_BODY_BYTES = 1024 * 1024
TRIM_AFTER_LARGE_S = 1.0
TRIM_INTERVAL_S = 10.0


class ServerState:
    """What the handlers share: model, scheduler, limits, counters. Lives on the event loop."""

    def __init__(self, reranker: Reranker, settings: ServeSettings) -> None:
        low, high = reranker.tokenizer.num_special_tokens + 1, reranker.max_length
        if not low <= settings.max_input_length <= high:
            raise ValueError(
                f"max_input_length {settings.max_input_length} is outside the model's range ({low}..{high})"
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
        self.tokenizer_pool = ThreadPoolExecutor(
            max_workers=settings.tokenizer_threads, thread_name_prefix="turborank-tokenize"
        )
        self.active = 0
        self.draining = False
        self.started = False
        self.warmed = False  # the first (warm-up) forward succeeded
        self._probe_failing = False
        self._trim: asyncio.TimerHandle | None = None

    def release_memory_soon(self, large: bool) -> None:
        """After a request: once its objects are gone (a moment after its answer), give the freed
        memory back to the OS, on a tokenizer thread; one trim pending at a time, the earliest due."""
        loop = asyncio.get_running_loop()
        due = loop.time() + (TRIM_AFTER_LARGE_S if large else TRIM_INTERVAL_S)
        if self._trim is not None:
            if self._trim.when() <= due:
                return
            self._trim.cancel()

        def start() -> None:
            self._trim = None
            with contextlib.suppress(RuntimeError):  # the pool is shut down once the server stops
                loop.run_in_executor(self.tokenizer_pool, release_free_memory)

        self._trim = loop.call_at(due, start)

    async def off_loop(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work (JSON, tokenising) on the tokenizer threads, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_pool, work, *args)

    async def score(
        self, request: Request, query: str, documents: list[str], truncate: bool, direction: str, field: str
    ) -> tuple[list[float], int]:
        """Validated, tokenised off the loop, batched on the model thread: (logits, total tokens).
        ``field`` is the request's name for the documents, for error messages."""
        limits = self.settings
        if not query.strip():
            raise APIError(400, errors.EMPTY, "query is empty")
        if not documents:
            raise APIError(400, errors.EMPTY, f"{field} is empty")
        if len(documents) > limits.max_client_batch_size:
            raise APIError(
                422,
                errors.VALIDATION,
                f"{field}: {len(documents)} items exceed "
                f"max_client_batch_size={limits.max_client_batch_size}",
            )

        async def after_piece(encoded: EncodedPairs, first: int) -> None:
            if encoded.truncated and not truncate:
                index = first + encoded.was_truncated.index(True)
                raise APIError(
                    422,
                    errors.VALIDATION,
                    f"{field}.{index}: the pair is longer than max_input_length={limits.max_input_length} "
                    "tokens; set truncate or start the server with --auto-truncate",
                )
            if await request.is_disconnected():
                raise ClientDisconnectedError

        try:
            encoded = await tokenize_in_pieces(
                self.tokenizer_pool,
                self.reranker.tokenizer,
                query,
                documents,
                limits.max_input_length,
                direction,
                after_piece,
            )
        except UncuttableTextError as exc:
            where = "query" if exc.side == "query" else f"{field}.{exc.index}"
            raise APIError(
                422,
                errors.VALIDATION,
                f"{where}: {exc.chars:,} characters with no word boundary in the first {exc.searched:,} "
                f"where it could be cut to max_input_length={limits.max_input_length} tokens; send a "
                "shorter text",
            ) from None
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
                    raise ClientDisconnectedError
            logits = ticket.future.result()
        except BatchError as exc:
            raise APIError(500, errors.BACKEND, str(exc)) from exc
        finally:
            self.metrics.queued_pairs.set(self.scheduler.queued_pairs)
        return logits, sum(encoded.lengths)

    async def probe(self) -> bool:
        """One real one-pair forward through the scheduler; a failure is logged with its traceback
        (then one line per failure until a probe succeeds again)."""
        encoded = self.reranker.tokenizer.encode_pairs([("ready?", "probe")], warn=False)
        try:
            logits = await asyncio.wait_for(self.scheduler.submit(encoded).future, timeout=30)
            failure: BaseException | None = None
            if not all(math.isfinite(x) for x in logits):
                failure = BatchError("the probe forward produced a non-finite score")
        except (asyncio.TimeoutError, BatchError, RuntimeError) as exc:
            failure = exc
        if failure is not None:
            if self._probe_failing:
                logger.warning("readiness probe still failing: %r", failure)
            else:
                logger.error("readiness probe failed; answering 503 until one succeeds", exc_info=failure)
        self._probe_failing = failure is not None
        return failure is None


class _App(FastAPI):
    def build_middleware_stack(self) -> Any:
        # Outermost, so that even the answer of Starlette's last-resort error handler has the id.
        return RequestIdMiddleware(super().build_middleware_stack())


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

    # No /docs or /redoc: their pages load scripts from a CDN, dead on an offline network.
    app = _App(title="turborank", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.turborank = state

    def fail(request: Request, error: APIError) -> Response:
        state.metrics.errors.labels(str(error.status), error.error_type).inc()
        if error.status >= 500:
            log_server_error(request_id_of(request.scope), request.method, request.url.path, error)
        return error_response(error)

    async def json_response(content: Any) -> Response:
        # Off the loop too: echoing 16 MiB of documents is tens of milliseconds of encoding.
        body = await state.off_loop(
            lambda: json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        )
        return Response(body, media_type="application/json")

    async def handle(
        request: Request,
        endpoint: str,
        schema: type[pydantic.BaseModel],
        work: Callable[[Any, Request], Awaitable[Response]],
    ) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            if state.draining:
                raise APIError(503, errors.UNHEALTHY, "the server is draining", {"Retry-After": "5", **CLOSE})
            if not state.warmed:
                raise APIError(
                    503, errors.UNHEALTHY, "the model is not ready yet", {"Retry-After": "1", **CLOSE}
                )
            if state.active >= settings.max_concurrent_requests:
                raise APIError(
                    429,
                    errors.OVERLOADED,
                    f"more than {settings.max_concurrent_requests} requests in flight",
                    {"Retry-After": "1", **CLOSE},
                )
            state.active += 1
            state.metrics.active.set(state.active)
            large = False
            try:
                body = await read_body(
                    request.receive,
                    request.headers.get("content-length"),
                    settings.max_body_bytes,
                    settings.body_timeout_s,
                    settings.min_body_rate,
                )
                large = len(body) >= LARGE_BODY_BYTES
                payload = await state.off_loop(parse_body, schema, body)
                del body
                response = await work(payload, request)
            finally:
                state.active -= 1
                state.metrics.active.set(state.active)
                state.release_memory_soon(large)
            status = response.status_code
            return response
        except APIError as error:
            status = error.status
            return fail(request, error)
        except ClientDisconnectedError:
            status = 499  # nginx's code for it; nobody receives this response
            return Response(status_code=status)
        except Exception as exc:  # a bug must not take the server down; the log gets the details
            error = APIError(
                500,
                errors.BACKEND,
                f"internal error; the server log has it under request id {request_id_of(request.scope)}",
            )
            error.__cause__ = exc
            return fail(request, error)
        finally:
            state.metrics.requests.labels(endpoint, str(status)).inc()
            state.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

    async def jina_rerank(payload: JinaRerankRequest, request: Request) -> Response:
        texts = payload.texts()
        logits, tokens = await state.score(
            request, payload.query, texts, settings.auto_truncate, "right", "documents"
        )
        scores = torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()
        results = []
        for index in _order(scores)[: payload.top_n]:
            item: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
            if payload.return_documents:
                item["document"] = {"text": texts[index]}
            results.append(item)
        return await json_response(
            {
                "model": payload.model or settings.model_name,
                "results": results,
                "usage": {"total_tokens": tokens},
            }
        )

    async def tei_rerank(payload: TEIRerankRequest, request: Request) -> Response:
        truncate = settings.auto_truncate if payload.truncate is None else payload.truncate
        logits, _ = await state.score(
            request, payload.query, payload.texts, truncate, payload.truncation_direction, "texts"
        )
        scores = logits if payload.raw_scores else torch.sigmoid(torch.tensor(logits)).tolist()
        results = []
        for index in _order(scores):
            item: dict[str, Any] = {"index": index, "score": scores[index]}
            if payload.return_text:
                item["text"] = payload.texts[index]
            results.append(item)
        return await json_response(results)

    @app.post("/v1/rerank")
    async def v1_rerank(request: Request) -> Response:
        return await handle(request, "/v1/rerank", JinaRerankRequest, jina_rerank)

    @app.post("/rerank")
    async def rerank(request: Request) -> Response:
        return await handle(request, "/rerank", TEIRerankRequest, tei_rerank)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.api_route("/ready", methods=["GET", "HEAD"])
    async def ready(request: Request) -> Response:
        last = state.scheduler.last_success
        fresh = last is not None and time.monotonic() - last < settings.ready_max_age_s
        if state.draining or not state.started:
            return fail(request, APIError(503, errors.UNHEALTHY, "not accepting requests"))
        if state.active >= settings.max_concurrent_requests:
            return fail(
                request,
                APIError(
                    503,
                    errors.OVERLOADED,
                    f"no free request slot: {state.active} of {settings.max_concurrent_requests} in use",
                    {"Retry-After": "1"},
                ),
            )
        if not fresh and not await state.probe():
            return fail(request, APIError(503, errors.UNHEALTHY, "a probe forward did not succeed"))
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
                "backends": reranker.model.ops.backends,
                "alibi_scheme": cfg.alibi_scheme,
                "max_input_length": settings.max_input_length,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_client_batch_size": settings.max_client_batch_size,
                "max_concurrent_requests": settings.max_concurrent_requests,
                "auto_truncate": settings.auto_truncate,
                "max_body_bytes": settings.max_body_bytes,
                "body_timeout_s": settings.body_timeout_s,
                "min_body_rate": settings.min_body_rate,
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

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404:
            error = APIError(404, errors.NOT_FOUND, f"no route {path}")
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = APIError(
                405,
                errors.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {path} (allowed: {allowed})",
                exc.headers,
            )
        else:
            error = APIError(exc.status_code, errors.VALIDATION, str(exc.detail), exc.headers)
        return fail(request, error)

    @app.exception_handler(Exception)
    async def last_resort(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback (RequestIdMiddleware adds the id); the client gets our shape.
        return error_response(
            APIError(
                500,
                errors.BACKEND,
                f"internal error; the server log has it under request id {request_id_of(request.scope)}",
            )
        )

    return app
