"""ALiBi attention over a padded batch: q, k, v [batch, L, heads, d] with per-sequence key lengths.

The same kernel as ``alibi_attention`` in its padded layout (VARLEN off); the reference runs the
packed reference on the sequences' real keys.
"""

from __future__ import annotations

import torch

from turborank.kernels._alibi_common import check_lengths_tensor, check_qkv, resolve_softmax_scale
from turborank.kernels.alibi_attention import launch_alibi_attention
from turborank.kernels.alibi_attention_cpu import alibi_attention_torch


def alibi_attention_padded_triton(
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
    check_qkv(q, k, v, slopes, dims=4)
    batch, seqlen = q.shape[:2]
    check_lengths_tensor("key_lengths", key_lengths, q.device)
    if key_lengths.shape != (batch,):
        raise ValueError(f"key_lengths must be int32 [{batch}], got {tuple(key_lengths.shape)}")
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1])
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    if batch == 0 or seqlen == 0:
        return out
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
    return launch_alibi_attention(
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


def alibi_attention_padded_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor,
    slopes: torch.Tensor,
    softmax_scale: float | None = None,
    band: bool | None = None,
) -> torch.Tensor:
    """PyTorch engine of ``alibi_attention_padded``: every query row of each sequence, keys past
    ``key_lengths[b]`` masked. [batch, L, heads, d] in, the same shape out."""
    if q.dim() != 4:
        raise ValueError(f"q must be [batch, L, heads, d], got shape {tuple(q.shape)}")
    batch, seqlen, heads, d = q.shape
    if key_lengths.shape != (batch,) or key_lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"key_lengths must be int32 [{batch}], got {key_lengths.dtype} {tuple(key_lengths.shape)}"
        )
    lengths = key_lengths.tolist()
    if any(not 1 <= n <= seqlen for n in lengths):
        # Every query row attends to its sequence's keys: a sequence needs at least one.
        raise ValueError(f"key_lengths must lie in 1..{seqlen} (L), got {lengths}")
    cu_q = torch.arange(0, (batch + 1) * seqlen, seqlen, device=q.device, dtype=torch.int32)
    valid = torch.arange(seqlen, device=q.device)[None, :] < key_lengths.long()[:, None]
    cu_k = torch.zeros(batch + 1, device=q.device, dtype=torch.int32)
    cu_k[1:] = key_lengths.cumsum(0)
    out = alibi_attention_torch(
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
