"""Scoring a long list of pairs with the next chunk tokenised while the device scores this one.

On a GPU the forward of a chunk leaves the host's cores free, and tokenising is most of the host's
work: ``Reranker.predict`` over 100k pairs on the stand-in device spent 12.6 s tokenising and 2.3 s
scoring, one after the other. Here a thread tokenises chunk k + 1 (tokenizers' Rust code, outside
the GIL, on all cores) while the calling thread packs and launches chunk k. On the CPU the two
would compete for the same cores, so ``Reranker`` does this only where the model runs elsewhere.

The result is what scoring the whole list at once gives: the window logits in order, the owners
over the whole list, the pairs truncated; a tokenising error is raised as the whole list's
tokenising raises it (naming the pair by its index in the list, not in its chunk).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence

import torch

from turborank.tokenization import EncodedPairs

# Pairs per chunk: tens of milliseconds of tokenising on 2 cores, several forwards' worth of pairs
# to sort by length, and the device starts soon. On the stand-in device 256 was the best of 256,
# 1,024 and 4,096 for 1,000, 5,000 and 100k pairs (100k: 10.8 against 11.0-11.2 s).
CHUNK_PAIRS = 256


def chunk_pairs(batch_size: int) -> int:
    """Pairs per chunk for forwards of at most ``batch_size`` pairs: CHUNK_PAIRS, or four of the
    caller's batches when those are larger, so that asking for large batches still gets them."""
    return max(CHUNK_PAIRS, 4 * batch_size)


Pair = tuple[str, str]
Encode = Callable[[list[Pair]], tuple[EncodedPairs, list[int] | None]]


def score_tokenising_ahead(
    pairs: Sequence[Pair],
    encode: Encode,
    score: Callable[[EncodedPairs], torch.Tensor],
    chunk_pairs: int = CHUNK_PAIRS,
) -> tuple[torch.Tensor, list[int] | None, int]:
    """Score ``pairs`` chunk by chunk: ``encode(chunk)`` -> (EncodedPairs, owners or None) on a
    thread of its own, one chunk ahead; ``score(encoded)`` -> fp32 logits [sequences] here.
    Returns (logits [all sequences] in order, owners over all pairs or None, pairs truncated)."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    starts = range(0, len(pairs), chunk_pairs)

    def produce() -> None:
        for start in starts:
            if stop.is_set():
                return
            try:
                item: object = encode(list(pairs[start : start + chunk_pairs]))
            except BaseException as exc:  # raised where the chunks are scored
                item = exc
            ready.put((start, item))
            if isinstance(item, BaseException):
                return

    producer = threading.Thread(target=produce, name="turborank-tokenise-ahead", daemon=True)
    producer.start()
    logits: list[torch.Tensor] = []
    owners: list[int] = []
    truncated = 0
    chunked = False
    try:
        for _ in starts:
            start, item = ready.get()
            if isinstance(item, BaseException):
                # Tokenised whole, the list raises the error that names the pair by its index in
                # the list; should it not fail that way, the chunk's own error stands.
                encode(list(pairs))
                raise item
            encoded, chunk_owners = item
            truncated += encoded.truncated
            if chunk_owners is not None:
                chunked = True
                owners += [start + owner for owner in chunk_owners]
            logits.append(score(encoded))
    finally:
        stop.set()
        while producer.is_alive():  # a producer blocked on the full queue takes its slot and ends
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
    return torch.cat(logits), (owners if chunked else None), truncated
