"""``turborank merge-runs``: join the runs of `eval --shard` processes, and score the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

    qrels = None
    if args.data is not None:  # read first: a wrong --data or --split must not cost the output
        from turborank.eval.beir import load_qrels
        from turborank.eval.metrics import require_metrics

        require_metrics()
        qrels = load_qrels(args.data, args.split)
    merged = merge_runs(args.runs, args.output, make_parents=args.parents)
    print(
        f"turborank: {len(merged)} queries from {len(args.runs)} runs written to {args.output}",
        file=sys.stderr,
    )
    if qrels is not None:
        from turborank.eval.metrics import evaluate

        print_metrics({"merged": evaluate(qrels, merged)}, as_json=False)
    return 0
