"""The HTTP server, driven over loopback: a real uvicorn on a free port (CPU, small checkpoint)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import platform
import signal
import time
import traceback

import pytest

from tests.helpers import sample_pairs
from turborank import Reranker

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.serve_thread import metric, running_server  # noqa: E402
from turborank.serving.app import ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(reranker):
    with running_server(
        reranker, max_client_batch_size=16, max_input_length=512, max_body_bytes=200_000
    ) as s:
        yield s


def slowed(reranker: Reranker, seconds: float, poison: list[int] | None = None):
    """The reranker's batch scorer, slowed down per forward, with NaN for a poison token sequence."""
    real = reranker.logits

    def score(encoded, **kwargs):
        time.sleep(seconds)
        logits = real(encoded, **kwargs)
        for i, ids in enumerate(encoded.input_ids):
            if ids == poison:
                logits[i] = float("nan")
        return logits

    return score


# --- both API shapes give Reranker.rank's scores and order --------------------------------------------


def test_v1_rerank_matches_api(server, reranker):
    url, _ = server
    docs = [d for _, d in sample_pairs(9, seed=41)]
    want = reranker.rank("what is alibi", docs, return_documents=True)
    body = httpx.post(
        url + "/v1/rerank",
        json={"query": "what is alibi", "documents": docs[:4] + [{"text": d} for d in docs[4:]]},
    ).json()
    assert [r["index"] for r in body["results"]] == [w["corpus_id"] for w in want]
    for got, ref in zip(body["results"], want, strict=True):
        assert got["relevance_score"] == pytest.approx(ref["score"], abs=1e-6)
        assert got["document"]["text"] == ref["text"]
    assert body["model"] == "test-model"
    assert body["usage"]["total_tokens"] == sum(
        reranker.encode([("what is alibi", d) for d in docs])[0].lengths
    )
    top = httpx.post(
        url + "/v1/rerank",
        json={"query": "what is alibi", "documents": docs, "top_n": 2, "return_documents": False},
    ).json()
    assert [r["index"] for r in top["results"]] == [w["corpus_id"] for w in want[:2]]
    assert "document" not in top["results"][0]


def test_tei_rerank_matches_api(server, reranker):
    url, _ = server
    docs = [d for _, d in sample_pairs(7, seed=42)]
    want = reranker.rank("query words", docs)
    body = httpx.post(
        url + "/rerank", json={"query": "query words", "texts": docs, "return_text": True}
    ).json()
    assert [r["index"] for r in body] == [w["corpus_id"] for w in want]
    assert [r["score"] for r in body] == pytest.approx([w["score"] for w in want], abs=1e-6)
    assert body[0]["text"] == docs[body[0]["index"]]
    raw = httpx.post(url + "/rerank", json={"query": "query words", "texts": docs, "raw_scores": True}).json()
    logits = reranker.predict([("query words", d) for d in docs], activation=False)
    assert sorted(r["score"] for r in raw) == pytest.approx(sorted(logits), abs=1e-5)


def test_health_info_metrics(server):
    url, _ = server
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    info = httpx.get(url + "/info").json()
    assert info["max_input_length"] == 512 and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["cuda_graphs"] is None
    shared = ("max_concurrent_requests", "max_requests_per_client", "max_connections")
    share = {key: info[key] for key in shared}
    assert info["front_ends"] == {"count": 1, "index": 0, "share": share}  # one process: all of it
    # One request of our own, so the labelled histograms have samples whatever ran before.
    httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a document"]}).raise_for_status()
    text = httpx.get(url + "/metrics").text
    for name in (
        "turborank_requests_total",
        "turborank_request_duration_seconds_bucket",
        "turborank_batch_pairs_bucket",
        "turborank_queue_duration_seconds_bucket",
        "turborank_tokens_total",
        "turborank_errors_total",
    ):
        assert name in text


def test_concurrent_clients_get_their_own_results(server, reranker):
    url, _ = server
    queries = [f"query number {i} about topic {i * 7}" for i in range(12)]
    docs = [d for _, d in sample_pairs(6, seed=43)]
    want = {q: reranker.predict([(q, d) for d in docs]) for q in queries}

    def call(query):
        body = httpx.post(url + "/rerank", json={"query": query, "texts": docs}, timeout=60).json()
        return query, {r["index"]: r["score"] for r in body}

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for query, got in pool.map(call, queries):
            assert [got[i] for i in range(len(docs))] == pytest.approx(want[query], abs=1e-6)
    assert metric(url, "turborank_batch_pairs_count") >= 1


# --- errors: JSON {error, error_type} with the right status ------------------------------------------


@pytest.mark.parametrize(
    "path,body,status,error_type",
    [
        ("/v1/rerank", {"query": "", "documents": ["a"]}, 400, "empty"),
        ("/v1/rerank", {"query": "q", "documents": []}, 400, "empty"),
        ("/rerank", {"query": "   ", "texts": ["a"]}, 400, "Empty"),
        ("/rerank", {"query": "q", "texts": []}, 400, "Empty"),
        ("/rerank", b"{not json", 400, "Validation"),
        ("/v1/rerank", b"[1, 2]", 400, "validation"),
        ("/rerank", {"query": "q", "texts": "a string"}, 422, "Validation"),
        ("/v1/rerank", {"query": "q", "documents": [3]}, 422, "validation"),
        ("/rerank", {"query": "q", "texts": ["d"] * 17}, 422, "Validation"),
        ("/rerank", {"query": "q", "texts": ["word " * 1000]}, 422, "Validation"),
        ("/rerank", {"query": "q", "texts": ["x" * 300_000]}, 413, "Validation"),
        ("/v1/rerank", {"query": "q", "documents": ["x" * 300_000]}, 413, "payload_too_large"),
        # Bodies over 16 KiB, decoded and validated on a tokenizer thread: the same errors and shapes.
        ("/rerank", b"{not json" + b" " * 20_000, 400, "Validation"),
        ("/rerank", {"query": "q", "texts": "a string" * 3000}, 422, "Validation"),
        ("/v1/rerank", {"query": "q" * 20_000, "documents": [3]}, 422, "validation"),
    ],
)
def test_error_codes(server, path, body, status, error_type):
    """Ours on the Jina/Cohere routes (with "detail" beside them), TEI's names on /rerank."""
    url, _ = server
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(url + path, **kwargs)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error_type"] == error_type and payload["error"]
    if path == "/v1/rerank":
        assert payload["detail"] == payload["message"] == payload["error"]


def test_too_long_input_is_truncated_on_request(server, reranker):
    url, _ = server
    long_doc = "word " * 1000
    body = httpx.post(
        url + "/rerank", json={"query": "q", "texts": [long_doc, "short"], "truncate": True}
    ).json()
    want = reranker.predict([("q", long_doc), ("q", "short")], max_length=512)
    assert {r["index"]: r["score"] for r in body} == pytest.approx(dict(enumerate(want)), abs=1e-6)
    assert metric(url, "turborank_truncated_pairs_total") >= 1
    left = httpx.post(
        url + "/rerank",
        json={"query": "q", "texts": [long_doc + "end"], "truncate": True, "truncation_direction": "Left"},
    )
    assert left.status_code == 200


def test_auto_truncate_server(reranker):
    with running_server(reranker, max_input_length=64, auto_truncate=True) as (url, _):
        response = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["word " * 300]})
        assert response.status_code == 200
        assert response.json()["usage"]["total_tokens"] == 64


def test_nan_fails_only_its_batch_and_server_keeps_serving(reranker, monkeypatch):
    poison = reranker.encode([("q", "poison document")])[0].input_ids[0]
    with running_server(reranker) as (url, state):
        monkeypatch.setattr(state.scheduler, "_score", slowed(reranker, 0.0, poison))
        bad = httpx.post(url + "/rerank", json={"query": "q", "texts": ["fine", "poison document"]})
        assert bad.status_code == 424 and bad.json()["error_type"] == "Backend"  # TEI's code and name
        assert "non-finite" in bad.json()["error"]
        good = httpx.post(url + "/rerank", json={"query": "q", "texts": ["fine", "also fine"]})
        assert good.status_code == 200 and len(good.json()) == 2
        assert httpx.get(url + "/ready").status_code == 200
        assert metric(url, "turborank_failed_batches_total") == 1


def test_queue_full_gives_429_with_retry_after(reranker, monkeypatch):
    with running_server(reranker, max_concurrent_requests=1) as (url, state):
        monkeypatch.setattr(state.scheduler, "_score", slowed(reranker, 1.0))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.post, url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=30)
            time.sleep(0.3)
            rejected = httpx.post(url + "/rerank", json={"query": "q", "texts": ["b"]})
            assert rejected.status_code == 429 and rejected.headers["retry-after"]
            assert rejected.json()["error_type"] == "Overloaded"
            assert slow.result().status_code == 200


def test_draining_gives_503(reranker):
    with running_server(reranker) as (url, state):
        state.draining = True
        response = httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]})
        assert response.status_code == 503 and response.json()["error_type"] == "Unhealthy"
        assert httpx.get(url + "/ready").status_code == 503
        state.draining = False


def test_not_ready_gives_503(reranker):
    def broken(encoded, **kwargs):
        raise RuntimeError("device lost")

    def patch(state):
        state.scheduler._score = broken

    with running_server(reranker, before_start=patch, wait_for="/health") as (url, _):
        ready = httpx.get(url + "/ready")
        assert ready.status_code == 503 and ready.json()["error_type"] == "unhealthy"
        response = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert response.status_code == 503 and "not ready" in response.json()["error"]


def _post_and_leave(url: str, body: bytes, pipelined: bool) -> None:
    """POST /rerank and go after half a second; ``pipelined``: with a GET sent behind it."""
    import socket

    head = f"POST /rerank HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    sock.sendall(head + body + (b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" if pipelined else b""))
    time.sleep(0.5)
    sock.close()


@pytest.mark.parametrize("pipelined", [False, True])
def test_client_disconnect_drops_its_queued_work(reranker, monkeypatch, pipelined):
    """With a GET pipelined behind the request, uvicorn marked only that newest request of the
    connection as disconnected: the request whose client had left was scored to the end, and its
    answer written into the closed socket (a traceback in the log, 200 in the access log)."""
    with running_server(reranker, max_batch_tokens=64) as (url, state):
        monkeypatch.setattr(state.scheduler, "_score", slowed(reranker, 0.3))
        docs = [f"document number {i} with a few words" for i in range(16)]  # ~1 pair per forward
        _post_and_leave(url, json.dumps({"query": "q", "texts": docs}).encode(), pipelined)
        deadline = time.monotonic() + 3  # the whole request takes about 5 s of forwards
        while metric(url, "turborank_dropped_pairs_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(url, "turborank_dropped_pairs_total") > 0
        assert state.scheduler.drain(timeout=10)
        assert httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=30).status_code == 200


def test_small_request_is_not_starved_by_a_huge_one(reranker, monkeypatch):
    """Counted in forwards, not seconds: the one-pair request is answered within a couple of
    forwards while the huge one needs dozens (round-robin filling)."""
    with running_server(reranker, max_batch_tokens=256, max_client_batch_size=64) as (url, state):
        slow = slowed(reranker, 0.05)
        forwards = []

        def counted(encoded, **kwargs):
            forwards.append(len(encoded.input_ids))
            return slow(encoded, **kwargs)

        monkeypatch.setattr(state.scheduler, "_score", counted)
        huge = [f"long document {i} " + "word " * 60 for i in range(64)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            big = pool.submit(httpx.post, url + "/rerank", json={"query": "q", "texts": huge}, timeout=120)
            while not forwards:  # the huge request is being served
                time.sleep(0.01)
            before = len(forwards)
            small = httpx.post(url + "/rerank", json={"query": "q", "texts": ["tiny"]}, timeout=120)
            waited = len(forwards) - before
            assert small.status_code == 200
            assert big.result().status_code == 200
        assert waited <= 3, f"the one-pair request waited {waited} forwards"
        assert len(forwards) - before > 10  # the huge request needed many more: the test can fail


# --- the real command: `turborank serve`, SIGTERM drains and exits 0 ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("front_ends", [1, 2])
def test_serve_command_drains_on_sigterm(small_ckpt, tmp_path, front_ends):
    """An in-flight request is answered after SIGTERM and the server exits 0; with front-end
    processes every one of them drains, and none outlives the model process."""
    from tests.serve_process import front_end_pids, gone, serve_process

    log = tmp_path / "server.log"
    options = ("--max-batch-tokens", "2048", "--max-client-batch-size", "64", "--front-ends", str(front_ends))
    with serve_process(small_ckpt, log, *options) as (proc, url):
        front = front_end_pids(proc.pid)
        assert len(front) == (front_ends if front_ends > 1 else 0)
        docs = [" ".join(["paragraph"] * 700) + f" {i}" for i in range(48)]  # ~5,600 tokens each
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(
                httpx.post, url + "/rerank", json={"query": "q", "texts": docs}, timeout=120
            )
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            response = inflight.result()
        assert response.status_code == 200 and len(response.json()) == 48
        assert proc.wait(timeout=60) == 0
    assert all(gone(pid) for pid in front)
    said = log.read_text()
    assert ("draining 2 front ends" in said) == (front_ends == 2)
    assert "leaked" not in said  # nanobind's exit-time warnings about objects left frozen


@pytest.mark.slow
@pytest.mark.parametrize("front_ends", [1, 2])
def test_a_second_signal_cuts_what_is_in_flight_with_503_and_its_id(small_ckpt, tmp_path, front_ends):
    """A second SIGTERM stops waiting for a long request (--drain-timeout 60): it is answered 503 in
    the API's shape with its own x-request-id (not uvicorn's bare 500), logged, and the process
    exits 0 within seconds. With front ends, a connection after the drain is refused at once (the
    model process no longer holds the port open for nobody to answer)."""
    from tests.serve_process import connect, read_response, serve_process

    log = tmp_path / "server.log"
    options = ("--max-batch-tokens", "256", "--drain-timeout", "60", "--front-ends", str(front_ends))
    with serve_process(small_ckpt, log, *options) as (proc, url):
        docs = [" ".join(["paragraph"] * 300) + f" {i}" for i in range(600)]
        body = json.dumps({"query": "q", "documents": docs}).encode()
        sock = connect(url)
        head = "POST /v1/rerank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}X-Request-Id: cut-me\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        status, headers, answer = read_response(sock)
        assert status == 503 and headers["x-request-id"] == "cut-me" and headers["retry-after"] == "1"
        assert json.loads(answer)["error_type"] == "unhealthy"
        assert proc.wait(timeout=60) == 0 and time.monotonic() - start < 20
        if front_ends > 1:
            with pytest.raises(ConnectionRefusedError):
                connect(url)
    said = log.read_text()
    assert "POST /v1/rerank 503" in said and "id=cut-me" in said and "Exception in ASGI" not in said


def test_uvicorn_waits_after_the_drain_no_longer_than_what_is_left_needs(reranker):
    """The drain itself waits drain_timeout_s; uvicorn's own wait after it is short (it was a second
    drain_timeout_s), and as given for a shorter drain (0.5 s was once made 0 by int())."""
    from turborank.serving.server import AFTER_DRAIN_S, uvicorn_config
    from turborank.serving.settings import Listener

    listener = Listener("127.0.0.1", 8080, "warning")
    app = create_app(reranker, ServeSettings("m", drain_timeout_s=0.5))
    assert uvicorn_config(app, listener).timeout_graceful_shutdown == 0.5
    app = create_app(reranker, ServeSettings("m", drain_timeout_s=60))
    assert uvicorn_config(app, listener).timeout_graceful_shutdown == AFTER_DRAIN_S


# --- every 5xx is logged with the request id its response carries ------------------------------------


def _lines_with(caplog, request_id: str) -> list[logging.LogRecord]:
    """The server's lines about the request, beside its access-log line."""
    return [r for r in caplog.records if request_id in r.getMessage() and r.name != "turborank.access"]


def test_failed_forward_is_logged_with_request_id_and_traceback(reranker, monkeypatch, caplog):
    poison = reranker.encode([("q", "poison document")])[0].input_ids[0]
    real = reranker.logits

    def broken(encoded, **kwargs):
        if poison in encoded.input_ids:
            raise RuntimeError("device fell over")
        return real(encoded, **kwargs)

    with running_server(reranker) as (url, state):
        monkeypatch.setattr(state.scheduler, "_score", broken)
        with caplog.at_level(logging.INFO, logger="turborank"):
            response = httpx.post(url + "/rerank", json={"query": "q", "texts": ["poison document"]})
        assert response.status_code == 424 and "device fell over" in response.json()["error"]
        (line,) = _lines_with(caplog, response.headers["x-request-id"])
        assert line.levelno == logging.ERROR and line.exc_info is not None
        assert "device fell over" in "".join(traceback.format_exception(*line.exc_info))


def test_unexpected_error_is_logged_not_echoed(reranker, monkeypatch, caplog):
    with running_server(reranker) as (url, state):

        async def bug(*args, **kwargs):
            raise TypeError("a bug with a very long repr " + "x" * 10_000)

        monkeypatch.setattr(state, "score", bug)
        with caplog.at_level(logging.INFO, logger="turborank"):
            response = httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]})
        request_id = response.headers["x-request-id"]
        assert response.status_code == 424  # TEI's route: TEI answers every backend failure with 424
        assert (
            response.json()["error"] == f"internal error; the server log has it under request id {request_id}"
        )
        (line,) = _lines_with(caplog, request_id)
        assert line.exc_info is not None and line.exc_info[0] is TypeError


def test_not_ready_503_is_logged_and_the_probe_failure_has_its_traceback(reranker, caplog):
    def broken(encoded, **kwargs):
        raise RuntimeError("weights overflow")

    def patch(state):
        state.scheduler._score = broken

    with (
        caplog.at_level(logging.INFO, logger="turborank"),
        running_server(reranker, before_start=patch, wait_for="/health") as (url, _),
    ):
        response = httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]})
        assert response.status_code == 503
        (line,) = _lines_with(caplog, response.headers["x-request-id"])
        assert "the model is not ready yet" in line.getMessage()
    probe = [r for r in caplog.records if "readiness probe failed" in r.getMessage()]
    assert probe and "weights overflow" in "".join(traceback.format_exception(*probe[0].exc_info))


@pytest.mark.parametrize(
    "limits,message",
    [
        ({"body_timeout_s": 0}, "body_timeout_s must be a positive number of seconds"),
        ({"min_body_rate": -1}, "min_body_rate must be a non-negative integer"),
        ({"max_concurrent_requests": "8"}, "max_concurrent_requests must be a positive integer"),
        ({"tokenizer_threads": 0}, "tokenizer_threads must be a positive integer"),
    ],
)
def test_settings_are_checked(limits, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(model_name="m", **limits)


def test_max_input_length_outside_the_model_range_is_refused(reranker):
    with pytest.raises(ValueError, match="max_input_length 2 is outside the model's range \\(5..8192\\)"):
        create_app(reranker, ServeSettings(model_name="m", max_input_length=2))


def test_memory_is_handed_back_after_a_large_request(reranker, monkeypatch):
    """A pending 10 s trim scheduled by a small request gives way to the 1 s one a large request
    asks for (the heap had stayed at its peak after two 15 MiB requests)."""
    import turborank.serving.state as app_module
    from turborank.serving.memory import release_free_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert release_free_memory()
    trims: list[float] = []
    monkeypatch.setattr(app_module, "release_free_memory", lambda: trims.append(time.monotonic()))
    monkeypatch.setattr(app_module, "TRIM_INTERVAL_S", 1000.0)  # the small request's trim never comes
    with running_server(reranker, max_body_bytes=4 * 1024 * 1024) as (url, _):
        httpx.post(url + "/rerank", json={"query": "q", "texts": ["small"]}).raise_for_status()
        large = {"query": "q", "texts": ["many words " * 120_000], "truncate": True}
        assert len(json.dumps(large)) > app_module.LARGE_BODY_BYTES
        httpx.post(url + "/rerank", json=large, timeout=60).raise_for_status()
        deadline = time.monotonic() + 30
        while not trims and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(trims) == 1


# --- pieces are scored as they are tokenised; the rerank routes answer ahead of FastAPI --------------


def test_pieces_scored_as_they_are_tokenised_give_the_library_scores_in_order(reranker, monkeypatch):
    """A request cut into many pieces (a piece of a few hundred characters here) is scored piece by
    piece; its answer is the library's, in its order."""
    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 400)
    docs = [f"document {i} " + "word " * (i % 17 + 3) for i in range(40)]
    with running_server(reranker, max_batch_tokens=128, max_client_batch_size=64) as (url, state):
        submitted = []
        real_submit = state.scheduler.submit

        def counting(encoded, owner=None, loop=None):
            submitted.append(len(encoded.input_ids))
            return real_submit(encoded, owner, loop)

        monkeypatch.setattr(state.scheduler, "submit", counting)
        body = httpx.post(
            url + "/rerank", json={"query": "a query", "texts": docs, "raw_scores": True}, timeout=60
        )
    assert body.status_code == 200
    assert len(submitted) > 5 and sum(submitted) == len(docs)  # one ticket per piece
    want = reranker.predict([("a query", d) for d in docs], activation=False)
    got = {item["index"]: item["score"] for item in body.json()}
    assert max(abs(got[i] - want[i]) for i in range(len(docs))) < 1e-4


def test_a_refused_later_piece_cancels_the_pieces_already_queued(reranker, monkeypatch):
    """With truncation off, a pair over the limit in the last piece is a 422 naming it; the pieces
    queued before it are dropped, not scored for nobody."""
    monkeypatch.setattr("turborank.serving.tokenizing.PIECE_CHARS", 200)
    docs = [f"short document {i}" for i in range(30)] + ["word " * 3000]
    with running_server(reranker, max_input_length=64, max_client_batch_size=64) as (url, state):
        monkeypatch.setattr(state.scheduler, "_score", slowed(reranker, 0.2))
        response = httpx.post(
            url + "/rerank", json={"query": "q", "texts": docs, "truncate": False}, timeout=60
        )
        assert response.status_code == 422 and "texts.30" in response.json()["error"]
        assert state.scheduler.queued_pairs == 0
        assert state.scheduler.drain(timeout=10)


def test_rerank_paths_keep_their_other_methods_and_slash_handling(server):
    """Only POST on the exact rerank paths takes the direct route; the rest is FastAPI's, as before."""
    url, _ = server
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        response = httpx.get(url + path)
        assert response.status_code == 405 and response.headers["x-request-id"]
    assert httpx.get(url + "/").json() == {"status": "ok"}  # TEI's health on GET /
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/"} <= set(paths)
    assert "post" in paths["/v1/rerank"]


def test_a_request_whose_score_is_nan_fails_alone_not_the_requests_sharing_its_forward(reranker, monkeypatch):
    """Two requests batched into one forward, one of them poisoned: the forward fails, each request's
    pairs run again on their own, and only the poisoned request is answered with the error."""
    poison = reranker.encode([("q", "poison document")])[0].input_ids[0]
    with running_server(reranker, max_concurrent_requests=8) as (url, state):
        forwards = []
        slow = slowed(reranker, 0.3, poison)

        def counted(encoded, **kwargs):
            forwards.append(len(encoded.input_ids))
            return slow(encoded, **kwargs)

        monkeypatch.setattr(state.scheduler, "_score", counted)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(
                httpx.post, url + "/rerank", json={"query": "q", "texts": ["x"]}, timeout=60
            )
            while not forwards:  # the blocker's forward runs: the next two queue together
                time.sleep(0.01)
            good = pool.submit(
                httpx.post, url + "/rerank", json={"query": "q", "texts": ["fine", "ok"]}, timeout=60
            )
            bad = pool.submit(
                httpx.post, url + "/rerank", json={"query": "q", "texts": ["poison document"]}, timeout=60
            )
            assert blocker.result().status_code == 200
            assert good.result().status_code == 200 and len(good.result().json()) == 2
            assert bad.result().status_code == 424 and "non-finite" in bad.result().json()["error"]
        assert 3 in forwards  # the two requests did share a forward, which failed and was retried


def test_a_wrong_path_answers_with_detail_as_jina_clients_read_it(server):
    url, _ = server
    body = httpx.post(url + "/v1/rerankk", json={"query": "q", "documents": ["a"]}).json()
    assert body["detail"] == body["error"] == "no route /v1/rerankk" and body["error_type"] == "not_found"


def test_the_spec_is_also_where_tei_serves_its_own(server):
    url, _ = server
    assert httpx.get(url + "/api-doc/openapi.json").json() == httpx.get(url + "/openapi.json").json()
