"""Reading a request body under a size limit and a time limit, straight from the ASGI receive.

uvicorn has no body timeout of its own (its keep-alive timeout runs between requests only), so a
client that sends headers and then stalls would hold its request slot for as long as it likes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from turborank.serving.errors import PAYLOAD_TOO_LARGE, TIMEOUT, APIError, ClientDisconnectedError

# Sent with any answer given before the whole body was read: the rest of it is not worth reading.
CLOSE = {"Connection": "close"}


async def read_body(
    receive: Callable[[], Awaitable[dict[str, Any]]],
    content_length: str | None,
    max_bytes: int,
    timeout_s: float,
    min_rate: int,
    progress: Any = None,
) -> bytes:
    """The whole body, or APIError 413 (too large; checked on Content-Length first) or 408 (no data
    for ``timeout_s``, or slower than ``min_rate`` bytes/s on average after the first
    ``timeout_s``), or ClientDisconnectedError. ``progress.received`` (when given) follows the
    bytes read: admission gives the slot of the upload that has sent least to another client."""
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise APIError(
            413, PAYLOAD_TOO_LARGE, f"request body of {content_length} bytes exceeds {max_bytes} bytes", CLOSE
        )
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks: list[bytes] = []
    size = 0
    while True:
        wait = timeout_s
        if min_rate:
            wait = min(wait, start + timeout_s + size / min_rate - loop.time())
        if wait <= 0:
            raise APIError(
                408,
                TIMEOUT,
                f"the request body arrived at under {min_rate} bytes/s ({size} bytes in "
                f"{loop.time() - start:.1f} s)",
                CLOSE,
            )
        try:
            message = await asyncio.wait_for(receive(), wait)
        except asyncio.TimeoutError:
            if wait < timeout_s:
                continue  # the average-rate deadline: reported at the top of the loop
            raise APIError(
                408, TIMEOUT, f"no request body data for {timeout_s:g} s ({size} bytes arrived)", CLOSE
            ) from None
        if progress is not None and getattr(progress, "taken", False):
            # Its slot went to another client. The task's cancel says so, but asyncio.wait_for on
            # Python 3.10-3.11 drops a cancel that lands as the read it waits on completes.
            raise asyncio.CancelledError
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if progress is not None:
            progress.received = size
        if size > max_bytes:
            raise APIError(413, PAYLOAD_TOO_LARGE, f"request body exceeds {max_bytes} bytes", CLOSE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class DisconnectWatch:
    """Whether the client has gone, once its body is read. From then on the only message the ASGI
    server has for this request is ``http.disconnect`` (when the connection drops, or once the
    answer is sent), so one task waiting for it replaces polling ``receive`` with a timeout:
    ``task`` can be awaited beside the work, ``gone`` read at any time (from any thread: it reads the
    task's state, never changes it). ``close`` when done."""

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.task = asyncio.ensure_future(receive())

    @property
    def gone(self) -> bool:
        return self.task.done() and not self.task.cancelled()

    def close(self) -> None:
        if self.task.done() and not self.task.cancelled():
            self.task.exception()  # retrieved: a failed receive is a disconnect here, not a log line
        self.task.cancel()


_WATCH = "turborank_disconnect_watch"


def watch_disconnect(
    scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]]
) -> DisconnectWatch:
    """Start watching a request whose body has been read; ``watch_of(scope)`` finds it."""
    watch = DisconnectWatch(receive)
    scope.setdefault("state", {})[_WATCH] = watch
    return watch


def watch_of(scope: dict[str, Any]) -> DisconnectWatch | None:
    return scope.get("state", {}).get(_WATCH)
