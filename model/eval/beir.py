"""Reading a BEIR-format dataset: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

from pathlib import Path

from turborank.jsonl import iter_jsonl, read_lines
from turborank.unicode_text import describe_lone_surrogate


def _records(path: Path, fields: tuple[str, ...]) -> dict[str, dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
        )
    records: dict[str, dict] = {}
    for number, item in iter_jsonl(path):
        identifier = item.get("_id") if isinstance(item, dict) else None
        # An integer id is read as its digits; true is an int to Python, not an id.
        if not isinstance(identifier, (str, int)) or isinstance(identifier, bool):
            raise ValueError(f'{path}:{number}: expected an object with an "_id" (a string or an integer)')
        for field in ("_id", *fields):
            value = item.get(field, "")
            if field != "_id" and not isinstance(value, str):
                raise ValueError(f"{path}:{number}: field {field!r} must be a string")
            problem = describe_lone_surrogate(value) if isinstance(value, str) else None
            if problem is not None:
                raise ValueError(f"{path}:{number}: field {field!r} contains {problem}")
        key = str(item["_id"])
        if key in records:
            raise ValueError(f"{path}:{number}: duplicate _id {key!r}")
        records[key] = item
    if not records:
        raise ValueError(f"{path}: no records (one JSON object per line)")
    return records


def dataset_files(directory: str | Path, split: str) -> list[Path]:
    """The files of a BEIR dataset that ``eval`` reads."""
    directory = Path(directory)
    return [directory / "corpus.jsonl", directory / "queries.jsonl", directory / "qrels" / f"{split}.tsv"]


def load_corpus(directory: str | Path) -> dict[str, str]:
    """doc id -> text; a non-empty title is joined in front of the text with a space."""
    records = _records(Path(directory) / "corpus.jsonl", ("title", "text"))
    return {
        key: " ".join(p for p in (r.get("title", ""), r.get("text", "")) if p) for key, r in records.items()
    }


def load_queries(directory: str | Path) -> dict[str, str]:
    path = Path(directory) / "queries.jsonl"
    records = _records(path, ("text",))
    return {key: r.get("text", "") for key, r in records.items()}


# Graded relevance is a few levels (BEIR's run 0-2, TREC's to 4); pytrec_eval allots 8 bytes a grade
# up to the largest, so a stray 10**9 took 8 GB and came out as zeros once memory ran short.
MAX_RELEVANCE = 1000


def load_qrels(directory: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """query id -> {doc id: relevance} from qrels/<split>.tsv (query-id, corpus-id, score; a header
    line is allowed). A pair judged twice must be judged the same; scores lie in +-MAX_RELEVANCE."""
    path = Path(directory) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is --split right?)")
    qrels: dict[str, dict[str, int]] = {}
    judged_at: dict[tuple[str, str], int] = {}
    first = True
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        header, first = first and fields[0].strip().lower() in ("query-id", "query_id", "qid"), False
        if header:
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score)")
        try:
            relevance = int(fields[2])
        except ValueError:
            raise ValueError(f"{path}:{number}: score {fields[2].strip()!r} is not an integer") from None
        if not -MAX_RELEVANCE <= relevance <= MAX_RELEVANCE:
            raise ValueError(
                f"{path}:{number}: score {relevance} is outside -{MAX_RELEVANCE}..{MAX_RELEVANCE} (graded "
                "relevance; pytrec_eval sets memory aside for every grade up to the largest)"
            )
        query_id, document_id = fields[0].strip(), fields[1].strip()
        if not query_id or not document_id:
            raise ValueError(f"{path}:{number}: empty {'query-id' if not query_id else 'corpus-id'}")
        judged = qrels.setdefault(query_id, {})
        if judged.get(document_id, relevance) != relevance:
            earlier = judged_at[query_id, document_id]
            raise ValueError(
                f"{path}:{number}: {query_id} {document_id} is judged {relevance} here and "
                f"{judged[document_id]} on line {earlier}"
            )
        judged[document_id] = relevance
        judged_at.setdefault((query_id, document_id), number)
    return qrels


def judged_queries(
    directory: str | Path, split: str, qrels: dict[str, dict[str, int]], queries: dict[str, str]
) -> list[str]:
    """Ids of the judged queries that queries.jsonl holds, in qrels order. ValueError naming the file
    when there are none, or when one of them has no text (the reranker refuses an empty query)."""
    qrels_path = Path(directory) / "qrels" / f"{split}.tsv"
    queries_path = Path(directory) / "queries.jsonl"
    if not qrels:
        raise ValueError(f"{qrels_path}: no judgments")
    judged = [qid for qid in qrels if qid in queries]
    if not judged:
        example = next(iter(qrels))
        raise ValueError(
            f"{qrels_path}: none of its {len(qrels)} judged queries (for example {example!r}) is in "
            f"{queries_path}"
        )
    for qid in judged:
        if not queries[qid].strip():
            raise ValueError(f"{queries_path}: query {qid!r} (judged in {qrels_path}) has no text")
    return judged
