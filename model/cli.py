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


class _VersionAction(argparse.Action):
    """``--version``: the package, torch, and whether this CPU runs bf16 natively (read only when
    asked, not on every command)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print versions and the CPU's bf16 support")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import torch

        from turborank import __version__, cpu_bf16_support

        print(f"turborank {__version__} (torch {torch.__version__})")
        print(f"cpu: {cpu_bf16_support().describe()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turborank", description="Fast, faithful JinaBERT rerankers.")
    parser.add_argument("--version", action=_VersionAction)
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
    serve.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay CUDA graphs for small batches (< 128 pairs, <= 4096 tokens; each shape bucket is "
        "captured on first use); needs CUDA and the Triton backend",
    )

    ev = sub.add_parser("eval", help="rerank a first-stage run on a BEIR-format dataset and score it")
    _add_model_options(ev, DEFAULT_MODEL)
    ev.add_argument(
        "--data", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/"
    )
    first = ev.add_mutually_exclusive_group(required=True)
    first.add_argument("--run", type=Path, help="first-stage run (TREC format)")
    first.add_argument("--bm25", action="store_true", help="build the first stage with BM25 (bm25s)")
    ev.add_argument("--top-k", type=int, default=100, help="documents reranked per query")
    ev.add_argument("--split", default="test")
    ev.add_argument("--output", type=Path, default=Path("run.trec"), help="reranked run (TREC format)")
    ev.add_argument("--batch-tokens", type=int, default=16384, help="token budget of one forward")
    ev.add_argument("--max-length", type=int, default=None, help="tokens per pair (default: model max)")
    ev.add_argument("--long-doc", choices=["truncate", "chunk"], default="truncate")
    ev.add_argument("--chunk-overlap", type=int, default=128)
    ev.add_argument("--chunk-aggregate", choices=["max", "mean"], default="max")
    ev.add_argument("--shard", default=None, help="i/n: this process takes shard i (0-based) of n, by query")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")

    merge = sub.add_parser("merge-runs", help="merge shard runs; with --data, score the merged run")
    merge.add_argument("runs", nargs="+", type=Path)
    merge.add_argument("--output", type=Path, required=True)
    merge.add_argument("--data", type=Path, default=None)
    merge.add_argument("--split", default="test")

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
        args.model,
        device=args.device,
        dtype=args.dtype,
        slopes=args.slopes,
        backend=args.backend,
        cuda_graphs=getattr(args, "cuda_graphs", False),
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


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, for example 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
    return index, count


def _print_metrics(rows: dict[str, dict[str, float]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows))
        return
    names = list(next(iter(rows.values())))
    print(f"{'':<12}" + "".join(f"{n:>12}" for n in names))
    for label, values in rows.items():
        print(
            f"{label:<12}"
            + "".join(f"{values[n]:>12.4f}" if n != "queries" else f"{values[n]:>12}" for n in names)
        )


def _eval(args: argparse.Namespace) -> int:
    import time

    from turborank.beir import load_corpus, load_qrels, load_queries
    from turborank.evaluation import RerankOptions, check_first_stage, rerank_run, shard_queries
    from turborank.ir_metrics import evaluate
    from turborank.trec import read_run

    shard = _parse_shard(args.shard)
    options = RerankOptions(
        top_k=args.top_k,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        long_doc=args.long_doc,
        chunk_overlap=args.chunk_overlap,
        chunk_aggregate=args.chunk_aggregate,
    )
    corpus, queries = load_corpus(args.data), load_queries(args.data)
    qrels = load_qrels(args.data, args.split)
    if args.run is not None:
        first_stage = read_run(args.run)
        unknown = sorted(set(first_stage) - set(queries))
        if unknown:
            raise ValueError(f"{args.run}: queries {unknown[:5]} are not in {args.data / 'queries.jsonl'}")
    qids = shard_queries([q for q in qrels if q in queries], shard)
    if args.bm25:
        from turborank.first_stage import bm25_run

        first_stage = bm25_run(corpus, {q: queries[q] for q in qids}, args.top_k)
    qids = [q for q in qids if first_stage.get(q)]
    if not qids:
        return _fail("no query has both judgments and first-stage results")
    # Before the output is opened: a bad run must not truncate an earlier run file of that name.
    check_first_stage(corpus, first_stage, qids, args.top_k)
    reranker = _load(args)
    total = sum(min(args.top_k, len(first_stage[q])) for q in qids)
    progress = _progress_bar(total)
    start = time.perf_counter()
    interrupted = False
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        try:
            reranked, stats = rerank_run(
                reranker, queries, corpus, first_stage, qids, options, out, on_progress=progress.update
            )
        except KeyboardInterrupt:
            interrupted = True
    progress.close()
    seconds = time.perf_counter() - start
    if interrupted:
        reranked, stats = read_run(args.output), None
        print(
            f"turborank: interrupted: {len(reranked)} of {len(qids)} queries are in {args.output} "
            "(a valid partial run)",
            file=sys.stderr,
        )
    rows = {
        "first stage": evaluate(qrels, {q: first_stage[q] for q in (reranked if interrupted else qids)}),
        "reranked": evaluate(qrels, reranked),
    }
    _print_metrics(rows, args.json)
    if stats is not None:
        cut = (
            f"{stats.truncated} pairs truncated to the token limit"
            if options.long_doc == "truncate"
            else f"{stats.chunked} documents scored as {stats.windows} windows in all"
        )
        print(
            f"turborank: reranked {stats.documents} documents for {stats.queries} queries in {seconds:.1f} s "
            f"({stats.documents / max(seconds, 1e-9):.1f} docs/s); {cut}; run written to {args.output}",
            file=sys.stderr,
        )
    return 130 if interrupted else 0


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:

        class _Silent:
            def update(self, n: int) -> None: ...

            def close(self) -> None: ...

        return _Silent()
    return tqdm(total=total, unit="doc", desc="reranking", file=sys.stderr, disable=None, smoothing=0.1)


def _merge_runs(args: argparse.Namespace) -> int:
    from turborank.trec import merge_runs

    merged = merge_runs(args.runs, args.output)
    print(
        f"turborank: {len(merged)} queries from {len(args.runs)} runs written to {args.output}",
        file=sys.stderr,
    )
    if args.data is not None:
        from turborank.beir import load_qrels
        from turborank.ir_metrics import evaluate

        _print_metrics({"merged": evaluate(load_qrels(args.data, args.split), merged)}, as_json=False)
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
            commands = {
                "rank": _rank,
                "serve": _serve,
                "verify": _verify,
                "eval": _eval,
                "merge-runs": _merge_runs,
            }
            return commands[args.command](args)
        except USER_ERRORS as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return _fail("interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
