"""The batching scheduler's order, with a scorer the test steps forward by forward."""

from __future__ import annotations

import asyncio
import threading
import time

import torch

from turborank.serving.scheduler import BatchScheduler
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
