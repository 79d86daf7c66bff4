"""Over-long texts cut, before tokenising, to a part that truncates to the same tokens: a 10 MB
document costs the tokenisation of a few times ``max_length`` tokens instead of all of it."""

from __future__ import annotations

from collections.abc import Callable

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
) -> list[tuple[str, str]]:
    """``PairTokenizer.clip``: the pairs, each text of over ``CLIP_CHARS_PER_TOKEN * max_length``
    characters cut by ``clip_text``. ``make_plain`` gives a tokenizer that neither truncates nor
    pads; it is called only when some text is long enough to clip."""
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

    return [(cut(q, i, "query"), cut(d, i, "document")) for i, (q, d) in enumerate(pairs)]


def clip_text(
    plain: Tokenizer, text: str, tokens: int, direction: str, chars: int, max_chars: int
) -> str | None:
    """The shortest prefix (direction "right") or suffix ("left") of ``text`` of ``chars * 2^k``
    characters whose complete words give at least ``tokens`` tokens: ``text`` itself when it is no
    longer than that, None when no such part of at most ``max_chars`` characters exists.

    Pre-tokenisation splits text into words looking at most one character ahead, so every word of
    the part but the one at the cut is a word of the whole text and tokenises the same: the first
    (or last) ``tokens`` tokens of the part are those of the whole. ``plain`` must not truncate."""
    while chars < len(text):
        if chars > max_chars:
            return None
        part = text[:chars] if direction == "right" else text[-chars:]
        words = plain.encode(part, add_special_tokens=False).word_ids
        if words:
            edge = words[-1] if direction == "right" else words[0]
            if sum(1 for word in words if word != edge) >= tokens:
                return part
        chars *= 2
    return text
