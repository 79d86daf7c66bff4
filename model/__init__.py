"""turborank: fast, faithful JinaBERT rerankers."""

from turborank.config import JinaBertConfig
from turborank.cpu_features import cpu_bf16_support
from turborank.reranker import DEFAULT_MODEL, Reranker

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "JinaBertConfig", "Reranker", "__version__", "cpu_bf16_support"]
