"""turborank: fast, faithful JinaBERT rerankers."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    # One source of truth: the version in pyproject.toml, as installed.
    __version__ = version("turborank")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
# How long an idle OpenMP thread of PyTorch's libgomp spins before it sleeps, in spin iterations.
# libgomp's default (300,000, about a millisecond) makes every barrier of a machine whose cores are
# shared wait on a thread the kernel has descheduled: on 2 cores beside 2 busy processes the model
# card took 4-5x its idle time, 2.1-3.5x with 10,000, at the same idle speed (2 Zen 4 cores, torch
# 2.13). libgomp reads it once, when torch loads it, so it is set only if torch is not imported yet
# and the user set neither it nor OMP_WAIT_POLICY; the turborank command and server always import
# turborank first. Importing torch before turborank keeps libgomp's default.
OPENMP_SPIN_COUNT = "10000"
if "torch" not in sys.modules and not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
# The value libgomp reads, as far as turborank can know it: the one at its import (a change to the
# environment after torch is loaded has no effect, and must not show in ``Reranker.describe``).
OPENMP_SPIN_COUNT_READ = os.environ.get("GOMP_SPINCOUNT")
# oneDNN keeps the primitives it creates (one per linear layer and input shape, each with buffers
# sized by its row count) in two LRU caches, its own and ideep's, of 1,024 entries each by default.
# A server sees a new row count with almost every batch, so with the packed-weight linear engine a
# process grew by ~2.5 MiB per new shape (small model: 330 -> 800 MiB over 200 varied batches), and
# a soak server held 0.9-1.0 GiB under load against 0.5 GiB with F.linear. 32 entries hold two
# shapes of a turbo forward (16 primitives each; with 16 entries one short pair took 11 ms instead
# of 8, with 32 8.1 ms) and bring the soak server to 0.46-0.64 GiB. oneDNN reads both when it first
# creates a primitive; a value the user set is kept.
ONEDNN_CACHE_ENTRIES = "32"
for _cache in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, ONEDNN_CACHE_ENTRIES)

__all__ = [
    "DEFAULT_MODEL",
    "CrossEncoder",
    "JinaBertConfig",
    "NonFiniteScoreError",
    "Reranker",
    "TruncationWarning",
    "__version__",
    "cpu_bf16_support",
]

if TYPE_CHECKING:
    from turborank.config import JinaBertConfig
    from turborank.cpu_features import cpu_bf16_support
    from turborank.cross_encoder import CrossEncoder
    from turborank.reranker import DEFAULT_MODEL, Reranker
    from turborank.scoring_options import NonFiniteScoreError
    from turborank.tokenization import TruncationWarning


def __getattr__(name: str) -> Any:
    # torch and triton take seconds to import: `import turborank` (and so the command line) stays
    # light until the model is needed, so Ctrl-C in that time is handled by the CLI, not a traceback.
    if name in ("DEFAULT_MODEL", "Reranker"):
        from turborank import reranker

        return getattr(reranker, name)
    if name == "NonFiniteScoreError":
        from turborank.scoring_options import NonFiniteScoreError

        return NonFiniteScoreError
    if name == "TruncationWarning":
        from turborank.tokenization import TruncationWarning

        return TruncationWarning
    if name == "CrossEncoder":
        from turborank.cross_encoder import CrossEncoder

        return CrossEncoder
    if name == "cpu_bf16_support":
        from turborank.cpu_features import cpu_bf16_support

        return cpu_bf16_support
    if name == "JinaBertConfig":
        from turborank.config import JinaBertConfig

        return JinaBertConfig
    raise AttributeError(f"module 'turborank' has no attribute {name!r}")
