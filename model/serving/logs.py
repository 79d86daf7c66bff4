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
        return json.dumps(entry, ensure_ascii=False, default=str)


@contextlib.contextmanager
def serve_logging(level: str, json_lines: bool) -> Iterator[None]:
    """While serving: the root's handlers replaced by one on stderr; ``level`` for turborank and
    uvicorn, warnings and above for other libraries. Everything is put back on exit, so a caller in
    the same process (a test running the command line) keeps its own logging."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in _LEVELLED}
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
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
