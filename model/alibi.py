"""ALiBi head slopes for the two JinaBERT schemes (DEVELOPERS.md, "ALiBi slopes")."""

from __future__ import annotations

import math

import torch

from turborank.option_names import SLOPE_SCHEMES


def _power_of_two_slopes(n: int) -> list[float]:
    # slope_k = 2^(-8k/n), k = 1..n: the geometric sequence of Press et al.
    return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]


def alibi_slope_values(num_heads: int, scheme: str = "standard") -> list[float]:
    """Slopes as Python floats, one per head.

    "standard": Press et al.; for a head count n that is not a power of two, the p = 2^floor(log2 n)
    standard slopes followed by the first n - p even-indexed slopes of the 2p-head list.
    "jina-reranker-v1": the same power-of-two part, but the tail takes the *next* n - p even-indexed
    slopes (skipping the first). For 12 heads that is the reported "quick fix on large jump" of the
    reranker repos, [2^-1 .. 2^-8, 2^-1.5, 2^-2.5, 2^-3.5, 2^-4.5] (the standard tail halved). For a
    power-of-two head count both schemes are identical.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if scheme not in SLOPE_SCHEMES:
        raise ValueError(f"unknown ALiBi slope scheme {scheme!r}; expected one of {SLOPE_SCHEMES}")
    p = 2 ** math.floor(math.log2(num_heads))
    if p == num_heads:
        return _power_of_two_slopes(num_heads)
    even = _power_of_two_slopes(2 * p)[0::2]
    start = 0 if scheme == "standard" else 1
    return _power_of_two_slopes(p) + even[start : start + num_heads - p]


def alibi_slopes(
    num_heads: int, scheme: str = "standard", device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-head ALiBi slopes as an fp32 tensor of shape [num_heads].

    Always fp32: the bias -slope * |i - j| reaches thousands at 8k tokens, where bf16 would round by
    whole logits.
    """
    return torch.tensor(alibi_slope_values(num_heads, scheme), dtype=torch.float32, device=device)


def slopes_differ(num_heads: int) -> bool:
    """Whether the scheme choice matters for this head count (only for non-powers of two)."""
    return alibi_slope_values(num_heads, "standard") != alibi_slope_values(num_heads, "jina-reranker-v1")
