"""Where the kernel tests run: full size on a GPU when there is one, else small in Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when CUDA is absent).

Test files that run on ``DEVICE`` carry ``pytest.mark.gpu``: benchmarks/gpu/gpu_check.sh runs
``pytest -m gpu`` on a lent GPU, and tests/test_repo.py checks that no such file lacks the mark.
"""

from __future__ import annotations

import pytest
import torch

from turborank.kernels import TRITON_AVAILABLE, interpreting

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
TRITON_RUNS = TRITON_AVAILABLE and (GPU or interpreting())
needs_triton = pytest.mark.skipif(not TRITON_RUNS, reason="needs triton and a GPU or TRITON_INTERPRET=1")

# Checked with triton 3.9.0: a 16 x 16 bf16 tl.dot in the interpreter is off by 1e10.
BF16_DOT_SKIP = pytest.mark.skipif(
    not GPU,
    reason="bf16 through tl.dot needs the GPU's answer: Triton's CPU interpreter computes bf16 dot "
    "products wrongly (garbage with triton 3.9)",
)
# fp16 everywhere; bf16 where tl.dot can be trusted with it.
HALF_DTYPES = [
    pytest.param(torch.float16, id="float16"),
    pytest.param(torch.bfloat16, id="bfloat16", marks=BF16_DOT_SKIP),
]
