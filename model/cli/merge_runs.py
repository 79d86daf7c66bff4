"""``turborank merge-runs``: join the runs of `eval --shard` processes, and score the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from turborank.cli.common import print_metrics

HELP = "merge shard runs; with --data, score the merged run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--parents",
        action="store_true",
        help="create the output's missing parent directories (else an error)",
    )
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--split", default="test")


def run(args: argparse.Namespace) -> int:
    from turborank.eval.trec import merge_runs

    qrels, dataset = None, []
    if args.data is not None:  # read first: a wrong --data or --split must not cost the output
        from turborank.eval.beir import dataset_files, load_qrels
        from turborank.eval.metrics import require_metrics

        require_metrics()
        qrels = load_qrels(args.data, args.split)
        dataset = dataset_files(args.data, args.split)

    def some_judged(merged: dict[str, Any]) -> None:
        if qrels is not None and not set(merged) & set(qrels):
            raise ValueError(
                f"none of the {len(merged)} merged queries is judged in {dataset[-1]} (is --data or "
                "--split right?)"
            )

    merged = merge_runs(
        args.runs, args.output, make_parents=args.parents, also_read=dataset, check=some_judged
    )
    print(
        f"turborank: {len(merged)} queries from {len(args.runs)} runs written to {args.output}",
        file=sys.stderr,
    )
    if qrels is not None:
        from turborank.eval.metrics import evaluate

        print_metrics({"merged": evaluate(qrels, merged)}, as_json=False)
    return 0
