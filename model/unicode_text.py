"""Text that Python holds but no tokenizer can take: lone surrogates.

JSON's "\\ud800" escape and Python's ``surrogateescape`` decoding both give a ``str`` holding a
surrogate code point, which is not valid Unicode and has no UTF-8 encoding; the Rust tokenizer then
fails with "TextInputSequence must be str". Finding it first gives an error that says what and where.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first surrogate code point in ``text``, or None. ASCII text, the common case,
    is passed by ``str.isascii`` without a scan."""
    if text.isascii():
        return None
    match = _SURROGATE.search(text)
    return None if match is None else match.start()


def describe_lone_surrogate(text: str) -> str | None:
    """'a lone surrogate U+D800 at character 5 (not valid Unicode)', or None when there is none."""
    at = lone_surrogate_at(text)
    if at is None:
        return None
    return f"a lone surrogate U+{ord(text[at]):04X} at character {at} (not valid Unicode)"
