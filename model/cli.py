"""`turborank` command line: rank documents, verify against the HF reference code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from turborank.hub import DEFAULT_MODEL
from turborank.jsonl import iter_jsonl, read_lines
from turborank.unicode_text import describe_lone_surrogate

# Errors a user can cause (bad input, missing files, unreachable hub): one line, no traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError, ImportError)
# The names of turborank.reranker.DTYPES (importing it would import torch before Ctrl-C is handled).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# The status a shell reports for a process killed by SIGPIPE, as `yes | head` does.
BROKEN_PIPE_EXIT = 141


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
        "--dtype",
        default="auto",
        choices=["auto", *DTYPE_NAMES],
        help="auto = bfloat16 on CUDA, float32 on CPU",
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


def version_text() -> str:
    """turborank's version (from the installed package metadata) and the stack it runs on."""
    import torch

    from turborank import __version__

    parts = [f"turborank {__version__}", f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton not installed")
    parts.append(f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no CUDA device")
    return ", ".join(parts)


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it imports torch and triton)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from turborank.cpu_features import cpu_bf16_support

        print(version_text())
        # Whether dtype="bfloat16" pays on this CPU (it is never chosen for the caller).
        print(f"cpu: {cpu_bf16_support().describe()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turborank", description="Fast, faithful JinaBERT rerankers.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and the stack, then exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="rank the model card's example with the default model (or, offline, a synthetic one)",
    )
    _add_model_options(demo, DEFAULT_MODEL)
    demo.add_argument("--json", action="store_true", help="print JSON instead of a table")

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

    serve = sub.add_parser(
        "serve", help="HTTP rerank server: Jina/Cohere /v1/rerank, Cohere /v2/rerank, TEI /rerank"
    )
    _add_model_options(serve, DEFAULT_MODEL)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--max-batch-tokens", type=int, default=16384, help="token budget of one forward")
    serve.add_argument(
        "--max-client-batch-size", type=int, default=32, help="documents per request on the TEI routes"
    )
    serve.add_argument(
        "--max-documents",
        type=int,
        default=1000,
        help="documents per request on the Jina/Cohere routes (/v1/rerank, /v2/rerank)",
    )
    serve.add_argument("--max-concurrent-requests", type=int, default=512, help="beyond it: 429")
    serve.add_argument(
        "--max-input-length", type=int, default=None, help="tokens per pair (default: model max)"
    )
    serve.add_argument(
        "--auto-truncate",
        action="store_true",
        help="TEI routes: truncate long inputs when the request does not say (else 422)",
    )
    serve.add_argument(
        "--strict-input-length",
        action="store_true",
        help="Jina/Cohere routes: refuse (422) a pair over --max-input-length instead of truncating it",
    )
    serve.add_argument(
        "--api-key",
        default=os.environ.get("TURBORANK_API_KEY"),
        help="require 'Authorization: Bearer KEY' on the rerank routes and /info (default: "
        "$TURBORANK_API_KEY; health, ready, metrics and docs stay open)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="beyond it: 413")
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=5.0,
        help="seconds a request body may stall before 408 (the slot is freed)",
    )
    serve.add_argument(
        "--min-body-rate",
        type=int,
        default=64 * 1024,
        help="bytes/s a request body must average after --body-timeout, else 408 (0: no minimum)",
    )
    serve.add_argument(
        "--tokenization-workers", type=int, default=2, help="threads that decode and tokenise requests"
    )
    serve.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds SIGTERM waits for in-flight requests"
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument(
        "--json-logs", action="store_true", help="log JSON lines (one object per record) instead of text"
    )
    serve.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay CUDA graphs for small batches (< 128 pairs, <= 4096 tokens; each shape bucket is "
        "captured on first use); needs CUDA and the Triton backend",
    )
    serve.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="serve through Ray Serve's proxy with --replicas copies of the app: 'local' (default) starts a "
        "cluster here; 'auto' or ray://host:10001 joins one",
    )
    serve.add_argument("--replicas", type=int, default=2, help="with --ray: replicas of the app")
    serve.add_argument(
        "--gpus-per-replica", type=float, default=None, help="with --ray: default 1 on CUDA, else 0"
    )
    serve.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="with --ray: CPU cores per replica"
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
    ev.add_argument(
        "--group-pairs",
        type=int,
        default=4096,
        help="pairs of consecutive queries tokenised and scored together (the unit a Ray task takes)",
    )
    ev.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the groups of queries as Ray tasks: 'local' (default) starts a cluster here; 'auto' or "
        "ray://host:10001 joins one (turborank installed on every node; the model a hub id or a path all "
        "nodes read)",
    )
    ev.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="groups run at once (default: the cluster's GPUs, else its CPUs / --ray-cpus-per-worker)",
    )
    ev.add_argument(
        "--ray-cpus-per-worker", type=int, default=1, help="CPU cores (and torch threads) per task"
    )
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
        problem = describe_lone_surrogate(text)
        if problem is not None:
            raise ValueError(f"{path}:{number}: the document contains {problem}")
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


def _demo(args: argparse.Namespace) -> int:
    """The model card's query and ten documents, ranked. The default model comes from the cache or
    the hub; when neither has it, the same example runs on a synthetic turbo-shaped checkpoint
    built once into the cache, and the output says that its weights are random."""
    from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY
    from turborank.hub import resolve_checkpoint

    try:
        resolve_checkpoint(args.model)
    except OSError as exc:
        if args.model != DEFAULT_MODEL:
            raise
        from turborank.testing import cached_synthetic_checkpoint

        print(f"turborank: {exc}", file=sys.stderr)
        print(
            "turborank: running the example on a synthetic turbo-shaped checkpoint instead (built once into "
            "the cache). Its weights are RANDOM: the scores below mean nothing.",
            file=sys.stderr,
        )
        args.model = str(cached_synthetic_checkpoint("turbo"))
        args.weights_note = "random: a synthetic turbo-shaped checkpoint, the hub was unreachable"
    args.query, args.documents, args.documents_file = MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS, None
    args.top_k, args.max_length, args.truncation = None, None, "longest_first"
    return _rank(args)


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
        payload = {"model": args.model, "query": args.query, "results": results}
        if getattr(args, "weights_note", None):
            payload["weights"] = args.weights_note
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>8}  {'id':>5}  document")
    for position, item in enumerate(results, 1):
        text = item["text"].replace("\n", " ")
        text = text if len(text) <= 90 else text[:87] + "..."
        print(f"{position:>4}  {item['score']:>8.4f}  {item['corpus_id']:>5}  {text}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:  # the serve extra is there (checked before the model is loaded)
        import turborank.serving.server  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"turborank serve needs the serve extra: pip install 'turborank[serve]' ({exc})"
        ) from None
    if not 1 <= args.port <= 65535:
        return _fail(f"--port must be a TCP port number (1..65535), got {args.port}")
    for name in (
        "max_batch_tokens",
        "max_client_batch_size",
        "max_documents",
        "max_concurrent_requests",
        "max_body_bytes",
        "max_input_length",
        "tokenization_workers",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            return _fail(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("body_timeout", "drain_timeout"):
        if not getattr(args, name) > 0:  # also refuses nan
            return _fail(
                f"--{name.replace('_', '-')} must be a positive number of seconds, got {getattr(args, name)}"
            )
    if args.min_body_rate < 0:
        return _fail(f"--min-body-rate must be >= 0, got {args.min_body_rate}")
    if args.api_key is not None and not (args.api_key and all("!" <= c <= "~" for c in args.api_key)):
        return _fail("--api-key must be printable ASCII without spaces (it travels in an HTTP header)")
    from turborank.serving.logs import serve_logging

    # Before the load, so that its lines are in the chosen format too; put back when serving ends.
    with serve_logging(args.log_level, args.json_logs):
        return _load_and_serve(args)


def _load_and_serve(args: argparse.Namespace) -> int:
    from turborank.serving.app import ServeSettings
    from turborank.serving.server import serve

    if args.ray is not None:
        # The replicas load the model; here the tokenizer is enough to check the limits.
        tokenizer = _tokenizer_only(args)
        reranker = None
    else:
        reranker = _load(args)
        tokenizer = reranker.tokenizer
    max_input_length = tokenizer.model_max_length if args.max_input_length is None else args.max_input_length
    low, high = tokenizer.num_special_tokens + 1, tokenizer.model_max_length
    if not low <= max_input_length <= high:
        return _fail(
            f"--max-input-length {max_input_length} is outside the model's range ({low}..{high}): a pair "
            f"needs its {low - 1} special tokens and at least one more"
        )
    settings = ServeSettings(
        model_name=args.model,
        max_batch_tokens=args.max_batch_tokens,
        max_client_batch_size=args.max_client_batch_size,
        max_documents=args.max_documents,
        max_concurrent_requests=args.max_concurrent_requests,
        max_input_length=max_input_length,
        auto_truncate=args.auto_truncate,
        strict_input_length=args.strict_input_length,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout,
        min_body_rate=args.min_body_rate,
        tokenizer_threads=args.tokenization_workers,
        drain_timeout_s=args.drain_timeout,
    )
    if args.ray is not None:
        return _serve_on_ray(args, settings)
    serve(reranker, settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _tokenizer_only(args: argparse.Namespace):
    from turborank.config import JinaBertConfig
    from turborank.hub import resolve_checkpoint
    from turborank.tokenization import PairTokenizer

    directory = resolve_checkpoint(args.model)
    config = JinaBertConfig.from_file(directory / "config.json", slopes=args.slopes)
    return PairTokenizer.from_directory(directory, config.max_position_embeddings)


def _serve_on_ray(args: argparse.Namespace, settings) -> int:
    from turborank.serving.ray_serve import ReplicaPlan, serve_on_ray

    if args.cuda_graphs:
        return _fail(
            "--cuda-graphs is not available with --ray yet: each replica would capture its own graphs"
        )
    plan = ReplicaPlan(
        address=None if args.ray == "local" else args.ray,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
    )
    load = {
        "path_or_hub_id": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "slopes": args.slopes,
        "backend": args.backend,
    }
    serve_on_ray(load, settings, plan, host=args.host, port=args.port)
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


@dataclasses.dataclass
class _EvalInputs:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict
    first_stage: dict
    qids: list[str]  # judged queries (of this shard) with first-stage results, sorted


def _eval_inputs(args: argparse.Namespace, shard: tuple[int, int] | None) -> _EvalInputs:
    """Everything `eval` reads, checked before the model is loaded: files, the first stage (read,
    or built with BM25), that the output can be written, that every document is in the corpus."""
    from turborank.eval.beir import judged_queries, load_corpus, load_qrels, load_queries
    from turborank.eval.rerank_run import check_first_stage, shard_queries
    from turborank.eval.trec import read_run
    from turborank.replace_file import check_writable_path

    corpus, queries = load_corpus(args.data), load_queries(args.data)
    qrels = load_qrels(args.data, args.split)
    first_stage = None
    if args.run is not None:
        first_stage = read_run(args.run)
        unknown = sorted(set(first_stage) - set(queries))
        if unknown:
            raise ValueError(f"{args.run}: queries {unknown[:5]} are not in {args.data / 'queries.jsonl'}")
    judged = judged_queries(args.data, args.split, qrels, queries)
    qids = shard_queries(judged, shard)
    if not qids:
        raise ValueError(f"--shard {args.shard} takes none of the {len(judged)} judged queries")
    # Before BM25 and the model load: an output that cannot be written is known at once.
    check_writable_path(args.output)
    if first_stage is None:
        from turborank.eval.bm25 import bm25_run

        first_stage = bm25_run(corpus, {q: queries[q] for q in qids}, args.top_k)
    qids = [q for q in qids if first_stage.get(q)]
    if not qids:
        raise ValueError("no query has both judgments and first-stage results")
    check_first_stage(corpus, first_stage, qids, args.top_k)
    return _EvalInputs(corpus, queries, qrels, first_stage, qids)


def _eval(args: argparse.Namespace) -> int:
    import time

    from turborank.eval.metrics import evaluate
    from turborank.eval.rerank_run import RerankOptions, rerank_run
    from turborank.eval.trec import read_run
    from turborank.replace_file import replace_when_done

    shard = _parse_shard(args.shard)
    if shard is not None and args.ray is not None:
        return _fail(
            "--shard and --ray do not go together: --ray splits the queries across its workers itself"
        )
    options = RerankOptions(
        top_k=args.top_k,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        long_doc=args.long_doc,
        chunk_overlap=args.chunk_overlap,
        chunk_aggregate=args.chunk_aggregate,
        pairs_per_group=args.group_pairs,
    )
    inputs = _eval_inputs(args, shard)
    if args.ray is not None:
        return _eval_on_ray(args, options, inputs)
    qids, first_stage = inputs.qids, inputs.first_stage
    # A failed run leaves an earlier file of that name as it was.
    with replace_when_done(args.output) as out:
        reranker = _load(args)
        progress = _progress_bar(sum(min(args.top_k, len(first_stage[q])) for q in qids))
        start = time.perf_counter()
        interrupted = False
        try:
            reranked, stats = rerank_run(
                reranker,
                inputs.queries,
                inputs.corpus,
                first_stage,
                qids,
                options,
                out,
                on_progress=progress.update,
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
        "first stage": evaluate(
            inputs.qrels, {q: first_stage[q] for q in (reranked if interrupted else qids)}
        ),
        "reranked": evaluate(inputs.qrels, reranked),
    }
    _print_metrics(rows, args.json)
    if stats is not None:
        _print_rerank_stats(stats, options, seconds, args.output, "")
    return 130 if interrupted else 0


def _print_rerank_stats(stats, options, seconds: float, output: Path, where: str) -> None:
    cut = (
        f"{stats.truncated} pairs truncated to the token limit"
        if options.long_doc == "truncate"
        else f"{stats.chunked} documents scored as {stats.windows} windows in all"
    )
    print(
        f"turborank: reranked {stats.documents} documents for {stats.queries} queries in {seconds:.1f} s "
        f"({stats.documents / max(seconds, 1e-9):.1f} docs/s{where}); {cut}; run written to {output}",
        file=sys.stderr,
    )


def _eval_on_ray(args: argparse.Namespace, options, inputs: _EvalInputs) -> int:
    """``turborank eval --ray``: the same inputs, checks and metrics as one process; the groups of
    queries run as Ray tasks, and the output is replaced once all of them are done."""
    import time

    from turborank.eval.metrics import evaluate
    from turborank.eval.ray_runs import ModelSpec, RayPlan, connect, rerank_run_on_ray

    plan = RayPlan(
        address=None if args.ray == "local" else args.ray,
        workers=args.ray_workers,
        cpus_per_worker=args.ray_cpus_per_worker,
        use_gpus=args.device != "cpu",
    )
    spec = ModelSpec(args.model, args.device, args.dtype, args.slopes, args.backend)
    qids, first_stage = inputs.qids, inputs.first_stage
    started = connect(plan)
    progress = _progress_bar(sum(min(args.top_k, len(first_stage[q])) for q in qids))
    start = time.perf_counter()
    try:
        reranked, stats = rerank_run_on_ray(
            spec,
            plan,
            inputs.queries,
            inputs.corpus,
            first_stage,
            qids,
            options,
            args.output,
            on_progress=progress.update,
        )
    except KeyboardInterrupt:
        progress.close()
        print(f"turborank: interrupted; {args.output} was left as it was", file=sys.stderr)
        return 130
    finally:
        if started:
            import ray

            ray.shutdown()
    progress.close()
    seconds = time.perf_counter() - start
    rows = {
        "first stage": evaluate(inputs.qrels, {q: first_stage[q] for q in qids}),
        "reranked": evaluate(inputs.qrels, reranked),
    }
    _print_metrics(rows, args.json)
    _print_rerank_stats(stats, options, seconds, args.output, " on Ray")
    return 0


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
    from turborank.eval.trec import merge_runs

    merged = merge_runs(args.runs, args.output)
    print(
        f"turborank: {len(merged)} queries from {len(args.runs)} runs written to {args.output}",
        file=sys.stderr,
    )
    if args.data is not None:
        from turborank.eval.beir import load_qrels
        from turborank.eval.metrics import evaluate

        _print_metrics({"merged": evaluate(load_qrels(args.data, args.split), merged)}, as_json=False)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from turborank.eval.verify import read_pairs, verify_against_reference

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
                "demo": _demo,
                "rank": _rank,
                "serve": _serve,
                "verify": _verify,
                "eval": _eval,
                "merge-runs": _merge_runs,
            }
            code = commands[args.command](args)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
            return code
        except BrokenPipeError:
            # The reader left (`turborank rank ... | head -1`): exit quietly as a SIGPIPE'd tool does,
            # with stdout pointed away so the interpreter's last flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return BROKEN_PIPE_EXIT
        except USER_ERRORS as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:  # also while torch is still being imported
            return _fail("interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
