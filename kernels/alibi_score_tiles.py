"""bf16 score tiles for the PyTorch engine of ``alibi_attention``: short sequences of any lengths
batched into a few calls.

Sequences are bucketed by their key count rounded up to a multiple of ``KEY_MULTIPLE``, and the
sequences of a bucket run together, padded to the bucket's key count and to the longest query run
of the group: per group one gather of q, k and v into a heads-major layout, one bias tile (the
ALiBi distances, with the padded key columns at -inf), one ``baddbmm`` adding q kᵀ into it, a
softmax and a ``bmm`` with v, and one scatter of the rows back. Why padded:

- PyTorch's bf16 softmax runs its last dimension in vectors of 32 on AVX-512 CPUs and the rest
  element by element: on a Zen 5, 12 heads x 79 x 79 scores took 81 us, x 96 x 96 took 38;
- the batched GEMMs go through oneDNN, which builds and caches a primitive per shape; one shape per
  bucket instead of one per sequence length keeps a batch of short documents inside the cache
  (measured with a cache of 32: the model card's bf16 forward took 43 ms where the cache held
  every shape, 36 ms once it did);
- one call per bucket instead of a dozen small ops per sequence.

Padded key columns are -inf before the softmax and their k and v rows are zero, so they add
exact zeros (and a NaN or inf in one sequence's rows stays in that sequence's rows); padded query
rows are computed and dropped. The scores are rounded to bf16 once, as the reference's own bf16
forward rounds them, and the softmax is computed in fp32.
"""

from __future__ import annotations

import itertools

import torch

from turborank.kernels._alibi_common import reversed_key_bias

# The key count a tile is padded to a multiple of: the bf16 softmax's vector width (32 bf16 lanes).
KEY_MULTIPLE = 32
# Scores per group call: sequences join a group up to this many (one sequence may hold more). The
# softmax reads its tile three times; at 12 x 512 x 512 scores per call (one 512-token sequence)
# it ran at 0.26 ns a score on 2 Zen 5 cores, at twice that it took 0.47.
GROUP_ELEMENTS = 3 << 20


def padded_keys(length: int) -> int:
    return -(-length // KEY_MULTIPLE) * KEY_MULTIPLE


def attend_in_padded_tiles(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    starts_q: list[int],
    starts_k: list[int],
    sequences: list[int],
    slopes: torch.Tensor,
    scale: float,
    tile_elements: int,
    out: torch.Tensor,
) -> None:
    """Attention of ``sequences`` (indices into the packed batch), written into ``out``.

    Args:
        q: [total_q, heads, d]; k, v: [total_k, heads, d]; out: like q. Same dtype (bf16).
        starts_q, starts_k: the cu_seqlens as lists; every listed sequence has queries and keys.
        slopes: fp32 [heads].
        tile_elements: the most scores one call may hold (heads x sequences x rows x keys); a
            sequence larger than that alone runs in blocks of query rows.
    """
    heads = q.shape[1]
    buckets: dict[int, list[int]] = {}
    for seq in sequences:
        buckets.setdefault(padded_keys(starts_k[seq + 1] - starts_k[seq]), []).append(seq)
    for keys, members in buckets.items():
        # Longest query runs first, so that each group pads its queries to a near length.
        members.sort(key=lambda seq: starts_q[seq] - starts_q[seq + 1])
        lengths_k = [starts_k[seq + 1] - starts_k[seq] for seq in members]
        # Every member's keys at once, [members, heads, keys, d]: each sequence's keys reversed,
        # its padding in front (zero rows, and -inf in the key mask).
        index, pads, _ = _gather_index([starts_k[seq] for seq in members], lengths_k, keys, True, q.device)
        ks, vs = (_member_major(x, index, pads, len(members), keys) for x in (k, v))
        key_mask = None
        if any(n < keys for n in lengths_k):
            slot = torch.arange(keys, device=q.device)[None, :]
            padding = slot < keys - torch.tensor(lengths_k, device=q.device)[:, None]
            key_mask = torch.zeros(len(members), keys, device=q.device, dtype=q.dtype)
            key_mask.masked_fill_(padding, float("-inf"))
        first = 0
        while first < len(members):
            rows = starts_q[members[first] + 1] - starts_q[members[first]]
            count = max(1, min(GROUP_ELEMENTS, tile_elements) // (heads * rows * keys))
            part = slice(first, first + count)
            first += count
            # The keys are reversed and padded in front, so the bias is a strided view of this.
            bias = reversed_key_bias(slopes, rows, keys, q.dtype)
            _attend_group(
                q,
                starts_q,
                members[part],
                ks[part],
                vs[part],
                None if key_mask is None else key_mask[part],
                bias,
                scale,
                tile_elements,
                out,
            )


def _gather_index(
    starts: list[int], lengths: list[int], padded: int, reverse: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For sequences at ``starts`` laid out in ``padded`` slots each (in order with the padding at
    the end, or ``reverse``d with the padding in front): the packed row each slot reads (padding
    slots read their sequence's first row), the padding slots, and the valid slots; int64.
    Built on the host: a few thousand slots take less than the dozen small tensor ops would."""
    index: list[int] = []
    pads: list[int] = []
    valid: list[int] = []
    for start, length in zip(starts, lengths, strict=True):
        slot = len(index)
        pad = [start] * (padded - length)
        if reverse:
            index += pad
            index += range(start + length - 1, start - 1, -1)
            pads += range(slot, slot + padded - length)
            valid += range(slot + padded - length, slot + padded)
        else:
            index += range(start, start + length)
            index += pad
            valid += range(slot, slot + length)
            pads += range(slot + length, slot + padded)

    def as_tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    return as_tensor(index), as_tensor(pads), as_tensor(valid)


def _member_major(
    x: torch.Tensor, index: torch.Tensor, pads: torch.Tensor, count: int, slots: int
) -> torch.Tensor:
    """[count, heads, slots, d]: the rows ``index`` names, zero in the ``pads`` slots."""
    gathered = x.index_select(0, index)
    if pads.numel():
        gathered.index_fill_(0, pads, 0)
    return gathered.view(count, slots, *x.shape[1:]).transpose(1, 2).contiguous()


def _attend_group(
    q: torch.Tensor,
    starts_q: list[int],
    group: list[int],
    ks: torch.Tensor,
    vs: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor,
    scale: float,
    tile_elements: int,
    out: torch.Tensor,
) -> None:
    """``group``'s attention into ``out``. ks, vs: [count, heads, keys, d]; key_mask: [count, keys]
    (0 or -inf) or None without padding; bias: [heads, rows + keys - 1]."""
    count, heads, keys, d = ks.shape
    lengths_q = [starts_q[s + 1] - starts_q[s] for s in group]
    rows, device = max(lengths_q), q.device
    # Consecutive sequences that fill their query rows (10 x 512 tokens) are read and written as
    # one slice; other groups through an index.
    dense = all(n == rows for n in lengths_q) and all(
        starts_q[a + 1] == starts_q[b] for a, b in itertools.pairwise(group)
    )
    if dense:
        span_q = slice(starts_q[group[0]], starts_q[group[-1] + 1])
        qs = q[span_q].view(count, rows, heads, d).transpose(1, 2).contiguous()
    else:
        index_q, pads_q, valid_q = _gather_index([starts_q[s] for s in group], lengths_q, rows, False, device)
        qs = _member_major(q, index_q, pads_q, count, rows)
    keys_t = ks.view(count * heads, keys, d).transpose(1, 2)
    vs = vs.view(count * heads, keys, d)
    context = torch.empty(count, heads, rows, d, device=device, dtype=q.dtype)
    # One sequence too large for a tile runs in blocks of query rows (then count == 1).
    block = max(1, min(rows, tile_elements // (heads * count * keys)))
    width = bias.shape[1]
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        shape = (count * heads, stop - start, keys)
        q_block = qs[:, :, start:stop].reshape(shape[0], shape[1], d)
        view = bias.as_strided(
            (1, heads, stop - start, keys), (0, width, 1, 1), bias.storage_offset() + start
        )
        if key_mask is None and count == 1:  # baddbmm copies the bias view into its result
            scores = torch.baddbmm(view.view(shape), q_block, keys_t, alpha=scale)
        else:  # a fresh tile holding the bias (and the key mask), q kᵀ added in place
            tile = torch.empty(shape, device=device, dtype=q.dtype).view(count, heads, stop - start, keys)
            if key_mask is None:
                tile.copy_(view.expand_as(tile))
            else:
                torch.add(view, key_mask[:, None, None, :], out=tile)
            scores = tile.view(shape).baddbmm_(q_block, keys_t, alpha=scale)
        if stop - start == rows:
            torch.bmm(scores.softmax(-1), vs, out=context.view(count * heads, rows, d))
        else:
            context[:, :, start:stop] = torch.bmm(scores.softmax(-1), vs).view(count, heads, stop - start, d)
    if dense:
        out[span_q].view(count, rows, heads, d).copy_(context.transpose(1, 2))
    else:
        valid_rows = context.transpose(1, 2).reshape(count * rows, heads, d).index_select(0, valid_q)
        out.index_copy_(0, index_q.index_select(0, valid_q), valid_rows)
