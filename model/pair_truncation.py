"""tokenizers' truncation of a pair, applied to the pair's untruncated encoding.

tokenizers keeps what truncation cuts as overflow windows and, for a pair, joins the two sides'
windows in every combination: two long texts of n and m windows make n x m encodings (two
20,000-character texts without a space, at max_length 512: over a gigabyte and seconds). turborank
reads of the overflow only whether there is some, so a pair whose two texts are both long is
encoded whole, without truncation (its cost linear in its length), and cut here as truncation
would cut it.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class TruncatedPair(NamedTuple):
    """What turborank reads of a truncated pair's encoding (``overflowing``: whether it was cut)."""

    ids: list[int]
    type_ids: list[int]
    overflowing: bool


def kept_lengths(first: int, second: int, budget: int, strategy: str) -> tuple[int, int]:
    """The tokens of the first and the second text that ``strategy`` keeps of ``first`` and
    ``second`` within ``budget`` (tokenizers' rule: "longest_first" gives the shorter text all it
    has up to half the budget, the longer one the rest, the odd token to the longer, the second on
    a tie; "only_second" cuts the second alone). ValueError when the first text alone leaves the
    second no token under "only_second"."""
    if first + second <= budget:
        return first, second
    if strategy == "only_second":
        kept = budget - first
        if kept <= 0:
            raise ValueError(f"the first text's {first} tokens leave none of the {budget} to the second")
        return first, kept
    swapped = first > second
    short, long = (second, first) if swapped else (first, second)
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short = budget // 2
        long = short + budget % 2
    keep_first, keep_second = (long, short) if swapped else (short, long)
    return min(first, keep_first), min(second, keep_second)


def truncate_whole(encoding: Any, budget: int, strategy: str, direction: str) -> TruncatedPair | None:
    """A pair's encoding (special tokens added, nothing truncated) cut as ``strategy`` cuts it to
    ``budget`` tokens of text: the first tokens of each text kept (direction "right") or the last
    ("left"), the special tokens all kept. None when the template does not put the first text's
    tokens, then the second's, each in one run (or a text has none): the caller lets tokenizers
    truncate then."""
    sequences = encoding.sequence_ids
    try:
        start_first, start_second = sequences.index(0), sequences.index(1)
    except ValueError:
        return None
    end_first = start_first + sequences.count(0)
    end_second = start_second + sequences.count(1)
    if not end_first <= start_second or sequences[start_first:end_first].count(0) != end_first - start_first:
        return None
    if sequences[start_second:end_second].count(1) != end_second - start_second:
        return None
    first, second = end_first - start_first, end_second - start_second
    keep_first, keep_second = kept_lengths(first, second, budget, strategy)

    def run(start: int, end: int, keep: int) -> tuple[int, int]:
        return (start, start + keep) if direction == "right" else (end - keep, end)

    spans = [
        (0, start_first),
        run(start_first, end_first, keep_first),
        (end_first, start_second),
        run(start_second, end_second, keep_second),
        (end_second, len(sequences)),
    ]
    ids, types = encoding.ids, encoding.type_ids
    return TruncatedPair(
        [i for start, end in spans for i in ids[start:end]],
        [t for start, end in spans for t in types[start:end]],
        keep_first + keep_second < first + second,
    )
