"""The GEGLU up-projection as one GEMM whose epilogue applies the gate: act(x W_g^T) * (x W_l^T).

The up-projection is the largest GEMM of the layer and its [tokens, 2I] output is the largest
intermediate; here each program accumulates the gate and the linear tile of the same output columns
side by side and writes only the [tokens, I] product. Opt-in (``JinaBertReranker.fused_gelu_glu_gemm``)
until a GPU benchmark shows it beats cuBLAS followed by the ``gelu_glu`` kernel
(``python -m benchmarks.gpu.gpu_kernels``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from turborank.kernels._launch import (
    ENABLE_FP_FUSION,
    gelu_glu_linear_launch_config,
    refuse_bf16_products_in_the_interpreter,
)
from turborank.kernels.gelu_glu import GLU_ACTIVATIONS, gelu_glu_torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch engine below still works
    triton = None

if triton is not None:
    from turborank.kernels._launch import gelu_erf

    @triton.jit(do_not_specialize=["M"])
    def _gelu_glu_linear_kernel(
        X,  # [M, K]
        W,  # [2 * I, K]: rows [0, I) are the gate, rows [I, 2I) the linear half
        Y,  # [M, I]
        M,
        I,
        K,
        stride_xm,
        stride_wn,
        stride_ym,
        ACTIVATION: tl.constexpr,  # 0 = exact erf GELU, 1 = ReLU
        IEEE_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # Grouped tile order: GROUP_M row tiles sweep the columns together, so the weight tiles
        # they share are still in L2 when the next row tile needs them.
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(I, BLOCK_N)
        group = pid // (GROUP_M * tiles_n)
        first_m = group * GROUP_M
        group_rows = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_rows
        pid_n = (pid % (GROUP_M * tiles_n)) // group_rows

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        row_ok = offs_m < M
        col_ok = offs_n < I
        x_ptrs = X + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
        # W^T tiles [BLOCK_K, BLOCK_N], read straight from the row-major [2I, K] weight.
        wg_ptrs = W + offs_n[None, :] * stride_wn + offs_k[:, None]
        wl_ptrs = wg_ptrs + I * stride_wn
        acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_linear = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start_k in range(0, K, BLOCK_K):
            k_ok = (start_k + offs_k) < K
            x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            wg = tl.load(wg_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            wl = tl.load(wl_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if IEEE_FP32:
                acc_gate = tl.dot(x, wg, acc_gate, input_precision="ieee")
                acc_linear = tl.dot(x, wl, acc_linear, input_precision="ieee")
            else:
                acc_gate = tl.dot(x, wg, acc_gate)
                acc_linear = tl.dot(x, wl, acc_linear)
            x_ptrs += BLOCK_K
            wg_ptrs += BLOCK_K
            wl_ptrs += BLOCK_K
        # The GEMM rounds its output to the input dtype before the activation sees it, as
        # F.linear followed by the gelu_glu op does; the product is then formed in fp32.
        gate = acc_gate.to(Y.dtype.element_ty).to(tl.float32)
        linear = acc_linear.to(Y.dtype.element_ty).to(tl.float32)
        if ACTIVATION == 0:
            act = gelu_erf(gate)
        else:
            # NaN stays NaN (the torch engine's relu), where a plain max (PTX max.f32) picks 0.
            act = tl.maximum(gate, 0.0, propagate_nan=tl.PropagateNan.ALL)
        y_ptrs = Y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, (act * linear).to(Y.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    y: torch.Tensor,
    activation: str,
    launch_config: tuple[int, int, int, int, int] | None,
) -> None:
    M, K = x.shape
    inner = weight.shape[0] // 2
    block_m, block_n, block_k, warps, stages = launch_config or gelu_glu_linear_launch_config(x.dtype)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(inner, block_n),)
    _gelu_glu_linear_kernel[grid](
        x,
        weight,
        y,
        M,
        inner,
        K,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        ACTIVATION=GLU_ACTIVATIONS.index(activation),
        IEEE_FP32=x.dtype == torch.float32,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=8,
        num_warps=warps,
        enable_fp_fusion=ENABLE_FP_FUSION,
        num_stages=stages,
    )


def _check(x: torch.Tensor, weight: torch.Tensor, activation: str) -> None:
    if activation not in GLU_ACTIVATIONS:
        raise ValueError(f"unknown GLU activation {activation!r}; expected one of {GLU_ACTIVATIONS}")
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1] or weight.shape[0] % 2:
        raise ValueError(
            "gelu_glu_linear needs x [M, K] and weight [2I, K], "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(
            f"x and weight must share dtype and device, got {x.dtype} on {x.device}, "
            f"{weight.dtype} on {weight.device}"
        )


def gelu_glu_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str = "gelu",
    *,
    launch_config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """Triton: ``gelu_glu(F.linear(x, weight), activation)`` without writing the [M, 2I] product.

    Args:
        x: [M, K] with contiguous rows; weight: [2I, K] with contiguous rows (the gated_layers
            weight: gate rows first); fp16, bf16 or fp32, both the same.
        launch_config: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) instead of the built-in
            choice (powers of two, blocks >= 16); for tuning and for testing the GPU tiles.
    Returns:
        [M, I] in x's dtype.
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use the PyTorch path (backend='torch')")
    _check(x, weight, activation)
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("gelu_glu_linear needs x and weight with contiguous rows")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"gelu_glu_linear supports float16/bfloat16/float32, got {x.dtype}")
    refuse_bf16_products_in_the_interpreter(x.dtype, "gelu_glu_linear")
    y = torch.empty(x.shape[0], weight.shape[0] // 2, device=x.device, dtype=x.dtype)
    if launch_config is not None:
        _check_launch_config(launch_config)
    if x.shape[0] and y.shape[1]:
        _launch(x, weight, y, activation, launch_config)
    return y


def _check_launch_config(config: tuple[int, int, int, int, int]) -> None:
    ok = len(config) == 5 and all(isinstance(c, int) and c > 0 for c in config)
    if not ok or min(config[:3]) < 16 or any(c & (c - 1) for c in config[:4]):
        raise ValueError(
            "launch_config must be (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) with power-of-two "
            f"blocks >= 16 and a power-of-two num_warps, got {config!r}"
        )


def gelu_glu_linear_torch(x: torch.Tensor, weight: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """PyTorch engine: the up-projection (no bias in JinaBERT), then the gated activation.

    Args:
        x: [M, K]; weight: [2I, K].
    Returns:
        [M, I] in x's dtype.
    """
    _check(x, weight, activation)
    return gelu_glu_torch(F.linear(x, weight), activation)
