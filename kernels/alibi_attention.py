"""Bidirectional attention with a symmetric ALiBi bias over packed variable-length sequences.

Layout follows flash-attention's varlen API: the tokens of all sequences are concatenated,
``cu_seqlens`` holds the offsets (int32, [batch + 1]). Queries may be a prefix of each sequence
(``cu_seqlens_q`` differs from ``cu_seqlens_k``): query row i of sequence b sits at position i, which
lets the last layer attend with the token-0 rows only.
"""

from __future__ import annotations

import torch

from turborank.kernels._alibi_common import (
    check_launch_config,
    check_lengths_tensor,
    check_max_seqlen,
    check_qkv,
    resolve_softmax_scale,
)
from turborank.kernels._launch import ENABLE_FP_FUSION, LOG2E, attention_block_d, attention_launch_config
from turborank.kernels.alibi_band import band_key_norm_max, use_band

# CUDA's limit on a grid's y and z extents (x reaches 2^31 - 1): the sequences' axis.
MAX_GRID_Y = 65535

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch engine below still works
    triton = None

if triton is not None:
    from turborank.kernels._launch import LOG2E_CONSTEXPR, sequence_span
    from turborank.kernels.alibi_band import BAND_BOUND_SLACK_CONSTEXPR, BAND_MARGIN_BITS_CONSTEXPR

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
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        # Query blocks in a grid-stride loop: the grid is sized from max_seqlen_q, which the host
        # passes without reading cu_seqlens; a value below the longest query run then costs speed,
        # never rows left unwritten. With a right value each program runs one block.
        for start_m in range(tl.program_id(0), tl.cdiv(len_q, BLOCK_M), tl.num_programs(0)):
            # Rows [start_m * BLOCK_M, +BLOCK_M) of this (sequence, head): online softmax over its keys.
            offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
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
                bound = qk_scale * q_norm * k_max * BAND_BOUND_SLACK_CONSTEXPR
                excess = bound - own + BAND_MARGIN_BITS_CONSTEXPR
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
    # CUDA caps a grid's y extent (the sequences) at 65,535: a larger batch runs in parts, each
    # from its first sequence's lengths (packed: rows are absolute) or rows (padded).
    for first in range(0, batch, MAX_GRID_Y):
        tensors = (q, k, v, out) if varlen or not first else (q[first:], k[first:], v[first:], out[first:])
        lengths = (cu_q, cu_k, seqlens_k) if not first else (cu_q[first:], cu_k[first:], seqlens_k[first:])
        grid = (triton.cdiv(max_seqlen_q, block_m), min(MAX_GRID_Y, batch - first), heads)
        _alibi_attention_kernel[grid](
            *tensors,
            slopes,
            *lengths,
            key_norm_max[first:] if banded and first else key_norm_max,
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
            enable_fp_fusion=ENABLE_FP_FUSION,
            num_stages=stages,
        )
    return out


def alibi_attention_triton(
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
    """Triton flash attention over packed sequences with a symmetric ALiBi bias (PyTorch engine:
    ``alibi_attention_torch``).

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
