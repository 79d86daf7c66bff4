"""Over-long texts cut, before tokenising, to a part that truncates to the same tokens: a 10 MB
document costs the tokenisation of a few times ``max_length`` tokens instead of all of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenizers import Tokenizer

# A text longer than this many characters per token of the budget is tokenised from a part of it
# first (see PairTokenizer.clip): English runs at about 4 characters per token.
CLIP_CHARS_PER_TOKEN = 8
# How far that part may grow looking for a word boundary to cut at, with bounded=True. Text with
# fewer boundaries (a run of one character, a letter run without spaces) cannot be cut exactly:
# a cut inside a word can change all of its tokens (BPE splits "x" * n by the length n).
CLIP_MAX_CHARS_PER_TOKEN = 16


class UncuttableTextError(ValueError):
    """A text too long for the budget has no word boundary where it could be cut exactly."""

    def __init__(self, index: int, side: str, chars: int, searched: int, max_length: int) -> None:
        self.index, self.side, self.chars, self.searched, self.max_length = (
            index,
            side,
            chars,
            searched,
            max_length,
        )
        super().__init__(
            f"pair {index}: the {side} has {chars:,} characters and no word boundary in the first "
            f"{searched:,} where it could be cut to max_length={max_length} tokens"
        )


def clip_pairs(
    pairs: list[tuple[str, str]],
    max_length: int,
    direction: str,
    bounded: bool,
    make_plain: Callable[[], Tokenizer],
    odd_halves: int | None = None,
) -> list[tuple[str, str]]:
    """``PairTokenizer.clip``: the pairs, each text of over ``CLIP_CHARS_PER_TOKEN * max_length``
    characters cut by ``clip_text``. ``make_plain`` gives a tokenizer that neither truncates nor
    pads; it is called only when some text is long enough to clip. ``odd_halves``: for
    "longest_first" with an odd budget (``max_length`` less the special tokens), the budget's
    floor half; then a clipped pair keeps the whole pair's longer side (``keep_the_longer_side``)."""
    chars = CLIP_CHARS_PER_TOKEN * max_length
    if all(len(q) <= chars and len(d) <= chars for q, d in pairs):
        return pairs
    plain = make_plain()
    limit = CLIP_MAX_CHARS_PER_TOKEN * max_length
    clipped: dict[str, str | None] = {}  # pairs share their query

    def cut(text: str, index: int, side: str) -> str:
        if len(text) <= chars:
            return text
        if text not in clipped:
            clipped[text] = clip_text(plain, text, max_length, direction, chars, limit)
        part = clipped[text]
        if part is not None:
            return part
        if bounded:
            raise UncuttableTextError(index, side, len(text), limit, max_length)
        return text

    counted: dict[str, int] = {}

    def count(text: str) -> int:  # the tokens of a text as it will be tokenised (the query's, once)
        if text not in counted:
            counted[text] = len(plain.encode(text, add_special_tokens=False).ids)
        return counted[text]

    out = []
    for i, (q, d) in enumerate(pairs):
        parts = (cut(q, i, "query"), cut(d, i, "document"))
        if odd_halves is not None and (len(parts[0]) < len(q) or len(parts[1]) < len(d)):
            parts = keep_the_longer_side(count, (q, d), parts, odd_halves, direction)
        out.append(parts)
    return out


def keep_the_longer_side(
    count: Callable[[str], int], texts: tuple[str, str], parts: tuple[str, str], half: int, direction: str
) -> tuple[str, str]:
    """Parts of a (query, document) pair that "longest_first" truncates as it does the whole texts
    when the budget is odd (``half`` its floor half). Once both sides hold more than ``half``
    tokens each keeps half the budget and the spare token goes to the longer side (the document on
    a tie), so the parts must compare as the whole texts do. A part holds at most its text's
    tokens: a part not longer than the other side grows (its length doubled) until the order is
    certain, which at worst tokenises the shorter text whole. ``count(text)``: its tokens."""
    whole = [len(part) == len(text) for part, text in zip(parts, texts, strict=True)]
    # A clipped part holds more than ``half`` tokens (it grows, never shrinks), so only a whole side
    # can hold fewer; then nothing is halved and the order does not matter (the usual case: a
    # short query).
    if any(side_whole and count(part) <= half for side_whole, part in zip(whole, parts, strict=True)):
        return parts
    parts_list = list(parts)
    counts = [count(part) for part in parts_list]
    while not all(whole):
        if counts[0] != counts[1]:
            shorter = 0 if counts[0] < counts[1] else 1
            if whole[shorter]:  # exact and shorter: so is its whole text, whatever the other holds
                break
            grow = [shorter]
        else:
            grow = [side for side in (0, 1) if not whole[side]]
        for side in grow:
            text, size = texts[side], 2 * len(parts_list[side])
            if size >= len(text):
                parts_list[side], whole[side] = text, True
            else:
                parts_list[side] = text[:size] if direction == "right" else text[-size:]
            counts[side] = count(parts_list[side])
    return parts_list[0], parts_list[1]


def clip_text(
    plain: Tokenizer, text: str, tokens: int, direction: str, chars: int, max_chars: int
) -> str | None:
    """The shortest prefix (direction "right") or suffix ("left") of ``text`` of ``chars * 2^k``
    characters whose complete words give at least ``tokens`` tokens: ``text`` itself when it is no
    longer than that, None when no such part of at most ``max_chars`` characters exists.

    Pre-tokenisation splits text into words looking at most one character ahead, so every word of
    a prefix but the one at the cut is a word of the whole text and tokenises the same: the first
    ``tokens`` tokens of the part are those of the whole. A suffix is read from a point the whole
    text's reading may not stop at (``'t`` read as a contraction, where the whole text read ``'``
    with the space before it): its words count from the first word start it shares with a suffix
    twice as long, where the readings have met. ``plain`` must not truncate."""
    while chars < len(text):
        if chars > max_chars:
            return None
        part = text[:chars] if direction == "right" else text[-chars:]
        encoding = plain.encode(part, add_special_tokens=False)
        words = encoding.word_ids
        if words:
            if direction == "right":
                complete = sum(1 for word in words if word != words[-1])
            else:
                complete = _tokens_after_meeting(plain, text, chars, encoding)
            if complete >= tokens:
                return part
        chars *= 2
    return text


def _word_starts(encoding: Any, base: int) -> list[int]:
    """Where each word of ``encoding`` starts, in characters, plus ``base``."""
    words, offsets = encoding.word_ids, encoding.offsets
    return [
        base + offsets[i][0]
        for i, word in enumerate(words)
        if word is not None and (i == 0 or words[i - 1] != word)
    ]


def _tokens_after_meeting(plain: Tokenizer, text: str, part_chars: int, encoding: Any) -> int:
    """The tokens of the suffix of ``text`` of ``part_chars`` characters (``encoding``) from the first
    word start after its first word that the suffix twice as long (or the whole text) also has."""
    base = len(text) - part_chars
    starts = _word_starts(encoding, base)
    longer_chars = min(len(text), 2 * part_chars)
    longer = plain.encode(text[-longer_chars:], add_special_tokens=False)
    theirs = set(_word_starts(longer, len(text) - longer_chars))
    meeting = next((start for start in starts[1:] if start in theirs), None)
    if meeting is None:
        return 0
    words, offsets = encoding.word_ids, encoding.offsets
    return sum(1 for i, word in enumerate(words) if word is not None and base + offsets[i][0] >= meeting)
