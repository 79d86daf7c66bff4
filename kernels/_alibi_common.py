"""What the two ALiBi attention ops (packed ``alibi_attention`` and ``alibi_attention_padded``), their
launcher and their PyTorch references share: argument checks, and the packed-to-padded layout the
references compute in."""

from __future__ import annotations

import itertools
import math

import torch

from turborank.kernels._launch import MAX_HEAD_DIM, refuse_bf16_products_in_the_interpreter

try:
    import triton
except ImportError:  # triton ships for Linux only; the PyTorch engines still work
    triton = None


def resolve_softmax_scale(softmax_scale: float | None, head_dim: int) -> float:
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


def reversed_key_bias(slopes: torch.Tensor, rows: int, keys: int, dtype: torch.dtype) -> torch.Tensor:
    """[heads, rows + keys - 1] with bias[h, t] = -slope_h * |t - (keys - 1)|: with a sequence's keys
    in reverse order, query i against key slot j sits at t = i + j, so this viewed with strides
    (rows + keys - 1, 1, 1) is the whole [heads, rows, keys] ALiBi bias, never built. Formed in fp32
    and rounded once to ``dtype`` (in bf16 like the scores it is added to); a new contiguous tensor.
    """
    offsets = torch.arange(rows + keys - 1, device=slopes.device, dtype=torch.float32) - (keys - 1)
    return (-slopes.float()[:, None] * offsets.abs_()).to(dtype)


def check_max_seqlen(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a Python int >= 1, got {value!r}")
    return value


def check_launch_config(config: tuple[int, int, int, int]) -> None:
    ok = len(config) == 4 and all(isinstance(c, int) and c > 0 for c in config)
    if ok:
        block_m, block_n, warps, _ = config
        ok = all(b >= 16 and b & (b - 1) == 0 for b in (block_m, block_n)) and warps in (1, 2, 4, 8, 16)
    if not ok:
        raise ValueError(
            "launch_config must be (BLOCK_M, BLOCK_N, num_warps, num_stages) with power-of-two blocks "
            f">= 16 and num_warps in 1..16 (a power of two), got {config!r}"
        )


def check_qkv_types(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Both engines compute in one of the three float dtypes, on one device."""
    if any(
        t.dtype not in (torch.float16, torch.bfloat16, torch.float32) or t.dtype != q.dtype for t in (k, v, q)
    ):
        raise ValueError(
            f"q, k, v must share one of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor, dims: int) -> None:
    if triton is None:
        raise RuntimeError("triton is not installed; use the PyTorch path (backend='torch')")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != dims or t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be {dims}-D with a contiguous last dimension, got shape {tuple(t.shape)}"
            )
    check_qkv_types(q, k, v)
    refuse_bf16_products_in_the_interpreter(q.dtype, "alibi_attention")
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


def check_lengths_tensor(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.dtype != torch.int32 or t.dim() != 1 or t.device != device:
        raise ValueError(f"{name} must be a 1-D int32 tensor on {device}, got {t.dtype} {tuple(t.shape)}")
    if t.stride(0) != 1 and t.numel() > 1:
        raise ValueError(f"{name} must be contiguous, got stride {t.stride()}")


def _ref_offsets(name: str, cu_seqlens: torch.Tensor, total: int, longest: int) -> list[int]:
    """``cu_seqlens_{name}`` on the host, checked against the rows of ``name`` and
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
    return cu


def check_ref_lengths(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    total_q: int,
    total_k: int,
) -> tuple[list[int], list[int]]:
    """The PyTorch path reads the lengths on the host anyway: check them all. Returns
    (cu_seqlens_q, cu_seqlens_k) as lists."""
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    starts_q = _ref_offsets("q", cu_seqlens_q, total_q, max_seqlen_q)
    starts_k = _ref_offsets("k", cu_seqlens_k, total_k, max_seqlen_k)
    spans = zip(itertools.pairwise(starts_q), itertools.pairwise(starts_k), strict=True)
    for seq, ((q0, q1), (k0, k1)) in enumerate(spans):
        if q1 > q0 and k1 == k0:
            raise ValueError(f"sequence {seq} has queries but no keys in cu_seqlens_k; softmax needs a key")
    return starts_q, starts_k
