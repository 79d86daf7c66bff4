"""Writing an output file that replaces an earlier one only once there is something to put there."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def check_writable_path(path: Path) -> None:
    """OSError naming ``path`` when a file cannot be written there: a directory in its place, a
    file where one of its parent directories should be, or a directory we may not write to."""
    if path.is_dir():
        raise OSError(f"{path}: is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OSError(f"{path}: {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OSError(f"{path}: cannot write there ({parent} is not writable)")
            return


@contextlib.contextmanager
def replace_when_done(path: Path) -> Iterator[TextIO]:
    """A text file next to ``path`` that takes its name when the block ends, also when the block
    is interrupted with Ctrl-C (what was written is the result so far), and is removed on any other
    error, so an earlier file of that name survives a failed run. Opening it first tells at once
    whether ``path`` can be written, before any slow work."""
    check_writable_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise OSError(f"{path}: cannot write there ({exc.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would otherwise become the output's mode
    handle = os.fdopen(fd, "w", encoding="utf-8")
    try:
        yield handle
    except KeyboardInterrupt:
        handle.close()
        os.replace(temporary, path)
        raise
    except BaseException:
        handle.close()
        os.unlink(temporary)
        raise
    handle.close()
    os.replace(temporary, path)
