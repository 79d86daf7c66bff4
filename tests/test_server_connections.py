"""Clients that hold the server without making requests, through a real `turborank serve` process on
loopback: slow uploads from one client must not keep out another (request slots are shared
fairly), connections that never finish their headers are closed, and a flood of connections stays
below the open-file limit so that probes keep answering. Several clients on one machine are
several loopback addresses (127.0.0.2 is the attacker)."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_process import connect, read_response, serve_process, start_upload  # noqa: E402
from tests.serve_thread import metric  # noqa: E402
from turborank.serving.connections import MAX_HEADER_BYTES  # noqa: E402

ATTACKER = "127.0.0.2"
BODY = json.dumps({"query": "q", "texts": ["a document"]}).encode()


def closed_by_server(sock: socket.socket, within_s: float) -> tuple[float, bytes]:
    """(seconds until the server closed the connection, what it sent before)."""
    start = time.monotonic()
    sock.settimeout(within_s)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - start, data
        data += chunk


def test_one_clients_slow_uploads_do_not_keep_out_another(small_ckpt, tmp_path):
    """The attacker fills every slot with uploads that stall after 5 bytes (and reopens them); the
    other client is still served at once, long before the 20 s body timeout frees anything."""
    slots = 4
    options = ("--max-concurrent-requests", str(slots), "--body-timeout", "20", "--min-body-rate", "0")
    with serve_process(small_ckpt, tmp_path / "server.log", *options) as (_, url):
        stalled = [start_upload(url, BODY, sent=5, source=ATTACKER) for _ in range(slots)]
        try:
            deadline = time.monotonic() + 30
            while httpx.get(url + "/ready").status_code != 503:  # every slot taken
                assert time.monotonic() < deadline, "the stalled uploads never took the slots"
                time.sleep(0.05)
            # The attacker itself gets no more: it is the busiest client.
            more = start_upload(url, BODY, sent=5, source=ATTACKER)
            status, _, answer = read_response(more)
            assert status == 429 and "all 4 request slots are in use" in json.loads(answer)["error"]
            more.close()
            for _ in range(3):
                start = time.monotonic()
                served = httpx.post(url + "/rerank", content=BODY, timeout=30)
                assert served.status_code == 200, served.text
                assert time.monotonic() - start < 5
            # The first took the slot of one stalled upload (answered 429, saying why); the
            # others found it free again.
            answers = []
            for sock in stalled:
                sock.settimeout(0.5)
                try:
                    answers.append(read_response(sock))
                except TimeoutError:
                    continue
            assert len(answers) == 1
            for status, headers, answer in answers:
                assert status == 429 and headers["connection"] == "close" and headers["retry-after"]
                error = json.loads(answer)["error"]
                assert (
                    f"this client ({ATTACKER}) held the most" in error
                    and f"(5 of {len(BODY)} bytes)" in error
                )
        finally:
            for sock in stalled:
                sock.close()


def test_a_per_client_cap_refuses_the_client_over_it(small_ckpt, tmp_path):
    options = ("--max-requests-per-client", "2", "--body-timeout", "20", "--min-body-rate", "0")
    with serve_process(small_ckpt, tmp_path / "server.log", *options) as (_, url):
        stalled = [start_upload(url, BODY, sent=5, source=ATTACKER) for _ in range(2)]
        try:
            deadline = time.monotonic() + 30
            while metric(url, "turborank_active_requests") < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            third = start_upload(url, BODY, sent=5, source=ATTACKER)
            status, _, answer = read_response(third)
            third.close()
            assert status == 429
            assert json.loads(answer)["error"] == (
                f"this client ({ATTACKER}) has 2 requests in flight, the most one client may have"
            )
            assert httpx.post(url + "/rerank", content=BODY, timeout=30).status_code == 200
        finally:
            for sock in stalled:
                sock.close()


def test_headers_that_never_finish_get_408_and_the_connection_closes(small_ckpt, tmp_path):
    with serve_process(small_ckpt, tmp_path / "server.log", "--header-timeout", "1") as (_, url):
        partial = connect(url)
        partial.sendall(b"POST /rerank HTTP/1.1\r\nHost: test\r\nContent-Type: appl")
        silent = connect(url)
        kept_alive = connect(url)  # a whole request, then part of the next one's headers
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(kept_alive)[0] == 200
        time.sleep(1.5)  # the first request's time does not count for the second's headers
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHo")
        for sock in (partial, silent, kept_alive):
            seconds, sent = closed_by_server(sock, within_s=10)
            assert seconds < 5
            assert sent.startswith(b"HTTP/1.1 408 "), sent
            assert b"the request's headers were not complete within 1 s" in sent
            sock.close()
        assert metric(url, 'turborank_closed_connections_total{reason="header_timeout"}') == 3
        # Headers that do finish in time are served as ever.
        assert httpx.get(url + "/health").status_code == 200
    # Each answer the connection gave has its access-log line, with the id the answer carried.
    said = (tmp_path / "server.log").read_text()
    assert said.count("turborank.access: - - 408 closed=header_timeout") == 3, said


def test_clients_that_never_read_their_answers_do_not_hold_the_connections(small_ckpt, tmp_path):
    """Pipelined requests whose answers are never read: once the socket's buffers fill, uvicorn
    waits to write for ever, so each such connection carried a request for as long as its client
    stayed, and with --max-connections of them every newcomer (probes included) got 503."""
    options = ("--max-connections", "3", "--header-timeout", "1", "--write-timeout", "3")
    with serve_process(small_ckpt, tmp_path / "server.log", *options) as (_, url):
        unread = []
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n" * 2000)
            unread.append(sock)
        time.sleep(1.5)  # past --header-timeout: a connection not reading may be closed for room
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        deadline = time.monotonic() + 10
        closed = 0.0
        while closed < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            closed = sum(
                metric(url, f'turborank_closed_connections_total{{reason="{reason}"}}')
                for reason in ("evicted", "write_timeout")
            )
        assert closed == 3
        assert metric(url, 'turborank_closed_connections_total{reason="write_timeout"}') >= 1
        for sock in unread:
            sock.close()
    assert "its client read none of its answer for 3 s" in (tmp_path / "server.log").read_text()


def test_an_endless_header_gets_431_and_a_bare_line_break_does_not_hold_a_connection(small_ckpt, tmp_path):
    """A header that never ends is refused at MAX_HEADER_BYTES, and meanwhile another client is
    answered at once (httptools would grow it by copying it whole for every part, on the event
    loop). A kept-alive connection that sends a bare line break and then nothing gets the header
    timeout, as any request's first bytes do."""
    with serve_process(small_ckpt, tmp_path / "server.log", "--header-timeout", "2") as (proc, url):
        flood = connect(url, ATTACKER)
        flood.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: ")
        sent = 0
        try:
            while sent <= MAX_HEADER_BYTES:
                flood.sendall(b"a" * 4096)
                sent += 4096
                if sent % (16 * 4096) == 0:
                    start = time.monotonic()
                    assert httpx.get(url + "/health", timeout=10).status_code == 200
                    assert time.monotonic() - start < 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed as its head went over the limit: the answer is already on its way
        seconds, answer = closed_by_server(flood, within_s=10)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert f"exceed {MAX_HEADER_BYTES:,} bytes".encode() in answer
        flood.close()
        kept_alive = connect(url)
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(kept_alive)[0] == 200
        kept_alive.sendall(b"\r\n")
        seconds, answer = closed_by_server(kept_alive, within_s=10)
        assert seconds < 5 and answer.startswith(b"HTTP/1.1 408 "), (seconds, answer)
        kept_alive.close()
        assert metric(url, 'turborank_closed_connections_total{reason="headers_too_large"}') == 1
        assert proc.poll() is None


def test_an_offer_to_switch_protocols_is_ignored_and_the_request_served(small_ckpt, tmp_path):
    """Java's HttpClient offers HTTP/2 (``Upgrade: h2c``) on a plain http:// request: the body must
    still reach the app, whether it comes with the headers, after them, or chunked."""
    body = json.dumps({"query": "q", "documents": ["first", "second"]}).encode()
    head = (
        b"POST /v1/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    )
    sized = head + f"Content-Length: {len(body)}\r\n\r\n".encode()
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body
    # Two offers: only the first was taken out, and the body read as "malformed JSON".
    twice = head + f"Upgrade: h2c\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with serve_process(small_ckpt, tmp_path / "server.log") as (_, url):
        expected = httpx.post(url + "/v1/rerank", content=body).json()["results"]
        for parts in (
            [sized + body],
            [sized, body],
            [chunked, b"\r\n0\r\n\r\n"],
            [twice + body],
            [twice, body],
        ):
            sock = connect(url)
            for part in parts:
                sock.sendall(part)
                time.sleep(0.05)
            status, _, answer = read_response(sock)
            assert status == 200, answer
            assert json.loads(answer)["results"] == expected
            sock.sendall(sized + body)  # and the connection goes on as HTTP/1.1
            assert read_response(sock)[0] == 200
            sock.close()


def test_a_connection_flood_stays_under_the_open_file_limit_and_probes_answer(small_ckpt, tmp_path):
    """With `ulimit -n 200`, 300 connections that send half their headers (the header timeout is
    long, so only the connection cap can help): the longest idle are closed to make room, /ready and
    /health answer within a second, and the server never runs out of file descriptors."""
    log = tmp_path / "server.log"
    options = ("--header-timeout", "60")
    with serve_process(small_ckpt, log, *options, open_files=200) as (proc, url):
        flood = []
        # A kept-alive client in use throughout: its connection is older than every attacker's
        # but never the longest idle, so it is not the one closed.
        kept_alive = connect(url)
        try:
            for _ in range(6):
                for _ in range(50):
                    sock = connect(url, ATTACKER)
                    sock.sendall(b"GET /health HTTP/1.1\r\nHo")
                    flood.append(sock)
                kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_response(kept_alive)[0] == 200
            for path in ("/ready", "/health"):
                start = time.monotonic()
                assert httpx.get(url + path, timeout=10).status_code == 200
                assert time.monotonic() - start < 1
            assert metric(url, "turborank_open_connections") <= 200 - 64
            assert metric(url, 'turborank_closed_connections_total{reason="evicted"}') >= 300 - (200 - 64)
            assert proc.poll() is None
        finally:
            for sock in flood:
                sock.close()
            kept_alive.close()
    assert "Too many open files" not in log.read_text()


def test_at_the_connection_cap_with_every_connection_busy_a_newcomer_gets_503(small_ckpt, tmp_path):
    options = ("--max-connections", "4", "--max-concurrent-requests", "8")
    options += ("--body-timeout", "20", "--min-body-rate", "0")
    log = tmp_path / "server.log"
    with serve_process(small_ckpt, log, *options) as (_, url):
        busy = [start_upload(url, BODY, sent=5) for _ in range(3)]
        try:
            deadline = time.monotonic() + 30
            while metric(url, "turborank_active_requests") < 3:  # the scrape is the 4th connection
                assert time.monotonic() < deadline
                time.sleep(0.05)
            busy.append(start_upload(url, BODY, sent=5))
            time.sleep(0.5)  # (a scrape now would be the newcomer)
            newcomer = connect(url)
            _, sent = closed_by_server(newcomer, within_s=10)
            newcomer.close()
            assert sent.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in sent
            assert b"all 4 connections the server keeps carry a request" in sent
            request_id = sent.split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
        finally:
            for sock in busy:
                sock.close()
    assert f"request {request_id}: connection from 127.0.0.1 refused -> 503" in log.read_text()


def test_bytes_that_are_not_http_get_a_json_400_with_an_id_and_a_log_line(small_ckpt, tmp_path):
    """uvicorn answered them with a plain-text 400: no x-request-id, no JSON, no access-log line."""
    garbled = [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Odd: a\x1bb\r\n\r\n",
    ]
    with serve_process(small_ckpt, tmp_path / "server.log") as (proc, url):
        ids = []
        for request in garbled:
            sock = connect(url)
            sock.sendall(request)
            _, answer = closed_by_server(sock, within_s=10)
            sock.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head, answer
            assert json.loads(body)["error_type"] == "validation"
            ids.append(head.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode())
        assert metric(url, 'turborank_closed_connections_total{reason="bad_request"}') == 3
        assert httpx.get(url + "/health").status_code == 200
        assert proc.poll() is None
    said = (tmp_path / "server.log").read_text()
    assert all(f"- - 400 closed=bad_request client=127.0.0.1 id={i}" in said for i in ids), said
