"""Band-limited ALiBi attention: the key tiles a query block may skip.

Steep ALiBi heads weigh far keys by less than 2^-56 of a row's largest weight long before the end of
a long sequence. The Triton path bounds that per (sequence, head) from max_j |k_j|, computed by the
pre-pass kernel below; the PyTorch path computes the same bound per (head, query block) in
``band_key_ranges``. Both turn the band off wherever a key or value is not finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from turborank.kernels._launch import ENABLE_FP_FUSION, attention_block_d

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch engine below still works
    triton = None

# The band is used from this many keys on (below it there is little to skip), with a 56-bit
# margin; the slack covers the rounding of the bound itself.
BAND_MIN_SEQLEN = 512
BAND_MARGIN_BITS = 56.0
BAND_BOUND_SLACK = 1.01
# Rows per step of the key-norm pre-pass, on GPUs and in the interpreter alike.
KEY_NORM_BLOCK_N = 64

if triton is not None:
    from turborank.kernels._launch import sequence_span

    # Constexpr copies: the attention kernel reads them (a @triton.jit global must be constexpr).
    BAND_MARGIN_BITS_CONSTEXPR = tl.constexpr(BAND_MARGIN_BITS)
    BAND_BOUND_SLACK_CONSTEXPR = tl.constexpr(BAND_BOUND_SLACK)

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
        k_start, len_k = sequence_span(CuSeqlensK, SeqlensK, seq, rows_k, VARLEN)
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


def band_key_norm_max(
    k: torch.Tensor,
    v: torch.Tensor,
    cu_k: torch.Tensor,
    seqlens_k: torch.Tensor,
    batch: int,
    rows_k: int,
    kv_strides: tuple[int, ...],
    varlen: bool,
) -> torch.Tensor:
    """Launch the pre-pass: fp32 [batch, heads], max_j |k_j| per (sequence, head), +inf where a key
    or value is not finite. ``kv_strides``: k's then v's (batch, row, head) strides."""
    heads, head_dim = k.shape[-2:]
    key_norm_max = torch.empty(batch, heads, device=k.device, dtype=torch.float32)
    _band_key_norm_kernel[(batch, heads)](
        k,
        v,
        cu_k,
        seqlens_k,
        key_norm_max,
        rows_k,
        *kv_strides,
        HEAD_DIM=head_dim,
        BLOCK_D=attention_block_d(head_dim),
        BLOCK_N=KEY_NORM_BLOCK_N,
        VARLEN=varlen,
        num_warps=4,
        enable_fp_fusion=ENABLE_FP_FUSION,
    )
    return key_norm_max


def use_band(band: bool | None, max_seqlen_k: int) -> bool:
    """The ``band`` argument of the attention ops resolved: None means from BAND_MIN_SEQLEN keys on."""
    if band is not None and not isinstance(band, bool):
        raise ValueError(f"band must be True, False or None (by length), got {band!r}")
    return band if band is not None else max_seqlen_k >= BAND_MIN_SEQLEN


def band_key_ranges(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    rows: int,
) -> list[list[tuple[int, int]]]:
    """[head][query block of ``rows``] -> (first key, end key) that block needs, over a batch of
    sequences of one length.

    Args:
        q: [batch, Lq, heads, d]; k, v: [batch, Lk, heads, d], fp32: sequences of one length, in
            the packed layout's order (a run of packed rows viewed as a batch; no padding).

    Query i can skip key j when even the largest score j could have, scale * |q_i| * max_j |k_j|
    (Cauchy-Schwarz) minus slope * |i - j|, is below the score i has with its own key, minus a margin
    of 56 bits: then exp(s_ij - max_j s_ij) < 2^-56 for each skipped key, and with at most 2^13 keys
    the output moves by less than 2^-42 of max |v|, far below fp32 resolution. Steep heads (large
    slopes) thus attend to a band around the diagonal; the bound uses only the data at hand.
    """
    length_q, heads, length_k = q.shape[1], q.shape[2], k.shape[1]
    # Reductions over d of the packed layout: [batch, L, heads], each row contiguous.
    q_norm = q.norm(dim=-1)
    k_norm = k.norm(dim=-1)
    # A non-finite key or value anywhere in a (sequence, head) gives an infinite bound: no band
    # there, so NaN and inf reach the output exactly as they do without the band. Sums carry any
    # NaN or inf (and a finite sum that overflows only turns the band off, which is always exact);
    # they are far cheaper than an elementwise isfinite over [batch, L, heads, d].
    finite = torch.isfinite(k_norm.sum(1, keepdim=True) + v.sum((1, 3))[:, None])  # [batch, 1, heads]
    k_max = torch.where(finite, k_norm.amax(1, keepdim=True), torch.inf)
    with_own = min(length_q, length_k)
    own = (q[:, :with_own] * k[:, :with_own]).sum(-1)  # the score with the key at the query's own position
    if length_q > length_k:
        own = F.pad(own, (0, 0, 0, length_q - length_k))
    excess = scale * (q_norm * k_max * BAND_BOUND_SLACK - own) + BAND_MARGIN_BITS * math.log(2)
    radius = excess / slopes.float()
    positions = torch.arange(length_q, device=q.device, dtype=torch.float32)[:, None]
    # As in the kernel, every key for: a zero slope (infinite radius), NaN inputs (NaN radius)
    # and a query past its sequence's last key (no own key to measure against).
    radius = torch.where((positions < length_k) & (radius >= 0), radius, torch.inf)
    pad = (-length_q) % rows  # whole blocks
    first = F.pad((positions - radius).amin(0).T, (0, pad), value=torch.inf)  # [heads, Lq + pad]
    last = F.pad((positions + radius).amax(0).T, (0, pad), value=-torch.inf)
    lo = first.view(heads, -1, rows).amin(-1).floor().clamp(0, length_k).long().tolist()
    hi = (last.view(heads, -1, rows).amax(-1).ceil() + 1).clamp(0, length_k).long().tolist()
    return [list(zip(lo_h, hi_h, strict=True)) for lo_h, hi_h in zip(lo, hi, strict=True)]
