"""The values the string options of ``Reranker`` accept, and what an integer option takes, in a
module that imports nothing.

The library checks its arguments against these and the command line offers them as argparse
``choices``: one list each, so the two cannot drift. The CLI builds its parser before torch is
imported (Ctrl-C during that import is then one line, not a traceback), hence no torch here.
"""

from __future__ import annotations

import operator

# Names of torch dtypes (``getattr(torch, name)``), as ``dtype=`` takes them.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# "auto" picks Triton for CUDA tensors and PyTorch otherwise (turborank.ops).
BACKENDS = ("auto", "torch", "triton")
# How the linear layers run (turborank.linear_engines): "auto" measures on CPU, "aten" is F.linear,
# "onednn" packs the weights for oneDNN at load (CPU only).
LINEAR_ENGINES = ("auto", "aten", "onednn")
# The two JinaBERT ALiBi slope schemes (DEVELOPERS.md, "ALiBi slopes").
SLOPE_SCHEMES = ("standard", "jina-reranker-v1")
TRUNCATION_STRATEGIES = ("longest_first", "only_second")
LONG_DOC_MODES = ("truncate", "chunk")
CHUNK_AGGREGATES = ("max", "mean")


def as_integer(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (NumPy's and torch's integer scalars too, as
    sentence-transformers takes them), else None; a bool is not an integer here, nor NumPy's or
    torch's (NumPy before 2.3 still lets ``operator.index`` take its bool scalars)."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
