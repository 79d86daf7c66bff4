"""Reading a BEIR-format dataset: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

from pathlib import Path

from turborank.jsonl import iter_jsonl, read_lines


def _records(path: Path, fields: tuple[str, ...]) -> dict[str, dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
        )
    records: dict[str, dict] = {}
    for number, item in iter_jsonl(path):
        if not isinstance(item, dict) or not isinstance(item.get("_id"), (str, int)):
            raise ValueError(f'{path}:{number}: expected an object with an "_id"')
        for field in fields:
            if not isinstance(item.get(field, ""), str):
                raise ValueError(f"{path}:{number}: field {field!r} must be a string")
        key = str(item["_id"])
        if key in records:
            raise ValueError(f"{path}:{number}: duplicate _id {key!r}")
        records[key] = item
    return records


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


def load_qrels(directory: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """query id -> {doc id: relevance} from qrels/<split>.tsv (query-id, corpus-id, score; a header
    line is allowed)."""
    path = Path(directory) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is --split right?)")
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score)")
        try:
            relevance = int(fields[2])
        except ValueError:
            raise ValueError(f"{path}:{number}: score {fields[2].strip()!r} is not an integer") from None
        qrels.setdefault(fields[0].strip(), {})[fields[1].strip()] = relevance
    return qrels
