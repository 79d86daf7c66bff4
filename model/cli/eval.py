"""``turborank eval``: rerank a first-stage run on a BEIR-format dataset and score both, in this
process or as Ray tasks."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turborank.cli.common import (
    add_model_options,
    add_ray_option,
    checked,
    fail,
    load_reranker,
    positive_int,
    print_metrics,
)
from turborank.hub import DEFAULT_MODEL
from turborank.option_names import CHUNK_AGGREGATES, LONG_DOC_MODES

if TYPE_CHECKING:
    from turborank.eval.rerank_run import RerankJob, RerankOptions, RerankStats

HELP = "rerank a first-stage run on a BEIR-format dataset and score it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, DEFAULT_MODEL)
    parser.add_argument(
        "--data", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/"
    )
    first = parser.add_mutually_exclusive_group(required=True)
    first.add_argument("--run", type=Path, help="first-stage run (TREC format)")
    first.add_argument("--bm25", action="store_true", help="build the first stage with BM25 (bm25s)")
    parser.add_argument("--top-k", type=int, default=100, help="documents reranked per query")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("run.trec"),
        help="reranked run (TREC format), replaced only once the new run is complete (default: run.trec "
        "in the current directory)",
    )
    parser.add_argument(
        "--parents",
        action="store_true",
        help="create the output's missing parent directories (else an error)",
    )
    parser.add_argument("--batch-tokens", type=int, default=16384, help="token budget of one forward")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per pair (default: model max)")
    parser.add_argument("--long-doc", choices=list(LONG_DOC_MODES), default="truncate")
    parser.add_argument("--chunk-overlap", type=int, default=128)
    parser.add_argument("--chunk-aggregate", choices=list(CHUNK_AGGREGATES), default="max")
    parser.add_argument(
        "--shard", default=None, help="i/n: this process takes shard i (0-based) of n, by query"
    )
    parser.add_argument(
        "--group-pairs",
        type=int,
        default=4096,
        help="pairs of consecutive queries tokenised and scored together (the unit a Ray task takes)",
    )
    add_ray_option(
        parser,
        "run the groups of queries as Ray tasks",
        " (turborank installed on every node; the model a hub id or a path all nodes read)",
    )
    parser.add_argument(
        "--ray-workers",
        action=checked(positive_int),
        default=None,
        help="groups run at once (default: the cluster's GPUs, else its CPUs / --ray-cpus-per-worker)",
    )
    parser.add_argument(
        "--ray-cpus-per-worker",
        action=checked(positive_int),
        default=1,
        help="CPU cores (and torch threads) per task",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


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


@dataclasses.dataclass
class _EvalInputs:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict
    first_stage: dict
    qids: list[str]  # judged queries (of this shard) with first-stage results, sorted

    def job(self, options: RerankOptions) -> RerankJob:
        from turborank.eval.rerank_run import RerankJob

        return RerankJob(self.queries, self.corpus, self.first_stage, self.qids, options)


def _eval_inputs(args: argparse.Namespace, shard: tuple[int, int] | None) -> _EvalInputs:
    """Everything `eval` reads, checked before the model is loaded: files, the first stage (read,
    or built with BM25), that the output can be written, that every document is in the corpus."""
    from turborank.eval.beir import judged_queries, load_corpus, load_qrels, load_queries
    from turborank.eval.metrics import require_metrics
    from turborank.eval.rerank_run import check_first_stage, shard_queries
    from turborank.eval.trec import check_trec_ids, read_run
    from turborank.replace_file import output_target

    require_metrics()  # the run ends with them: a missing extra is known before the reranking
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
    output_target(args.output, args.parents, _inputs_of(args))
    if first_stage is None:
        from turborank.eval.bm25 import bm25_run

        first_stage = bm25_run(
            corpus, {q: queries[q] for q in qids}, args.top_k, str(args.data / "corpus.jsonl")
        )
    qids = [q for q in qids if first_stage.get(q)]
    if not qids:
        raise ValueError("no query has both judgments and first-stage results")
    check_first_stage(corpus, first_stage, qids, args.top_k)
    check_trec_ids(first_stage, qids, args.top_k)
    return _EvalInputs(corpus, queries, qrels, first_stage, qids)


def _inputs_of(args: argparse.Namespace, model_directory: Path | None = None) -> list[Path]:
    """What eval reads, which its output must never replace: the dataset's files, ``--run``, and
    the checkpoint's files (``--output <model>/model.safetensors`` replaced the weights): those of
    ``model_directory`` once the model is loaded (a hub id's snapshot), before that of ``--model``
    where it is a directory here."""
    from turborank.eval.beir import dataset_files

    if model_directory is None and Path(args.model).expanduser().is_dir():
        model_directory = Path(args.model).expanduser()
    model_files = [p for p in model_directory.iterdir() if p.is_file()] if model_directory else []
    return dataset_files(args.data, args.split) + ([args.run] if args.run is not None else []) + model_files


def run(args: argparse.Namespace) -> int:
    import time

    from turborank.eval.metrics import evaluate
    from turborank.eval.rerank_run import RerankOptions, rerank_run
    from turborank.eval.trec import read_run
    from turborank.replace_file import replace_when_done

    shard = _parse_shard(args.shard)
    if shard is not None and args.ray is not None:
        return fail(
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
    # A failed run leaves an earlier file of that name as it was; the model is loaded first, so an
    # interrupt while it loads (which the output keeps what was written for) writes nothing.
    reranker = load_reranker(args)
    progress = _progress_bar(args.top_k, inputs)
    start = time.perf_counter()
    interrupted = kept = False
    try:
        with replace_when_done(
            args.output, args.parents, _inputs_of(args, reranker.checkpoint_directory)
        ) as out:
            try:
                reranked, stats = rerank_run(reranker, inputs.job(options), out, on_progress=progress.update)
            except KeyboardInterrupt:
                interrupted = True
                if out.tell() == 0:  # no query done: an earlier file stays as it was
                    raise
                kept = True  # the queries done: a valid partial run, put in place
    except KeyboardInterrupt:
        if not interrupted:
            raise
    progress.close()
    seconds = time.perf_counter() - start
    if interrupted and not kept:
        print(
            f"turborank: interrupted before the first query was done; {args.output} was left as it was",
            file=sys.stderr,
        )
        return 130
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
    print_metrics(rows, args.json)
    if stats is not None:
        _print_rerank_stats(stats, options, seconds, args.output, "")
    return 130 if interrupted else 0


def _print_rerank_stats(
    stats: RerankStats, options: RerankOptions, seconds: float, output: Path, where: str
) -> None:
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


def _eval_on_ray(args: argparse.Namespace, options: RerankOptions, inputs: _EvalInputs) -> int:
    """``turborank eval --ray``: the same inputs, checks and metrics as one process; the groups of
    queries run as Ray tasks, and the output is replaced once all of them are done."""
    import time

    from turborank.eval.metrics import evaluate
    from turborank.eval.ray_runs import ModelSpec, RayPlan, connect, rerank_run_on_ray
    from turborank.ray_cluster import resolve_local_path
    from turborank.replace_file import output_target

    plan = RayPlan(
        address=None if args.ray == "local" else args.ray,
        workers=args.ray_workers,
        cpus_per_worker=args.ray_cpus_per_worker,
        use_gpus=args.device != "cpu",
        timeout_s=args.ray_timeout,
    )
    # Resolved here: a worker would read a relative path in its own working directory.
    model = resolve_local_path(args.model)
    spec = ModelSpec(model, args.device, args.dtype, args.slopes, args.backend, args.linear)
    qids, first_stage = inputs.qids, inputs.first_stage
    started = connect(plan)
    progress = _progress_bar(args.top_k, inputs)
    start = time.perf_counter()
    try:
        reranked, stats = rerank_run_on_ray(
            spec,
            plan,
            inputs.job(options),
            output_target(args.output, args.parents, _inputs_of(args)),
            progress.update,
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
    print_metrics(rows, args.json)
    _print_rerank_stats(stats, options, seconds, args.output, " on Ray")
    return 0


def _progress_bar(top_k: int, inputs: _EvalInputs) -> Any:
    """A bar over the documents to rerank (tqdm comes with huggingface_hub, so it is always there)."""
    from tqdm import tqdm

    total = sum(min(top_k, len(inputs.first_stage[q])) for q in inputs.qids)
    return tqdm(total=total, unit="doc", desc="reranking", file=sys.stderr, disable=None, smoothing=0.1)
