"""``turborank demo``: the model card's example, ranked, even offline."""

from __future__ import annotations

import argparse
import sys

from turborank.cli import rank
from turborank.cli.common import add_model_options
from turborank.hub import DEFAULT_MODEL

HELP = "rank the model card's example with the default model (or, offline, a synthetic one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, DEFAULT_MODEL)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
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
    # The same path as `turborank rank`, with the example as its arguments.
    args.query, args.documents, args.documents_file = MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS, None
    args.top_k, args.max_length, args.truncation = None, None, "longest_first"
    return rank.run(args)
