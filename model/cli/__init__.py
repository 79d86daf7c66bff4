"""The ``turborank`` command line: one module per subcommand, the shared options in ``common``.

Nothing here imports torch: a command imports it when it loads the model, inside ``main`` (after
NumPy), so that Ctrl-C during that (seconds-long) import is reported in one line like any other
interrupt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from turborank.cli.common import BROKEN_PIPE_EXIT, USER_ERRORS, fail
from turborank.cli.parser import COMMANDS, build_parser
from turborank.cli.version import version_text

TERMINATED_EXIT = 128 + signal.SIGTERM  # as a shell reports a process SIGTERM ended

__all__ = ["build_parser", "console", "main", "version_text"]


class Terminated(BaseException):
    """SIGTERM, raised where the command is, so that what it cleans up on the way out is cleaned up
    (an output file being written is removed and an earlier one left as it was)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="turborank: %(levelname)s: %(message)s")
    on_sigterm = None
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest: print(f"turborank: warning: {message}", file=sys.stderr)
        try:
            # NumPy before anything imports torch: torch's C extension imports NumPy itself and
            # swallows an interrupt that lands there (the command then ran on to the end, or failed
            # on the half-imported NumPy); imported here, it is a KeyboardInterrupt like any other.
            import numpy  # noqa: F401

            # Inside: --version prints (a closed pipe) and imports torch (an interrupt) while parsing.
            args = build_parser().parse_args(argv)
            if args.command != "serve" and threading.current_thread() is threading.main_thread():
                on_sigterm = signal.signal(signal.SIGTERM, _terminate)  # serve drains on its own
            code = COMMANDS[args.command].run(args)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
            return code
        except BrokenPipeError:
            # The reader left (`turborank rank ... | head -1`): exit quietly as a SIGPIPE'd tool does,
            # with stdout pointed away so the interpreter's last flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return BROKEN_PIPE_EXIT
        except USER_ERRORS as exc:
            return fail(str(exc))
        except KeyboardInterrupt:  # also while torch is still being imported
            return fail("interrupted", code=130)
        except Terminated:
            return fail("terminated", code=TERMINATED_EXIT)
        finally:
            if on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)


def console() -> NoReturn:
    """The ``turborank`` command: ``main``, then exit with its status. After an interrupt the
    process ends at once (``os._exit``): an interrupt can land in the middle of importing torch or
    numpy, and the interpreter's normal exit then runs the finalisers of those half-imported modules,
    which printed an AttributeError or RecursionError traceback, or aborted in C++."""
    code = main()
    if code != 130:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)
