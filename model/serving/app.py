"""The FastAPI application: the rerank APIs, health, readiness, info, metrics and API docs.

A request holds one of ``max_concurrent_requests`` slots from admission to its answer. Its body
must keep arriving (``request_body``), its JSON is decoded and it is tokenised on the tokenizer
threads in bounded pieces shared fairly with other requests (``tokenizing``), and its pairs are
scored in forwards shared round-robin with other requests (``scheduler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from turborank import __version__
from turborank.reranker import Reranker
from turborank.serving import errors, openapi
from turborank.serving.access_log import RequestLogMiddleware, logged_path
from turborank.serving.auth import authorized, unauthorized
from turborank.serving.errors import (
    SHAPE_KEY,
    APIError,
    ClientDisconnectedError,
    error_response,
    log_server_error,
    request_shape,
    status_for,
    tei_error_type,
)
from turborank.serving.info import info_body, startup_line
from turborank.serving.model_routes import add_model_routes
from turborank.serving.parsing import describe, read_as
from turborank.serving.request_body import CLOSE, read_body, watch_disconnect
from turborank.serving.request_id import request_id_of
from turborank.serving.rerank_routes import Dialect, RerankRoutes
from turborank.serving.responses import (
    DocumentsRerankResponse,
    Error,
    InfoResponse,
    JinaCohereError,
    OpenAIStyleError,
    RerankResponse,
    ScoreResponse,
    TEIError,
    TEIRank,
)
from turborank.serving.schemas import CohereV2RerankRequest, JinaRerankRequest, TEIRerankRequest
from turborank.serving.settings import ServeSettings
from turborank.serving.state import LARGE_BODY_BYTES, ServerState
from turborank.serving.vllm_infinity import DocumentsRerankRequest, ScoreTextsRequest

__all__ = ["APIError", "ServeSettings", "ServerState", "create_app"]
logger = logging.getLogger("turborank.serving")

_JINA_COHERE_ERRORS = {code: {"model": JinaCohereError} for code in (400, 401, 408, 413, 422, 429, 500, 503)}
_TEI_ERRORS = {code: {"model": TEIError} for code in (400, 401, 408, 413, 422, 424, 429, 503)}
_VLLM_ERRORS = {code: {"model": OpenAIStyleError} for code in (400, 401, 408, 413, 429, 500, 503)}


class _FrontDoor:
    """Every HTTP request passes here first. While the server drains, each one but ``/metrics``
    (scrapes go on) is answered 503 with ``Retry-After`` and ``Connection: close``, probes
    included, so a load balancer stops sending work. The rerank POSTs are answered here too,
    ahead of FastAPI: ``handle`` reads, parses and answers its own requests and turns every error
    into a response, so the layers FastAPI puts around a route (its error, telemetry, body-limit,
    exception and exit-stack middlewares, routing, dependency solving) only cost time: 0.2-0.3 ms
    of a one-pair request in profiles on 2 Zen 4 cores. The routes stay declared on the app for
    the OpenAPI document; every other request, and every other method on these paths, goes
    through FastAPI as before."""

    def __init__(
        self,
        routes: dict[str, Callable[[Request], Awaitable[Response]]],
        refuse: Callable[[Request], Response | None],
        app: Any,
    ) -> None:
        self.routes, self.refuse, self.app = routes, refuse, app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        response = self.refuse(request)
        if response is None:
            route = self.routes.get(scope["path"].rstrip("/") or "/") if scope["method"] == "POST" else None
            if route is None:
                await self.app(scope, receive, send)
                return
            response = await route(request)
        await response(scope, receive, send)


class _App(FastAPI):
    """FastAPI behind the request log and the front door. Both sit in front of ``FastAPI.__call__``
    itself, which costs a rerank POST (2 Zen 4 cores) its OpenTelemetry check, Starlette's call
    and the middleware stack's entry for nothing those requests use."""

    rerank_routes: dict[str, Callable[[Request], Awaitable[Response]]]
    refuse: Callable[[Request], Response | None]
    _front: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan, websockets: FastAPI's own
            await super().__call__(scope, receive, send)
            return
        if self._front is None:
            # The log outermost, so that even the answer of Starlette's last-resort error handler
            # has the id and its access-log line.
            self._front = RequestLogMiddleware(_FrontDoor(self.rerank_routes, self.refuse, super().__call__))
        scope["app"] = self  # as Starlette sets it, for what reads request.app
        await self._front(scope, receive, send)


def create_app(reranker: Reranker, settings: ServeSettings, *, warm_before_serving: bool = False) -> FastAPI:
    """The app. ``warm_before_serving``: run the warm-up forward before the server accepts, for a
    front end sharing its listening socket with others (one still warming up would otherwise take
    connections that a ready one could answer, and turn them away with 503)."""
    state = ServerState(reranker, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.scheduler.start()
        state.started = True
        message, fields = startup_line(state)
        logger.info("%s", message, extra={"fields": fields})

        async def warm_up() -> None:
            state.warmed = await state.probe()

        warmup = None
        if warm_before_serving:
            await warm_up()
        else:
            warmup = asyncio.create_task(warm_up())
        yield
        state.draining = True
        if warmup is not None:
            warmup.cancel()
        await asyncio.get_running_loop().run_in_executor(
            None, state.scheduler.drain, settings.drain_timeout_s
        )
        state.scheduler.stop()
        state.tokenizer_pool.shutdown()

    # FastAPI's own /docs loads its scripts from a CDN: ours is served below.
    # No redirect for a trailing slash: an empty 307 that httpx-based clients (Haystack's, among
    # them) do not follow reads as a JSON error. A rerank POST is served with one; elsewhere a 404
    # names the route without it.
    app = _App(
        title="turborank",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.turborank = state
    routes = RerankRoutes(state)

    def fail(request: Request, error: APIError) -> Response:
        shape = request_shape(request.scope)
        status = status_for(error, shape)
        state.metrics.errors.labels(str(status), error.error_type).inc()
        if status >= 500 or status == errors.TEI_BACKEND_STATUS:
            where = logged_path(request.scope)
            log_server_error(request_id_of(request.scope), request.method, where, error, status)
        return error_response(error, shape)

    async def handle(
        request: Request, endpoint: str, choose: Callable[[dict[str, Any]], Dialect]
    ) -> Response:
        start = time.perf_counter()
        status = 500
        failure: str | None = "Backend"
        try:
            if settings.api_key is not None and not authorized(request.headers, settings.api_key):
                raise unauthorized()
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):  # before the body is read, which is not worth reading
                message = f"Content-Encoding {encoding!r} is not supported; send the body uncompressed"
                raise APIError(415, errors.VALIDATION, message, CLOSE)
            if state.draining:
                raise APIError(503, errors.UNHEALTHY, "the server is draining", {"Retry-After": "5", **CLOSE})
            if not state.warmed:
                raise APIError(
                    503, errors.UNHEALTHY, "the model is not ready yet", {"Retry-After": "1", **CLOSE}
                )
            client = request.scope.get("client")
            slot = state.admission.admit(client[0] if client else "-")
            state.metrics.active.set(state.admission.active)
            large = False
            watch = None
            try:
                length = request.headers.get("content-length")
                slot.expected = int(length) if length is not None and length.isdigit() else None
                try:
                    body = await read_body(
                        request.receive,
                        length,
                        settings.max_body_bytes,
                        settings.body_timeout_s,
                        settings.min_body_rate,
                        slot,
                    )
                except asyncio.CancelledError:
                    if not slot.taken:
                        raise
                    task = asyncio.current_task()
                    if hasattr(task, "uncancel"):  # Python 3.11+: the cancel is handled here
                        task.uncancel()
                    raise state.admission.taken_error(slot) from None
                slot.uploading = False
                watch = watch_disconnect(request.scope, request.receive)
                large = len(body) >= LARGE_BODY_BYTES
                # Decoded and validated in one step, on a tokenizer thread for a large body (one
                # hop there and back, not two).
                dialect, payload, invalid = await state.small_or_off_loop(len(body), read_as, body, choose)
                # The body's keys say which API's dialect it is where two share a path; its
                # errors from here on take that API's shape.
                request.scope[SHAPE_KEY] = dialect.shape
                if invalid is not None:
                    raise invalid
                del body
                response = await dialect.work(payload, request)
            finally:
                if watch is not None:
                    watch.close()
                state.admission.release(slot)
                state.metrics.active.set(state.admission.active)
                state.release_memory_soon(large)
            status = response.status_code
            failure = None
            return response
        except APIError as error:
            status = status_for(error, request_shape(request.scope))
            failure = tei_error_type(error)
            return fail(request, error)
        except ClientDisconnectedError:
            status = 499  # nginx's code for it; nobody receives this response
            failure = "Cancelled"
            return Response(status_code=status)
        except Exception as exc:  # a bug must not take the server down; the log gets the details
            error = APIError(
                500,
                errors.BACKEND,
                f"internal error; the server log has it under request id {request_id_of(request.scope)}",
            )
            error.__cause__ = exc
            status = status_for(error, request_shape(request.scope))
            return fail(request, error)
        finally:
            seconds = time.perf_counter() - start
            state.metrics.answered(endpoint, status, seconds, failure)

    def rerank_route(
        operation_id: str,
        path: str,
        summary: str,
        choose: Callable[[dict[str, Any]], Dialect],
        request_models: list[type[pydantic.BaseModel]],
        response_model: Any,
        error_responses: dict[int, dict[str, Any]],
    ) -> None:
        """A scoring route: answered at the front door (``_FrontDoor``), declared on the app for the
        OpenAPI document; ``choose`` tells the body's dialect from its keys."""

        async def endpoint(request: Request) -> Response:
            return await handle(request, path, choose)

        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            operation_id=operation_id,
            summary=summary,
            response_model=response_model,
            responses=error_responses,
            openapi_extra=openapi.request_body(request_models),
        )
        app.rerank_routes[path] = endpoint

    app.rerank_routes = {}
    rerank_route(
        "v1_rerank",
        "/v1/rerank",
        "Rerank (Jina, Cohere v1; vLLM's and infinity's clients too)",
        routes.v1_dialect,
        [JinaRerankRequest],
        RerankResponse,
        _JINA_COHERE_ERRORS,
    )
    rerank_route(
        "v2_rerank",
        "/v2/rerank",
        "Rerank (Cohere v2; vLLM's clients too)",
        routes.v2_dialect,
        [CohereV2RerankRequest],
        RerankResponse,
        _JINA_COHERE_ERRORS,
    )
    shared = [TEIRerankRequest, DocumentsRerankRequest]
    either = list[TEIRank] | DocumentsRerankResponse
    summary = "Rerank (text-embeddings-inference with texts; vLLM or infinity with documents)"
    rerank_route("rerank", "/rerank", summary, routes.shared_dialect, shared, either, _TEI_ERRORS)
    summary = "Rerank (text-embeddings-inference's POST / alias of /rerank)"
    rerank_route("root_rerank", "/", summary, routes.shared_dialect, shared, either, _TEI_ERRORS)
    for operation_id, path in (("score", "/score"), ("v1_score", "/v1/score")):
        summary = "Score text_1 against text_2 (vLLM)"
        rerank_route(
            operation_id,
            path,
            summary,
            routes.score_dialect,
            [ScoreTextsRequest],
            ScoreResponse,
            _VLLM_ERRORS,
        )

    def refuse(request: Request) -> Response | None:
        if not state.draining or request.url.path == "/metrics":
            return None
        if request.method == "POST" and request.url.path in app.rerank_routes:
            # Counted as the scoring routes count their answers (a TEI dashboard shows the drain).
            state.metrics.answered(request.url.path, 503, 0.0, "Unhealthy")
        return fail(
            request, APIError(503, errors.UNHEALTHY, "the server is draining", {"Retry-After": "5", **CLOSE})
        )

    app.refuse = refuse

    def get_and_head(
        path: str, endpoint: Callable[..., Any], summary: str, operation_id: str, **options: Any
    ) -> None:
        # One route per method: a GET+HEAD route gives both operations the same OpenAPI id.
        app.add_api_route(
            path, endpoint, methods=["GET"], summary=summary, operation_id=operation_id, **options
        )
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    get_and_head("/health", health, "The process is up", "health")
    get_and_head("/", health, "The process is up (TEI's health route)", "root_health")

    async def ready(request: Request) -> Response:
        last = state.scheduler.last_success
        fresh = last is not None and time.monotonic() - last < settings.ready_max_age_s
        if state.draining or not state.started:
            return fail(request, APIError(503, errors.UNHEALTHY, "not accepting requests"))
        if state.admission.active >= settings.max_concurrent_requests:
            return fail(
                request,
                APIError(
                    503,
                    errors.OVERLOADED,
                    f"no free request slot: {state.admission.active} of {settings.max_concurrent_requests} "
                    "in use",
                    {"Retry-After": "1"},
                ),
            )
        if not fresh and not await state.probe():
            return fail(request, APIError(503, errors.UNHEALTHY, "a probe forward did not succeed"))
        state.warmed = True
        return JSONResponse({"status": "ready"})

    get_and_head("/ready", ready, "A forward succeeded lately", "ready", responses={503: {"model": Error}})

    @app.get(
        "/info",
        summary="Model, limits and versions (ours and TEI's keys)",
        operation_id="get_model_info",  # TEI's, so that generated clients name it as TEI's do
        response_model=InfoResponse,
        responses={401: {"model": Error}},
    )
    async def info(request: Request) -> Response:
        if settings.api_key is not None and not authorized(request.headers, settings.api_key):
            return fail(request, unauthorized())
        return JSONResponse(info_body(state))

    add_model_routes(app, state, fail)

    @app.get(
        "/metrics", summary="Prometheus metrics (ours, and TEI's under its names)", operation_id="metrics"
    )
    async def metrics() -> Response:
        return Response(await state.metrics_exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/api-doc/openapi.json", include_in_schema=False)
    async def tei_openapi() -> Response:
        # Where text-embeddings-inference serves its spec: TEI tooling finds ours there too.
        return JSONResponse(app.openapi())

    @app.get(openapi.DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> Response:
        if not openapi.docs_assets_available():
            return fail(
                request,
                APIError(
                    404,
                    errors.NOT_FOUND,
                    "the API docs page needs the fastapi-offline package: "
                    "pip install 'turborank[serve]'; /openapi.json has the same content",
                ),
            )
        return openapi.docs_page(app.title)

    @app.get(openapi.DOCS_URL + "/{name}", include_in_schema=False)
    async def docs_asset(request: Request, name: str) -> Response:
        asset = openapi.docs_asset(name)
        if asset is None:
            return fail(request, APIError(404, errors.NOT_FOUND, f"no route {request.url.path}"))
        return asset

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404:
            bare = path.rstrip("/")
            known = bare != path and any(getattr(r, "path", None) == bare for r in app.routes)
            hint = f" (the route is {bare}, without the trailing slash)" if known else ""
            error = APIError(404, errors.NOT_FOUND, f"no route {path}{hint}")
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # The rerank routes parse their own bodies; this keeps our error shape should FastAPI ever
        # validate something itself (a path or query parameter), instead of its {"detail": [...]}.
        return fail(request, APIError(422, errors.VALIDATION, describe(exc)))

    @app.exception_handler(Exception)
    async def last_resort(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback (RequestLogMiddleware adds the id); the client gets our shape.
        error = APIError(
            500,
            errors.BACKEND,
            f"internal error; the server log has it under request id {request_id_of(request.scope)}",
        )
        return error_response(error, request_shape(request.scope))

    openapi.install(
        app,
        [
            JinaRerankRequest,
            CohereV2RerankRequest,
            TEIRerankRequest,
            DocumentsRerankRequest,
            ScoreTextsRequest,
        ],
        bearer=settings.api_key is not None,
    )
    return app
