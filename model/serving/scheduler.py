"""Dynamic batching: requests are packed into forwards by a token budget on one worker thread.

The tokenizer threads (or the event loop) submit tickets, the event loop awaits their futures; the
worker thread owns the model. Batches are formed round-robin across queued requests, one pair each per
round, and the requests served by a forward move to the back of the queue, so the next forward
starts with one that was not: a small request waits for at most one forward of a huge one. A
request scored in pieces submits one ticket per piece under one ``owner``: the round robin is
between owners, so 30 pieces of one request take one turn, not 30 (a one-pair request waited
5-11 s behind two 15 MiB requests when each piece took its own turn).
A failure inside a forward (an exception, or a non-finite score) is retried with each request's
pairs alone, so only the request whose own pairs fail again is answered with the error; the others
sharing the batch get their scores. Anything else that goes wrong on the worker thread (a bug, a
callback that raises) fails the requests of the batch in hand, is logged, and the thread goes on:
a worker that died would leave every later request waiting forever.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from turborank.scoring_options import NonFiniteScoreError
from turborank.tokenization import EncodedPairs

logger = logging.getLogger("turborank.serving")
_NON_FINITE = "the model produced a non-finite score"


class BatchError(RuntimeError):
    """A forward that held some of this request's pairs failed."""


@dataclasses.dataclass(eq=False)
class Ticket:
    encoded: EncodedPairs
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    pending: collections.deque
    logits: list[float | None]
    enqueued_at: float
    owner: object = None  # the request the ticket is a piece of; None: the ticket itself
    started_at: float | None = None
    done: bool = False
    # Set (on the worker thread) when a forward holding its pairs failed: a request's thread still
    # tokenising its later pieces reads it and stops.
    error: BaseException | None = None

    def __post_init__(self) -> None:
        if self.owner is None:
            self.owner = self

    @property
    def remaining(self) -> int:
        return sum(1 for x in self.logits if x is None)


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _read_error(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """``callback(*args)`` on ``loop``, from any thread; nothing when the loop is closed (its caller
    is gone: an ``asyncio.run`` that gave up waiting), which must not stop the worker thread."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


class BatchScheduler:
    """Owns the model on one thread; see the module docstring.

    Args:
        score: callable(EncodedPairs) -> fp32 logits tensor, in order (``Reranker.logits``).
        max_batch_tokens: token budget of one forward (a pair longer than it runs alone).
        max_batch_pairs: cap on pairs per forward.
        observe: optional callback(event, **values) for metrics.
    """

    def __init__(
        self,
        score: Callable[[EncodedPairs], torch.Tensor],
        max_batch_tokens: int,
        max_batch_pairs: int = 1024,
        observe: Callable[..., None] | None = None,
    ) -> None:
        self._score = score
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_pairs = max_batch_pairs
        self._observe = observe or (lambda event, **values: None)
        self._cond = threading.Condition()
        self._queue: list[Ticket] = []
        # The forward that last served each owner and the place of its last pair in it, kept while
        # the owner (a request) lives.
        self._last_turn: weakref.WeakKeyDictionary[object, tuple[int, int]] = weakref.WeakKeyDictionary()
        self._turn = 0
        self._in_flight = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="turborank-batcher", daemon=True)
        self.last_success: float | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(
        self, encoded: EncodedPairs, owner: object = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> Ticket:
        """Queue tokenised pairs; await ``ticket.future`` (on ``loop``) for the logits. Call from the
        event loop, or from another thread naming the loop that awaits. Tickets with the same
        ``owner`` (the pieces of one request; any hashable object a weak reference can point at)
        share one turn of the round robin."""
        if owner is not None:
            weakref.ref(owner)  # TypeError here, not on the batching thread
            hash(owner)  # owners are dictionary keys there
        loop = loop or asyncio.get_running_loop()
        n = len(encoded.input_ids)
        future = loop.create_future()
        # A request with a failed piece stops awaiting its others, whose errors are that same
        # failure: marked as read, so asyncio does not log each one as never retrieved.
        future.add_done_callback(_read_error)
        ticket = Ticket(
            encoded, loop, future, collections.deque(range(n)), [None] * n, time.perf_counter(), owner
        )
        if n == 0:
            ticket.done = True
            _post(loop, _resolve, ticket.future, [])  # from any thread
            return ticket
        with self._cond:
            if self._stopping:
                raise RuntimeError("scheduler is stopped")
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> int:
        """Drop the ticket's pairs that have not started; returns how many were dropped."""
        with self._cond:
            dropped = len(ticket.pending)
            ticket.pending.clear()
            ticket.done = True
            if ticket in self._queue:
                self._queue.remove(ticket)
        _post(ticket.loop, ticket.future.cancel)
        return dropped

    @property
    def busy(self) -> bool:
        """Whether pairs are queued or a forward is running."""
        with self._cond:
            return bool(self._queue or self._in_flight)

    @property
    def queued_pairs(self) -> int:
        with self._cond:
            return sum(len(t.pending) for t in self._queue)

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; True when drained in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _form_batch(self) -> list[tuple[Ticket, int]]:
        batch: list[tuple[Ticket, int]] = []
        tokens = 0
        # Each owner's tickets in queue order. Owners take turns from the one served longest ago
        # (never served first, then by the forward that last served them and where in it their last
        # pair was), so a request that arrives while a forward runs is ahead of the requests that
        # forward holds, two requests sharing forwards take the first place in turn, and a request's
        # later pieces keep its place instead of starting a new turn.
        turns: dict[object, collections.deque[Ticket]] = {}
        for ticket in self._queue:
            if ticket.pending:
                turns.setdefault(ticket.owner, collections.deque()).append(ticket)
        order = sorted(turns, key=lambda owner: self._last_turn.get(owner, (-1, 0)))
        turns = {owner: turns[owner] for owner in order}
        while turns and len(batch) < self.max_batch_pairs:
            for owner, tickets in list(turns.items()):
                ticket = tickets[0]
                length = len(ticket.encoded.input_ids[ticket.pending[0]])
                if batch and tokens + length > self.max_batch_tokens:
                    del turns[owner]
                    continue
                batch.append((ticket, ticket.pending.popleft()))
                tokens += length
                if ticket.started_at is None:
                    ticket.started_at = time.perf_counter()
                    self._observe("queue", seconds=ticket.started_at - ticket.enqueued_at)
                if not ticket.pending:
                    tickets.popleft()
                    self._queue.remove(ticket)
                    if not tickets:
                        del turns[owner]
                if len(batch) >= self.max_batch_pairs:
                    break
        for position, (ticket, _) in enumerate(batch):
            self._last_turn[ticket.owner] = (self._turn, position)
        self._turn += 1
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                queued = list(self._queue)
                try:
                    batch = self._form_batch()
                except Exception as exc:  # every later batch would fail the same way: fail them all
                    self._queue.clear()
                    self._worker_failed(exc, queued)
                    continue
                self._in_flight += 1
            try:
                self._forward(batch)
            except Exception as exc:
                self._worker_failed(exc, [ticket for ticket, _ in batch])
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _worker_failed(self, exc: Exception, tickets: list[Ticket]) -> None:
        """Something outside the forward failed on this thread: the tickets' requests get a
        BatchError (their answer names no internals), the log gets the traceback."""
        tickets = [t for t in dict.fromkeys(tickets) if not t.done]
        logger.error("batch worker failed; %d request(s) answered with an error", len(tickets), exc_info=exc)
        for ticket in tickets:
            error = BatchError("internal error in the batch worker")
            error.__cause__ = exc
            self._fail(ticket, error)

    def _forward(self, batch: list[tuple[Ticket, int]]) -> None:
        tickets = list(dict.fromkeys(ticket for ticket, _ in batch))
        encoded = EncodedPairs.gather([(ticket.encoded, i) for ticket, i in batch])
        start = time.perf_counter()
        failure: BaseException | None = None
        try:
            values = self._score(encoded).tolist()
            # Finite sum, finite terms: a NaN or an infinity makes the sum NaN or infinite (one
            # pass over the list, where isfinite(...).all() on the tensor is five ops); a sum
            # that overflowed is told apart by the exact check.
            if not math.isfinite(sum(values)) and not all(map(math.isfinite, values)):
                failure = BatchError(_NON_FINITE)
        except NonFiniteScoreError as exc:  # its pair numbers are this batch's, not a request's
            failure = BatchError(_NON_FINITE)
            failure.__cause__ = exc
        except Exception as exc:
            failure = BatchError(f"forward failed: {exc}")
            failure.__cause__ = exc
        if failure is not None:
            self._observe("batch_failed", pairs=len(batch))
            if len(tickets) > 1:
                # Each request's pairs again on their own: one request's NaN (or a failure its
                # input causes) must not fail the requests that shared its forward.
                for ticket in tickets:
                    if not ticket.done:  # cancelled meanwhile: its client is gone
                        self._forward([(t, i) for t, i in batch if t is ticket])
                return
            # Chained to the cause, so the request's log line shows the forward's traceback.
            self._fail(tickets[0], failure)
            return
        self.last_success = time.monotonic()
        self._observe(
            "batch", pairs=len(batch), tokens=sum(encoded.lengths), seconds=time.perf_counter() - start
        )
        for (ticket, index), value in zip(batch, values, strict=True):
            ticket.logits[index] = value
        for ticket in tickets:
            if not ticket.done and ticket.remaining == 0:
                ticket.done = True
                _post(ticket.loop, _resolve, ticket.future, list(ticket.logits))

    def _fail(self, ticket: Ticket, error: BaseException) -> None:
        with self._cond:
            ticket.pending.clear()
            ticket.done = True
            ticket.error = error
            if ticket in self._queue:
                self._queue.remove(ticket)
        _post(ticket.loop, _resolve, ticket.future, None, error)
