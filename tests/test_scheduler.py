"""The batching scheduler's order, with a scorer the test steps forward by forward."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time

import pytest
import torch

from turborank.serving.scheduler import BatchError, BatchScheduler
from turborank.tokenization import EncodedPairs


def pairs(marker: int, length: int, count: int) -> EncodedPairs:
    return EncodedPairs([[marker] * length for _ in range(count)], None, [False] * count)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


def run_stepped(submit_huge, more_huge=lambda scheduler: []) -> list[list[int]]:
    """The forwards (each a list of the markers of its pairs) when ``submit_huge(scheduler)`` queues
    huge requests, then, while the first forward runs, ``more_huge(scheduler)`` queues more and a
    one-pair request (marker 3) arrives. Forwards hold 200 tokens; the test steps them one by one."""

    async def scenario() -> list[list[int]]:
        forwards: list[list[int]] = []
        step = threading.Semaphore(0)

        def score(encoded: EncodedPairs) -> torch.Tensor:
            forwards.append([ids[0] for ids in encoded.input_ids])
            step.acquire(timeout=30)
            return torch.zeros(len(encoded.input_ids))

        scheduler = BatchScheduler(score, max_batch_tokens=200)
        scheduler.start()
        try:
            huge = submit_huge(scheduler)
            await until(lambda: len(forwards) == 1, "the first forward")
            huge += more_huge(scheduler)
            small = scheduler.submit(pairs(3, 5, 1))
            step.release()
            await until(lambda: len(forwards) == 2, "the second forward")
            for _ in range(16):
                step.release()
            await asyncio.wait_for(asyncio.gather(small.future, *(t.future for t in huge)), 30)
            assert all(t.future.result() == [0.0] * len(t.logits) for t in huge)
        finally:
            for _ in range(16):
                step.release()
            scheduler.stop()
        return forwards

    return asyncio.run(scenario())


def test_a_request_arriving_during_a_forward_is_in_the_next_one():
    """Two huge requests fill every forward (one pair each); a one-pair request that arrives while a
    forward runs must be in the next forward, not behind the two that forward served."""
    forwards = run_stepped(lambda scheduler: [scheduler.submit(pairs(marker, 100, 4)) for marker in (1, 2)])
    assert forwards[0] == [1, 2]
    assert 3 in forwards[1], forwards
    assert sorted(m for forward in forwards for m in forward) == [1] * 4 + [2] * 4 + [3]


class Owner:
    """A request, as far as the scheduler cares: something a weak reference can point at."""


def test_the_pieces_of_one_request_share_one_turn():
    """Two huge requests submitted as 6 one-pair pieces each (as the server scores a request piece
    by piece), forwards of two pairs: a one-pair request queued after all those pieces must still
    be in the second forward. When every piece took its own turn it waited behind all twelve."""
    owners = (Owner(), Owner())

    def piece(scheduler, marker):
        return scheduler.submit(pairs(marker, 100, 1), owner=owners[marker - 1])

    forwards = run_stepped(
        lambda scheduler: [piece(scheduler, marker) for marker in (1, 2)],
        lambda scheduler: [piece(scheduler, marker) for _ in range(5) for marker in (1, 2)],
    )
    assert forwards[0] == [1, 2]
    assert 3 in forwards[1], forwards
    assert sorted(m for forward in forwards for m in forward) == [1] * 6 + [2] * 6 + [3]


def test_two_requests_sharing_forwards_take_the_first_place_in_turn():
    """Two equal requests, forwards of three pairs: each forward starts with the request whose last
    pair came earlier in the one before (with ties in queue order the first request led every
    forward, two pairs to one)."""
    forwards: list[list[int]] = []

    def score(encoded: EncodedPairs) -> torch.Tensor:
        forwards.append([ids[0] for ids in encoded.input_ids])
        return torch.zeros(len(encoded.input_ids))

    scheduler = BatchScheduler(score, max_batch_tokens=300)

    async def scenario() -> None:
        first, second = scheduler.submit(pairs(1, 100, 12)), scheduler.submit(pairs(2, 100, 12))
        scheduler.start()
        await asyncio.gather(first.future, second.future)

    try:
        asyncio.run(scenario())
    finally:
        scheduler.stop()
    assert forwards[:4] == [[1, 2, 1], [2, 1, 2], [1, 2, 1], [2, 1, 2]], forwards


def test_an_owner_the_worker_could_not_key_by_is_refused_at_submit():
    @dataclasses.dataclass
    class Unhashable:  # a dataclass with eq and no frozen: __hash__ is None
        name: str

    scheduler = BatchScheduler(lambda encoded: torch.zeros(len(encoded.input_ids)), max_batch_tokens=100)

    async def submit() -> None:
        scheduler.submit(pairs(1, 4, 1), owner=Unhashable("r"))

    with pytest.raises(TypeError, match="unhashable"):
        asyncio.run(submit())


def test_a_failure_outside_the_forward_fails_its_batch_and_the_worker_goes_on(caplog):
    """A scorer returning one logit too few (a bug outside the forward's own try) answers the batch's
    requests with an error and is logged; the next request is scored: a dead worker thread would
    leave every later request waiting forever."""
    calls = []

    def score(encoded: EncodedPairs) -> torch.Tensor:
        calls.append(len(encoded.input_ids))
        n = len(encoded.input_ids)
        return torch.zeros(n - 1 if len(calls) == 1 else n)

    scheduler = BatchScheduler(score, max_batch_tokens=1000)
    scheduler.start()

    async def scenario() -> list[float]:
        broken = scheduler.submit(pairs(1, 4, 3))
        with pytest.raises(BatchError, match="internal error"):
            await asyncio.wait_for(broken.future, 30)
        return await asyncio.wait_for(scheduler.submit(pairs(2, 4, 2)).future, 30)

    try:
        with caplog.at_level(logging.ERROR, logger="turborank.serving"):
            assert asyncio.run(scenario()) == [0.0, 0.0]
    finally:
        scheduler.stop()
    assert "batch worker failed" in caplog.text and "Traceback" in caplog.text


def test_a_request_whose_event_loop_closed_does_not_stop_the_worker():
    """A caller that gave up (``asyncio.run`` of a wait that timed out) closes its loop while its
    pairs are in a forward; the answer has nowhere to go, and the next caller is still served."""
    release = threading.Event()

    def score(encoded: EncodedPairs) -> torch.Tensor:
        release.wait(30)
        return torch.zeros(len(encoded.input_ids))

    scheduler = BatchScheduler(score, max_batch_tokens=100)
    scheduler.start()

    async def give_up() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(scheduler.submit(pairs(1, 4, 1)).future, 0.05)

    async def next_caller() -> list[float]:
        return await asyncio.wait_for(scheduler.submit(pairs(2, 4, 1)).future, 30)

    try:
        asyncio.run(give_up())  # its loop is closed once this returns
        release.set()
        assert asyncio.run(next_caller()) == [0.0]
        assert scheduler.drain(5)
    finally:
        release.set()
        scheduler.stop()


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_a_score_that_returns_a_non_finite_logit_fails_only_its_own_request(poison):
    """A scorer that returns a non-finite logit without raising (the scheduler checks what any
    scorer returns): the shared forward is retried per request and only the request whose pairs
    give it again fails; finite logits whose sum overflows are scores."""
    forwards: list[list[int]] = []

    def score(encoded: EncodedPairs) -> torch.Tensor:
        forwards.append(sorted({ids[0] for ids in encoded.input_ids}))
        values = [poison if ids[0] == 1 else 1.5e308 for ids in encoded.input_ids]
        return torch.tensor(values, dtype=torch.float64)

    scheduler = BatchScheduler(score, max_batch_tokens=1000)
    scheduler.start()

    async def scenario() -> tuple[BaseException | None, list[float]]:
        poisoned, clean = scheduler.submit(pairs(1, 4, 2)), scheduler.submit(pairs(2, 4, 3))
        results = await asyncio.wait_for(
            asyncio.gather(poisoned.future, clean.future, return_exceptions=True), 30
        )
        return results[0], results[1]

    try:
        error, scores = asyncio.run(scenario())
    finally:
        scheduler.stop()
    assert isinstance(error, BatchError) and "non-finite" in str(error)
    assert scores == [1.5e308] * 3
    # Both requests in one forward, then each alone; or the first taken alone before the second came.
    assert forwards in ([[1, 2], [1], [2]], [[1], [2]])


def test_the_per_request_retry_skips_a_request_cancelled_meanwhile():
    """A shared forward fails while one of its requests is cancelled (its client left): the retry
    scores the other request's pairs alone and runs nothing for the cancelled one."""
    forwards: list[list[int]] = []
    running = threading.Event()
    release = threading.Event()

    def score(encoded: EncodedPairs) -> torch.Tensor:
        forwards.append(sorted({ids[0] for ids in encoded.input_ids}))
        if len(forwards) == 1:
            running.set()
            release.wait(30)
            raise RuntimeError("out of memory (simulated)")
        return torch.zeros(len(encoded.input_ids))

    scheduler = BatchScheduler(score, max_batch_tokens=1000)
    scheduler.start()

    async def scenario() -> list[float]:
        gone, staying = scheduler.submit(pairs(1, 4, 20)), scheduler.submit(pairs(2, 4, 1))
        await asyncio.get_running_loop().run_in_executor(None, running.wait, 30)
        scheduler.cancel(gone)
        release.set()
        return await asyncio.wait_for(staying.future, 30)

    try:
        assert asyncio.run(scenario()) == [0.0]
    finally:
        release.set()
        scheduler.stop()
    assert forwards == [[1, 2], [2]]


def test_the_errors_of_a_failed_requests_other_pieces_are_not_logged_as_never_retrieved(caplog):
    """A request stops awaiting its pieces at the first failed one; the others fail the same way and
    must not each log asyncio's 'Future exception was never retrieved'."""

    def score(encoded: EncodedPairs) -> torch.Tensor:
        raise RuntimeError("device error (simulated)")

    scheduler = BatchScheduler(score, max_batch_tokens=100)
    scheduler.start()
    owner = Owner()

    async def scenario() -> None:
        tickets = [scheduler.submit(pairs(1, 40, 2), owner=owner) for _ in range(4)]
        with pytest.raises(BatchError):
            await asyncio.wait_for(tickets[0].future, 30)
        await asyncio.sleep(0.2)  # the others fail meanwhile; nobody awaits them

    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            asyncio.run(scenario())
            gc.collect()
    finally:
        scheduler.stop()
    assert "never retrieved" not in caplog.text
