"""turborank: fast, faithful JinaBERT rerankers."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    # One source of truth: the version in pyproject.toml, as installed.
    __version__ = version("turborank")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["DEFAULT_MODEL", "CrossEncoder", "JinaBertConfig", "Reranker", "__version__", "cpu_bf16_support"]

if TYPE_CHECKING:
    from turborank.config import JinaBertConfig
    from turborank.cpu_features import cpu_bf16_support
    from turborank.cross_encoder import CrossEncoder
    from turborank.reranker import DEFAULT_MODEL, Reranker


def __getattr__(name: str) -> Any:
    # torch and triton take seconds to import: `import turborank` (and so the command line) stays
    # light until the model is needed, so Ctrl-C in that time is handled by the CLI, not a traceback.
    if name in ("DEFAULT_MODEL", "Reranker"):
        from turborank import reranker

        return getattr(reranker, name)
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
