"""What the commands share: the one-line error, the model options, loading the model, metric tables."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from turborank.option_names import BACKENDS, DTYPE_NAMES, LINEAR_ENGINES, SLOPE_SCHEMES

if TYPE_CHECKING:
    from turborank.reranker import Reranker

# Errors a user can cause (bad input, missing files, unreachable hub): one line, no traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError, ImportError)
# The status a shell reports for a process killed by SIGPIPE, as `yes | head` does.
BROKEN_PIPE_EXIT = 141


def fail(message: str, code: int = 1) -> int:
    """Print ``turborank: error: message`` to stderr; returns ``code``, the exit status to give."""
    print(f"turborank: error: {message}", file=sys.stderr)
    return code


def add_model_options(parser: argparse.ArgumentParser, default_model: str | None, dtype: bool = True) -> None:
    """--model, --device, --dtype (unless ``dtype`` is False: a command that runs in one dtype),
    --backend, --linear, --slopes."""
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
    if dtype:
        parser.add_argument(
            "--dtype",
            default="auto",
            choices=["auto", *DTYPE_NAMES],
            help="auto = bfloat16 on CUDA, float32 on CPU",
        )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=list(BACKENDS),
        help="per-op implementation: auto = Triton on CUDA, PyTorch on CPU",
    )
    parser.add_argument(
        "--linear",
        default="auto",
        choices=list(LINEAR_ENGINES),
        help="linear layers: aten = F.linear; onednn = CPU, weights packed for oneDNN at load with fused "
        "epilogues; auto = the faster of the two measured at load on CPU, aten on CUDA (default: auto)",
    )
    parser.add_argument(
        "--slopes",
        default=None,
        choices=list(SLOPE_SCHEMES),
        help="override the ALiBi slope scheme chosen from config.json",
    )


MODEL_OPTIONS = ("device", "dtype", "slopes", "backend", "linear")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Reranker.from_pretrained``'s arguments from the options of ``add_model_options`` (a Ray
    worker or replica loads its copy from the same dict)."""
    return {"path_or_hub_id": args.model, **{name: getattr(args, name) for name in MODEL_OPTIONS}}


def load_reranker(args: argparse.Namespace) -> Reranker:
    """The model the options of ``add_model_options`` name (torch is imported here, not before)."""
    from turborank.reranker import Reranker

    return Reranker.from_pretrained(**model_options(args), cuda_graphs=getattr(args, "cuda_graphs", False))


def print_metrics(rows: dict[str, dict[str, float]], as_json: bool) -> None:
    """One row per run (first stage, reranked, merged), one column per metric."""
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


class NotANumber(argparse.ArgumentTypeError):
    """A value that is not even of the option's type: a command-line error (status 2)."""


def checked(check: Callable[[str], Any]) -> type[argparse.Action]:
    """An argparse action storing ``check(text)``: a value out of its range is a ValueError naming
    the option (status 1), one of the wrong type argparse's usage error (status 2), raised while the
    command line is read, before anything loads."""

    class Checked(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
            try:
                setattr(namespace, self.dest, check(values))
            except NotANumber as exc:
                parser.error(f"argument {option_string}: {exc}")
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"{option_string} {exc}") from None

    return Checked


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise NotANumber(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    return _number(text, lambda value: value >= 0, "a finite number >= 0")


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, say)."""
    return _number(text, lambda value: value > 0, "a finite number > 0")


def _number(text: str, allowed: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise NotANumber(f"must be {what}, got {text!r}") from None
    if not (math.isfinite(value) and allowed(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def add_ray_option(parser: argparse.ArgumentParser, what: str, after: str = "") -> None:
    """``--ray [ADDRESS]``: 'local' when given bare; ``what`` says what runs on the cluster,
    ``after`` what else the user should know."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help=f"{what}: 'local' (default) starts a cluster of this machine's own, even where one already "
        f"runs; 'auto' (the cluster this machine belongs to), host:port or ray://host:10001 joins one{after}",
    )
    parser.add_argument(
        "--ray-timeout",
        action=checked(positive_number),
        default=30.0,
        metavar="SECONDS",
        help="with --ray ADDRESS: how long to wait for the cluster to answer before saying it does not",
    )
