"""What the handlers share: the model, the scheduler, the limits, the counters; and scoring one
request's documents (validated, tokenised off the event loop, batched on the model thread)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from turborank.reranker import Reranker
from turborank.serving import errors
from turborank.serving.access_log import note
from turborank.serving.admission import Admission
from turborank.serving.errors import APIError, ClientDisconnectedError
from turborank.serving.memory import release_free_memory
from turborank.serving.metrics import MetricsSnapshot, ServerMetrics, render_sum
from turborank.serving.request_body import DisconnectWatch, watch_of
from turborank.serving.scheduler import BatchError, BatchScheduler, Ticket
from turborank.serving.settings import ServeSettings
from turborank.serving.tokenizing import TokenizerPool, tokenize_in_pieces
from turborank.text_clipping import UncuttableTextError
from turborank.tokenization import EncodedPairs

logger = logging.getLogger("turborank.serving")
# A body this large leaves megabytes of freed heap behind (its text, tokens, response): trimmed a
# second later. Smaller requests add up too, so any request schedules a trim, at most every 10 s.
LARGE_BODY_BYTES = 1024 * 1024
TRIM_AFTER_LARGE_S = 1.0
TRIM_INTERVAL_S = 10.0
# A body of at most this many bytes is decoded and validated on the event loop (answers: see
# rerank_routes.ANSWER_INLINE_BYTES): decoding and validating 3.6 KB took 10 us, a round trip
# through the tokenizer threads 110 us (2 Zen 4 cores), so up to 16 KiB the loop is held for under
# 50 us and the request saves the trip.
INLINE_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """One request's documents and how its API wants them scored.

    ``field`` is the request's name for the documents (for error messages); ``limit`` the most
    documents the route takes and ``limit_name`` the setting that says so; ``truncate`` whether a
    pair over max_input_length is cut (else 422, with ``too_long_hint`` saying how to allow it);
    ``max_document_tokens`` cuts each document first (Cohere v2); ``max_length`` is the most
    tokens of a pair when the request sets it below max_input_length (vLLM's
    truncate_prompt_tokens). ``query`` is one query for every document or, for vLLM's N:N score
    requests, one per document (``query_field`` names it in errors)."""

    query: str | list[str]
    documents: list[str]
    field: str
    limit: int
    limit_name: str
    truncate: bool
    too_long_hint: str
    direction: str = "right"
    max_document_tokens: int | None = None
    max_length: int | None = None
    query_field: str = "query"

    def query_where(self, index: int) -> str:
        """The query of pair ``index`` as errors name it: the one query's field, or its item."""
        return self.query_field if isinstance(self.query, str) else f"{self.query_field}.{index}"


@dataclasses.dataclass(frozen=True)
class Scored:
    logits: list[float]
    tokens: int
    truncated: int


class ServerState:
    """Lives on the event loop; the scheduler owns the model on its own thread."""

    def __init__(self, reranker: Reranker, settings: ServeSettings) -> None:
        low, high = reranker.num_special_tokens + 1, reranker.max_length
        if not low <= settings.max_input_length <= high:
            raise ValueError(
                f"max_input_length {settings.max_input_length} is outside the model's range ({low}..{high})"
            )
        self.reranker = reranker
        self.settings = settings
        self.created = int(time.time())  # the model's "created" in the OpenAI-style model lists
        self.metrics = ServerMetrics()
        self.scheduler = BatchScheduler(
            lambda encoded: reranker.logits(
                encoded, batch_size=1024, max_batch_tokens=settings.max_batch_tokens
            ),
            settings.max_batch_tokens,
            observe=self.metrics.observe,
        )
        # Read at each scrape: both gauges are the scheduler's own count.
        for gauge in (self.metrics.queued_pairs, self.metrics.tei.queue_size):
            gauge.set_function(lambda: self.scheduler.queued_pairs)
        self.tokenizer_pool = TokenizerPool(settings.tokenizer_threads)
        self.admission = Admission(settings.max_concurrent_requests, settings.max_requests_per_client)
        self.draining = False
        self.started = False
        self.warmed = False  # the first (warm-up) forward succeeded
        self._probe_failing = False
        self._trim: asyncio.TimerHandle | None = None
        # serve --front-ends: the whole server's settings, how many front ends, and which this is
        # (``settings`` above is this front end's share of the limits); None in one process.
        self.front_end_of: tuple[ServeSettings, int, int] | None = None
        # serve --front-ends: every front end's metrics, this one's first (``front_end``).
        self.metrics_of_all: Callable[[], list[MetricsSnapshot]] | None = None

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return self.admission.active

    def release_memory_soon(self, large: bool) -> None:
        """After a request: once its objects are gone (a moment after its answer), give the freed
        memory back to the OS, on a tokenizer thread; one trim pending at a time, the earliest due.
        While the scheduler still holds work (a forward of a request whose client left may outlive
        its answer), another trim follows a second later, so the last one comes after the work."""
        loop = asyncio.get_running_loop()
        due = loop.time() + (TRIM_AFTER_LARGE_S if large else TRIM_INTERVAL_S)
        if self._trim is not None:
            if self._trim.when() <= due:
                return
            self._trim.cancel()

        def start() -> None:
            self._trim = None
            with contextlib.suppress(RuntimeError):  # the pool is shut down once the server stops
                self.tokenizer_pool.run(release_free_memory)
            if self.scheduler.busy:
                self.release_memory_soon(large=True)

        self._trim = loop.call_at(due, start)

    async def metrics_exposition(self) -> bytes:
        """What /metrics answers: this process's metrics, or with front ends every front end's sum
        (this front end's alone, logged, if the model process cannot be asked)."""
        if self.metrics_of_all is None:
            return self.metrics.render()
        try:
            return render_sum(await self.off_loop(self.metrics_of_all))
        except (OSError, EOFError) as exc:  # the model process is gone
            logger.error("/metrics: the other front ends' metrics are out of reach (%r): its own", exc)
            return self.metrics.render()

    async def off_loop(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work (JSON, tokenising) on the tokenizer threads, never on the event loop."""
        return await self.tokenizer_pool.run(work, *args)

    async def small_or_off_loop(self, size: int, work: Callable[..., Any], *args: Any) -> Any:
        """``work`` on the event loop when ``size`` (bytes or characters of input) is at most
        ``INLINE_BYTES``, else on the tokenizer threads: below that the hop to a thread and back
        costs more than the work, and the loop is held for tens of microseconds at most."""
        if size <= INLINE_BYTES:
            return work(*args)
        return await self.off_loop(work, *args)

    async def score(self, request: Request, job: ScoreRequest) -> Scored:
        """The logits of every (query, document) pair, in order, with the tokens scored and the
        pairs truncated (also counted in /metrics and noted for the access log)."""
        limits = self.settings
        field = job.field
        max_length = job.max_length or limits.max_input_length
        length_name = "max_input_length" if job.max_length is None else "truncate_prompt_tokens"
        queries = [job.query] if isinstance(job.query, str) else job.query
        for index, query in enumerate(queries):
            if not query.strip():
                raise APIError(400, errors.EMPTY, f"{job.query_where(index)} is empty")
        if not job.documents:
            raise APIError(400, errors.EMPTY, f"{field} is empty")
        if len(job.documents) > job.limit:
            raise APIError(
                422,
                errors.VALIDATION,
                f"{field}: {len(job.documents)} items exceed {job.limit_name}={job.limit}",
            )
        note(request, pairs=len(job.documents))
        watch = watch_of(request.scope)
        # Each piece is scored as soon as it is tokenised, handed to the scheduler by the tokenizer
        # thread itself: the device works on the first pieces while the threads are on the next.
        loop = asyncio.get_running_loop()
        tickets: list[Ticket] = []
        # Once the request is refused, gone or failed, a thread still tokenising must not queue
        # another piece: taking a piece and stopping are one step each under this lock.
        handing = threading.Lock()
        stopped = False

        def take_piece(encoded: EncodedPairs, first: int) -> None:
            if not job.truncate and any(encoded.longer_than_limit):
                index = first + encoded.longer_than_limit.index(True)
                raise APIError(
                    422,
                    errors.VALIDATION,
                    f"{field}.{index}: the pair is longer than {length_name}={max_length} "
                    f"tokens; {job.too_long_hint}",
                )
            with handing:
                if stopped or (watch is not None and watch.gone):
                    raise ClientDisconnectedError
                failed = next((t.error for t in tickets if t.error is not None), None)
                if failed is not None:  # an earlier piece's forward failed: so has the request
                    raise APIError(500, errors.BACKEND, str(failed)) from failed
                tickets.append(self.scheduler.submit(encoded, owner=request, loop=loop))

        try:
            try:
                encoded = await tokenize_in_pieces(
                    self.tokenizer_pool,
                    self.reranker,
                    job.query,
                    job.documents,
                    max_length,
                    job.direction,
                    take_piece,
                    job.max_document_tokens,
                )
            except UncuttableTextError as exc:
                where = job.query_where(exc.index) if exc.side == "query" else f"{field}.{exc.index}"
                raise APIError(
                    422,
                    errors.VALIDATION,
                    f"{where}: {exc.chars:,} characters with no word boundary in the first "
                    f"{exc.searched:,} where it could be cut to {length_name}={max_length} "
                    "tokens; send a shorter text",
                    tei_type="Tokenizer",
                ) from None
            tokens = sum(encoded.lengths)
            note(request, tokens=tokens)
            self.metrics.tei.input_length.observe(tokens)
            self.metrics.truncated.inc(encoded.truncated)
            logits = await self._logits_of(tickets, watch)
        except BaseException as exc:
            # Refused, gone or failed: the pieces already queued are not scored for nobody.
            with handing:
                stopped = True
            dropped = sum(self.scheduler.cancel(t) for t in tickets if not t.future.done())
            if isinstance(exc, ClientDisconnectedError):
                self.metrics.dropped.inc(dropped)
            raise
        finally:
            started = [t.started_at for t in tickets if t.started_at is not None]
            if started:
                note(request, queue_ms=(min(started) - tickets[0].enqueued_at) * 1000)
        return Scored(logits, tokens, encoded.truncated)

    async def _logits_of(self, tickets: list[Ticket], watch: DisconnectWatch | None) -> list[float]:
        """The logits of the pieces' tickets, in order; ClientDisconnectedError if the client goes
        first, APIError 500 if a forward holding its pairs failed."""
        pending = {t.future for t in tickets}
        try:
            while pending:
                waiting = pending | ({watch.task} if watch is not None else set())
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
                for future in done & {t.future for t in tickets}:
                    future.result()  # a failed forward fails the request now, not after the rest
                if watch is not None and watch.task in done and pending:
                    raise ClientDisconnectedError
            return [logit for t in tickets for logit in t.future.result()]
        except BatchError as exc:
            raise APIError(500, errors.BACKEND, str(exc)) from exc

    async def probe(self) -> bool:
        """One real one-pair forward through the scheduler; a failure is logged with its traceback
        (then one line per failure until a probe succeeds again)."""
        encoded, _ = self.reranker.encode([("ready?", "probe")], warn=False)
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
