"""What the Triton kernels share: whether Triton runs in its CPU interpreter, the float constants
kernels use, and the exact-erf GELU."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships for Linux only; the PyTorch references still work
    triton = None

LOG2E = 1.4426950408889634  # log2(e): kernels take exp(x) as exp2(x * LOG2E)
INV_SQRT2 = 0.7071067811865476  # 1 / sqrt(2), for the exact GELU's erf(x / sqrt(2))


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1) instead of compiling for a
    GPU: Triton ops may then run on CPU tensors, and launchers pick small tiles so that tests there
    exercise the tile tails. Read at each call: tests and scripts set it per process."""
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    # A @triton.jit function may read a module global only when it is a tl.constexpr.
    LOG2E_CONSTEXPR = tl.constexpr(LOG2E)
    _INV_SQRT2 = tl.constexpr(INV_SQRT2)

    @triton.jit
    def gelu_erf(x):
        """Exact (erf) GELU of fp32 ``x``: 0.5 x (1 + erf(x / sqrt(2))); the tanh approximation
        is off by ~3e-3 in the logits (DEVELOPERS.md, "GEGLU feed-forward")."""
        return 0.5 * x * (1.0 + tl.erf(x * _INV_SQRT2))
