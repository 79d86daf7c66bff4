"""Connections: a time limit on a request's headers and a cap on open connections.

uvicorn closes a kept-alive connection that idles between requests (``timeout_keep_alive``) but
sets no time limit on a request's headers, nor on a connection that opens and sends nothing: each
such connection holds a file descriptor for as long as its client likes. At the process's
open-file limit ``accept`` fails with EMFILE and every client, probes included, waits. So:

- from the moment a connection opens, or a request's first byte arrives on a kept-alive one, its
  headers must be complete within ``header_timeout_s``; else it is answered 408 and closed;
- a request's header section may hold at most ``MAX_HEADER_BYTES``; else it is answered 431 and
  the connection closed (httptools sets no limit, and grows a header fed to it in parts by copying
  it whole each time: an endless header would hold the event loop for seconds);
- an offer to switch protocols (``Upgrade: h2c``, which Java's HttpClient sends with a plain
  ``http://`` request) is ignored, as HTTP lets a server do: the request is served over HTTP/1.1
  with its body (httptools would take the body for the other protocol's and drop it);
- an answer its client does not read (the socket's buffer full, nothing taken from it) for
  ``write_timeout_s`` closes the connection, and after ``header_timeout_s`` the connection may
  be closed to make room as an idle one: uvicorn sets no limit, so clients that pipelined
  requests and never read held connections for as long as they stayed;
- at most ``max_connections`` are open (by default the open-file limit less a reserve for the
  model's files, logs and threads). One more closes a connection that is idle or still sending
  headers (doing nothing for a request): of the client address with the most connections, the
  one so the longest (a kept-alive connection's clock restarts with each request and answer).
  Only when every connection carries a request is the newcomer answered 503 and closed. So a
  flood of idle or half-sent connections cannot keep out a probe or a client with a request.

The request slots and their per-client fairness are the app's (``admission``); the connections
behind them are bounded by this cap and by the header and body timeouts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import uuid
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from turborank.serving.access_log import log_connection_answer
from turborank.serving.settings import ServeSettings, SettingError

logger = logging.getLogger("turborank.serving")

# A request line and headers, at most (uvicorn's h11 parser stops at 16 KiB, nginx at 4 x 8 KiB).
MAX_HEADER_BYTES = 64 * 1024
_UPGRADE_HEADER = re.compile(rb"\r\nupgrade:[^\r]*", re.IGNORECASE)

# File descriptors kept for everything but client connections: the listening socket, the model's
# files while loading, log files, the tokenizer and torch threads' pipes and event fds.
FD_RESERVE = 64


def connection_limit(settings: ServeSettings) -> int:
    """``max_connections``, or the open-file limit less FD_RESERVE; SettingError when the setting
    asks for more connections than the limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = 1 << 20 if soft == resource.RLIM_INFINITY else soft - FD_RESERVE
    if room < 1:
        raise SettingError(
            "max_connections", f"has no room: the open-file limit is {soft} (ulimit -n), {FD_RESERVE} kept"
        )
    if settings.max_connections is None:
        return room
    if settings.max_connections > room:
        raise SettingError(
            "max_connections",
            f"{settings.max_connections} is more than the open-file limit ({soft}, ulimit -n) leaves room "
            f"for after {FD_RESERVE} kept for the process: at most {room}, or raise the limit",
        )
    return settings.max_connections


def canned_response(status: int, reason: str, error_type: str, message: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 answer with Connection: close, in the API's error shape, written straight to
    the socket: the request (if any) never reached the app."""
    body = json.dumps({"detail": message, "error": message, "error_type": error_type}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\nx-request-id: {request_id}\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


class ConnectionGuard:
    """What the connections of one server share: the open ones by client address, each client's
    least recently active first, and the limits. ``closed(reason)`` is told of every connection
    this closes (``header_timeout``, ``headers_too_large``, ``bad_request``, ``evicted``,
    ``refused``, ``write_timeout``)."""

    def __init__(
        self, header_timeout_s: float, write_timeout_s: float, limit: int, closed: Callable[[str], None]
    ) -> None:
        self.header_timeout_s, self.write_timeout_s = header_timeout_s, write_timeout_s
        self.limit, self.closed = limit, closed
        self.by_client: dict[str, dict[GuardedHttpToolsProtocol, None]] = {}
        self.count = 0

    def admit(self, connection: GuardedHttpToolsProtocol) -> bool:
        """Counts a new connection in; False when it is over the limit and nothing could make room.
        Room is made at the expense of the client with the most connections (the newcomer's own,
        when that is it): a flood from one address closes its own connections, not others'."""
        self.by_client.setdefault(connection.address, {})[connection] = None
        self.count += 1
        if self.count <= self.limit:
            return True
        for client in sorted(self.by_client.values(), key=len, reverse=True):
            for other in client:
                if other is not connection and other.may_close_for_room():
                    other.close_for_room()
                    return True
        return False

    def touch(self, connection: GuardedHttpToolsProtocol) -> None:
        client = self.by_client.get(connection.address)
        if client is not None and client.pop(connection, False) is None:
            client[connection] = None

    def forget(self, connection: GuardedHttpToolsProtocol) -> None:
        client = self.by_client.get(connection.address)
        if client is None or client.pop(connection, False) is not None:
            return
        self.count -= 1
        if not client:
            del self.by_client[connection.address]


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a place under ConnectionGuard's cap.
    ``protocol_class(guard)`` makes the class uvicorn is given (it builds one per connection)."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        # A request's head (request line and headers) as it arrives, until it is whole: then the
        # parser takes it in one piece. Only between messages; within one, bytes go to the parser.
        self._head: bytearray | None = None
        self._in_message = False
        self._in_headers = False
        self._header_bytes = 0  # of a head fed in parts within a message (pipelined)
        # Requests of this connection whose answers are not complete: the one being answered and
        # any pipelined behind it (uvicorn's ``cycle`` is only the newest).
        self._cycles: list[Any] = []
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_paused_at: float | None = None
        # The peer's address: a proxy's X-Forwarded-For is not known before a request's headers.
        self.address = self.client[0] if self.client else "-"
        if not self.guard.admit(self):
            request_id = uuid.uuid4().hex
            logger.warning(
                "request %s: connection from %s refused -> 503: all %d connections carry a request",
                request_id,
                self.client[0] if self.client else "-",
                self.guard.limit,
            )
            self._answer_and_close(
                canned_response(
                    503,
                    "Service Unavailable",
                    "overloaded",
                    f"all {self.guard.limit} connections the server keeps carry a request",
                    request_id,
                ),
                "refused",
                503,
                request_id,
            )
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_write_timer()
        self.guard.forget(self)
        # uvicorn tells only its newest cycle: a request answered ahead of a pipelined one would go
        # on being scored, and then write into the closed socket.
        for cycle in self._cycles:
            if cycle is not self.cycle and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._cycles = []
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The socket's buffer is full: the client is not reading its answer. It has
        ``write_timeout_s`` to start again before the connection closes."""
        super().pause_writing()
        if self._write_timer is None:
            self._write_paused_at = self.loop.time()
            self._write_timer = self.loop.call_later(self.guard.write_timeout_s, self._answer_unread)

    def resume_writing(self) -> None:
        self._disarm_write_timer()
        super().resume_writing()

    def _disarm_write_timer(self) -> None:
        self._write_paused_at = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _answer_unread(self) -> None:
        self._write_timer = None
        logger.warning(
            "connection from %s closed: its client read none of its answer for %g s",
            self.address,
            self.guard.write_timeout_s,
        )
        self.guard.forget(self)
        self.transport.abort()  # close() would wait for the unread bytes to be sent
        self.guard.closed("write_timeout")

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._head is None and not self._in_message:
            end = data.find(b"\r\n\r\n")
            if 0 <= end <= MAX_HEADER_BYTES and _UPGRADE_HEADER.search(data, 0, end + 2) is None:
                super().data_received(data)  # a whole head, as most requests come: no copy
                return
            self._head = bytearray()
        if self._head is not None:
            self._receive_head(data)
            return
        in_headers = self._in_headers
        super().data_received(data)
        if in_headers and self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._headers_too_large()

    def _receive_head(self, data: bytes) -> None:
        """Holds a request's head until it is whole (a blank line ends it), then parses it with
        whatever came after it, an upgrade offer taken out."""
        head = self._head
        assert head is not None
        searched = max(0, len(head) - 3)
        head += data
        end = head.find(b"\r\n\r\n", searched)
        if end > MAX_HEADER_BYTES or (end < 0 and len(head) > MAX_HEADER_BYTES):
            self._headers_too_large()
            return
        if end < 0:  # a request's first bytes: its headers' clock runs (the kept-alive one stops)
            self._unset_keepalive_if_required()
            if self._header_timer is None:
                self._arm_header_timer()
            return
        self._head = None
        # Every Upgrade line: with one left, httptools still takes the body for the other protocol.
        while (offer := _UPGRADE_HEADER.search(head, 0, end + 2)) is not None:
            del head[offer.start() : offer.end()]
            end -= offer.end() - offer.start()
        super().data_received(bytes(head))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = self._in_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        self.guard.touch(self)
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:
            self.cycle.transport = HeadHeldTransport(self.transport, self.loop)
            self._cycles.append(self.cycle)

    def on_response_complete(self) -> None:
        self.guard.touch(self)
        self._cycles = [cycle for cycle in self._cycles if not cycle.response_complete]
        super().on_response_complete()

    def between_requests(self) -> bool:
        """Idle, or receiving a request's headers: no request of this connection is with the app."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def may_close_for_room(self) -> bool:
        """Doing nothing for a request (``between_requests``), or its client has read none of its
        answer for ``header_timeout_s``: it holds a connection only by not reading."""
        paused = self._write_paused_at
        stalled = paused is not None and self.loop.time() - paused >= self.guard.header_timeout_s
        return stalled or self.between_requests()

    def close_for_room(self) -> None:
        self._disarm_header_timer()
        self.guard.forget(self)
        if self._write_paused_at is not None:
            self.transport.abort()  # close() would hold the socket until its client read the rest
        elif not self.transport.is_closing():
            self.transport.close()
        self.guard.closed("evicted")

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self.between_requests():
            # A pipelined request's headers behind one still being answered: its clock starts
            # once the connection is free again (nothing may be written into that answer).
            self._arm_header_timer()
            return
        timeout = self.guard.header_timeout_s
        request_id = uuid.uuid4().hex
        self._answer_and_close(
            canned_response(
                408,
                "Request Timeout",
                "timeout",
                f"the request's headers were not complete within {timeout:g} s",
                request_id,
            ),
            "header_timeout",
            408,
            request_id,
        )

    def _headers_too_large(self) -> None:
        self._disarm_header_timer()
        self._head = None
        request_id = uuid.uuid4().hex
        self._answer_and_close(
            canned_response(
                431,
                "Request Header Fields Too Large",
                "validation",
                f"the request line and headers exceed {MAX_HEADER_BYTES:,} bytes",
                request_id,
            ),
            "headers_too_large",
            431,
            request_id,
        )

    def send_400_response(self, msg: str) -> None:
        """Bytes that do not parse as HTTP (a garbled request line, a non-numeric Content-Length, a
        control character in a header): uvicorn's plain-text 400 becomes the API's JSON error,
        with an id and an access-log line, as the other answers given at the connection."""
        self._disarm_header_timer()
        self._head = None
        request_id = uuid.uuid4().hex
        message = "the request is not valid HTTP/1.1 (its request line, headers or chunked body do not parse)"
        self._answer_and_close(
            canned_response(400, "Bad Request", "validation", message, request_id),
            "bad_request",
            400,
            request_id,
        )

    def _answer_and_close(self, response: bytes, reason: str, status: int, request_id: str) -> None:
        self.guard.forget(self)
        self.transport.write(response)
        self.transport.close()
        self.guard.closed(reason)
        log_connection_answer(status, request_id, self.address, reason)


# The largest body part joined to a held head into one write.
JOIN_MAX_BYTES = 64 * 1024


class HeadHeldTransport:
    """The transport a request's response is written through: its status line and headers wait
    for the first part of its body, so that a response of one body goes out in one send, not two.

    uvicorn writes the head when the app starts its response and the body in a second write. On
    loopback or a LAN each write is a segment of its own (the socket has TCP_NODELAY) and a wakeup
    of the client, which a one-pair request pays twice. Whatever is held is written at the end of
    the event loop's turn at the latest (a HEAD answer, or a 100 Continue, has no body to wait
    for), and before the connection is closed; writes keep their order. A body part over
    ``JOIN_MAX_BYTES`` is written after the head as it is: joining would copy it on the event loop
    (megabytes of echoed documents), where one write more costs nothing.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            if len(data) <= JOIN_MAX_BYTES:
                data, self._held = self._held + data, None
            else:
                self.flush()
        elif self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_class(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    return type("TurborankHttpProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})


def uvicorn_options(settings: ServeSettings, closed: Callable[[str], None]) -> dict[str, Any]:
    """The uvicorn.Config arguments that put a server's connections under these limits."""
    guard = ConnectionGuard(
        settings.header_timeout_s, settings.write_timeout_s, connection_limit(settings), closed
    )
    options: dict[str, Any] = {"http": protocol_class(guard)}
    if settings.forwarded_allow_ips is not None:
        options["forwarded_allow_ips"] = settings.forwarded_allow_ips
    return options
