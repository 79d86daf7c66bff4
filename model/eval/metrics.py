"""Retrieval metrics through ir-measures' pytrec_eval provider, not by hand.

The provider is named, not left to ir-measures' choice: its default sends RR with a cutoff to its
``msmarco`` provider, which breaks score ties by document id ascending where trec_eval (and so
the other three measures, and anyone scoring the written run with trec_eval) goes descending.
"""

from __future__ import annotations

import importlib.util

from turborank.eval.trec import Run

METRIC_NAMES = ("nDCG@10", "RR@10", "R@100", "Success@10")
LABELS = {"nDCG@10": "NDCG@10", "RR@10": "MRR@10", "R@100": "Recall@100", "Success@10": "HitRate@10"}


def require_metrics() -> None:
    """ImportError naming the extra when the metrics' library is not installed: called before the
    work whose result they measure, not after it (a reranked BEIR set can take hours)."""
    if importlib.util.find_spec("ir_measures") is None:
        raise ImportError("metrics need the eval extra: pip install 'turborank[eval]'")


def evaluate(qrels: dict[str, dict[str, int]], run: Run) -> dict[str, float]:
    """NDCG@10, MRR@10, Recall@100 and hit rate@10, averaged over the queries that have both
    judgments and a ranking (pytrec_eval's convention, as in BEIR)."""
    require_metrics()
    import ir_measures

    measures = [ir_measures.parse_measure(name) for name in METRIC_NAMES]
    scored = {qid: {docid: score for docid, score in ranked} for qid, ranked in run.items() if qid in qrels}
    judged = {qid: docs for qid, docs in qrels.items() if qid in scored}
    if not scored:
        return dict.fromkeys((LABELS[n] for n in METRIC_NAMES), 0.0) | {"queries": 0}
    values = ir_measures.pytrec_eval.calc_aggregate(measures, judged, scored)
    result: dict[str, float] = {LABELS[str(m)]: float(values[m]) for m in measures}
    result["queries"] = len(scored)
    return result
