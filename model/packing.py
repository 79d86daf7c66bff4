"""The packed layout the model consumes, and how pairs are ordered and grouped into it.

The forward takes sequences concatenated without padding: ``input_ids`` [total_tokens] int64 and
``cu_seqlens`` [batch + 1] int32 offsets (``cu_seqlens[0] == 0``, sequence ``b`` is rows
``cu_seqlens[b]:cu_seqlens[b + 1]``). Every place that builds those offsets, sorts pairs longest
first, plans batches or lays a batch into a CUDA-graph bucket does it here.

CUDA-graph buckets: shapes must be static inside a graph, so a small batch is laid out into a
(pairs, tokens) bucket:

- the real sequences first, then ``pairs - n`` dummy sequences; the first dummy takes every token
  the bucket has to spare and the others one token each, so every row of every buffer belongs to a
  non-empty sequence (no uninitialised rows, no empty sequence whose token 0 would be out of
  range) and the real sequences' attention never sees a dummy token;
- ``max_seqlen`` is the bucket's token count, an upper bound for any sequence in it: it only sizes
  the attention grid, whose programs past a sequence's real length return at once.
"""

from __future__ import annotations

import array
import bisect
import itertools
from collections.abc import Sequence

import torch

from turborank.ranking import best_first

PAIR_BUCKETS = (2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
PAD_TOKEN_ID = 0  # any valid id: dummy sequences' logits are dropped

Packed = tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]


def cu_seqlens(
    lengths: Sequence[int] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """Offsets [len(lengths) + 1] int32 of sequences of these lengths laid end to end: 0, then the
    running sums. An empty ``lengths`` gives ``[0]`` (a batch of no sequences)."""
    if isinstance(lengths, torch.Tensor):
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = lengths.cumsum(0)
    else:  # one tensor from the running sums: a batch of a few short pairs is host overhead first
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return cu if device is None else cu.to(device)


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group pair indices longest first, so each batch holds sequences of similar length.

    A batch holds at most ``batch_size`` pairs and at most ``max_batch_tokens`` tokens counted as
    if padded to its longest member (that bounds the PyTorch path's padded attention too); a pair
    longer than the budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    for index in best_first(lengths):  # longest first; equal lengths keep input order
        if batches:
            current = batches[-1]
            longest = lengths[current[0]]
            if len(current) < batch_size and (len(current) + 1) * longest <= max_batch_tokens:
                current.append(index)
                continue
        batches.append([index])
    return batches


def _flat_int64(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """The sequences concatenated, int64, through an ``array``: ``fromlist`` converts a list's ints
    in one C loop, 3x an ``array`` built from a chained iterator and 6x ``torch.tensor`` of a list
    (50, 150 and about 300 us for 13 x 300 ids)."""
    values = array.array("q")
    for sequence in sequences:
        if isinstance(sequence, list):
            values.fromlist(sequence)
        else:
            values.extend(sequence)
    return torch.frombuffer(values, dtype=torch.int64) if values else torch.empty(0, dtype=torch.int64)


def pack(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None = None) -> Packed:
    """Sequences in the packed layout: (input_ids [total_tokens] int64, cu_seqlens [batch + 1]
    int32, max_seqlen, token_type_ids [total_tokens] int64 or None), all on the host. Needs at
    least one sequence."""
    lengths = [len(ids) for ids in input_ids]
    flat_ids = _flat_int64(input_ids)
    flat_types = None if token_type_ids is None else _flat_int64(token_type_ids)
    return flat_ids, cu_seqlens(lengths), max(lengths), flat_types


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``, the copy queued without waiting. A CUDA copy from pageable
    memory may make the host wait for the stream, so for the forward already queued, before it
    starts; from pinned memory it is only queued, and the host goes on to launch this forward and
    pack the next batch while the device works. The pinned block comes from PyTorch's caching host
    allocator, which does not hand it out again before the copy has run."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def unpack(flat: torch.Tensor, cu: torch.Tensor) -> list[list[int]]:
    """The sequences of a packed [total_tokens] tensor, as lists: the inverse of ``pack``."""
    bounds = cu.tolist()
    values = flat.tolist()
    return [values[start:stop] for start, stop in itertools.pairwise(bounds)]


def in_input_order(batch_outputs: list[torch.Tensor], order: list[int], n: int) -> torch.Tensor:
    """fp32 [n] on the host: outputs computed batch by batch (``order`` is the concatenation of the
    batches' pair indices) put back where each pair came in."""
    if len(batch_outputs) == 1 and order == list(range(n)):  # one batch, in order: nothing to move
        # A copy: the forward's output is an inference tensor, which a caller could not write to.
        return batch_outputs[0].float().cpu().clone()
    out = torch.empty(n, dtype=torch.float32)
    if order:
        out[torch.tensor(order)] = torch.cat(batch_outputs).cpu()
    return out


def choose_bucket(
    lengths: list[int], max_pairs: int = PAIR_BUCKETS[-1], max_tokens: int = TOKEN_BUCKETS[-1]
) -> tuple[int, int] | None:
    """(pairs, tokens) of the smallest bucket that holds ``lengths`` with at least one dummy
    sequence, or None when the batch is too large to be worth a graph (it runs eagerly)."""
    n = len(lengths)
    index = bisect.bisect_left(PAIR_BUCKETS, n + 1)
    if n == 0 or index == len(PAIR_BUCKETS) or PAIR_BUCKETS[index] > max_pairs:
        return None
    pairs = PAIR_BUCKETS[index]
    needed = sum(lengths) + pairs - n
    index = bisect.bisect_left(TOKEN_BUCKETS, needed)
    if index == len(TOKEN_BUCKETS) or TOKEN_BUCKETS[index] > max_tokens:
        return None
    return pairs, TOKEN_BUCKETS[index]


def bucket_layout(
    input_ids: list[list[int]], token_type_ids: list[list[int]] | None, bucket: tuple[int, int]
) -> torch.Tensor:
    """The batch laid out in its bucket as one int64 [2 * tokens + pairs + 1] tensor: input ids,
    token type ids, then cu_seqlens (one host-to-device copy moves all three)."""
    pairs, tokens = bucket
    n, used = len(input_ids), sum(len(ids) for ids in input_ids)
    spare = tokens - used - (pairs - n - 1)
    if n >= pairs or spare < 1:
        raise ValueError(f"{n} sequences of {used} tokens do not fit bucket {bucket}")
    lengths = [len(ids) for ids in input_ids] + [spare] + [1] * (pairs - n - 1)
    flat = torch.zeros(2 * tokens + pairs + 1, dtype=torch.long)
    flat[:tokens] = PAD_TOKEN_ID
    flat[:used] = _flat_int64(input_ids)
    if token_type_ids is not None:
        flat[tokens : tokens + used] = _flat_int64(token_type_ids)
    flat[2 * tokens :] = cu_seqlens(lengths)
    return flat
