"""Raw-socket clients for what httpx will not do (stall mid-body, trickle, hold a keep-alive
connection, come from another loopback address); the server process is turborank.testing_server's,
and its front-end processes (``serve --front-ends``) are found through /proc."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from turborank.testing_server import serve_process

__all__ = ["connect", "front_end_pids", "gone", "port_of", "read_response", "serve_process", "start_upload"]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A raw connection to the server from ``source``: any 127.x.y.z address is this machine's
    loopback on Linux, so tests can be several clients."""
    return socket.create_connection(("127.0.0.1", port_of(url)), timeout=60, source_address=(source, 0))


def start_upload(
    url: str, body: bytes, sent: int, path: str = "/rerank", source: str = "127.0.0.1"
) -> socket.socket:
    """A POST whose headers promise ``len(body)`` bytes, of which only the first ``sent`` are sent."""
    sock = connect(url, source)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one HTTP/1.1 response with Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def front_end_pids(pid: int) -> list[int]:
    """The live front-end processes of the server ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    fronts = []
    for child in found:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                fronts.append(child)
    return fronts


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (or is a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
