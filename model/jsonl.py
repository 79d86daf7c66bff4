"""Reading line-oriented input files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; a byte-order mark (as Windows editors write) is dropped, not
    left at the front of the first line. Lines end at newlines only (\\n, \\r\\n or \\r): JSON
    strings may hold U+2028, U+2029 or U+0085 raw, which ``str.splitlines`` would also split at."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # universal newlines: CRLF and CR read as LF
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise PermissionError(f"{path}: permission denied") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{_line_of(Path(path), exc.start)}: not UTF-8 text ({exc})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the last line's newline, or an empty file
    return lines


def _line_of(path: Path, offset: int) -> int:
    """The line (from 1) holding byte ``offset`` of the file (counted from after a BOM, as the
    decoder counts)."""
    with open(path, "rb") as f:
        data = f.read(offset + 3)
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    prefix = data[start : start + offset]
    return prefix.count(b"\n") + prefix.replace(b"\r\n", b"").count(b"\r") + 1


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line; invalid JSON raises ValueError 'file:line: ...'."""
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}:{number}: JSON nested too deeply to read") from None
        except ValueError as exc:  # an integer past Python's digit limit for conversion
            raise ValueError(f"{path}:{number}: unreadable JSON ({exc})") from None
        yield number, value
