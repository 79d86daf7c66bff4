"""Copies of one tokenizer for calls that tokenise at once, each with its own truncation.

A tokenizers ``Tokenizer`` holds its truncation setting, so threads that truncate differently
cannot share one. A copy per setting, kept for the settings used last, costs a whole copy (the
tokenizer.json parsed again: tens of milliseconds for a real vocabulary, holding the GIL) each
time a setting comes back after it was dropped: a server client that varies vLLM's
``truncate_prompt_tokens`` per request made every request pay that, and everyone else wait. Setting
the truncation of a copy takes about a microsecond, so copies are lent instead: a call takes an
idle copy (one already set as it asks, if there is one), sets it, and gives it back when done.
There are as many copies as calls tokenising at once, whatever the number of settings.
"""

from __future__ import annotations

import threading
from typing import Any

from tokenizers import Tokenizer

# Idle copies kept for later calls (a copy of a 60k-token BPE holds ~16 MiB); more calls than this
# at once build copies that are dropped when given back.
IDLE_COPIES_KEPT = 8

_Setting = tuple[int, str, str, int]  # max_length, strategy, direction, stride


class TokenizerCopies:
    """Copies of the tokenizer serialised in ``source`` (tokenizers' JSON), none padding: one
    shared copy that never truncates (``plain``), and copies lent one call at a time, each set to
    the truncation the call asks for (``truncating``)."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._idle: list[tuple[_Setting, Tokenizer]] = []  # longest idle first
        self._plain: Tokenizer | None = None

    def copy(self) -> Tokenizer:
        """A new copy of its own."""
        tokenizer = Tokenizer.from_str(self._source)
        tokenizer.no_padding()
        return tokenizer

    def plain(self) -> Tokenizer:
        """The copy that neither truncates nor pads, shared (its setting never changes)."""
        if self._plain is None:
            built = self.copy()
            built.no_truncation()
            with self._lock:
                if self._plain is None:
                    self._plain = built
        return self._plain

    def truncating(self, max_length: int, strategy: str, direction: str = "right", stride: int = 0) -> Loan:
        """A copy truncating so, for one call: ``with copies.truncating(...) as tokenizer:``. It is
        the caller's alone until the ``with`` block ends."""
        setting = (max_length, strategy, direction, stride)
        with self._lock:
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index][0] == setting:
                    return Loan(self, setting, self._idle.pop(index)[1])
            tokenizer = self._idle.pop(0)[1] if self._idle else None
        if tokenizer is None:
            tokenizer = self.copy()
        tokenizer.enable_truncation(max_length, stride=stride, strategy=strategy, direction=direction)
        return Loan(self, setting, tokenizer)

    def idle(self) -> int:
        """How many lent copies are idle now."""
        with self._lock:
            return len(self._idle)

    def _give_back(self, setting: _Setting, tokenizer: Tokenizer) -> None:
        with self._lock:
            self._idle.append((setting, tokenizer))
            if len(self._idle) > IDLE_COPIES_KEPT:
                del self._idle[0]


class Loan:
    """One lent copy: the context manager ``TokenizerCopies.truncating`` returns."""

    __slots__ = ("_copies", "_setting", "tokenizer")

    def __init__(self, copies: TokenizerCopies, setting: _Setting, tokenizer: Tokenizer) -> None:
        self._copies, self._setting, self.tokenizer = copies, setting, tokenizer

    def __enter__(self) -> Tokenizer:
        return self.tokenizer

    def __exit__(self, *exc: Any) -> None:
        self._copies._give_back(self._setting, self.tokenizer)
