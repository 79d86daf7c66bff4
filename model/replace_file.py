"""Writing an output file that replaces an earlier one only once there is something to put there."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO


def output_target(path: Path, make_parents: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """Where an output named ``path`` is written: ``path`` itself, or what a symlink there points
    to (followed, so the link keeps pointing at the new content instead of being replaced by a
    file). OSError naming ``path`` when no file can be written there: a directory; something that
    is not a regular file (a FIFO would block, a device take the run); one of the command's
    ``inputs`` (through any link); a missing parent directory, unless ``make_parents``; a file
    where a parent directory should be; a directory we may not write to."""
    target = Path(os.path.realpath(path))
    if target.exists():
        for source in inputs:
            if os.path.exists(source) and os.path.samefile(target, source):
                raise OSError(f"{path}: is also an input ({source}); write the output elsewhere")
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OSError(f"{path}: is a directory")
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise OSError(f"{path}: is a {kind}; outputs are written to regular files only")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OSError(f"{path}: {parent} is not a directory")
            if parent != target.parent and not make_parents:
                missing = target.parent
                raise OSError(
                    f"{path}: the directory {missing} does not exist (create it, or pass --parents)"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OSError(f"{path}: cannot write there ({parent} is not writable)")
            return target
    return target


_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


@contextlib.contextmanager
def replace_when_done(
    path: Path, make_parents: bool = False, inputs: Iterable[Path] = ()
) -> Iterator[TextIO]:
    """A text file next to ``path`` (``output_target``: a symlink is followed, an input refused)
    that takes its name when the block ends, and is removed if the block raises (an interrupt
    too), so an earlier file of that name survives a failed run; a caller that has a result so far
    to keep catches the interrupt inside the block. Opening it first tells at once whether
    ``path`` can be written, before any slow work."""
    path = output_target(path, make_parents, inputs)
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
    except BaseException:
        handle.close()
        os.unlink(temporary)
        raise
    handle.close()
    os.replace(temporary, path)
