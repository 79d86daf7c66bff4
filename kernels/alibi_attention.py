"""Bidirectional attention with a symmetric ALiBi bias over packed variable-length sequences.

Layout follows flash-attention's varlen API: the tokens of all sequences are concatenated,
``cu_seqlens`` holds the offsets (int32, [batch + 1]). Queries may be a prefix of each sequence
(``cu_seqlens_q`` differs from ``cu_seqlens_k``): query row i of sequence b sits at position i, which
lets the last layer attend with the token-0 rows only.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from turborank.kernels._launch import LOG2E, interpreting

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch reference below still works
    triton = None

# Band-limited attention (see _band_key_ranges): used from this many keys on (below it there is
# little to skip), with a 56-bit margin; the slack covers the rounding of the bound itself.
BAND_MIN_SEQLEN = 512
BAND_MARGIN_BITS = 56.0
BAND_BOUND_SLACK = 1.01

if triton is not None:
    from turborank.kernels._launch import LOG2E_CONSTEXPR

    _BAND_MARGIN_BITS = tl.constexpr(BAND_MARGIN_BITS)
    _BAND_BOUND_SLACK = tl.constexpr(BAND_BOUND_SLACK)

    @triton.jit
    def _sequence_span(CuSeqlens, Seqlens, seq, rows, VARLEN: tl.constexpr):
        """(first row, row count) of sequence ``seq``: from cu_seqlens when packed, else (0,
        Seqlens[seq]). Read from memory, never passed as arguments, so that a new sequence length
        reuses the compiled kernel. Clamped to the ``rows`` the tensor has (packed: all rows;
        padded: rows per sequence): lengths are not checked on the host (a device sync), and
        whatever they say, nothing outside the tensor is read."""
        if VARLEN:
            first = tl.minimum(tl.maximum(tl.load(CuSeqlens + seq), 0), rows)
            end = tl.minimum(tl.maximum(tl.load(CuSeqlens + seq + 1), first), rows)
            return first.to(tl.int64), end - first
        else:
            return 0, tl.minimum(tl.maximum(tl.load(Seqlens + seq), 0), rows)

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
            # Keys this block can skip (see _band_key_ranges): the largest score key j could
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
            excess = qk_scale * q_norm * k_max * _BAND_BOUND_SLACK - own + _BAND_MARGIN_BITS
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
        KeyNormMax,  # [batch, heads] fp32 from _band_key_norm_kernel (BANDED)
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
        k_start, len_k = _sequence_span(CuSeqlensK, SeqlensK, seq, rows_k, VARLEN)
        if VARLEN:
            q_start, len_q = _sequence_span(CuSeqlensQ, CuSeqlensQ, seq, rows_q, VARLEN)
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

    @triton.jit(do_not_specialize=["stride_kb", "stride_vb", "rows_k"])
    def _band_key_norm_kernel(
        K,
        V,
        CuSeqlensK,  # [batch + 1] int32 (VARLEN)
        SeqlensK,  # [batch] int32 (padded layout)
        Out,  # [batch, heads] fp32
        rows_k,  # rows of k and v: all (packed) or per sequence (padded layout)
        stride_kb,
        stride_kn,
        stride_kh,
        stride_vb,
        stride_vn,
        stride_vh,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        VARLEN: tl.constexpr,
    ):
        """max_j |k_j| of one (sequence, head), or +inf when a key or value there is not finite:
        an infinite bound turns the band off, so a NaN or inf reaches the output exactly as it does
        without the band (a skipped NaN value would otherwise vanish)."""
        seq = tl.program_id(0)
        head = tl.program_id(1)
        k_start, len_k = _sequence_span(CuSeqlensK, SeqlensK, seq, rows_k, VARLEN)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        seq64 = seq.to(tl.int64)
        k_base = K + seq64 * stride_kb + head * stride_kh + k_start * stride_kn
        v_base = V + seq64 * stride_vb + head * stride_vh + k_start * stride_vn
        largest = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start_n in range(0, len_k, BLOCK_N):
            rows = start_n + offs_n
            mask = (rows < len_k)[:, None] & (offs_d < HEAD_DIM)[None, :]
            k = tl.load(k_base + rows[:, None] * stride_kn + offs_d[None, :], mask=mask, other=0.0)
            v = tl.load(v_base + rows[:, None] * stride_vn + offs_d[None, :], mask=mask, other=0.0)
            k = k.to(tl.float32)
            # |x| < inf is false for NaN and for +-inf alike.
            finite = (tl.abs(k) < float("inf")) & (tl.abs(v.to(tl.float32)) < float("inf"))
            all_finite = tl.min(finite.to(tl.int32), 1) > 0
            # An overflowing k * k gives inf too: the band is then off, which is always exact.
            norm_sq = tl.where(all_finite, tl.sum(k * k, 1), float("inf"))
            largest = tl.maximum(largest, norm_sq)
        tl.store(Out + seq64 * tl.num_programs(1) + head, tl.sqrt(tl.max(largest, 0)))


MAX_HEAD_DIM = 256
# Tiles for Triton's CPU interpreter: small, so that the tests there exercise many tile tails.
INTERPRETER_TILES = (16, 16, 1, 1)
# Rows per step of the band's key-norm pre-pass, on GPUs and in the interpreter alike.
_KEY_NORM_BLOCK_N = 64


def _block_d(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def gpu_launch_config(head_dim: int, max_seqlen_q: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) the launcher chooses on a GPU.

    Every (head_dim <= MAX_HEAD_DIM, dtype) fits an H100/H200's 227 KiB of shared memory per block,
    as benchmarks/sm90_compile.py checks for each head-dim class (tests/test_sm90_compile.py)."""
    if max_seqlen_q <= 16:
        # The token-0 queries of the last layer: one tile of rows, a long key sweep. fp32 K and V
        # tiles of 128 keys x 256 dims would need 280 KiB of shared memory: half as many keys.
        block_n = 64 if dtype == torch.float32 and _block_d(head_dim) > 128 else 128
        return 16, block_n, 4, 2
    if head_dim <= 64:
        return 128, 64, 4, 3
    return 128, 32, 8, 2


def gpu_launch_configs() -> dict[tuple[int, int, int, int], list[tuple[int, torch.dtype, int]]]:
    """Every configuration ``gpu_launch_config`` can return, with the (head_dim, dtype,
    max_seqlen_q) cases that choose it: what the interpreter tests run, tile by tile."""
    chosen: dict[tuple[int, int, int, int], list[tuple[int, torch.dtype, int]]] = {}
    for head_dim in (16, 32, 64, 128, 256):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for max_seqlen_q in (1, 17):
                config = gpu_launch_config(head_dim, max_seqlen_q, dtype)
                chosen.setdefault(config, []).append((head_dim, dtype, max_seqlen_q))
    return chosen


def _launch_config(head_dim: int, max_seqlen_q: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this call."""
    if interpreting():
        return INTERPRETER_TILES
    return gpu_launch_config(head_dim, max_seqlen_q, dtype)


def _use_band(band: bool | None, max_seqlen_k: int) -> bool:
    if band is not None and not isinstance(band, bool):
        raise ValueError(f"band must be True, False or None (by length), got {band!r}")
    return band if band is not None else max_seqlen_k >= BAND_MIN_SEQLEN


def _softmax_scale(softmax_scale: float | None, head_dim: int) -> float:
    """1 / sqrt(d) by default. Must be positive and finite: the band's bound scales |q| |k| by it,
    and a negative scale would turn that upper bound into a lower one."""
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if (
        isinstance(softmax_scale, bool)
        or not isinstance(softmax_scale, (int, float))
        or not 0 < softmax_scale < math.inf
    ):
        raise ValueError(f"softmax_scale must be a positive finite number or None, got {softmax_scale!r}")
    return float(softmax_scale)


def _check_max_seqlen(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a Python int >= 1, got {value!r}")
    return value


def _check_launch_config(config: tuple[int, int, int, int]) -> None:
    ok = len(config) == 4 and all(isinstance(c, int) and c > 0 for c in config)
    if ok:
        block_m, block_n, warps, _ = config
        ok = all(b >= 16 and b & (b - 1) == 0 for b in (block_m, block_n)) and warps in (1, 2, 4, 8, 16)
    if not ok:
        raise ValueError(
            "launch_config must be (BLOCK_M, BLOCK_N, num_warps, num_stages) with power-of-two blocks "
            f">= 16 and num_warps in 1..16 (a power of two), got {config!r}"
        )


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor, dims: int) -> None:
    if triton is None:
        raise RuntimeError("triton is not installed; use the PyTorch path (backend='torch')")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != dims or t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be {dims}-D with a contiguous last dimension, got shape {tuple(t.shape)}"
            )
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32) or t.dtype != q.dtype:
            raise ValueError(
                f"q, k, v must share one of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}"
            )
        if t.device != q.device:
            raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    heads, head_dim = q.shape[-2:]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim (q.shape[-1]) must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    if slopes.shape != (heads,) or slopes.dtype != torch.float32 or slopes.device != q.device:
        raise ValueError(
            f"slopes must be fp32 [{heads}] on {q.device}, got {slopes.dtype} {tuple(slopes.shape)}"
        )
    if slopes.stride(0) != 1:
        raise ValueError(f"slopes must be contiguous, got stride {slopes.stride()}")


def _check_lengths_tensor(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.dtype != torch.int32 or t.dim() != 1 or t.device != device:
        raise ValueError(f"{name} must be a 1-D int32 tensor on {device}, got {t.dtype} {tuple(t.shape)}")
    if t.stride(0) != 1 and t.numel() > 1:
        raise ValueError(f"{name} must be contiguous, got stride {t.stride()}")


def _launch(
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
    head_dim = q.shape[-1]
    heads = q.shape[-2]
    if launch_config is None:
        launch_config = _launch_config(head_dim, max_seqlen_q, q.dtype)
    else:
        _check_launch_config(launch_config)
    block_m, block_n, warps, stages = launch_config
    block_d = _block_d(head_dim)
    banded = _use_band(band, max_seqlen_k)
    key_norm_max = slopes  # any fp32 pointer: not read unless BANDED
    if banded:
        key_norm_max = torch.empty(batch, heads, device=q.device, dtype=torch.float32)
        _band_key_norm_kernel[(batch, heads)](
            k,
            v,
            cu_k,
            seqlens_k,
            key_norm_max,
            rows_k,
            *strides[3:9],
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_N=_KEY_NORM_BLOCK_N,
            VARLEN=varlen,
            num_warps=4,
        )
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
            bound of ``_band_key_ranges``, from the data at hand); None = from ``BAND_MIN_SEQLEN``
            keys on. Steep ALiBi heads then read a band around the diagonal. A non-finite q, k or v
            turns the band off where it is, so it reaches the output as without the band.
        launch_config: (BLOCK_M, BLOCK_N, num_warps, num_stages) instead of the built-in choice;
            for tuning (benchmarks/tune_attention.py). BLOCK_M and BLOCK_N must be powers of two >= 16.
    Returns:
        [total_q, heads, d] in q's dtype. Never materialises a score or bias matrix: each [BLOCK_M,
        BLOCK_N] tile's bias is computed in registers, softmax is online in fp32 with exp2.

    The lengths in cu_seqlens are not read on the host (that would be a device sync per call); the
    PyTorch path, which reads them anyway, checks them. Here they are clamped to the rows of q and
    k, so nothing outside the tensors is read whatever they say; a sequence with queries and no
    keys gets NaN rows (a softmax over nothing), which the PyTorch path refuses.
    """
    _check_qkv(q, k, v, slopes, dims=3)
    _check_lengths_tensor("cu_seqlens_q", cu_seqlens_q, q.device)
    _check_lengths_tensor("cu_seqlens_k", cu_seqlens_k, q.device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.numel() == 0:
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    scale = _softmax_scale(softmax_scale, q.shape[-1])
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    batch = cu_seqlens_q.shape[0] - 1
    if batch == 0 or q.shape[0] == 0:
        return out
    max_seqlen_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k)
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
    return _launch(
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


def alibi_attention_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor,
    slopes: torch.Tensor,
    softmax_scale: float | None = None,
    *,
    band: bool | None = None,
    launch_config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Triton, padded layout: q, k, v [batch, L, heads, d]; ``key_lengths`` contiguous int32 [batch].

    Keys at positions >= key_lengths[b] are masked (never read). Every query row is computed; rows
    past a sequence's length are padding (they attend to the real keys, as in the HF reference,
    and are finite for finite inputs). Returns [batch, L, heads, d] in q's dtype.
    """
    _check_qkv(q, k, v, slopes, dims=4)
    batch, seqlen = q.shape[:2]
    _check_lengths_tensor("key_lengths", key_lengths, q.device)
    if key_lengths.shape != (batch,):
        raise ValueError(f"key_lengths must be int32 [{batch}], got {tuple(key_lengths.shape)}")
    scale = _softmax_scale(softmax_scale, q.shape[-1])
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    if batch == 0 or seqlen == 0:
        return out
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
    return _launch(
        q,
        k,
        v,
        out,
        slopes,
        key_lengths,
        key_lengths,
        key_lengths,
        batch,
        seqlen,
        seqlen,
        seqlen,
        scale,
        strides,
        varlen=False,
        launch_config=launch_config,
        max_seqlen_k=seqlen,
        band=band,
    )


# Bytes of fp32 scores per (head, query block) in the PyTorch path. Small enough to stay in cache,
# large enough that the Python loop is not the cost: measured on 2 CPU cores at 8k tokens, 4 MiB
# blocks ran 2.8x faster than one 64 MiB block for all heads.
_SCORE_BLOCK_BYTES = 4 * 1024 * 1024


def _pad_packed(
    x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[total, heads, d] packed -> (fp32 [batch, heads, L, d] zero-padded, [batch, L] valid)."""
    batch = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.long)
    valid = torch.arange(max_seqlen, device=x.device)[None, :] < lengths[:, None]
    if int(cu_seqlens[-1]) == batch * max_seqlen:
        # Every sequence is max_seqlen long (one long document, a batch of equal pairs): the
        # padded layout is a view of the packed one, no scatter needed.
        heads, d = x.shape[1:]
        padded = torch.empty(batch, heads, max_seqlen, d, device=x.device, dtype=torch.float32)
        padded.copy_(x[: batch * max_seqlen].view(batch, max_seqlen, heads, d).transpose(1, 2))
        return padded, valid
    padded = x.new_zeros(batch, max_seqlen, x.shape[1], x.shape[2], dtype=torch.float32)
    padded[valid] = x.float()
    return padded.transpose(1, 2).contiguous(), valid


def _ref_lengths(name: str, cu_seqlens: torch.Tensor, total: int, longest: int) -> list[int]:
    """Sequence lengths from ``cu_seqlens_{name}``, checked against the rows of ``name`` and
    ``max_seqlen_{name}``."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"cu_seqlens_{name} must be a non-empty 1-D integer tensor, got {cu_seqlens.dtype} "
            f"{tuple(cu_seqlens.shape)}"
        )
    cu = cu_seqlens.tolist()
    lengths = [b - a for a, b in itertools.pairwise(cu)]
    if cu[0] != 0 or min(lengths, default=0) < 0 or cu[-1] > total:
        shown = f"{cu[:8]}{' ...' if len(cu) > 8 else ''}"
        raise ValueError(
            f"cu_seqlens_{name} must start at 0, never decrease and end within the {total} rows of "
            f"{name}, got {shown} ending at {cu[-1]}"
        )
    if max(lengths, default=0) > longest:
        raise ValueError(
            f"max_seqlen_{name}={longest} is below the longest sequence in cu_seqlens_{name} ({max(lengths)})"
        )
    return lengths


def _check_ref_lengths(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    total_q: int,
    total_k: int,
) -> torch.Tensor:
    """The PyTorch path reads the lengths on the host anyway: check them all. Returns the key
    lengths [batch] (int64, on cu_seqlens_k's device)."""
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    query_counts = _ref_lengths("q", cu_seqlens_q, total_q, max_seqlen_q)
    key_counts = _ref_lengths("k", cu_seqlens_k, total_k, max_seqlen_k)
    for seq, (n_q, n_k) in enumerate(zip(query_counts, key_counts, strict=True)):
        if n_q and not n_k:
            raise ValueError(f"sequence {seq} has queries but no keys in cu_seqlens_k; softmax needs a key")
    return torch.tensor(key_counts, dtype=torch.long, device=cu_seqlens_k.device)


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
    """PyTorch reference: softmax(q kᵀ * scale - slope * |i - j|) v per sequence, keys past the end masked.

    Args:
        q: [total_q, heads, d]; k, v: [total_k, heads, d], same dtype.
        cu_seqlens_q, cu_seqlens_k: int32 [batch + 1]; each sequence with queries needs at least one
            key. Query row i of a sequence sits at position i: queries are a prefix of the sequence,
            and rows past its last key (padding rows) attend to all of its keys.
        max_seqlen_q, max_seqlen_k: Python ints, at least the longest query / key run.
        slopes: fp32 [heads], >= 0.
        softmax_scale: positive; defaults to 1 / sqrt(d).
        band: each (head, query block) reads only the keys whose weight can reach 2^-56 of the
            row's largest (see ``_band_key_ranges``); None = from ``BAND_MIN_SEQLEN`` keys on,
            False reads all.
    Returns:
        [total_q, heads, d] in q's dtype.

    Computes in fp32 whatever the input dtype. The bias exists one (head, query block) at a time,
    about 4 MiB, fused into the score GEMM as ``baddbmm(distance, q, kᵀ, beta=-slope)``; padded keys
    get an infinite distance, hence an exactly-zero probability. No [heads, L, L] tensor is built.
    Bad lengths (cu_seqlens, max_seqlen) and scales are a ValueError naming the argument.
    """
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    _, heads, d = q.shape
    if slopes.shape != (heads,):
        raise ValueError(f"slopes must be [{heads}], got {tuple(slopes.shape)}")
    scale = _softmax_scale(softmax_scale, d)
    max_seqlen_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k)
    key_lengths = _check_ref_lengths(
        cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.shape[0], k.shape[0]
    )
    qp, query_valid = _pad_packed(q, cu_seqlens_q, max_seqlen_q)
    kp, key_valid = _pad_packed(k, cu_seqlens_k, max_seqlen_k)
    vp, _ = _pad_packed(v, cu_seqlens_k, max_seqlen_k)
    kt = kp.transpose(-1, -2)
    batch = qp.shape[0]
    # Slopes as Python floats: baddbmm's beta is a scalar, one call per head.
    neg_slopes = (-slopes.double()).tolist()
    key_pos = torch.arange(max_seqlen_k, device=q.device, dtype=torch.float32)
    key_inf = torch.zeros(batch, 1, max_seqlen_k, device=q.device)
    key_inf.masked_fill_(~key_valid[:, None, :], float("inf"))
    padded_keys = not bool(key_valid.all())  # none: one long document, N pairs of one length

    rows = max(1, _SCORE_BLOCK_BYTES // (4 * batch * max_seqlen_k))
    ranges = None
    if _use_band(band, max_seqlen_k):
        ranges = _band_key_ranges(qp, kp, vp, query_valid, key_lengths, slopes, scale, rows)
    out = torch.empty_like(qp)
    for block, start in enumerate(range(0, max_seqlen_q, rows)):
        stop = min(start + rows, max_seqlen_q)
        distance = (torch.arange(start, stop, device=q.device, dtype=torch.float32)[:, None] - key_pos).abs_()
        if padded_keys:
            distance = distance + key_inf
        else:
            distance = distance.expand(batch, -1, -1)
        for h in range(heads):
            lo, hi = ranges[h][block] if ranges else (0, max_seqlen_k)
            scores = torch.baddbmm(
                distance[..., lo:hi],
                qp[:, h, start:stop],
                kt[:, h, :, lo:hi],
                beta=neg_slopes[h],
                alpha=scale,
            )
            if neg_slopes[h] == 0 and padded_keys:  # beta 0: baddbmm ignores its input, mask here
                scores -= key_inf[..., lo:hi]
            out[:, h, start:stop] = torch.bmm(torch.softmax(scores, dim=-1), vp[:, h, lo:hi])

    out = out.transpose(1, 2)
    if query_valid.all():  # no padding rows: a reshape, not a gather
        return out.reshape(-1, heads, d).to(q.dtype)
    return out[query_valid].to(q.dtype)


def _band_key_ranges(
    qp: torch.Tensor,
    kp: torch.Tensor,
    vp: torch.Tensor,
    query_valid: torch.Tensor,
    key_lengths: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    rows: int,
) -> list[list[tuple[int, int]]]:
    """[head][query block of ``rows``] -> (first key, end key) that block needs, over the batch.

    Args:
        qp: [batch, heads, Lq, d]; kp, vp: [batch, heads, Lk, d], zero-padded fp32.
        query_valid: [batch, Lq] bool; key_lengths: [batch].

    Query i can skip key j when even the largest score j could have, scale * |q_i| * max_j |k_j|
    (Cauchy-Schwarz) minus slope * |i - j|, is below the score i has with its own key, minus a margin
    of 56 bits: then exp(s_ij - max_j s_ij) < 2^-56 for each skipped key, and with at most 2^13 keys
    the output moves by less than 2^-42 of max |v|, far below fp32 resolution. Steep heads (large
    slopes) thus attend to a band around the diagonal; the bound uses only the data at hand.
    """
    heads, length_q, length_k = qp.shape[1], qp.shape[2], kp.shape[2]
    q_norm = qp.norm(dim=-1)  # [batch, heads, Lq]
    k_norm = kp.norm(dim=-1)  # [batch, heads, Lk]
    # A non-finite key or value anywhere in a (sequence, head) gives an infinite bound: no band
    # there, so NaN and inf reach the output exactly as they do without the band. Sums carry any
    # NaN or inf (and a finite sum that overflows only turns the band off, which is always exact);
    # they are far cheaper than an elementwise isfinite over [batch, heads, L, d].
    finite = torch.isfinite(k_norm.sum(-1, keepdim=True) + vp.sum((-2, -1))[..., None])
    k_max = torch.where(finite, k_norm.amax(-1, keepdim=True), torch.inf)  # [batch, heads, 1]
    own_keys = kp[:, :, :length_q]
    if length_q > length_k:
        own_keys = F.pad(own_keys, (0, 0, 0, length_q - length_k))
    own = (qp * own_keys).sum(-1)  # the score with the key at the query's own position
    excess = scale * (q_norm * k_max * BAND_BOUND_SLACK - own) + BAND_MARGIN_BITS * math.log(2)
    radius = excess / slopes.float()[None, :, None]
    positions = torch.arange(length_q, device=qp.device, dtype=torch.float32)
    # As in the kernel, every key for: a zero slope (infinite radius), NaN inputs (NaN radius)
    # and a query past its sequence's last key (no own key to measure against).
    has_own = (positions[None, :] < key_lengths[:, None].to(positions.device))[:, None, :]
    radius = torch.where(has_own & (radius >= 0), radius, torch.inf)
    valid = query_valid[:, None, :]
    pad = (-length_q) % rows  # whole blocks: padding rows never widen a range
    first = F.pad(torch.where(valid, positions - radius, torch.inf).amin(0), (0, pad), value=torch.inf)
    last = F.pad(torch.where(valid, positions + radius, -torch.inf).amax(0), (0, pad), value=-torch.inf)
    lo = first.view(heads, -1, rows).amin(-1).floor().clamp(0, length_k).long().tolist()
    hi = (last.view(heads, -1, rows).amax(-1).ceil() + 1).clamp(0, length_k).long().tolist()
    return [list(zip(lo_h, hi_h, strict=True)) for lo_h, hi_h in zip(lo, hi, strict=True)]


def alibi_attention_padded_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor,
    slopes: torch.Tensor,
    softmax_scale: float | None = None,
    band: bool | None = None,
) -> torch.Tensor:
    """PyTorch reference of ``alibi_attention_padded``: every query row of each sequence, keys past
    ``key_lengths[b]`` masked. [batch, L, heads, d] in, the same shape out."""
    batch, seqlen, heads, d = q.shape
    cu_q = torch.arange(0, (batch + 1) * seqlen, seqlen, device=q.device, dtype=torch.int32)
    valid = torch.arange(seqlen, device=q.device)[None, :] < key_lengths.long()[:, None]
    cu_k = torch.zeros(batch + 1, device=q.device, dtype=torch.int32)
    cu_k[1:] = key_lengths.cumsum(0)
    out = alibi_attention_ref(
        q.reshape(batch * seqlen, heads, d),
        k[valid],
        v[valid],
        cu_q,
        cu_k,
        seqlen,
        seqlen,
        slopes,
        softmax_scale,
        band,
    )
    return out.view(batch, seqlen, heads, d)
