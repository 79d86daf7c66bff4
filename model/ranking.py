"""Putting scored documents in order: the one ranking rule the library, the server and eval share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turborank.option_names import as_integer


def best_first(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores``, highest first; equal scores keep their input order (a stable sort, so
    a ranking does not depend on how ties happen to fall)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def check_rank_arguments(documents: Sequence[str], top_k: int | None, smallest_top_k: int) -> None:
    """``rank``'s ValueErrors: ``documents`` a sequence of strings (a bare string is one text, not
    a list of them; bytes are not text), ``top_k`` None or an integer of at least
    ``smallest_top_k`` (0 where the API being mirrored answers an empty list for it)."""
    if isinstance(documents, (str, bytes, bytearray)) or not isinstance(documents, Sequence):
        raise ValueError("documents must be a list of strings")
    number = as_integer(top_k)
    if top_k is not None and (number is None or number < smallest_top_k):
        kind = "a positive integer" if smallest_top_k == 1 else "a non-negative integer"
        raise ValueError(f"top_k must be {kind} or None, got {top_k!r}")


def ranked_results(
    scores: Sequence[float], documents: Sequence[str], top_k: int | None, return_documents: bool
) -> list[dict[str, Any]]:
    """[{"corpus_id": index in ``documents``, "score": score[, "text": document]}], best first, cut
    to ``top_k`` (None: all)."""
    results = []
    for index in best_first(scores)[:top_k]:
        item: dict[str, Any] = {"corpus_id": index, "score": scores[index]}
        if return_documents:
            item["text"] = documents[index]
        results.append(item)
    return results
