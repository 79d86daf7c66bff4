"""Tokenising a request off the event loop, in small pieces, so requests share the tokenizer threads.

A request's documents are tokenised one piece at a time, each piece a bounded amount of text
(over-long texts are clipped before they are tokenised, see PairTokenizer.clip), and each piece is
handed to the model's scheduler by the thread that tokenised it. A thread goes on to the request's
next piece while no other work waits for a tokenizer thread, and gives the thread up after the
piece in hand once some does: a one-pair request waits for at most one piece of each request
already tokenising, and a lone large request pays no hop through the event loop between pieces.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from turborank.text_clipping import CLIP_CHARS_PER_TOKEN, UncuttableTextError
from turborank.tokenization import EncodedPairs

if TYPE_CHECKING:
    from turborank.reranker import Reranker

# A piece's text, in characters: a few milliseconds of tokenising. Each piece is scored as soon as
# it is tokenised, so the device starts on a large request's first pieces while the rest are
# tokenised, and another request waits for at most one piece of it at the tokenizer threads.
PIECE_CHARS = 16 * 1024
# A request of at most this many characters (query once per pair, clipped documents) is tokenised
# on the event loop: about 180 us at 1,100 characters, against 110 us for the round trip to a
# tokenizer thread, which a one-pair request (about 50 us of tokenising) would spend twice over.
INLINE_CHARS = 1024


Result = TypeVar("Result")


class TokenizerPool:
    """The tokenizer threads (decoding, tokenising, encoding answers): a thread pool that counts the
    jobs waiting for a thread, so that work running on one can tell whether it is holding anyone up.
    """

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="turborank-tokenize")
        self._lock = threading.Lock()
        self._waiting = 0

    @property
    def others_waiting(self) -> bool:
        """Whether a job is queued that no thread has started yet."""
        return self._waiting > 0

    def run(self, work: Callable[..., Result], *args: Any) -> asyncio.Future[Result]:
        """``work(*args)`` on a tokenizer thread; call from the event loop, await the result."""

        def started() -> Result:
            self._count(-1)
            return work(*args)

        def ended(job: concurrent.futures.Future) -> None:
            if job.cancelled():  # cancelled while queued (its awaiting task was): never started
                self._count(-1)

        loop = asyncio.get_running_loop()
        self._count(1)
        try:
            job = self._executor.submit(started)
        except BaseException:  # refused (shut down): nothing is waiting after all
            self._count(-1)
            raise
        job.add_done_callback(ended)
        return asyncio.wrap_future(job, loop=loop)

    def _count(self, change: int) -> None:
        with self._lock:
            self._waiting += change

    def shutdown(self) -> None:
        """Refuse new work; the jobs running finish on their own."""
        self._executor.shutdown(wait=False)


def query_of(query: str | list[str], index: int) -> str:
    """The query of pair ``index``: the one query, or the pair's own (vLLM's N:N scoring)."""
    return query if isinstance(query, str) else query[index]


def pieces(query: str | list[str], documents: list[str], max_length: int) -> Iterator[range]:
    """Index ranges of ``documents``, each of about PIECE_CHARS characters of work at most (a text
    counts as much as its clipped part is long) and at least one document."""
    clipped = 2 * CLIP_CHARS_PER_TOKEN * max_length  # the part looked at, then tokenised
    start, chars = 0, 0
    for index, document in enumerate(documents):
        chars += min(len(query_of(query, index)), clipped) + min(len(document), clipped)
        if chars >= PIECE_CHARS:
            yield range(start, index + 1)
            start, chars = index + 1, 0
    if start < len(documents):
        yield range(start, len(documents))


def concatenate(parts: list[EncodedPairs]) -> EncodedPairs:
    with_types = parts[0].token_type_ids is not None
    return EncodedPairs(
        input_ids=[ids for part in parts for ids in part.input_ids],
        token_type_ids=[t for part in parts for t in part.token_type_ids] if with_types else None,
        was_truncated=[flag for part in parts for flag in part.was_truncated],
        over_length=[flag for part in parts for flag in part.longer_than_limit],
    )


async def tokenize_in_pieces(
    pool: TokenizerPool,
    reranker: Reranker,
    query: str | list[str],
    documents: list[str],
    max_length: int,
    direction: str,
    take_piece: Callable[[EncodedPairs, int], None],
    max_document_tokens: int | None = None,
) -> EncodedPairs:
    """EncodedPairs of (query, document) for every document (``query`` one for all or one per
    document), truncated to ``max_length`` (each document first to ``max_document_tokens`` when
    given). ``take_piece(encoded, first_index)`` runs right after each piece, on the thread that
    tokenised it (on the event loop for a request small enough to tokenise there), and may raise to
    stop before the next piece. Raises UncuttableTextError (with the index of the whole request)
    like ``Reranker.encode(bounded=True)``."""
    clipped = 2 * CLIP_CHARS_PER_TOKEN * max_length
    plan = list(pieces(query, documents, max_length))
    parts: list[EncodedPairs] = []

    def encode(indices: range) -> EncodedPairs:
        pairs = [(query_of(query, i), documents[i]) for i in indices]
        try:
            return reranker.encode(
                pairs,
                max_length,
                "longest_first",
                warn=False,
                direction=direction,
                bounded=True,
                max_document_tokens=max_document_tokens,
            )[0]
        except UncuttableTextError as exc:
            raise UncuttableTextError(
                exc.index + indices.start, exc.side, exc.chars, exc.searched, exc.max_length
            ) from None

    def run_from(first_piece: int, inline: bool = False) -> int:
        """Tokenise pieces from ``first_piece`` on until the last, or (off the loop) until another
        job waits for a tokenizer thread; returns the next piece to tokenise."""
        for number in range(first_piece, len(plan)):
            encoded = encode(plan[number])
            take_piece(encoded, plan[number].start)
            parts.append(encoded)
            if not inline and pool.others_waiting:
                return number + 1
        return len(plan)

    total = sum(min(len(query_of(query, i)), clipped) + min(len(d), clipped) for i, d in enumerate(documents))
    if total <= INLINE_CHARS:
        run_from(0, inline=True)
    else:
        next_piece = 0
        while next_piece < len(plan):
            next_piece = await pool.run(run_from, next_piece)
    return concatenate(parts)
