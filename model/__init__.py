"""turborank: fast, faithful JinaBERT rerankers."""

from importlib.metadata import PackageNotFoundError, version

from turborank.config import JinaBertConfig
from turborank.cross_encoder import CrossEncoder
from turborank.reranker import DEFAULT_MODEL, Reranker

try:
    # One source of truth: the version in pyproject.toml, as installed.
    __version__ = version("turborank")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["DEFAULT_MODEL", "CrossEncoder", "JinaBertConfig", "Reranker", "__version__"]
