"""Over-long texts cut, before tokenising, to a part that truncates to the same tokens: a 10 MB
document costs the tokenisation of a few times ``max_length`` tokens instead of all of it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

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
    added = added_tokens(plain)
    limit = CLIP_MAX_CHARS_PER_TOKEN * max_length
    clipped: dict[str, str | None] = {}  # pairs share their query

    def cut(text: str, index: int, side: str) -> str:
        if len(text) <= chars:
            return text
        if text not in clipped:
            clipped[text] = clip_text(plain, text, max_length, direction, chars, limit, added)
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

    def certain(text: str, part: str) -> int:
        """Tokens of ``part`` that the whole ``text`` has too: at most as many as the text holds."""
        if len(part) == len(text):
            return count(text)
        encoding = plain.encode(part, add_special_tokens=False)
        if direction == "right":
            return complete_word_tokens(encoding.word_ids)
        return _tokens_after_meeting(plain, text, len(part), encoding)

    def grown(text: str, part: str) -> str:
        return part_of(text, 2 * len(part), direction, added)

    out = []
    for i, (q, d) in enumerate(pairs):
        parts = (cut(q, i, "query"), cut(d, i, "document"))
        if odd_halves is not None and (len(parts[0]) < len(q) or len(parts[1]) < len(d)):
            parts = keep_the_longer_side(count, certain, grown, (q, d), parts, odd_halves)
        out.append(parts)
    return out


def keep_the_longer_side(
    count: Callable[[str], int],
    certain: Callable[[str, str], int],
    grown: Callable[[str, str], str],
    texts: tuple[str, str],
    parts: tuple[str, str],
    half: int,
) -> tuple[str, str]:
    """Parts of a (query, document) pair that "longest_first" truncates as it does the whole texts
    when the budget is odd (``half`` its floor half). Once both sides hold more than ``half``
    tokens each keeps half the budget and the spare token goes to the longer side (the document on
    a tie), so the parts must compare as the whole texts do.

    A part may hold more tokens than its whole text (the word at the cut can split into more
    tokens than the whole word), so a clipped side is judged by ``certain(text, part)``, the part's
    tokens that the whole text has too: a lower bound of the text's. The order is settled once a
    whole side holds fewer tokens than that bound of the other (whose part, holding those tokens and
    more, then also compares longer), or both sides are whole; until then the side whose bound is
    not above the other's grows (``grown``: about twice as long), at worst to its whole text.
    ``count(text)``: its tokens."""
    whole = [len(part) == len(text) for part, text in zip(parts, texts, strict=True)]
    # A clipped part holds more than ``half`` certain tokens (clip_text keeps at least the budget),
    # so only a whole side can hold fewer; then nothing is halved and the order does not matter
    # (the usual case: a short query).
    if any(side_whole and count(part) <= half for side_whole, part in zip(whole, parts, strict=True)):
        return parts
    parts_list = list(parts)
    bounds = [certain(text, part) for text, part in zip(texts, parts_list, strict=True)]
    while not all(whole):
        if any(whole[side] and bounds[side] < bounds[1 - side] for side in (0, 1)):
            break
        grow = [side for side in (0, 1) if not whole[side] and bounds[side] <= bounds[1 - side]]
        for side in grow:
            parts_list[side] = grown(texts[side], parts_list[side])
            whole[side] = len(parts_list[side]) == len(texts[side])
            bounds[side] = certain(texts[side], parts_list[side])
    return parts_list[0], parts_list[1]


class AddedTokens(NamedTuple):
    """Where a tokenizer's added tokens (special tokens, added words) may stand in raw text."""

    pattern: re.Pattern[str]  # longest first; those matched after normalisation, ignoring case
    longest: int  # characters


def added_tokens(plain: Tokenizer) -> AddedTokens | None:
    """The tokenizer's added tokens, or None when it has none."""
    tokens = [t for t in plain.get_added_tokens_decoder().values() if t.content]
    if not tokens:
        return None
    tokens.sort(key=lambda t: len(t.content), reverse=True)
    alternatives = [f"(?i:{re.escape(t.content)})" if t.normalized else re.escape(t.content) for t in tokens]
    return AddedTokens(re.compile("|".join(alternatives)), len(tokens[0].content))


def part_of(text: str, chars: int, direction: str, added: AddedTokens | None) -> str:
    """The first (direction "right") or last ("left") ``chars`` characters of ``text``, or the whole
    text if that is no longer, widened so that no added token of the tokenizer is cut in two.

    Added tokens are split out of the text before it is pre-tokenised, and one may take the
    whitespace beside it (``lstrip``/``rstrip``): a cut inside one makes its pieces, and the words
    next to it, tokenise otherwise than in the whole text."""
    if chars >= len(text):
        return text
    cut = chars if direction == "right" else len(text) - chars
    if added is not None:
        moved = True
        while moved and 0 < cut < len(text):
            moved = False
            reach = added.longest
            for match in added.pattern.finditer(text, max(0, cut - reach), min(len(text), cut + reach)):
                if match.start() < cut < match.end():
                    cut = match.end() if direction == "right" else match.start()
                    moved = True
                    break
    return text[:cut] if direction == "right" else text[cut:]


def complete_word_tokens(words: list[int | None]) -> int:
    """Tokens of a prefix's encoding (its ``word_ids``) outside its last word, which the cut may
    have split: each of its other words is a word of the whole text and tokenises the same."""
    return sum(1 for word in words if word != words[-1]) if words else 0


def clip_text(
    plain: Tokenizer,
    text: str,
    tokens: int,
    direction: str,
    chars: int,
    max_chars: int,
    added: AddedTokens | None = None,
) -> str | None:
    """The shortest prefix (direction "right") or suffix ("left") of ``text`` of ``chars * 2^k``
    characters (widened by ``part_of`` so that no added token is cut) whose complete words give at
    least ``tokens`` tokens: ``text`` itself when it is no longer than that, None when no such part
    of at most ``max_chars`` characters exists.

    Pre-tokenisation splits text into words looking at most one character ahead, so every word of
    a prefix but the one at the cut is a word of the whole text and tokenises the same: the first
    ``tokens`` tokens of the part are those of the whole. A suffix is read from a point the whole
    text's reading may not stop at (``'t`` read as a contraction, where the whole text read ``'``
    with the space before it): its words count from the first word start it shares with a suffix
    twice as long, where the readings have met. ``plain`` must not truncate; ``added``: its added
    tokens (``added_tokens``)."""
    while chars < len(text):
        if chars > max_chars:
            return None
        part = part_of(text, chars, direction, added)
        if len(part) == len(text):
            return text
        encoding = plain.encode(part, add_special_tokens=False)
        if direction == "right":
            complete = complete_word_tokens(encoding.word_ids)
        else:
            complete = _tokens_after_meeting(plain, text, len(part), encoding) if encoding.word_ids else 0
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
