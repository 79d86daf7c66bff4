"""Tokenising a request off the event loop, in small pieces, so requests share the tokenizer threads.

A request's documents go to the thread pool one piece at a time, each piece a bounded amount of text
(over-long texts are clipped before they are tokenised, see PairTokenizer.clip). The pool serves
pieces first come first served, so a one-pair request waits for at most one piece of each request
already tokenising instead of for the whole of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING

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
    )


async def tokenize_in_pieces(
    pool: Executor,
    reranker: Reranker,
    query: str | list[str],
    documents: list[str],
    max_length: int,
    direction: str,
    after_piece: Callable[[EncodedPairs, int], Awaitable[None]],
    max_document_tokens: int | None = None,
) -> EncodedPairs:
    """EncodedPairs of (query, document) for every document (``query`` one for all or one per
    document), truncated to ``max_length`` (each document first to ``max_document_tokens`` when
    given); ``after_piece(encoded, first_index)`` runs after each piece and may raise to stop early.
    Raises UncuttableTextError (with the index of the whole request) like
    ``Reranker.encode(bounded=True)``."""
    loop = asyncio.get_running_loop()
    parts = []
    clipped = 2 * CLIP_CHARS_PER_TOKEN * max_length
    inline = (
        sum(min(len(query_of(query, i)), clipped) + min(len(d), clipped) for i, d in enumerate(documents))
        <= INLINE_CHARS
    )
    for indices in pieces(query, documents, max_length):
        pairs = [(query_of(query, i), documents[i]) for i in indices]

        def encode(pairs: list[tuple[str, str]] = pairs) -> EncodedPairs:
            return reranker.encode(
                pairs,
                max_length,
                "longest_first",
                warn=False,
                direction=direction,
                bounded=True,
                max_document_tokens=max_document_tokens,
            )[0]

        try:
            encoded = encode() if inline else await loop.run_in_executor(pool, encode)
        except UncuttableTextError as exc:
            raise UncuttableTextError(
                exc.index + indices.start, exc.side, exc.chars, exc.searched, exc.max_length
            ) from None
        await after_piece(encoded, indices.start)
        parts.append(encoded)
    return concatenate(parts)
