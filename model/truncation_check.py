"""Whether the installed tokenizers truncates pairs the way turborank relies on.

turborank's exact shortcuts (clipping over-long texts before tokenising, cutting a pair of two long
texts in one pass, Cohere's per-document cap) and its long-document windows reproduce the pair
truncation of tokenizers 0.19 to 0.22 and 0.23.3 (the reference's transformers 4.4x runs on 0.21,
transformers 5 on 0.23): "longest_first" gives the spare token of an odd budget to the longer
text, and a pair truncated with a stride keeps every window of the cut text as overflow.
tokenizers 0.23.1 and 0.23.2 stop tokenising a text at the length it is truncated to, so they give
the spare token to the second text and keep only the first overflow window of a pair: a document
scored as windows would lose all but its first two, silently. So the behaviour is checked once per
tokenizer, on small pairs, and a release that behaves otherwise is refused with what to install.
Everything else about tokenising turborank shares with the reference through the same library.
"""

from __future__ import annotations

import tokenizers

from turborank.tokenizer_copies import TokenizerCopies

REQUIREMENT = "tokenizers>=0.19,!=0.23.1,!=0.23.2"  # as pyproject.toml


def check_pair_truncation(copies: TokenizerCopies, num_special_tokens: int, source: str) -> None:
    """ValueError naming the tokenizers release and the requirement when pair truncation differs
    from what turborank reproduces. Pairs of repeated one-letter words, counted with ``copies``'
    plain tokenizer, so any vocabulary serves."""
    plain = copies.plain()

    def tokens(text: str) -> int:
        return len(plain.encode(text, add_special_tokens=False).ids)

    problems = []
    query, document = "a", " ".join(["b"] * 60)
    room, stride = 8, 2
    doc_tokens = tokens(document)
    if doc_tokens > room:
        max_length = num_special_tokens + tokens(query) + room
        with copies.truncating(max_length, "only_second", "right", stride) as tokenizer:
            windows = 1 + len(tokenizer.encode(query, document).overflowing)
        expected = 1 + -(-(doc_tokens - room) // (room - stride))
        if windows != expected:
            problems.append(f"a document of {doc_tokens} tokens made {windows} windows, not {expected}")
    longer, shorter = " ".join(["a"] * 40), " ".join(["b"] * 30)
    half = 5
    if tokens(longer) > tokens(shorter) > half + 1:
        with copies.truncating(num_special_tokens + 2 * half + 1, "longest_first") as tokenizer:
            kept = tokenizer.encode(longer, shorter).sequence_ids.count(0)
        if kept != half + 1:
            problems.append("an odd budget's spare token went to the shorter text")
    if problems:
        raise ValueError(
            f"{source}: tokenizers {tokenizers.__version__} truncates pairs differently from the "
            f"releases turborank reproduces ({'; '.join(problems)}); install {REQUIREMENT!r}"
        )
