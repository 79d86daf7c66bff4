"""A BM25 first stage (bm25s) for datasets that come without a run."""

from __future__ import annotations

import logging

from turborank.eval.trec import Run


def bm25_run(corpus: dict[str, str], queries: dict[str, str], top_k: int, source: str = "the corpus") -> Run:
    """Top ``top_k`` documents per query by BM25 (bm25s defaults, English stopwords). ``source``
    names the corpus in an error."""
    try:
        import bm25s
    except ImportError:
        raise ImportError("--bm25 needs the eval extra: pip install 'turborank[eval]'") from None
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs its index build at DEBUG
    doc_ids = list(corpus)
    indexed = bm25s.tokenize([corpus[d] for d in doc_ids], stopwords="en", show_progress=False)
    if not indexed.vocab:  # bm25s would fail on it with "max() arg is an empty sequence"
        raise ValueError(
            f"{source}: BM25 finds no word to index in its {len(doc_ids)} documents (all empty or "
            "English stopwords); give a first-stage run with --run instead"
        )
    retriever = bm25s.BM25()
    retriever.index(indexed, show_progress=False)
    qids = list(queries)
    k = min(top_k, len(doc_ids))
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
    indices, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return {
        qid: [(doc_ids[int(i)], float(s)) for i, s in zip(indices[row], scores[row], strict=True)]
        for row, qid in enumerate(qids)
    }
