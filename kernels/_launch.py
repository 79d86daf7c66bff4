"""What the Triton kernels share: whether Triton runs in its CPU interpreter, each kernel's launch
configuration (tiles, warps, stages) on a GPU and in the interpreter, the float constants kernels
use, and the Triton helpers two kernels call (the exact-erf GELU, a sequence's row span)."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch references still work
    triton = None

LOG2E = 1.4426950408889634  # log2(e): kernels take exp(x) as exp2(x * LOG2E)
INV_SQRT2 = 0.7071067811865476  # 1 / sqrt(2), for the exact GELU's erf(x / sqrt(2))
# Every launch asks for FMA contraction (a * b + c in one rounding), as the kernels were tested and
# compiled for sm_90: left unset, Triton 3.9 warns that its default turns to off in 3.10, which
# would change the kernels' speed and last bits with the Triton version. The user's
# TRITON_FORCE_DISABLE_FP_FUSION=1 still turns it off.
ENABLE_FP_FUSION = True


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1) instead of compiling for a
    GPU: Triton ops may then run on CPU tensors, and launchers pick small tiles so that tests there
    exercise the tile tails. The variable is read at each call (a test may turn it off), and counts
    only where the kernels were built for the interpreter: set after the import, it changes nothing."""
    return os.environ.get("TRITON_INTERPRET") == "1" and built_for_interpreter()


def refuse_bf16_products_in_the_interpreter(dtype: torch.dtype, op: str) -> None:
    """Triton's CPU interpreter multiplies bf16 tiles wrongly (a 16 x 16 ``tl.dot`` off by ~1e10
    with Triton 3.6 and 3.9): an op built on ``tl.dot`` refuses bf16 there rather than return
    wrong numbers."""
    if dtype == torch.bfloat16 and built_for_interpreter():
        raise ValueError(
            f"{op}: Triton's CPU interpreter computes bf16 matrix products wrongly; run bf16 on CPU "
            "with backend='torch', or float16/float32 in the interpreter"
        )


if triton is not None:
    # A @triton.jit function may read a module global only when it is a tl.constexpr.
    LOG2E_CONSTEXPR = tl.constexpr(LOG2E)
    _INV_SQRT2 = tl.constexpr(INV_SQRT2)

    @triton.jit
    def gelu_erf(x):
        """Exact (erf) GELU of fp32 ``x``: 0.5 x (1 + erf(x / sqrt(2))); the tanh approximation
        is off by ~3e-3 in the logits (DEVELOPERS.md, "GEGLU feed-forward")."""
        return 0.5 * x * (1.0 + tl.erf(x * _INV_SQRT2))

    @triton.jit
    def sequence_span(CuSeqlens, Seqlens, seq, rows, VARLEN: tl.constexpr):
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


def built_for_interpreter() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter. Triton decides when a kernel is
    defined (at import), from TRITON_INTERPRET as it was then: set later, it changes nothing."""
    return triton is not None and type(gelu_erf).__name__ == "InterpretedFunction"


# The attention's head_dim limit: every (head_dim <= MAX_HEAD_DIM, dtype) tile fits an H100/H200's
# shared memory.
MAX_HEAD_DIM = 256
# Tiles for Triton's CPU interpreter: small, so that the tests there exercise many tile tails.
ATTENTION_INTERPRETER_TILES = (16, 16, 1, 1)
GELU_GLU_LINEAR_INTERPRETER_TILES = (16, 32, 32, 1, 1)


def attention_block_d(head_dim: int) -> int:
    """BLOCK_D: head_dim padded to a power of two >= 16, as tl.arange and tl.dot need."""
    return max(16, 1 << (head_dim - 1).bit_length())


def attention_gpu_launch_config(
    head_dim: int, max_seqlen_q: int, dtype: torch.dtype
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) the launcher chooses on a GPU.

    Every (head_dim <= MAX_HEAD_DIM, dtype) fits an H100/H200's 227 KiB of shared memory per block,
    as benchmarks/compile/sm90_compile.py checks for each head-dim class (tests/test_sm90_compile.py),
    and keeps its registers: a tile that spills to the stack reads and writes local memory in the
    key loop. fp32's products run on FMAs, not tensor cores, and hold many more values per thread
    than half precision's: its tiles are smaller (a 128 x 64 fp32 tile at head_dim 32 spilled 7 KiB
    per thread; at head_dim 64, 64 x 32 spilled 8 bytes under Triton 3.7.1, the release torch 2.13's
    CUDA build installs, where 64 x 16 spills nothing under 3.6, 3.7.1 and 3.9, band on or off)."""
    block_d = attention_block_d(head_dim)
    if dtype == torch.float32:
        if max_seqlen_q <= 16:
            return _FP32_SHORT_QUERY_TILES[block_d]
        if block_d <= 32:
            return 64, 32, 8, 2
        return (64, 16, 8, 2) if block_d == 64 else (32, 32, 8, 2)
    if max_seqlen_q <= 16:
        # The token-0 queries of the last layer: one tile of rows, a long key sweep.
        if block_d <= 64:
            return 16, 128, 4, 2
        return (16, 64, 8, 2) if block_d <= 128 else (16, 32, 4, 2)
    if block_d <= 64:
        return 128, 64, 8, 3
    return 64, 64, 8, 2


# fp32 tiles of at most 16 query rows (the token-0 queries, short sequences) by BLOCK_D: a key step
# and warp count that compile without spilling under Triton 3.6 and 3.9, band on and off (at 256 none
# does; this one spills least, 32-104 bytes per thread).
_FP32_SHORT_QUERY_TILES = {
    16: (16, 64, 4, 2),
    32: (16, 64, 4, 2),
    64: (16, 32, 4, 2),
    128: (16, 32, 8, 2),
    256: (16, 32, 4, 2),
}


def attention_gpu_launch_configs() -> dict[tuple[int, int, int, int], list[tuple[int, torch.dtype, int]]]:
    """Every configuration ``attention_gpu_launch_config`` can return, with the (head_dim, dtype,
    max_seqlen_q) cases that choose it: what the interpreter tests run, tile by tile."""
    chosen: dict[tuple[int, int, int, int], list[tuple[int, torch.dtype, int]]] = {}
    for head_dim in (16, 32, 64, 128, 256):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for max_seqlen_q in (1, 17):
                config = attention_gpu_launch_config(head_dim, max_seqlen_q, dtype)
                chosen.setdefault(config, []).append((head_dim, dtype, max_seqlen_q))
    return chosen


def attention_launch_config(
    head_dim: int, max_seqlen_q: int, dtype: torch.dtype
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this call."""
    if interpreting():
        return ATTENTION_INTERPRETER_TILES
    return attention_gpu_launch_config(head_dim, max_seqlen_q, dtype)


def gelu_glu_linear_gpu_launch_config(dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) the fused GEGLU GEMM chooses on a GPU."""
    if dtype == torch.float32:
        # FMA products (no tensor cores): 8 warps and a shorter K step keep the two accumulators in
        # registers (64 x 64 x 32 on 4 warps spilled 330-560 bytes per thread).
        return 64, 64, 16, 8, 3
    # Two 128x128 fp32 accumulators over 8 warps: 128 registers of the 255 per thread.
    return 128, 128, 64, 8, 3


def gelu_glu_linear_launch_config(dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for this call."""
    if interpreting():
        return GELU_GLU_LINEAR_INTERPRETER_TILES
    return gelu_glu_linear_gpu_launch_config(dtype)
