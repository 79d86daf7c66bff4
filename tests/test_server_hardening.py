"""The server against slow, stalled, malformed and departing clients, through a real `turborank
serve` process on loopback: no client holds a slot past the body timeout, every client mistake is a
4xx naming the field, every response carries x-request-id."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_process import connect, port_of, read_response, serve_process, start_upload  # noqa: E402
from tests.serve_thread import metric  # noqa: E402

SLOTS = 3
SERVER_OPTIONS = (
    "--max-concurrent-requests",
    str(SLOTS),
    "--body-timeout",
    "1",
    "--min-body-rate",
    "2000",
    "--max-input-length",
    "128",
    "--max-client-batch-size",
    "8",
    "--max-body-bytes",
    "4000000",
)


@pytest.fixture(scope="module")
def server(small_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serve_process(small_ckpt, log, *SERVER_OPTIONS) as (_, url):
        yield url, log


def wait_until(condition, what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_stalled_uploads_get_408_and_free_their_slots(server):
    url, _ = server
    body = json.dumps({"query": "q", "texts": ["a document"]}).encode()
    stalled = [start_upload(url, body, sent=5) for _ in range(SLOTS)]
    try:
        wait_until(lambda: httpx.get(url + "/ready").status_code == 503, "every slot taken")
        ready = httpx.get(url + "/ready").json()
        assert ready["error_type"] == "overloaded" and "no free request slot" in ready["error"]
        refused = httpx.post(url + "/rerank", content=body)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        for sock in stalled:
            status, headers, answer = read_response(sock)
            assert status == 408 and headers["connection"] == "close"
            assert json.loads(answer)["error_type"] == "Validation"  # TEI has no timeout type
            assert "no request body data for 1 s" in json.loads(answer)["error"]
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: httpx.get(url + "/ready").status_code == 200, "the slots are free again")
    assert httpx.post(url + "/rerank", content=body).status_code == 200


def test_trickling_upload_gets_408(server):
    """One byte every 0.3 s never stalls for the 1 s body timeout, but averages far under the
    2,000 bytes/s minimum rate."""
    url, _ = server
    body = json.dumps({"query": "q", "texts": ["a document " * 200]}).encode()
    sock = start_upload(url, body, sent=1)
    try:
        sock.settimeout(0.3)
        sent = 1
        deadline = time.monotonic() + 60
        while True:
            try:
                first = sock.recv(1, 0x2)  # MSG_PEEK: has the answer started?
                if first:
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline and sent < len(body), "the trickle was never cut off"
            sock.sendall(body[sent : sent + 1])
            sent += 1
        sock.settimeout(30)
        status, _, answer = read_response(sock)
        assert status == 408 and "under 2000 bytes/s" in json.loads(answer)["error"]
    finally:
        sock.close()


@pytest.mark.parametrize(
    "path,body,status,field",
    [
        ("/rerank", b'{"query": "q\\ud800", "texts": ["a"]}', 422, "query: contains a lone surrogate U+D800"),
        ("/rerank", b'{"query": "q", "texts": ["a", "\\udc00"]}', 422, "texts.1: contains a lone surrogate"),
        ("/v1/rerank", b'{"query": "q", "documents": ["\\ud800"]}', 422, "documents: item 0 contains a lone"),
        (
            "/v1/rerank",
            b'{"query": "q", "documents": [{"text": "a\\ud800"}]}',
            422,
            "documents: item 0 contains a lone",
        ),
        ("/v1/rerank", b'{"query": "q", "documents": ["a"], "model": "\\ud800"}', 422, "model: contains a"),
        ("/rerank", b"[" * 100_000 + b"]" * 100_000, 400, "malformed JSON: nested too deeply"),
        ("/rerank", b'{"query": ' + b"9" * 5001 + b', "texts": ["a"]}', 400, "a number of more than"),
        ("/rerank", b'{"query": "\xff", "texts": ["a"]}', 400, "not UTF-8"),
        ("/rerank", '{"query": "q", "texts": ["a"]}'.encode("utf-16"), 400, "not UTF-8"),
        ("/v1/rerank", '{"query": "q", "documents": ["a"]}'.encode("utf-32-le"), 400, "not UTF-8"),
        ("/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": true}', 422, "top_n: Input should be"),
        ("/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": "1"}', 422, "top_n: Input should be"),
        ("/v1/rerank", b'{"query": "q", "documents": ["a", 3]}', 422, "documents: item 1: expected a string"),
        ("/rerank", b'{"query": "q", "texts": ["a"], "truncate": "yes"}', 422, "truncate: Input should be"),
        # Objects come back whole: each of these would fail to encode in the response (a 500).
        (
            "/v1/rerank",
            b'{"query": "q", "documents": [{"text": "a", "score": NaN}]}',
            422,
            "documents: item 0 contains nan (not a JSON number) in score",
        ),
        (
            "/v1/rerank",
            b'{"query": "q", "documents": [{"text": "a", "m": ' + b"[" * 40 + b"]" * 40 + b"}]}",
            422,
            "documents: item 0 contains nesting deeper than 32 levels",
        ),
        (
            "/v1/rerank",
            b'{"query": "q", "rank_fields": ["title"], "documents": [{"text": "a"}]}',
            422,
            "documents: item 0: expected a string or an object with a string field of rank_fields",
        ),
        ("/v1/rerank", b'{"query": "q", "documents": [{"text": 5}]}', 422, "item 0: field 'text' must be a"),
        (
            "/v1/rerank",
            b'{"query": "q", "documents": ["a"], "rank_fields": []}',
            422,
            "rank_fields: List should",
        ),
        (
            "/v2/rerank",
            b'{"query": "q", "documents": [{"text": "a"}]}',
            422,
            "documents: item 0: expected a string, got dict (Cohere v2 takes strings",
        ),
        (
            "/v2/rerank",
            b'{"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}',
            422,
            "max_tokens_per_doc:",
        ),
        ("/v2/rerank", b'{"query": "q", "documents": ["a\\ud800"]}', 422, "documents.0: contains a lone"),
        (
            "/rerank",
            b'{"query": "q", "texts": ["' + b"word " * 500 + b'"]}',
            422,
            "texts.0: the pair is longer",
        ),
        (
            "/rerank",
            b'{"query": "q", "texts": ["' + b"x" * 100_000 + b'"], "truncate": true}',
            422,
            "texts.0: 100,000",
        ),
    ],
)
def test_client_mistakes_are_4xx_naming_the_field(server, path, body, status, field):
    """Each was a 500 "internal error" (or, for top_n, accepted) before."""
    url, _ = server
    response = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    tei_type = "Tokenizer" if "no word boundary" in payload["error"] else "Validation"
    assert field in payload["error"]
    assert payload["error_type"] == (tei_type if path == "/rerank" else "validation")
    assert response.headers["x-request-id"]


def test_a_document_object_of_millions_of_values_is_walked_without_a_copy_of_it():
    """The check of what an answer can echo built a path string per value: 16 MiB of "[]," (5.6
    million lists, inside --max-body-bytes) cost a gigabyte and seconds per request. Counted in
    bytes allocated, not seconds."""
    import tracemalloc

    from turborank.serving.schemas import _unechoable

    padded = {"text": "a", "pad": [[] for _ in range(200_000)], "more": [{"k": [1, "x"]}] * 50_000}
    tracemalloc.start()
    try:
        assert _unechoable(padded) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
    padded["more"].append({"k": [1, float("nan")]})
    assert _unechoable(padded) == "nan (not a JSON number) in more.50000.k.1"


def test_a_compressed_body_is_415_naming_the_header(server):
    """A gzip body was read as text: 400 "not UTF-8 text: it holds NUL bytes (UTF-16 or UTF-32?)"."""
    import gzip

    url, _ = server
    body = gzip.compress(b'{"query": "q", "documents": ["a"]}')
    for path in ("/v1/rerank", "/rerank"):
        response = httpx.post(url + path, content=body, headers={"content-encoding": "gzip"})
        assert response.status_code == 415, response.text
        assert "Content-Encoding 'gzip' is not supported" in response.json()["error"]
        assert response.headers["x-request-id"]
    identity = httpx.post(
        url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={"content-encoding": "identity"}
    )
    assert identity.status_code == 200


def test_long_document_is_cut_to_the_same_scores_as_the_library(server, small_ckpt):
    from turborank import Reranker

    url, _ = server
    document = "many words of a very long document " * 30_000  # about a megabyte
    response = httpx.post(
        url + "/rerank",
        json={"query": "what is long", "texts": [document, "short"], "truncate": True, "raw_scores": True},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    want = Reranker.from_pretrained(small_ckpt, device="cpu").predict(
        [("what is long", document), ("what is long", "short")], activation=False, max_length=128
    )
    got = {item["index"]: item["score"] for item in response.json()}
    assert [got[0], got[1]] == pytest.approx(want, abs=1e-5)


def test_http_edges_have_the_error_shape_and_a_request_id(server):
    url, _ = server
    wrong_method = httpx.post(url + "/health")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"]
    assert wrong_method.json()["error_type"] == "method_not_allowed"
    assert "POST is not allowed on /health" in wrong_method.json()["error"]
    assert httpx.get(url + "/v1/rerank").json()["error_type"] == "method_not_allowed"
    assert httpx.head(url + "/health").status_code == 200
    assert httpx.head(url + "/ready").status_code == 200
    missing = httpx.get(url + "/no/such/route")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"
    assert httpx.get(url + "/openapi.json").status_code == 200
    ids = {httpx.get(url + "/health").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    echoed = httpx.post(url + "/rerank", json={"query": ""}, headers={"x-request-id": "client-id.42"})
    assert echoed.headers["x-request-id"] == "client-id.42"
    odd = httpx.get(url + "/health", headers={"x-request-id": "a b\tc"})
    assert odd.headers["x-request-id"] != "a b\tc"


def test_sigterm_answers_kept_alive_clients_503_and_is_not_held_by_a_stalled_upload(small_ckpt, tmp_path):
    """Draining keeps the listener: a client on a kept-alive connection gets the documented 503 (it
    saw "connection refused"), and a stalled upload holds the exit for the body timeout only (it
    held a SIGTERM'd server for 90 s and more)."""
    log = tmp_path / "server.log"
    with serve_process(small_ckpt, log, "--body-timeout", "2") as (proc, url):
        body = json.dumps({"query": "q", "texts": ["a"]}).encode()
        with httpx.Client(base_url=url) as kept_alive, httpx.Client(base_url=url) as prober:
            assert kept_alive.post("/rerank", content=body).status_code == 200
            stalled = start_upload(url, body, sent=5)
            try:
                wait_until(lambda: "turborank_active_requests 1.0" in prober.get("/metrics").text, "admitted")
                proc.send_signal(signal.SIGTERM)
                wait_until(lambda: prober.get("/ready").status_code == 503, "draining")
                counted = metric(url, 'turborank_requests_total{code="503",endpoint="/rerank"}')
                failures = metric(url, "te_request_failure")
                refused = kept_alive.post("/rerank", content=body)
                assert refused.status_code == 503 and refused.headers["retry-after"]
                assert refused.json()["error"] == "the server is draining"
                # Counted as the scoring routes count what they answer.
                assert metric(url, 'turborank_requests_total{code="503",endpoint="/rerank"}') == counted + 1
                assert metric(url, "te_request_failure") == failures + 1
                assert refused.headers["connection"] == "close"
                # Every request, probes included (a load balancer must stop sending work); metrics
                # stay scrapeable.
                for path in ("/health", "/", "/ready", "/info"):
                    probe = prober.get(path)
                    assert probe.status_code == 503, path
                    assert probe.headers["retry-after"] and probe.headers["connection"] == "close", path
                assert prober.get("/metrics").status_code == 200
                status, _, _ = read_response(stalled)
                assert status == 408
            finally:
                stalled.close()
        assert proc.wait(timeout=60) == 0
    assert "draining: 1 requests in flight" in log.read_text()


def test_pipelined_requests_are_all_answered_in_order(server):
    """HTTP/1.1 pipelining: three requests written at once on one connection get three answers, in
    order (h11 answered the first and dropped the rest)."""
    url, _ = server
    bodies = [json.dumps({"query": "q", "texts": ["a " * n]}).encode() for n in (1, 2, 3)]
    wire = b"".join(
        b"POST /rerank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nX-Request-ID: pipelined-{i}\r\n\r\n".encode()
        + body
        for i, body in enumerate(bodies)
    )
    sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=30)
    buffer, answers = b"", []
    try:
        sock.sendall(wire)
        while len(answers) < len(bodies):
            head, separator, rest = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
            length = int(headers.get("content-length", -1))
            if not separator or len(rest) < length:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(answers)} answers"
                buffer += chunk
                continue
            answers.append((int(lines[0].split()[1]), headers["x-request-id"]))
            buffer = rest[length:]
    finally:
        sock.close()
    assert answers == [(200, "pipelined-0"), (200, "pipelined-1"), (200, "pipelined-2")]


def test_a_path_cannot_forge_log_lines_or_write_terminal_escapes(small_ckpt, tmp_path):
    """The text log escapes control characters: a newline in a path gives no second line, an ESC
    no terminal sequence (both went to the log raw)."""
    log = tmp_path / "server.log"
    with serve_process(small_ckpt, log) as (_, url):
        forged = "/x%0a2026-12-06 00:00:00,000 INFO turborank.access: FAKE"
        assert httpx.get(url + forged).status_code == 404
        assert httpx.get(url + "/y%1b[31mred").status_code == 404
        time.sleep(0.5)
    text = log.read_text()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert not any(line.startswith("2026-12-06 00:00:00,000 INFO turborank.access: FAKE") for line in lines)
    # The route is logged as sent, percent-encoded: one field, whatever it decodes to.
    assert any("/x%0a2026-12-06" in line and "FAKE" in line for line in lines)
    assert any("/y%1b" in line for line in lines)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_abandoned_huge_requests_give_their_memory_back_without_another_request(small_ckpt, tmp_path):
    """Three 11 MiB requests whose clients leave once the body is sent: the server's RSS peaks
    ~150 MiB above idle, and is back within 100 MiB of it seconds later with no request since
    (it stayed ~200 MiB up until the next request came)."""
    docs = [f"word{i} " * 1500 for i in range(1000)]
    body = json.dumps({"query": "q", "documents": docs}).encode()
    head = f"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}"
    with serve_process(small_ckpt, tmp_path / "server.log") as (proc, url):
        small = {"query": "q", "documents": ["a", "b"]}
        for _ in range(2):
            assert httpx.post(url + "/v1/rerank", json=small).status_code == 200
        time.sleep(11)  # the trim every request schedules (at most every 10 s) has run
        idle = _rss_mib(proc.pid)
        peak = idle
        for _ in range(3):
            sock = connect(url)
            sock.sendall(head.encode() + b"\r\n\r\n" + body)
            time.sleep(0.3)
            peak = max(peak, _rss_mib(proc.pid))
            sock.close()
        time.sleep(4)
        after = _rss_mib(proc.pid)
        assert peak - idle > 60, f"the requests did not load it (idle {idle:.0f}, peak {peak:.0f} MiB)"
        assert after - idle < 100, f"idle {idle:.0f} MiB, peak {peak:.0f} MiB, 4 s later {after:.0f} MiB"
