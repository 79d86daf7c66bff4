"""The PyTorch engine of ``alibi_attention``: what runs on CPU (and serves as the Triton kernel's
reference on GPU).

Two ways to run a sequence, both without an [L, L] tensor for any L past a
bounded tile:

- ``scaled_dot_product_attention`` with the ALiBi bias as a strided view that is never built (its
  CPU flash kernel keeps the scores in cache), in fp32, band-limited from ``BAND_MIN_SEQLEN`` keys;
- in bf16 up to ``_TILE_MAX_KEYS`` keys, score tiles (``alibi_score_tiles``): sequences of any
  lengths batched by their key count rounded up to 32, one ``baddbmm`` (q kᵀ plus the bias), a
  softmax and a ``bmm`` per group, all three bf16 kernels with fp32 accumulation. SDPA's CPU kernel
  is no faster in bf16 than in fp32 at head_dim 32, while these run the two products at the bf16
  GEMM rate (10 x 512 tokens, 12 heads, 2 Zen 4 cores: 31 against 49 ms per layer). The scores are
  rounded to bf16 once, as the reference's own bf16 forward rounds them; the softmax is computed
  in fp32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from turborank.kernels._alibi_common import (
    check_max_seqlen,
    check_qkv_types,
    check_ref_lengths,
    resolve_softmax_scale,
    reversed_key_bias,
)
from turborank.kernels.alibi_band import band_key_ranges, use_band
from turborank.kernels.alibi_score_tiles import attend_in_padded_tiles

# Query rows per band block: the band's key range is computed per (head, block of this many rows).
# Smaller blocks follow the band more closely and cost more calls; at 256 rows one call is about
# 10 us of overhead against milliseconds of work, and 8k tokens ran fastest (2 CPU cores).
_BAND_ROWS = 256
# Bias elements one SDPA call may cover. The CPU flash kernel reads the strided bias view in place;
# a backend that materialises it (math, or memory-efficient with an unaligned mask) then holds at
# most this many (32 MiB in fp32), so no path ever builds an [L, L] tensor.
_CALL_BIAS_ELEMENTS = 8 << 20
# bf16 runs of at most this many keys take the score tiles. Measured on the synthetic turbo model's
# own q, k, v (2 Zen 4 cores): tiles 1.45x faster at 512 keys, 1.35x at 768, level at 1,024; at 1,536
# SDPA with the band, which skips the far keys of the steep heads, is 1.5x faster.
_TILE_MAX_KEYS = 1024
# fp32 stays on SDPA: its flash kernel is as fast there (on the same q, k, v: 16 against 18 ms at 4 x
# 512 tokens, 25 against 54 at 3 x 768).
_TILE_DTYPES = (torch.bfloat16,)
# Rows one banded call may merge: blocks of a head whose ranges barely differ (flat heads read
# every key) run as one call, which keeps the CPU kernel's work items few and large; it splits a
# call of >= 768 query rows into 256-row items, so merged calls stay at 512 rows or a multiple of
# 512, which divides evenly between threads.
_MERGED_ROWS_STEP = 512
_MERGE_SLACK = 1.15


def alibi_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    slopes: torch.Tensor,
    softmax_scale: float | None = None,
    band: bool | None = None,
) -> torch.Tensor:
    """PyTorch path: softmax(q kᵀ * scale - slope * |i - j|) v per sequence.

    Args:
        q: [total_q, heads, d]; k, v: [total_k, heads, d], same dtype.
        cu_seqlens_q, cu_seqlens_k: int32 [batch + 1]; each sequence with queries needs at least one
            key. Query row i of a sequence sits at position i: queries are a prefix of the sequence,
            and rows past its last key (padding rows) attend to all of its keys.
        max_seqlen_q, max_seqlen_k: Python ints, at least the longest query / key run.
        slopes: fp32 [heads], >= 0.
        softmax_scale: positive; defaults to 1 / sqrt(d).
        band: each (head, block of query rows) reads only the keys whose weight can reach 2^-56 of
            the row's largest (see ``band_key_ranges``); None = from ``BAND_MIN_SEQLEN`` keys on,
            False reads all.
    Returns:
        [cu_seqlens_q[-1], heads, d] in q's dtype.

    Computes in fp32 with ``scaled_dot_product_attention`` (on CPU its flash kernel: online
    softmax over key blocks, no score matrix in memory), except bf16 sequences of at most
    ``_TILE_MAX_KEYS`` keys, which run in bf16 score tiles (module docstring). On SDPA each
    sequence runs on its own real keys, so there is no padding to mask; runs of sequences of one
    length share a call. The bias is never materialised either: with the keys in reverse order,
    -slope * |i - j| depends only on i + j', so one [heads, Lq + Lk - 1] vector viewed with
    strides (1, 1) is the whole [heads, Lq, Lk] bias. Bad lengths (cu_seqlens, max_seqlen) and
    scales are a ValueError naming the argument.
    """
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    check_qkv_types(q, k, v)
    _, heads, d = q.shape
    if slopes.shape != (heads,):
        raise ValueError(f"slopes must be [{heads}], got {tuple(slopes.shape)}")
    scale = resolve_softmax_scale(softmax_scale, d)
    max_seqlen_q = check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = check_max_seqlen("max_seqlen_k", max_seqlen_k)
    starts_q, starts_k = check_ref_lengths(
        cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.shape[0], k.shape[0]
    )
    out = torch.empty(starts_q[-1], heads, d, device=q.device, dtype=q.dtype)
    tiles = q.dtype in _TILE_DTYPES
    if tiles:
        tiled = [
            seq
            for seq in range(len(starts_q) - 1)
            if starts_q[seq + 1] > starts_q[seq] and starts_k[seq + 1] - starts_k[seq] <= _TILE_MAX_KEYS
        ]
        attend_in_padded_tiles(q, k, v, starts_q, starts_k, tiled, slopes, scale, _CALL_BIAS_ELEMENTS, out)
    for first, count, length_q, length_k in _runs_of_one_length(starts_q, starts_k, heads):
        if tiles and length_k <= _TILE_MAX_KEYS:
            continue  # done in the tiles above
        # [count, L, heads, d]: the packed rows of the run as a batch, in fp32 (SDPA's path computes
        # in fp32; no copy for an fp32 input)
        rows_q = slice(starts_q[first], starts_q[first] + count * length_q)
        rows_k = slice(starts_k[first], starts_k[first] + count * length_k)
        qs = q[rows_q].view(count, length_q, heads, d).float()
        ks = k[rows_k].view(count, length_k, heads, d).float()
        vs = v[rows_k].view(count, length_k, heads, d).float()
        bias = reversed_key_bias(slopes, length_q, length_k, torch.float32)  # _Run views its storage
        # SDPA takes [batch, heads, L, d] and reads strides; flipping the packed layout copies whole rows.
        run = _Run(qs.transpose(1, 2), ks.flip(1).transpose(1, 2), vs.flip(1).transpose(1, 2), bias, scale)
        dest = out[rows_q].view(count, length_q, heads, d).transpose(1, 2)
        if use_band(band, length_k):
            ranges = band_key_ranges(qs, ks, vs, slopes, scale, _BAND_ROWS)
            for h, head_ranges in enumerate(ranges):
                for start, stop, lo, hi in _merged_blocks(head_ranges, length_q, count):
                    dest[:, h : h + 1, start:stop] = run.attend(h, h + 1, start, stop, lo, hi)
        else:
            rows = max(1, _CALL_BIAS_ELEMENTS // (count * heads * length_k))
            for start in range(0, length_q, rows):
                stop = min(start + rows, length_q)
                dest[:, :, start:stop] = run.attend(0, heads, start, stop, 0, length_k)
    return out


@dataclasses.dataclass
class _Run:
    """Sequences of one length: q [n, heads, Lq, d]; k, v [n, heads, Lk, d] with keys reversed;
    bias [heads, Lq + Lk - 1]."""

    q: torch.Tensor
    k_reversed: torch.Tensor
    v_reversed: torch.Tensor
    bias: torch.Tensor
    scale: float

    def attend(self, h0: int, h1: int, start: int, stop: int, lo: int, hi: int) -> torch.Tensor:
        """Heads h0:h1, query rows start:stop against keys lo:hi -> [n, h1 - h0, stop - start, d]."""
        n, length_k = self.q.shape[0], self.k_reversed.shape[2]
        width = self.bias.shape[1]
        # Reversed keys lo:hi are rows Lk - hi : Lk - lo; query i and reversed key j' read bias[i + j'].
        mask = self.bias.as_strided(
            (n, h1 - h0, stop - start, hi - lo), (0, width, 1, 1), h0 * width + start + length_k - hi
        )
        keys = slice(length_k - hi, length_k - lo)
        return F.scaled_dot_product_attention(
            self.q[:, h0:h1, start:stop],
            self.k_reversed[:, h0:h1, keys],
            self.v_reversed[:, h0:h1, keys],
            attn_mask=mask,
            scale=self.scale,
        )


def _runs_of_one_length(
    starts_q: list[int], starts_k: list[int], heads: int
) -> Iterator[tuple[int, int, int, int]]:
    """(first sequence, count, Lq, Lk) for runs of consecutive sequences of equal lengths with
    queries, cut so that a call over all heads and ``_BAND_ROWS`` query rows of a run covers at
    most ``_CALL_BIAS_ELEMENTS``."""

    def lengths_of(seq: int) -> tuple[int, int]:
        return starts_q[seq + 1] - starts_q[seq], starts_k[seq + 1] - starts_k[seq]

    batch, first = len(starts_q) - 1, 0
    while first < batch:
        length_q, length_k = lengths_of(first)
        most = (
            max(1, _CALL_BIAS_ELEMENTS // (heads * min(length_q, _BAND_ROWS) * length_k))
            if length_q
            else batch
        )
        end = first + 1
        while end < batch and end - first < most and lengths_of(end) == (length_q, length_k):
            end += 1
        if length_q:
            yield first, end - first, length_q, length_k
        first = end


def _merged_blocks(
    ranges: list[tuple[int, int]], length_q: int, count: int
) -> Iterator[tuple[int, int, int, int]]:
    """One head's (first key, end key) per block of ``_BAND_ROWS`` query rows -> calls
    (start row, stop row, first key, end key): neighbouring blocks merge while the merged call
    computes at most ``_MERGE_SLACK`` times their scores and covers at most ``_CALL_BIAS_ELEMENTS``."""
    rows = _BAND_ROWS
    blocks = [(b * rows, min(b * rows + rows, length_q), lo, hi) for b, (lo, hi) in enumerate(ranges)]
    i = 0
    while i < len(blocks):
        start, stop, lo, hi = blocks[i]
        scores, j = (stop - start) * (hi - lo), i + 1
        best = (j, stop, lo, hi)  # the longest merge whose rows divide evenly (see _MERGED_ROWS_STEP)
        while j < len(blocks):
            _, next_stop, next_lo, next_hi = blocks[j]
            lo, hi = min(lo, next_lo), max(hi, next_hi)
            scores += (next_stop - blocks[j][0]) * (next_hi - next_lo)
            merged = next_stop - start
            if merged * (hi - lo) > _MERGE_SLACK * scores or count * merged * (hi - lo) > _CALL_BIAS_ELEMENTS:
                break
            j += 1
            if merged <= _MERGED_ROWS_STEP or merged % _MERGED_ROWS_STEP == 0 or next_stop == length_q:
                best = (j, next_stop, lo, hi)
        i, stop, lo, hi = best
        yield start, stop, lo, hi
