"""turborank: fast, faithful JinaBERT rerankers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "JinaBertConfig", "Reranker", "__version__"]

if TYPE_CHECKING:
    from turborank.config import JinaBertConfig
    from turborank.reranker import DEFAULT_MODEL, Reranker


def __getattr__(name: str) -> Any:
    # torch and triton take seconds to import: `import turborank` (and so the command line) stays
    # light until the model is needed, so Ctrl-C in that time is handled by the CLI, not a traceback.
    if name in ("DEFAULT_MODEL", "Reranker"):
        from turborank import reranker

        return getattr(reranker, name)
    if name == "JinaBertConfig":
        from turborank.config import JinaBertConfig

        return JinaBertConfig
    raise AttributeError(f"module 'turborank' has no attribute {name!r}")
