"""Opening checkpoint files: regular files only, of a bounded size.

A FIFO or a device named config.json would block the loader forever (or stream without end), and a
corrupt multi-gigabyte JSON file would be read whole before any check; both are refused with the
file's name.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = {
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a directory",
}


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")


def check_regular_file(path: Path) -> None:
    """Raise ValueError unless ``path`` (after symlinks) is a regular file; FileNotFoundError if absent."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: is {_kind(mode)}, not a regular file; refusing to open it")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``.

    Opened non-blocking, so a FIFO returns at once instead of waiting for a writer, then checked
    with fstat on the open descriptor (no window for the path to be swapped in between).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ValueError(f"{path}: is {_kind(info.st_mode)}, not a regular file; refusing to read it")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            raise ValueError(
                f"{path}: {info.st_size:,} bytes, over the {max_bytes:,} bytes such a file may have"
            )
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the fstat
        raise ValueError(f"{path}: over the {max_bytes:,} bytes such a file may have")
    return data
