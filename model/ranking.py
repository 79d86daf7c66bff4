"""Putting scored documents in order: the one ranking rule the library, the server and eval share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def best_first(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores``, highest first; equal scores keep their input order (a stable sort, so
    a ranking does not depend on how ties happen to fall)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


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
