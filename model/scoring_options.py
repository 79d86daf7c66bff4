"""What ``Reranker.predict`` and ``rank`` accept, checked before any tokenising; how the windows of
a chunked document become one logit (``chunk_aggregate``); and the check that every logit is
finite."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from turborank.option_names import CHUNK_AGGREGATES, LONG_DOC_MODES, TRUNCATION_STRATEGIES, as_integer

# show_progress_bar=None shows a bar from this many sequences on, when stderr is a terminal.
PROGRESS_MIN_PAIRS = 1000


def progress_bar(total: int, show: bool | None, unit: str = "pair") -> Any:
    """A tqdm bar over ``total`` pairs (or the windows of chunked documents: ``unit``): when asked,
    or (None) for a long job on a terminal."""
    if show is None:
        show = total >= PROGRESS_MIN_PAIRS and sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="scoring")


def close_bar(progress: Any) -> None:
    if progress is not None:
        progress.close()


def check_long_doc_options(long_doc: str, chunk_aggregate: str) -> None:
    if long_doc not in LONG_DOC_MODES:
        raise ValueError(f"long_doc={long_doc!r}; expected one of {LONG_DOC_MODES}")
    if chunk_aggregate not in CHUNK_AGGREGATES:
        raise ValueError(f"chunk_aggregate={chunk_aggregate!r}; expected one of {CHUNK_AGGREGATES}")


def aggregate_windows(window_logits: torch.Tensor, owners: list[int], n: int, how: str) -> torch.Tensor:
    """Per-pair logits [n] from per-window logits [windows] (``owners`` [windows]: each window's
    pair): the max, or the mean, over each pair's windows. ValueError unless every pair has a
    window (one without would come back -inf or NaN, not a score)."""
    index = torch.tensor(owners, dtype=torch.long)
    fits = len(owners) == len(window_logits) and (not owners or 0 <= min(owners) <= max(owners) < n)
    windows = torch.bincount(index, minlength=n) if fits else None
    if windows is None or not bool(windows.all()):
        raise ValueError(
            f"owners must give each of the {n} pairs at least one window, one owner per "
            f"window ({len(owners)} owners for {len(window_logits)} windows)"
        )
    if how == "max":
        return torch.full((n,), float("-inf")).scatter_reduce(0, index, window_logits, reduce="amax")
    return torch.zeros(n).index_add_(0, index, window_logits) / windows.float()


def check_pair_options(truncation: object, chunk_overlap: object, show_progress_bar: object) -> None:
    """The options predict hands to the tokenizer or the bar, checked whatever reaches them (an
    empty list, long_doc="chunk", which takes no truncation strategy)."""
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation={truncation!r}; expected one of {TRUNCATION_STRATEGIES}")
    overlap = as_integer(chunk_overlap)
    if overlap is None or overlap < 0:
        raise ValueError(f"chunk overlap must be a non-negative integer, got {chunk_overlap!r}")
    check_progress_bar(show_progress_bar)


def check_progress_bar(show_progress_bar: object) -> None:
    if show_progress_bar is not None and not isinstance(show_progress_bar, bool):
        raise ValueError(f"show_progress_bar must be True, False or None, got {show_progress_bar!r}")


def check_logits_options(
    chunk_aggregate: object,
    n_pairs: object,
    show_progress_bar: object,
    batch_size: object,
    max_batch_tokens: object,
) -> None:
    """``Reranker.logits``' options, checked as ``predict`` checks its own: ``logits`` is public,
    called with what ``encode`` returned, so "8" or 1.5 for a size must not reach the batching."""
    check_long_doc_options("truncate", chunk_aggregate)  # type: ignore[arg-type]
    check_options(batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    check_progress_bar(show_progress_bar)
    number = as_integer(n_pairs)
    if n_pairs is not None and (number is None or number < 0):
        raise ValueError(f"n_pairs must be a non-negative integer or None, got {n_pairs!r}")


def check_options(**options: object) -> None:
    """Flags must be booleans (a truthy "no" is not False) and sizes positive integers (not "8" or 1.5)."""
    for name, value in options.items():
        if name in ("activation", "return_documents"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        elif (as_integer(value) or 0) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_query(query: object) -> None:
    if not isinstance(query, str):
        raise ValueError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty")


def as_pairs(pairs: object) -> list[tuple[str, str]]:
    """Validate and normalise to a list of (query, document) tuples; one bare pair is accepted."""
    if isinstance(pairs, (list, tuple)) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
        pairs = [pairs]
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise ValueError("pairs must be a list of (query, document) string pairs")
    out = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"pair {index} is not a (query, document) pair: {pair!r:.80}")
        query, document = pair
        if not isinstance(document, str):
            raise ValueError(f"pair {index}: document must be a string, got {type(document).__name__}")
        try:
            check_query(query)
        except ValueError as exc:
            raise ValueError(f"pair {index}: {exc}") from None
        out.append((query, document))
    return out


class NonFiniteScoreError(ValueError):
    """The model produced a NaN or infinite logit; the message names the pairs (input order)."""


def check_finite(logits: torch.Tensor, owners: list[int] | None = None) -> None:
    """NonFiniteScoreError naming the pairs (``owners[i]`` for window i, when given) whose logit is
    not finite; one check over the host tensor."""
    # A finite sum means every logit is finite (a NaN or an infinity makes it NaN or infinite): one
    # reduction, where ``isfinite(...).all()`` is five ops (6 against 2 us for one pair's logits).
    # A sum that overflowed would come here with every logit finite; the exact check tells.
    if logits.numel() == 0 or math.isfinite(logits.sum().item()):
        return
    bad = ~torch.isfinite(logits)
    if not bool(bad.any()):
        return
    windows = bad.nonzero().flatten().tolist()
    pairs = list(dict.fromkeys(windows if owners is None else [owners[i] for i in windows]))
    first = logits[windows[0]].item()
    more = f" and {len(pairs) - 1} more" if len(pairs) > 1 else ""
    raise NonFiniteScoreError(
        f"the model produced a non-finite score ({first}) for pair {pairs[0]}{more} (input order); "
        "the checkpoint's weights or the dtype's range are the usual cause, so no scores are returned"
    )


def pair_logits(
    window_logits: torch.Tensor, owners: list[int] | None, n_pairs: int | None, how: str
) -> torch.Tensor:
    """Per-pair logits from what was scored: the logits themselves (owners None: one sequence per
    pair), or each pair's windows aggregated (``n_pairs`` defaults to one past the largest owner);
    NonFiniteScoreError first if any logit is not finite."""
    check_finite(window_logits, owners)
    if owners is None:
        if n_pairs is not None and n_pairs != len(window_logits):
            raise ValueError(
                f"n_pairs={n_pairs} but {len(window_logits)} sequences were scored without owners "
                "(one per pair); n_pairs counts the pairs of chunked windows"
            )
        return window_logits
    if n_pairs is None:
        n_pairs = max(owners, default=-1) + 1
    return aggregate_windows(window_logits, owners, n_pairs, how)
