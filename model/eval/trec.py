"""TREC run files: `qid Q0 docid rank score tag` per line."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

from turborank.jsonl import read_lines
from turborank.replace_file import replace_when_done

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
            value, place = float(score), int(rank)
        except ValueError:
            raise ValueError(f"{path}:{number}: rank must be an integer and score a number") from None
        if not math.isfinite(value):  # a NaN would leave the order undefined
            raise ValueError(f"{path}:{number}: score {score!r} is not a finite number")
        rows.setdefault(qid, []).append((value, place, docid))
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
    check_trec_id(qid, "query")
    for rank, (docid, score) in enumerate(ranked, 1):
        check_trec_id(docid, "document")
        # 9 significant digits write a float32 score exactly: 8 could make two close scores one
        # (a tie in the file that the printed metrics did not see).
        out.write(f"{qid} Q0 {docid} {rank} {score:.9g} {tag}\n")


def check_trec_id(name: str, kind: str) -> None:
    """ValueError naming an id a TREC run cannot hold: its fields are separated by whitespace, so an
    id that is empty or holds any would shift the fields of its line (every TREC reader, ours
    included, would then refuse the run or misread it)."""
    if not name or any(c.isspace() for c in name):
        raise ValueError(
            f"{kind} id {name!r} cannot be written to a TREC run (an id must be non-empty, with no "
            "whitespace: the format separates its fields by whitespace); rename it in the dataset"
        )


def check_trec_ids(first_stage: Run, qids: list[str], top_k: int) -> None:
    """``check_trec_id`` over every query and document id a reranked run of ``qids`` would hold,
    before the work starts."""
    for qid in qids:
        check_trec_id(qid, "query")
        for docid, _ in first_stage[qid][:top_k]:
            check_trec_id(docid, "document")


def merge_runs(
    paths: list[str | Path],
    output: str | Path,
    tag: str = "turborank",
    make_parents: bool = False,
    also_read: Sequence[Path] = (),
    check: Callable[[Run], None] | None = None,
) -> Run:
    """Concatenate shard runs; a query found in two shards is an error, and so are runs holding no
    query at all; ``check`` may refuse the merged run before it is written. The output is replaced
    once it is complete, never by part of it (``replace_when_done``: a symlink is followed, a FIFO,
    a device, one of the runs or a file in ``also_read`` refused)."""
    merged: Run = {}
    origin: dict[str, str] = {}
    for path in paths:
        for qid, ranked in read_run(path).items():
            if qid in merged:
                raise ValueError(f"{path}: query {qid!r} is also in {origin[qid]}; shards must not overlap")
            merged[qid] = ranked
            origin[qid] = str(path)
    if not merged:
        raise ValueError(f"the runs hold no query ({', '.join(map(str, paths))}): nothing to merge")
    if check is not None:
        check(merged)
    with replace_when_done(Path(output), make_parents, inputs=[*map(Path, paths), *also_read]) as out:
        for qid in sorted(merged):
            write_query(out, qid, merged[qid], tag)
    return merged
