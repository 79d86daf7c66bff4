"""sentence-transformers' ``CrossEncoder`` interface on turborank's engine.

Code written for ``sentence_transformers.CrossEncoder`` runs unchanged except for the import:
``predict`` returns a NumPy array (one float32 score per pair, a scalar for one pair), ``rank``
returns ``[{"corpus_id", "score"[, "text"]}]`` best first. Scores are sigmoid(logit) by default, as
sentence-transformers does for a one-label model; ``activation_fn=torch.nn.Identity()`` gives the
raw logits. Keywords that only mean something to sentence-transformers (``trust_remote_code``,
``cache_folder``, ``model_kwargs``, ...) are accepted and ignored with a warning, never a TypeError.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from turborank.ranking import ranked_results
from turborank.reranker import DEFAULT_MODEL, Reranker


def _warn_ignored(where: str, names: Sequence[str]) -> None:
    if names:
        warnings.warn(
            f"CrossEncoder.{where}: ignoring {', '.join(sorted(names))} (sentence-transformers options "
            "with no effect on turborank)",
            UserWarning,
            stacklevel=3,
        )


class CrossEncoder:
    """A JinaBERT reranker behind sentence-transformers' ``CrossEncoder`` signature.

    Args:
        model_name_or_path: hub id or local checkpoint directory.
        num_labels: must be None or 1 (the rerankers have a one-logit classifier).
        max_length: tokens per pair (default: the model maximum, 8,192).
        activation_fn: applied to the logits by ``predict`` (default ``torch.nn.Sigmoid()``).
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        revision: hub revision.
        backend: sentence-transformers' inference backend; only "torch" exists here (turborank picks
            Triton kernels on CUDA and PyTorch on CPU by itself).
        dtype: turborank's run dtype (None: bf16 on CUDA, fp32 on CPU).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        num_labels: int | None = None,
        max_length: int | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | None = None,
        revision: str | None = None,
        backend: str = "torch",
        *,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        # sentence-transformers' own options (and any we do not know): warned about, never a TypeError.
        _warn_ignored("__init__", sorted(kwargs))
        if num_labels not in (None, 1):
            raise ValueError(f"num_labels={num_labels!r}: the JinaBERT rerankers have one output label")
        if backend != "torch":
            raise ValueError(
                f"backend={backend!r}: turborank runs its own kernels (Triton on CUDA, PyTorch on CPU); "
                "use backend='torch'"
            )
        self.reranker = Reranker.from_pretrained(
            model_name_or_path, device=device, dtype=dtype, revision=revision
        )
        self.max_length = self.reranker.check_max_length(max_length)
        self.activation_fn = activation_fn if activation_fn is not None else torch.nn.Sigmoid()
        self.num_labels = 1

    @property
    def device(self) -> torch.device:
        return self.reranker.device

    def to(self, device: str | torch.device) -> CrossEncoder:
        """Move the model (its ops follow the device: Triton on CUDA, PyTorch on CPU)."""
        self.reranker.to(device)
        return self

    def predict(
        self,
        sentences: Sequence[Sequence[str]] | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Scores of (query, document) pairs in input order.

        Args:
            sentences: a list of pairs, or one pair (then one score comes back, not a list).
            activation_fn: overrides the constructor's for this call.
            apply_softmax: a softmax over the labels; with one label it changes nothing (as in
                sentence-transformers).
            convert_to_numpy: float32 NumPy array (the default); convert_to_tensor: a torch tensor.
        Returns:
            [n] scores (numpy.ndarray, torch.Tensor or a list of floats), or a scalar for one pair.
        """
        _warn_ignored("predict", sorted(kwargs))
        single = (
            isinstance(sentences, (list, tuple)) and len(sentences) == 2 and isinstance(sentences[0], str)
        )
        pairs = [sentences] if single else list(sentences)
        logits = self.reranker.predict(
            pairs,
            activation=False,
            batch_size=batch_size,
            max_length=self.max_length,
            show_progress_bar=show_progress_bar,
        )
        activation = activation_fn if activation_fn is not None else self.activation_fn
        scores = activation(torch.tensor(logits, dtype=torch.float32))
        if apply_softmax and scores.dim() > 1:
            scores = torch.softmax(scores, dim=-1)
        if convert_to_tensor:
            return scores[0] if single else scores
        if convert_to_numpy:
            array = scores.numpy()
            return array[0] if single else array
        values = scores.tolist()
        return values[0] if single else values

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Documents best first: [{"corpus_id": index, "score": float[, "text": document]}], cut to
        ``top_k`` (0 gives an empty list, as in sentence-transformers). Ties keep input order."""
        _warn_ignored("rank", sorted(kwargs))
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise ValueError("documents must be a list of strings")
        scores = self.predict(
            [(query, document) for document in documents],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            activation_fn=activation_fn,
            convert_to_numpy=False,
        )
        return ranked_results(scores, documents, top_k, return_documents)
