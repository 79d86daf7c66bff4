"""`turborank` command line: rank documents, verify against the HF reference code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from turborank.jsonl import iter_jsonl, read_lines
from turborank.reranker import DEFAULT_MODEL, DTYPES

# Errors a user can cause (bad input, missing files, unreachable hub): one line, no traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError, ImportError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise SystemExit(_fail(f"{message} (see `{self.prog} --help`)", code=2))


def _fail(message: str, code: int = 1) -> int:
    print(f"turborank: error: {message}", file=sys.stderr)
    return code


def _add_model_options(parser: argparse.ArgumentParser, default_model: str | None) -> None:
    parser.add_argument(
        "--model",
        default=default_model,
        required=default_model is None,
        help=f"checkpoint directory or hub id (default: {default_model})",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto = CUDA when available, else CPU",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto = bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="per-op implementation: auto = Triton on CUDA, PyTorch on CPU",
    )
    parser.add_argument(
        "--slopes",
        default=None,
        choices=["standard", "jina-reranker-v1"],
        help="override the ALiBi slope scheme chosen from config.json",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turborank", description="Fast, faithful JinaBERT rerankers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    rank = sub.add_parser("rank", help="score documents against a query, best first")
    _add_model_options(rank, DEFAULT_MODEL)
    rank.add_argument("--query", required=True)
    rank.add_argument("documents", nargs="*", metavar="DOC", help="documents to rank")
    rank.add_argument(
        "--documents-file",
        type=Path,
        help='one document per line, or JSONL (.jsonl: a string or {"text": ...} per line)',
    )
    rank.add_argument("--top-k", type=int, default=None)
    rank.add_argument("--max-length", type=int, default=None, help="tokens per pair (default: model maximum)")
    rank.add_argument("--truncation", default="longest_first", choices=["longest_first", "only_second"])
    rank.add_argument("--json", action="store_true", help="print JSON instead of a table")

    serve = sub.add_parser("serve", help="HTTP rerank server: Jina/Cohere /v1/rerank and TEI /rerank")
    _add_model_options(serve, DEFAULT_MODEL)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--max-batch-tokens", type=int, default=16384, help="token budget of one forward")
    serve.add_argument("--max-client-batch-size", type=int, default=32, help="documents per request")
    serve.add_argument("--max-concurrent-requests", type=int, default=512, help="beyond it: 429")
    serve.add_argument(
        "--max-input-length", type=int, default=None, help="tokens per pair (default: model max)"
    )
    serve.add_argument("--auto-truncate", action="store_true", help="truncate long inputs instead of 422")
    serve.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="beyond it: 413")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )

    verify = sub.add_parser("verify", help="compare scores with the checkpoint's own HF modeling code")
    _add_model_options(verify, None)
    verify.add_argument(
        "--pairs-file", type=Path, help="JSONL of [query, document] pairs (default: built-in)"
    )
    verify.add_argument("--max-length", type=int, default=1024)
    verify.add_argument("--tolerance", type=float, default=1e-4, help="max |Δ score| to pass (fp32)")
    verify.add_argument("--json", action="store_true")
    return parser


def read_documents(path: Path) -> list[str]:
    """Plain text: one document per non-blank line. JSONL (.jsonl): a JSON string or an object with
    a "text" field per line. Errors name the file and line."""
    if path.suffix != ".jsonl":
        return [line for line in read_lines(path) if line.strip()]
    documents = []
    for number, item in iter_jsonl(path):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(
                f'{path}:{number}: expected a JSON string or an object with a string "text" field'
            )
        documents.append(text)
    return documents


def _load(args: argparse.Namespace):
    from turborank.reranker import Reranker

    return Reranker.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, slopes=args.slopes, backend=args.backend
    )


def _rank(args: argparse.Namespace) -> int:
    documents = list(args.documents)
    if args.documents_file is not None:
        documents += read_documents(args.documents_file)
    if not documents:
        return _fail("no documents: pass them as arguments or with --documents-file")
    if args.top_k is not None and args.top_k < 1:
        return _fail(f"--top-k must be >= 1, got {args.top_k}")
    reranker = _load(args)
    results = reranker.rank(
        args.query,
        documents,
        top_k=args.top_k,
        return_documents=True,
        max_length=args.max_length,
        truncation=args.truncation,
    )
    if args.json:
        print(json.dumps({"model": args.model, "query": args.query, "results": results}, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'id':>5}  document")
    for position, item in enumerate(results, 1):
        text = item["text"].replace("\n", " ")
        text = text if len(text) <= 90 else text[:87] + "..."
        print(f"{position:>4}  {item['score']:>8.4f}  {item['corpus_id']:>5}  {text}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from turborank.serving.app import ServeSettings
        from turborank.serving.server import serve
    except ImportError as exc:
        raise ImportError(
            f"turborank serve needs the serve extra: pip install 'turborank[serve]' ({exc})"
        ) from None
    for name in (
        "port",
        "max_batch_tokens",
        "max_client_batch_size",
        "max_concurrent_requests",
        "max_body_bytes",
    ):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    reranker = _load(args)
    settings = ServeSettings(
        model_name=args.model,
        max_batch_tokens=args.max_batch_tokens,
        max_client_batch_size=args.max_client_batch_size,
        max_concurrent_requests=args.max_concurrent_requests,
        max_input_length=args.max_input_length or reranker.max_length,
        auto_truncate=args.auto_truncate,
        max_body_bytes=args.max_body_bytes,
    )
    serve(reranker, settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from turborank.verify import read_pairs, verify_against_reference

    pairs = read_pairs(args.pairs_file) if args.pairs_file else None
    report = verify_against_reference(
        args.model,
        pairs=pairs,
        device=args.device,
        max_length=args.max_length,
        slopes=args.slopes,
        backend=args.backend,
    )
    passed = report["max_abs_score_diff"] <= args.tolerance and report["token_ids_equal"]
    report["tolerance"] = args.tolerance
    report["passed"] = passed
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="turborank: %(levelname)s: %(message)s")
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest: print(f"turborank: warning: {message}", file=sys.stderr)
        try:
            return {"rank": _rank, "serve": _serve, "verify": _verify}[args.command](args)
        except USER_ERRORS as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return _fail("interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
