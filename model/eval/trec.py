"""TREC run files: `qid Q0 docid rank score tag` per line."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from turborank.jsonl import read_lines

Run = dict[str, list[tuple[str, float]]]  # query id -> [(doc id, score)], best first


def read_run(path: str | Path) -> Run:
    """Parse a run; each query's documents come back sorted by score (ties by rank)."""
    path = Path(path)
    rows: dict[str, list[tuple[float, int, str]]] = {}
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 6:
            raise ValueError(
                f"{path}:{number}: expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}"
            )
        qid, _, docid, rank, score, _ = fields
        try:
            rows.setdefault(qid, []).append((float(score), int(rank), docid))
        except ValueError:
            raise ValueError(f"{path}:{number}: rank must be an integer and score a number") from None
    run = {}
    for qid, docs in rows.items():
        seen = set()
        ordered = []
        for score, _, docid in sorted(docs, key=lambda r: (-r[0], r[1])):
            if docid in seen:
                raise ValueError(f"{path}: query {qid!r} lists document {docid!r} twice")
            seen.add(docid)
            ordered.append((docid, score))
        run[qid] = ordered
    return run


def write_query(out: TextIO, qid: str, ranked: Iterable[tuple[str, float]], tag: str) -> None:
    for rank, (docid, score) in enumerate(ranked, 1):
        out.write(f"{qid} Q0 {docid} {rank} {score:.8g} {tag}\n")


def merge_runs(paths: list[str | Path], output: str | Path, tag: str = "turborank") -> Run:
    """Concatenate shard runs; a query found in two shards is an error."""
    merged: Run = {}
    origin: dict[str, str] = {}
    for path in paths:
        for qid, ranked in read_run(path).items():
            if qid in merged:
                raise ValueError(f"{path}: query {qid!r} is also in {origin[qid]}; shards must not overlap")
            merged[qid] = ranked
            origin[qid] = str(path)
    with open(output, "w", encoding="utf-8") as out:
        for qid in sorted(merged):
            write_query(out, qid, merged[qid], tag)
    return merged
