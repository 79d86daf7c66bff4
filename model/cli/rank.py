"""``turborank rank``: score documents against a query, best first."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from turborank.cli.common import add_model_options, fail, load_reranker
from turborank.hub import DEFAULT_MODEL
from turborank.jsonl import iter_jsonl, read_lines
from turborank.option_names import TRUNCATION_STRATEGIES
from turborank.unicode_text import describe_lone_surrogate

HELP = "score documents against a query, best first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, DEFAULT_MODEL)
    parser.add_argument("--query", required=True)
    parser.add_argument("documents", nargs="*", metavar="DOC", help="documents to rank")
    parser.add_argument(
        "--documents-file",
        type=Path,
        help='one document per line, or JSONL (.jsonl: a string or {"text": ...} per line)',
    )
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument(
        "--max-length", type=int, default=None, help="tokens per pair (default: model maximum)"
    )
    parser.add_argument("--truncation", default="longest_first", choices=list(TRUNCATION_STRATEGIES))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def read_documents(path: Path) -> list[tuple[int, str]]:
    """(line number, document) per non-blank line. Plain text: the line is the document. JSONL
    (.jsonl): a JSON string or an object with a "text" field per line. Errors name the file and line."""
    if path.suffix != ".jsonl":
        return [(number, line) for number, line in enumerate(read_lines(path), 1) if line.strip()]
    documents = []
    for number, item in iter_jsonl(path):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(
                f'{path}:{number}: expected a JSON string or an object with a string "text" field'
            )
        problem = describe_lone_surrogate(text)
        if problem is not None:
            raise ValueError(f"{path}:{number}: the document contains {problem}")
        documents.append((number, text))
    return documents


def run(args: argparse.Namespace) -> int:
    documents = list(args.documents)
    # A document's id is its place in the input: the arguments first, then the file's lines, a
    # blank line keeping its place though it is skipped (so ids still match line numbers).
    ids = list(range(len(documents)))
    if args.documents_file is not None:
        for number, text in read_documents(args.documents_file):
            documents.append(text)
            ids.append(len(args.documents) + number - 1)
    if not documents:
        return fail("no documents: pass them as arguments or with --documents-file")
    if args.top_k is not None and args.top_k < 1:
        return fail(f"--top-k must be >= 1, got {args.top_k}")
    reranker = load_reranker(args)
    results = reranker.rank(
        args.query,
        documents,
        top_k=args.top_k,
        return_documents=True,
        max_length=args.max_length,
        truncation=args.truncation,
    )
    for item in results:
        item["corpus_id"] = ids[item["corpus_id"]]
    if args.json:
        payload = {"model": args.model, "query": args.query, "results": results}
        if getattr(args, "weights_note", None):
            payload["weights"] = args.weights_note
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'id':>5}  document")
    for position, item in enumerate(results, 1):
        text = _printable(item["text"].replace("\n", " "))
        text = text if len(text) <= 90 else text[:87] + "..."
        print(f"{position:>4}  {item['score']:>8.4f}  {item['corpus_id']:>5}  {text}")
    return 0


# Control characters (a carriage return, an escape sequence) would move the terminal's cursor and
# overwrite the table: shown escaped, as Python writes them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
