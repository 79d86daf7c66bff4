"""``turborank verify``: compare the scores with the checkpoint's own Hugging Face modeling code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from turborank.cli.common import add_model_options, checked, non_negative_number

HELP = "compare scores with the checkpoint's own HF modeling code"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # A snapshot directory with its remote code: no default. No --dtype: the comparison is fp32's.
    add_model_options(parser, None, dtype=False)
    parser.add_argument(
        "--pairs-file", type=Path, help="JSONL of [query, document] pairs (default: built-in)"
    )
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument(
        "--tolerance", action=checked(non_negative_number), default=1e-4, help="max |Δ score| to pass (fp32)"
    )
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from turborank.eval.verify import read_pairs, verify_against_reference

    pairs = read_pairs(args.pairs_file) if args.pairs_file else None
    report = verify_against_reference(
        args.model,
        pairs=pairs,
        device=args.device,
        max_length=args.max_length,
        slopes=args.slopes,
        backend=args.backend,
        linear=args.linear,
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
