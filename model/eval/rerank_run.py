"""Reranking a first-stage run: large length-sorted batches across queries, tokenisation running
ahead on its own thread, the run written query by query so an interrupted job leaves a valid file."""

from __future__ import annotations

import dataclasses
import io
import queue
import threading
from collections.abc import Callable
from typing import TextIO

import torch

from turborank.eval.trec import Run, write_query
from turborank.ranking import best_first
from turborank.reranker import Reranker
from turborank.scoring_options import check_long_doc_options


@dataclasses.dataclass(frozen=True)
class RerankOptions:
    top_k: int = 100
    max_length: int | None = None
    batch_tokens: int = 16384
    batch_size: int = 256
    long_doc: str = "truncate"
    chunk_overlap: int = 128
    chunk_aggregate: str = "max"
    pairs_per_group: int = 4096  # pairs tokenised and scored together, across queries

    def __post_init__(self) -> None:
        check_long_doc_options(self.long_doc, self.chunk_aggregate)
        for name in ("top_k", "batch_tokens", "batch_size", "pairs_per_group"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.chunk_overlap < 0:  # refused whatever long_doc is: a wrong value is a mistake anyway
            raise ValueError(f"chunk_overlap must be >= 0, got {self.chunk_overlap}")


@dataclasses.dataclass(frozen=True)
class RerankJob:
    """A reranking's inputs: the top ``options.top_k`` documents of ``first_stage`` for each query
    in ``qids`` (in that order), their texts in ``queries`` and ``corpus``; ``tag`` names the run
    in the TREC file."""

    queries: dict[str, str]
    corpus: dict[str, str]
    first_stage: Run
    qids: list[str]
    options: RerankOptions = RerankOptions()
    tag: str = "turborank"

    def check(self) -> None:
        """ValueError naming a document the reranking would read that the corpus lacks."""
        check_first_stage(self.corpus, self.first_stage, self.qids, self.options.top_k)

    def groups(self) -> list[list[str]]:
        """``qids`` in the groups that are tokenised and scored together (``query_groups``)."""
        return query_groups(self.qids, self.first_stage, self.options)


@dataclasses.dataclass
class RerankStats:
    queries: int = 0
    documents: int = 0
    truncated: int = 0  # pairs cut to max_length (long_doc="truncate")
    chunked: int = 0  # documents scored as several windows (long_doc="chunk")
    windows: int = 0


def shard_queries(qids: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Queries of shard i of n (0 <= i < n): every n-th query id in sorted order, starting at i."""
    ordered = sorted(qids)
    if shard is None:
        return ordered
    index, count = shard
    return ordered[index::count]


def query_groups(qids: list[str], first_stage: Run, options: RerankOptions) -> list[list[str]]:
    """Consecutive queries whose pairs are tokenised and scored together: about
    ``options.pairs_per_group`` pairs each. A run split along these groups (``turborank eval --ray``)
    is scored in exactly the batches of the single-process run."""
    groups, current, pairs = [], [], 0
    for qid in qids:
        current.append(qid)
        pairs += min(options.top_k, len(first_stage.get(qid, [])))
        if pairs >= options.pairs_per_group:
            groups.append(current)
            current, pairs = [], 0
    return groups + ([current] if current else [])


def check_first_stage(corpus: dict[str, str], first_stage: Run, qids: list[str], top_k: int) -> None:
    """Every document the reranking will read is in the corpus; else ValueError naming it. Cheap
    (dictionary lookups), so a caller that opens its output first can call it before that."""
    for qid in qids:
        for docid, _ in first_stage.get(qid, [])[:top_k]:
            if docid not in corpus:
                raise ValueError(f"first-stage run: document {docid!r} of query {qid!r} is not in the corpus")


def check_queries_fit(reranker: Reranker, job: RerankJob) -> None:
    """ValueError naming the first query a window cannot hold beside any document (long_doc="chunk"
    keeps the whole query in every window), before anything is scored: found when its group came,
    it was an error without the query's id after the groups before it were scored."""
    if job.options.long_doc != "chunk":
        return
    for qid in job.qids:
        try:
            reranker.encode(
                [(job.queries[qid], "")],
                job.options.max_length,
                long_doc="chunk",
                chunk_overlap=job.options.chunk_overlap,
                warn=False,
            )
        except ValueError as exc:
            raise ValueError(f"query {qid!r}: {exc}") from None


def rerank_run(
    reranker: Reranker,
    job: RerankJob,
    out: TextIO,
    on_progress: Callable[[int], None] = lambda documents: None,
) -> tuple[Run, RerankStats]:
    """Rerank ``job`` and write each query's ranking to ``out`` as soon as it is scored (flushed
    per group of queries); ``on_progress`` gets the pairs of each group scored.

    Raises ValueError, before anything is written, when the run names a document missing from the
    corpus (``RerankJob.check``) or a query too long for chunking (``check_queries_fit``). On
    KeyboardInterrupt the queries written so far form a valid run.
    """
    job.check()
    check_queries_fit(reranker, job)
    queries, corpus, first_stage, options = job.queries, job.corpus, job.first_stage, job.options
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for group in job.groups():
                if stop.is_set():
                    return
                candidates = {q: [d for d, _ in first_stage.get(q, [])[: options.top_k]] for q in group}
                pairs = [(queries[q], corpus[d]) for q in group for d in candidates[q]]
                encoded, owners = reranker.encode(
                    pairs,
                    options.max_length,
                    long_doc=options.long_doc,
                    chunk_overlap=options.chunk_overlap,
                    warn=False,
                )
                ready.put((group, candidates, encoded, owners))
            ready.put(None)
        except BaseException as exc:  # surfaces in the consumer
            ready.put(exc)

    producer = threading.Thread(target=produce, name="turborank-tokenize", daemon=True)
    producer.start()
    reranked: Run = {}
    stats = RerankStats()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            group, candidates, encoded, owners = item
            n_pairs = sum(len(c) for c in candidates.values())
            logits = reranker.logits(
                encoded,
                owners,
                n_pairs=n_pairs,
                chunk_aggregate=options.chunk_aggregate,
                batch_size=options.batch_size,
                max_batch_tokens=options.batch_tokens,
            )
            if owners is None:
                stats.truncated += encoded.truncated
            else:
                counts = torch.bincount(torch.tensor(owners), minlength=n_pairs)
                stats.chunked += int((counts > 1).sum())
                stats.windows += len(owners)
            scores = torch.sigmoid(logits).tolist()
            offset = 0
            # One write per group: an interrupt lands between groups, never inside a query.
            lines = io.StringIO()
            for qid in group:
                docs = candidates[qid]
                mine = scores[offset : offset + len(docs)]
                offset += len(docs)
                # Best first; ties keep the first stage's order.
                order = best_first(mine)
                reranked[qid] = [(docs[i], mine[i]) for i in order]
                write_query(lines, qid, reranked[qid], job.tag)
                stats.queries += 1
                stats.documents += len(docs)
            out.write(lines.getvalue())
            out.flush()
            on_progress(n_pairs)
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.1)
    return reranked, stats
