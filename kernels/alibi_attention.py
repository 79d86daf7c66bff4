"""Bidirectional attention with a symmetric ALiBi bias over packed variable-length sequences.

Layout follows flash-attention's varlen API: the tokens of all sequences are concatenated,
``cu_seqlens`` holds the offsets (int32, [batch + 1]). Queries may be a prefix of each sequence
(``cu_seqlens_q`` differs from ``cu_seqlens_k``): query row i of sequence b sits at position i, which
lets the last layer attend with the token-0 rows only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from turborank.kernels._alibi_common import (
    check_launch_config,
    check_lengths_tensor,
    check_max_seqlen,
    check_qkv,
    check_ref_lengths,
    resolve_softmax_scale,
)
from turborank.kernels._launch import LOG2E, attention_block_d, attention_launch_config
from turborank.kernels.alibi_band import band_key_norm_max, band_key_ranges, use_band

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch reference below still works
    triton = None

if triton is not None:
    from turborank.kernels._launch import LOG2E_CONSTEXPR, sequence_span
    from turborank.kernels.alibi_band import BAND_BOUND_SLACK_CONSTEXPR, BAND_MARGIN_BITS_CONSTEXPR

    @triton.jit
    def _attend_query_block(
        start_m,
        Q,
        Out,
        k_base,
        v_base,
        seq64,
        head,
        q_start,
        len_q,
        len_k,
        k_max,
        neg_slope,
        qk_scale,
        stride_qb,
        stride_qm,
        stride_qh,
        stride_kn,
        stride_vn,
        stride_ob,
        stride_om,
        stride_oh,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE_FP32: tl.constexpr,
        BANDED: tl.constexpr,
    ):
        """Rows [start_m * BLOCK_M, +BLOCK_M) of one (sequence, head): online softmax over its keys."""
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        row_ok = offs_m < len_q
        q_ptrs = (
            Q
            + seq64 * stride_qb
            + head * stride_qh
            + (q_start + offs_m)[:, None] * stride_qm
            + offs_d[None, :]
        )
        q = tl.load(q_ptrs, mask=row_ok[:, None] & mask_d[None, :], other=0.0)
        query_pos = offs_m.to(tl.float32)

        key_lo = 0
        key_hi = len_k
        if BANDED:
            # Keys this block can skip (see band_key_ranges): the largest score key j could
            # reach, qk_scale * |q_i| * max |k|, minus the bias, stays 56 bits below the score
            # with the key at the query's own position. Everything here is in the exp2 domain.
            # A query past its sequence's last key (padding rows of the padded layout) has no
            # own key to measure against.
            has_own = row_ok & (offs_m < len_k)
            k_own = tl.load(
                k_base + offs_m[:, None] * stride_kn + offs_d[None, :],
                mask=has_own[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            q32 = q.to(tl.float32)
            own = tl.sum(q32 * k_own, 1) * qk_scale
            q_norm = tl.sqrt(tl.sum(q32 * q32, 1))
            excess = qk_scale * q_norm * k_max * BAND_BOUND_SLACK_CONSTEXPR - own + BAND_MARGIN_BITS_CONSTEXPR
            radius = excess / tl.maximum(-neg_slope, 1e-30)
            # Every key for: a zero slope (a radius past any length), a non-finite input (NaN
            # radius, or the infinite key bound of the pre-pass: NaN and inf must reach the
            # output as they do without the band) and a row without an own key.
            radius = tl.where(has_own & (radius >= 0), radius, float("inf"))
            first = tl.min(tl.where(row_ok, query_pos - radius, float("inf")), 0)
            last = tl.max(tl.where(row_ok, query_pos + radius, float("-inf")), 0)
            length = len_k.to(tl.float32)
            key_lo = tl.minimum(tl.maximum(first, 0.0), length).to(tl.int32) // BLOCK_N * BLOCK_N
            key_hi = tl.minimum(tl.maximum(last + 2.0, 0.0), length).to(tl.int32)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start_n in range(key_lo, key_hi, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < len_k
            k = tl.load(
                k_base + cols[None, :] * stride_kn + offs_d[:, None],
                mask=col_ok[None, :] & mask_d[:, None],
                other=0.0,
            )
            if IEEE_FP32:
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            distance = tl.abs(query_pos[:, None] - cols.to(tl.float32)[None, :])
            s = s * qk_scale + neg_slope * distance
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + cols[:, None] * stride_vn + offs_d[None, :],
                mask=col_ok[:, None] & mask_d[None, :],
                other=0.0,
            )
            if IEEE_FP32:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        o_ptrs = (
            Out
            + seq64 * stride_ob
            + head * stride_oh
            + (q_start + offs_m)[:, None] * stride_om
            + offs_d[None, :]
        )
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & mask_d[None, :])

    @triton.jit(do_not_specialize=["stride_qb", "stride_kb", "stride_vb", "stride_ob", "rows_q", "rows_k"])
    def _alibi_attention_kernel(
        Q,
        K,
        V,
        Out,
        Slopes,  # [heads] fp32
        CuSeqlensQ,  # [batch + 1] int32 (VARLEN)
        CuSeqlensK,  # [batch + 1] int32 (VARLEN)
        SeqlensK,  # [batch] int32 key lengths (padded layout)
        KeyNormMax,  # [batch, heads] fp32 from alibi_band's pre-pass (BANDED)
        stride_qb,
        stride_qm,
        stride_qh,
        stride_kb,
        stride_kn,
        stride_kh,
        stride_vb,
        stride_vn,
        stride_vh,
        stride_ob,
        stride_om,
        stride_oh,
        rows_q,  # rows of q: all (packed) or per sequence (padded layout)
        rows_k,  # rows of k and v, likewise
        qk_scale,  # softmax_scale * log2(e) > 0: scores live in the exp2 domain
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        VARLEN: tl.constexpr,
        IEEE_FP32: tl.constexpr,
        BANDED: tl.constexpr,
    ):
        seq = tl.program_id(1)
        head = tl.program_id(2)
        k_start, len_k = sequence_span(CuSeqlensK, SeqlensK, seq, rows_k, VARLEN)
        if VARLEN:
            q_start, len_q = sequence_span(CuSeqlensQ, CuSeqlensQ, seq, rows_q, VARLEN)
        else:
            q_start = 0
            len_q = rows_q
        seq64 = seq.to(tl.int64)
        k_base = K + seq64 * stride_kb + head * stride_kh + k_start * stride_kn
        v_base = V + seq64 * stride_vb + head * stride_vh + k_start * stride_vn
        # -slope * |i - j| in the exp2 domain, formed in fp32 registers from the tile indices.
        neg_slope = -tl.load(Slopes + head) * LOG2E_CONSTEXPR
        k_max = 0.0
        if BANDED:
            k_max = tl.load(KeyNormMax + seq64 * tl.num_programs(2) + head)
        # Query blocks in a grid-stride loop: the grid is sized from max_seqlen_q, which the host
        # passes without reading cu_seqlens; a value below the longest query run then costs speed,
        # never rows left unwritten. With a right value each program runs one block.
        for start_m in range(tl.program_id(0), tl.cdiv(len_q, BLOCK_M), tl.num_programs(0)):
            _attend_query_block(
                start_m,
                Q,
                Out,
                k_base,
                v_base,
                seq64,
                head,
                q_start,
                len_q,
                len_k,
                k_max,
                neg_slope,
                qk_scale,
                stride_qb,
                stride_qm,
                stride_qh,
                stride_kn,
                stride_vn,
                stride_ob,
                stride_om,
                stride_oh,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_M,
                BLOCK_N,
                IEEE_FP32,
                BANDED,
            )


def launch_alibi_attention(
    q,
    k,
    v,
    out,
    slopes,
    cu_q,
    cu_k,
    seqlens_k,
    batch,
    rows_q,
    rows_k,
    max_seqlen_q,
    scale,
    strides,
    varlen,
    launch_config,
    max_seqlen_k,
    band,
):
    """Launch the attention kernel (after the band pre-pass when banded) into ``out``; the
    layout (packed when ``varlen``, else padded) is described by the lengths, ``strides`` (q's,
    k's, v's, out's (batch, row, head) strides) and row counts the public functions pass."""
    head_dim = q.shape[-1]
    heads = q.shape[-2]
    if launch_config is None:
        launch_config = attention_launch_config(head_dim, max_seqlen_q, q.dtype)
    else:
        check_launch_config(launch_config)
    block_m, block_n, warps, stages = launch_config
    block_d = attention_block_d(head_dim)
    banded = use_band(band, max_seqlen_k)
    key_norm_max = slopes  # any fp32 pointer: not read unless BANDED
    if banded:
        key_norm_max = band_key_norm_max(k, v, cu_k, seqlens_k, batch, rows_k, strides[3:9], varlen)
    grid = (triton.cdiv(max_seqlen_q, block_m), batch, heads)
    _alibi_attention_kernel[grid](
        q,
        k,
        v,
        out,
        slopes,
        cu_q,
        cu_k,
        seqlens_k,
        key_norm_max,
        *strides,
        rows_q,
        rows_k,
        scale * LOG2E,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        VARLEN=varlen,
        IEEE_FP32=q.dtype == torch.float32,
        BANDED=banded,
        num_warps=warps,
        num_stages=stages,
    )
    return out


def alibi_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    slopes: torch.Tensor,
    softmax_scale: float | None = None,
    *,
    band: bool | None = None,
    launch_config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Triton flash attention over packed sequences with a symmetric ALiBi bias; see ``alibi_attention_ref``.

    Args:
        q: [total_q, heads, d]; k, v: [total_k, heads, d]; fp16, bf16 or fp32, d <= 256, any row
            stride (the q/k/v views of a fused QKV projection work as they are).
        cu_seqlens_q, cu_seqlens_k: contiguous int32 [batch + 1]. Query row i of sequence b sits at
            position i (queries are a prefix of the sequence; rows past its last key attend to all
            of its keys from their own position).
        max_seqlen_q: Python int >= 1, sizes the grid; a value below the longest query run is
            slower, never wrong. max_seqlen_k: Python int; the key loop reads each length from
            cu_seqlens_k, this only decides ``band``.
        slopes: contiguous fp32 [heads], >= 0.
        softmax_scale: positive; defaults to 1 / sqrt(d).
        band: skip the key tiles that provably weigh less than 2^-56 of each row's largest (the
            bound of ``band_key_ranges``, from the data at hand); None = from ``BAND_MIN_SEQLEN``
            keys on. Steep ALiBi heads then read a band around the diagonal. A non-finite q, k or v
            turns the band off where it is, so it reaches the output as without the band.
        launch_config: (BLOCK_M, BLOCK_N, num_warps, num_stages) instead of the built-in choice;
            for tuning (benchmarks/gpu/tune_attention.py). BLOCK_M and BLOCK_N must be powers of two >= 16.
    Returns:
        [total_q, heads, d] in q's dtype. Never materialises a score or bias matrix: each [BLOCK_M,
        BLOCK_N] tile's bias is computed in registers, softmax is online in fp32 with exp2.

    The lengths in cu_seqlens are not read on the host (that would be a device sync per call); the
    PyTorch path, which reads them anyway, checks them. Here they are clamped to the rows of q and
    k, so nothing outside the tensors is read whatever they say; a sequence with queries and no
    keys gets NaN rows (a softmax over nothing), which the PyTorch path refuses.
    """
    check_qkv(q, k, v, slopes, dims=3)
    check_lengths_tensor("cu_seqlens_q", cu_seqlens_q, q.device)
    check_lengths_tensor("cu_seqlens_k", cu_seqlens_k, q.device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.numel() == 0:
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1])
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    batch = cu_seqlens_q.shape[0] - 1
    if batch == 0 or q.shape[0] == 0:
        return out
    max_seqlen_q = check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = check_max_seqlen("max_seqlen_k", max_seqlen_k)
    strides = (
        0,
        q.stride(0),
        q.stride(1),
        0,
        k.stride(0),
        k.stride(1),
        0,
        v.stride(0),
        v.stride(1),
        0,
        out.stride(0),
        out.stride(1),
    )
    return launch_alibi_attention(
        q,
        k,
        v,
        out,
        slopes,
        cu_seqlens_q,
        cu_seqlens_k,
        cu_seqlens_q,
        batch,
        q.shape[0],
        k.shape[0],
        max_seqlen_q,
        scale,
        strides,
        varlen=True,
        launch_config=launch_config,
        max_seqlen_k=max_seqlen_k,
        band=band,
    )


# Query rows per band block: the band's key range is computed per (head, block of this many rows).
# Smaller blocks follow the band more closely and cost more calls; at 256 rows one call is about
# 10 us of overhead against milliseconds of work, and 8k tokens ran fastest (2 CPU cores).
_BAND_ROWS = 256
# Bias elements one SDPA call may cover. The CPU flash kernel reads the strided bias view in place;
# a backend that materialises it (math, or memory-efficient with an unaligned mask) then holds at
# most this many (32 MiB in fp32), so no path ever builds an [L, L] tensor.
_CALL_BIAS_ELEMENTS = 8 << 20
# Rows one banded call may merge: blocks of a head whose ranges barely differ (flat heads read
# every key) run as one call, which keeps the CPU kernel's work items few and large; it splits a
# call of >= 768 query rows into 256-row items, so merged calls stay at 512 rows or a multiple of
# 512, which divides evenly between threads.
_MERGED_ROWS_STEP = 512
_MERGE_SLACK = 1.15


def alibi_attention_ref(
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

    Computes in fp32 whatever the input dtype, with ``scaled_dot_product_attention`` (on CPU its
    flash kernel: online softmax over key blocks, no score matrix in memory). Each sequence runs on
    its own real keys, so there is no padding to mask; runs of sequences of one length share a call.
    The bias is never materialised either: with the keys in reverse order, -slope * |i - j| depends
    only on i + j', so one [heads, Lq + Lk - 1] vector viewed with strides (1, 1) is the whole
    [heads, Lq, Lk] bias. Bad lengths (cu_seqlens, max_seqlen) and scales are a ValueError naming
    the argument.
    """
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    _, heads, d = q.shape
    if slopes.shape != (heads,):
        raise ValueError(f"slopes must be [{heads}], got {tuple(slopes.shape)}")
    scale = resolve_softmax_scale(softmax_scale, d)
    max_seqlen_q = check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = check_max_seqlen("max_seqlen_k", max_seqlen_k)
    starts_q, starts_k = check_ref_lengths(
        cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.shape[0], k.shape[0]
    )
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()  # no copy in fp32
    out = torch.empty(starts_q[-1], heads, d, device=q.device, dtype=torch.float32)
    neg_slopes = -slopes.float().reshape(heads, 1)
    for first, count, length_q, length_k in _runs_of_one_length(starts_q, starts_k, heads):
        # [count, L, heads, d]: the packed rows of the run as a batch
        rows_q = slice(starts_q[first], starts_q[first] + count * length_q)
        rows_k = slice(starts_k[first], starts_k[first] + count * length_k)
        qs = q[rows_q].view(count, length_q, heads, d)
        ks = k[rows_k].view(count, length_k, heads, d)
        vs = v[rows_k].view(count, length_k, heads, d)
        # bias[h, t] = -slope_h * |t - (Lk - 1)|: query i against reversed key j' sits at t = i + j'
        offsets = torch.arange(length_q + length_k - 1, device=q.device, dtype=torch.float32) - (length_k - 1)
        bias = neg_slopes * offsets.abs_()  # a new contiguous tensor: _Run.attend views its storage
        # SDPA takes [batch, heads, L, d]; flipping the packed layout copies whole rows.
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
    return out.to(dtype)


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
