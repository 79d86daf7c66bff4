"""Residual add + LayerNorm (post-norm) with fp32 statistics, and its embedding-gather variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from turborank.kernels._launch import ENABLE_FP_FUSION

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch references below still work
    triton = None


if triton is not None:

    @triton.jit(do_not_specialize=["rows_x", "rows_r"])
    def _add_layer_norm_kernel(
        X,  # [rows, N] activations, or the word-embedding table when GATHER
        R,  # [rows, N] residual (row stride 0 broadcasts one row), or the token-type table when GATHER
        X_IDS,  # [rows] int64 token ids (GATHER only)
        R_IDS,  # [rows] int64 token-type ids (GATHER and HAS_R_IDS only)
        W,
        B,
        Y,  # [rows, N] output, X's dtype
        stride_x,
        stride_r,
        stride_y,
        N,
        rows_x,  # rows of the word table (GATHER): ids outside [0, rows_x) read nothing
        rows_r,  # rows of the token-type table (GATHER)
        eps,
        HAS_RESIDUAL: tl.constexpr,
        GATHER: tl.constexpr,
        HAS_R_IDS: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # One program per row: H = 384 fits a single block, so the row is read once and the
        # statistics are exact two-pass values computed from registers.
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        if GATHER:
            # Checking ids on the host would cost a device sync per forward (they are checked
            # where they are made, on the host, before the copy). Here an id out of range reads
            # nothing and turns its row into NaN, which reaches the logit. (The checks are
            # broadcast over the columns: Triton's interpreter takes no scalar load masks.)
            x_row = tl.load(X_IDS + row)
            in_range = (cols * 0 + x_row >= 0) & (cols * 0 + x_row < rows_x)
        else:
            x_row = row
            in_range = cols >= 0
        x = tl.load(X + x_row * stride_x + cols, mask=mask & in_range, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            if GATHER:
                if HAS_R_IDS:
                    r_row = tl.load(R_IDS + row)
                    in_range = in_range & (cols * 0 + r_row >= 0) & (cols * 0 + r_row < rows_r)
                else:
                    r_row = row * 0  # token type 0 for every row
            else:
                r_row = row
            x += tl.load(R + r_row * stride_r + cols, mask=mask & in_range, other=0.0).to(tl.float32)
        if GATHER:
            x = tl.where(in_range, x, float("nan"))
        mean = tl.sum(x, axis=0) / N
        centered = tl.where(mask, x - mean, 0.0)
        var = tl.sum(centered * centered, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        y = centered * rstd * w + b
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


def _launch(x, residual, x_ids, r_ids, weight, bias, eps, rows, out_dtype):
    if triton is None:
        raise RuntimeError("triton is not installed; use the PyTorch path (backend='torch')")
    n = weight.shape[0]
    if bias.shape != (n,):
        raise ValueError(f"LayerNorm weight {tuple(weight.shape)} and bias {tuple(bias.shape)} disagree")
    y = torch.empty(rows, n, device=weight.device, dtype=out_dtype)
    if rows == 0:
        return y
    block_n = triton.next_power_of_2(n)
    _add_layer_norm_kernel[(rows,)](
        x,
        residual if residual is not None else x,
        x_ids if x_ids is not None else y,
        r_ids if r_ids is not None else y,
        weight,
        bias,
        y,
        x.stride(0),
        residual.stride(0) if residual is not None else 0,
        y.stride(0),
        n,
        x.shape[0] if x_ids is not None else 0,
        residual.shape[0] if x_ids is not None and residual is not None else 0,
        eps,
        HAS_RESIDUAL=residual is not None,
        GATHER=x_ids is not None,
        HAS_R_IDS=r_ids is not None,
        BLOCK_N=block_n,
        num_warps=min(max(block_n // 256, 1), 8),
        enable_fp_fusion=ENABLE_FP_FUSION,
    )
    return y


def _check_rows(name: str, t: torch.Tensor, n: int) -> None:
    if t.dim() != 2 or t.shape[1] != n or t.stride(1) != 1:
        raise ValueError(f"{name} must be [rows, {n}] with contiguous rows, got shape {tuple(t.shape)}")


def _check_vector(name: str, t: torch.Tensor, n: int) -> None:
    """The kernel reads a vector as consecutive elements: a strided view would be read wrong."""
    if t.dim() != 1 or t.shape[0] != n or (n > 1 and t.stride(0) != 1):
        raise ValueError(
            f"{name} must be a contiguous [{n}], got shape {tuple(t.shape)} stride {tuple(t.stride())}"
        )


def _check_norm_vectors(weight: torch.Tensor, bias: torch.Tensor) -> int:
    """H, from ``weight`` [H]; ``bias`` must match it."""
    n = weight.shape[0] if weight.dim() == 1 else -1
    _check_vector("weight", weight, n)
    _check_vector("bias", bias, n)
    return n


def add_layer_norm_triton(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Triton: LayerNorm(x + residual), fp32 statistics; see ``add_layer_norm_torch``.

    Args:
        x: [rows, H]; residual: [rows, H] (a row stride of 0 broadcasts one row) or None.
        weight, bias: [H].
    Returns:
        [rows, H] in x's dtype.
    """
    n = _check_norm_vectors(weight, bias)
    _check_rows("x", x, n)
    if residual is not None:
        _check_rows("residual", residual, n)
        if residual.shape[0] != x.shape[0]:
            raise ValueError(f"residual has {residual.shape[0]} rows, x has {x.shape[0]}")
    return _launch(x, residual, None, None, weight, bias, eps, x.shape[0], x.dtype)


def embedding_layer_norm_triton(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_embeddings: torch.Tensor,
    type_embeddings: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Triton: LayerNorm(word[input_ids] + type[token_type_ids or 0]) in one pass, no gathered copy.

    Args:
        input_ids, token_type_ids: [tokens] int64 (token types None = all zeros).
        word_embeddings: [V, H]; type_embeddings: [T, H]; weight, bias: [H].
    Returns:
        [tokens, H] in the embeddings' dtype. A row whose id is outside [0, V) (or whose token type
        is outside [0, T)) is NaN: the kernel never reads outside the tables, and checking the ids
        here would cost a device sync. ``Reranker`` checks them on the host where it makes them.
    """
    n = _check_norm_vectors(weight, bias)
    _check_rows("word_embeddings", word_embeddings, n)
    _check_rows("type_embeddings", type_embeddings, n)
    tokens = input_ids.shape[0] if input_ids.dim() == 1 else -1
    _check_vector("input_ids", input_ids, tokens)
    if token_type_ids is not None:
        _check_vector("token_type_ids", token_type_ids, tokens)
    return _launch(
        word_embeddings,
        type_embeddings,
        input_ids,
        token_type_ids,
        weight,
        bias,
        eps,
        input_ids.shape[0],
        word_embeddings.dtype,
    )


def _check_ids(name: str, ids: torch.Tensor, rows: int, table: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
        raise ValueError(
            f"{name} must lie in [0, {rows}) ({table} has {rows} rows), got ids from {int(ids.min())} "
            f"to {int(ids.max())}"
        )


def add_layer_norm_torch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """LayerNorm(x + residual) over the last dimension.

    Args:
        x: [rows, H]; residual: [rows, H] or None (the embedding LayerNorm has no residual).
        weight, bias: [H].
        eps: JinaBERT uses 1e-12, below fp16 resolution: mean and variance are taken in fp32 whatever
            the input dtype.
    Returns:
        [rows, H] in x's dtype.
    """
    h = x.float()
    if residual is not None:
        # In place only on a copy (for an fp32 x, .float() is x itself), and on an fp32 operand:
        # an in-place fp32 += bf16 takes PyTorch's slow mixed-dtype loop.
        h = h + residual.float() if h is x else h.add_(residual.float())
    return F.layer_norm(h, (h.shape[-1],), weight.float(), bias.float(), eps).to(x.dtype)


def embedding_layer_norm_torch(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_embeddings: torch.Tensor,
    type_embeddings: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """PyTorch engine of ``embedding_layer_norm``. Ids outside the tables are a ValueError (this
    path reads them on the host anyway)."""
    _check_ids("input_ids", input_ids, word_embeddings.shape[0], "word_embeddings")
    if token_type_ids is not None:
        _check_ids("token_type_ids", token_type_ids, type_embeddings.shape[0], "type_embeddings")
    if token_type_ids is None:
        types = type_embeddings[0].expand(input_ids.shape[0], -1)
    else:
        types = F.embedding(token_type_ids, type_embeddings)
    return add_layer_norm_torch(F.embedding(input_ids, word_embeddings), types, weight, bias, eps)
