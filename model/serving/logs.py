"""Logging of `turborank serve`: one handler on stderr for turborank's and uvicorn's loggers, in
text or as JSON lines (one object per record, with the access log's fields as keys)."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELLED = ("turborank", "uvicorn")
# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators, as escapes: a client
# chooses what goes into a message (its path, its request id), and a raw newline there would write a
# second, forged line into a text log, a raw ESC a terminal sequence.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape, on one line."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The text log: one line per record whatever its message holds (a traceback, which the server
    writes itself, still follows on lines of its own)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging.Formatter's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


# Characters json.dumps leaves raw with ensure_ascii=False that end a line for some readers
# (U+2028, U+2029: str.splitlines, JavaScript) or drive a terminal (DEL, the C1 controls): escaped,
# so a client's text in a field keeps a record on one line. They occur only inside strings there.
_ESCAPED = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_ESCAPED)


@contextlib.contextmanager
def serve_logging(level: str, json_lines: bool) -> Iterator[None]:
    """While serving: the root's handlers replaced by one on stderr; ``level`` for turborank and
    uvicorn, warnings and above for other libraries. Everything is put back on exit, so a caller in
    the same process (a test running the command line) keeps its own logging."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in _LEVELLED}
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else TextFormatter(TEXT_FORMAT))
    for old in saved_handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in _LEVELLED:
        logging.getLogger(name).setLevel(level.upper())
    # Python warnings (a library's deprecation, a TruncationWarning) as log records, so that every
    # line is JSON; in text, the command line prints them on one line of its own.
    logging.captureWarnings(json_lines)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for old in saved_handlers:
            root.addHandler(old)
        root.setLevel(saved_level)
        for name, saved in saved_levels.items():
            logging.getLogger(name).setLevel(saved)
