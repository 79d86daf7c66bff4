"""Logging of `turborank serve`: one handler on stderr for turborank's and uvicorn's loggers, in
text or as JSON lines (one object per record, with the access log's fields as keys)."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def configure_logging(level: str, json_lines: bool) -> None:
    """Replace the root handlers with one on stderr; ``level`` applies to turborank and uvicorn,
    other libraries log warnings and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("turborank", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())
    # Python warnings (a library's deprecation, a TruncationWarning) as log records, so that every
    # line is JSON; in text, the command line prints them on one line of its own.
    logging.captureWarnings(json_lines)
