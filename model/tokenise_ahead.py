"""Scoring a long list of pairs a chunk at a time: on a GPU the next chunk tokenised while the
device scores this one; on the CPU one chunk after the other.

On a GPU the forward of a chunk leaves the host's cores free, and tokenising is most of the host's
work: ``Reranker.predict`` over 100k pairs on the stand-in device spent 12.6 s tokenising and 2.3 s
scoring, one after the other. There a thread tokenises chunk k + 1 (tokenizers' Rust code, outside
the GIL, on all cores) while the calling thread packs and launches chunk k. On the CPU the two
would compete for the same cores, so the chunks are tokenised and scored in turn on the calling
thread: what that buys is memory. A list tokenised whole holds every pair's ids at once, about
200 bytes a token as Python lists (20k pairs of 20-200 words took the process from 355 to
1,141 MiB; a million pairs would not fit); in chunks of ``CPU_CHUNK_PAIRS`` pairs it holds one
chunk's, and the chunks are large enough to sort by length as well as the whole list does.

The result is what scoring the whole list at once gives: the window logits in order, the owners
over the whole list, the pairs truncated. The errors that name a pair (a text no tokenizer takes, a
query the settings leave no room) are the caller's to raise before the first chunk
(``PairTokenizer.check_pairs``), by the pair's index in the whole list; a chunk's own error is
raised as it came.
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


# Pairs per chunk on the CPU. Scoring 10k pairs of 20-200 words (small model, 2 Zen 4 cores) took
# 17.0-17.3 s in chunks of 4,096 as at once, 17.9-19.1 in chunks of 1,024, 19.5-20.3 in chunks of 256.
CPU_CHUNK_PAIRS = 4096


def chunk_pairs(batch_size: int, ahead: bool = True) -> int:
    """Pairs per chunk for forwards of at most ``batch_size`` pairs, tokenised ``ahead`` (GPU) or
    in turn (CPU): CHUNK_PAIRS or CPU_CHUNK_PAIRS, or a few of the caller's batches when those are
    larger, so that asking for large batches still gets them."""
    if ahead:
        return max(CHUNK_PAIRS, 4 * batch_size)
    return max(CPU_CHUNK_PAIRS, 16 * batch_size)


Pair = tuple[str, str]
Encode = Callable[[list[Pair]], tuple[EncodedPairs, list[int] | None]]


def score_in_chunks(
    pairs: Sequence[Pair],
    encode: Encode,
    score: Callable[[EncodedPairs], torch.Tensor],
    chunk_pairs: int = CHUNK_PAIRS,
    ahead: bool = True,
) -> tuple[torch.Tensor, list[int] | None, int]:
    """Score ``pairs`` chunk by chunk: ``encode(chunk)`` -> (EncodedPairs, owners or None), with
    ``ahead`` on a thread of its own one chunk ahead, else here before the chunk is scored;
    ``score(encoded)`` -> fp32 logits [sequences] here.
    Returns (logits [all sequences] in order, owners over all pairs or None, pairs truncated)."""
    starts = range(0, len(pairs), chunk_pairs)
    scored = _Scored()
    if not ahead:
        for start in starts:
            scored.add(start, encode(list(pairs[start : start + chunk_pairs])), score)
        return scored.result()
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

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
    try:
        for _ in starts:
            start, item = ready.get()
            if isinstance(item, BaseException):
                raise item
            scored.add(start, item, score)
    finally:
        stop.set()
        while producer.is_alive():  # a producer blocked on the full queue takes its slot and ends
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
    return scored.result()


class _Scored:
    """The chunks' logits, owners over the whole list, and pairs truncated, as they come."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.owners: list[int] = []
        self.truncated = 0
        self.chunked = False

    def add(
        self,
        start: int,
        item: tuple[EncodedPairs, list[int] | None],
        score: Callable[[EncodedPairs], torch.Tensor],
    ) -> None:
        encoded, chunk_owners = item
        self.truncated += encoded.truncated
        if chunk_owners is not None:
            self.chunked = True
            self.owners += [start + owner for owner in chunk_owners]
        self.logits.append(score(encoded))

    def result(self) -> tuple[torch.Tensor, list[int] | None, int]:
        return torch.cat(self.logits), (self.owners if self.chunked else None), self.truncated
