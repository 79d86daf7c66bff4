"""The server's piece-by-piece tokenising: a lone request's pieces run back to back on one tokenizer
thread, another request's work gets a thread after the piece in hand, and the answers' JSON."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from turborank import Reranker

pytest.importorskip("fastapi")
pytest.importorskip("orjson")
httpx = pytest.importorskip("httpx")

from tests.serve_thread import running_server  # noqa: E402
from turborank.serving.rerank_routes import encode_answer  # noqa: E402
from turborank.serving.tokenizing import TokenizerPool, tokenize_in_pieces  # noqa: E402


def documents(n: int, tag: str) -> list[str]:
    return [f"{tag} document {i} " + "word " * (i % 7 + 40) for i in range(n)]


class Recorder:
    """Reranker.encode, slowed per call, noting which request's piece ran where and when."""

    def __init__(self, reranker: Reranker, seconds: float) -> None:
        self.real = reranker.encode
        self.seconds = seconds
        self.calls: list[tuple[str, str]] = []  # (first document's tag, thread name)

    def __call__(self, pairs, *args, **kwargs):
        self.calls.append((pairs[0][1].split()[0], threading.current_thread().name))
        time.sleep(self.seconds)
        return self.real(pairs, *args, **kwargs)


def tokenise(pool, reranker, docs, taken, raise_at=None):
    def take_piece(encoded, first):
        taken.append((first, len(encoded.input_ids), threading.current_thread().name))
        if raise_at is not None and first >= raise_at:
            raise RuntimeError("refused")

    return tokenize_in_pieces(pool, reranker, "a query", docs, 128, "right", take_piece)


def test_a_lone_request_tokenises_all_its_pieces_on_one_thread_job(reranker, monkeypatch):
    """No other work waits: every piece runs in one job on a tokenizer thread, without a hop through
    the event loop between pieces; the pieces are handed over in order and give the library's ids."""
    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 400)
    docs = documents(30, "alone")
    pool = TokenizerPool(2)
    jobs = []
    real_run = pool.run
    monkeypatch.setattr(pool, "run", lambda work, *args: jobs.append(args) or real_run(work, *args))
    taken: list[tuple[int, int, str]] = []
    try:
        encoded = asyncio.run(tokenise(pool, reranker, docs, taken))
    finally:
        pool.shutdown()
    assert len(jobs) == 1 and len(taken) > 5
    assert [first for first, _, _ in taken] == sorted({first for first, _, _ in taken})
    assert sum(n for _, n, _ in taken) == len(docs)
    assert all(thread.startswith("turborank-tokenize") for _, _, thread in taken)
    want, _ = reranker.encode([("a query", d) for d in docs], 128, warn=False)
    assert encoded.input_ids == want.input_ids


def test_another_request_gets_the_thread_after_the_piece_in_hand(reranker, monkeypatch):
    """One tokenizer thread, a large request tokenising piece by piece: a request that arrives in the
    meantime is tokenised after the large one's current piece, not after all of them; then the
    large one goes on and finishes."""
    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 400)
    recorder = Recorder(reranker, 0.02)
    monkeypatch.setattr(reranker, "encode", recorder)
    pool = TokenizerPool(1)

    async def both():
        large = asyncio.ensure_future(tokenise(pool, reranker, documents(40, "large"), []))
        while not recorder.calls:
            await asyncio.sleep(0.001)
        small = await tokenise(pool, reranker, documents(6, "small"), [])
        return await large, small

    try:
        large, small = asyncio.run(both())
    finally:
        pool.shutdown()
    tags = [tag for tag, _ in recorder.calls]
    assert len(large.input_ids) == 40 and len(small.input_ids) == 6
    assert tags.count("large") > 5 and "small" in tags
    assert tags.index("small") <= 2  # after the piece in hand (and at most one begun meanwhile)
    assert tags[-1] == "large"


def test_a_refused_piece_stops_the_pieces_after_it(reranker, monkeypatch):
    """take_piece raising on a tokenizer thread ends the request's tokenising there: the error
    reaches the caller and no later piece is tokenised."""
    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 400)
    recorder = Recorder(reranker, 0.0)
    monkeypatch.setattr(reranker, "encode", recorder)
    pool = TokenizerPool(2)
    taken: list[tuple[int, int, str]] = []
    try:
        with pytest.raises(RuntimeError, match="refused"):
            asyncio.run(tokenise(pool, reranker, documents(30, "refused"), taken, raise_at=1))
    finally:
        pool.shutdown()
    assert len(taken) == 2 and len(recorder.calls) == 2


def test_a_client_that_leaves_while_its_pieces_are_tokenised_stops_them(reranker, monkeypatch):
    """The thread tokenising a request's pieces one after another sees the client gone before the
    next piece: the rest are neither tokenised nor queued."""
    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 400)
    recorder = Recorder(reranker, 0.1)
    with running_server(reranker, max_client_batch_size=64) as (url, state):
        monkeypatch.setattr(reranker, "encode", recorder)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/rerank", json={"query": "q", "texts": documents(40, "gone")}, timeout=0.35)
        time.sleep(1.0)  # what a thread still working on the request would do meanwhile
        tokenised = len(recorder.calls)
        assert state.scheduler.drain(timeout=10) and state.scheduler.queued_pairs == 0
        time.sleep(0.3)
        assert len(recorder.calls) == tokenised <= 8  # of about 20 pieces
        monkeypatch.undo()
        assert httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=30).status_code == 200


def test_the_pool_counts_the_jobs_no_thread_has_started():
    pool = TokenizerPool(1)
    release = threading.Event()

    async def main():
        first = pool.run(release.wait)
        second = pool.run(lambda: "second")
        while pool._waiting != 1:  # the first job has a thread, the second waits
            await asyncio.sleep(0.001)
        assert pool.others_waiting
        release.set()
        assert await second == "second" and await first
        assert not pool.others_waiting

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()


def test_a_job_cancelled_before_a_thread_starts_it_is_no_longer_counted():
    """A request cancelled while its job waits for a thread (a shutdown that ran out of time, a
    replica's call cancelled): the job never starts, and the pool must not count it as waiting for
    ever, or every later request would give up its thread after each piece."""
    pool = TokenizerPool(1)
    release = threading.Event()

    async def main():
        busy = pool.run(release.wait)
        queued = pool.run(lambda: "never")
        while pool._waiting != 1:
            await asyncio.sleep(0.001)
        queued.cancel()
        release.set()
        await busy
        for _ in range(100):
            if not pool.others_waiting:
                break
            await asyncio.sleep(0.01)
        assert pool._waiting == 0 and not pool.others_waiting

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()


def test_a_request_stops_tokenising_once_a_forward_of_its_pieces_failed(reranker, monkeypatch):
    """The first piece's forward fails while the thread tokenises the next ones: the request is
    answered 500 with the forward's error, and its remaining pieces are neither tokenised nor
    scored (each would have been another failing forward)."""
    from starlette.requests import Request

    from turborank.serving.errors import APIError
    from turborank.serving.settings import ServeSettings
    from turborank.serving.state import ScoreRequest, ServerState

    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 400)
    recorder = Recorder(reranker, 0.05)
    monkeypatch.setattr(reranker, "encode", recorder)
    state = ServerState(reranker, ServeSettings(model_name="m", tokenizer_threads=2))
    forwards = []

    def failing(encoded):
        forwards.append(len(encoded.input_ids))
        raise RuntimeError("device error (simulated)")

    state.scheduler._score = failing
    state.scheduler.start()
    request = Request({"type": "http", "method": "POST", "path": "/rerank", "headers": [], "state": {}})
    job = ScoreRequest("a query", documents(40, "failing"), "texts", 1000, "max_client_batch_size", True, "")
    try:
        with pytest.raises(APIError, match="device error") as raised:
            asyncio.run(state.score(request, job))
    finally:
        state.scheduler.stop()
        state.tokenizer_pool.shutdown()
    assert raised.value.status == 500
    assert len(recorder.calls) <= 4 and len(forwards) <= 3  # of about 20 pieces


def test_answers_are_the_json_the_standard_library_writes():
    content = {
        "results": [
            {"index": 0, "relevance_score": 0.25, "document": {"text": 'naïve café ✓ "quoted"\n'}},
            {"index": 1, "relevance_score": -3.5e-7, "document": None},
        ],
        "usage": {"total_tokens": 12},
    }
    assert json.loads(encode_answer(content)) == content
    # orjson refuses integers beyond 64 bits; a client's document object may hold one.
    big = {"results": [{"index": 0, "document": {"text": "x", "id": 2**70}}]}
    assert json.loads(encode_answer(big)) == big
