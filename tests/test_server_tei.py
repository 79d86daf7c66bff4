"""text-embeddings-inference's contract, over raw HTTP: its six error_type names with its status
codes (424 for a failed backend), its /info keys, its POST / alias and GET / health route."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_process import read_response, start_upload  # noqa: E402
from tests.serve_thread import running_server  # noqa: E402
from turborank.serving.errors import TEI_ERROR_TYPES  # noqa: E402

TEI_ROUTES = ("/rerank", "/")


@pytest.fixture(scope="module")
def server(reranker):
    with running_server(reranker, max_client_batch_size=4, max_input_length=64, max_body_bytes=100_000) as s:
        yield s


def tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type
    assert error_type in TEI_ERROR_TYPES
    return body["error"]


@pytest.mark.parametrize("route", TEI_ROUTES)
def test_post_root_is_rerank(server, reranker, route):
    url, _ = server
    docs = ["a linear bias", "a cooking recipe", "attention scores"]
    body = httpx.post(url + route, json={"query": "what is alibi", "texts": docs, "return_text": True}).json()
    want = reranker.rank("what is alibi", docs)
    assert [r["index"] for r in body] == [w["corpus_id"] for w in want]
    assert [r["score"] for r in body] == pytest.approx([w["score"] for w in want], abs=1e-6)
    assert [r["text"] for r in body] == [docs[r["index"]] for r in body]


def test_get_root_is_health_as_in_tei(server):
    url, _ = server
    assert httpx.get(url + "/").json() == {"status": "ok"}
    assert httpx.head(url + "/").status_code == 200


@pytest.mark.parametrize("route", TEI_ROUTES)
@pytest.mark.parametrize(
    "body,status,error_type,message",
    [
        ({"query": "", "texts": ["a"]}, 400, "Empty", "query is empty"),
        ({"query": "q", "texts": []}, 400, "Empty", "texts is empty"),
        ({"query": "q", "texts": ["a"] * 5}, 422, "Validation", "5 items exceed max_client_batch_size=4"),
        ({"query": "q", "texts": ["word " * 100]}, 422, "Validation", "texts.0: the pair is longer"),
        ({"query": "q", "texts": [1]}, 422, "Validation", "texts.0: Input should be a valid string"),
        ({"query": "q", "texts": ["x" * 5000], "truncate": True}, 422, "Tokenizer", "no word boundary"),
        ({"query": "q", "texts": ["a" * 200_000]}, 413, "Validation", "exceeds 100000 bytes"),
    ],
)
def test_error_types_are_tei_names(server, route, body, status, error_type, message):
    url, _ = server
    assert message in tei_error(httpx.post(url + route, json=body), status, error_type)


def test_bad_json_is_validation_not_fastapi_detail_list(server):
    url, _ = server
    for route in TEI_ROUTES:
        response = httpx.post(url + route, content=b"{nope", headers={"content-type": "application/json"})
        assert "malformed JSON" in tei_error(response, 400, "Validation")


def test_backend_failure_is_424_backend(reranker, monkeypatch):
    def broken(encoded, **kwargs):
        raise RuntimeError("device lost")

    with running_server(reranker) as (url, state):
        monkeypatch.setattr(state.scheduler, "_score", broken)
        for route in TEI_ROUTES:
            message = tei_error(httpx.post(url + route, json={"query": "q", "texts": ["a"]}), 424, "Backend")
            assert "device lost" in message
        jina = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert jina.status_code == 500 and jina.json()["error_type"] == "backend"  # ours there


def test_overloaded_and_unhealthy(reranker):
    with running_server(reranker, max_concurrent_requests=1, body_timeout_s=30) as (url, state):
        held = start_upload(url, json.dumps({"query": "q", "texts": ["a"]}).encode(), sent=5)
        try:
            deadline = time.monotonic() + 30
            while httpx.get(url + "/ready").status_code == 200:  # until the upload holds the slot
                assert time.monotonic() < deadline, "the stalled upload never held the slot"
                time.sleep(0.05)
            tei_error(httpx.post(url + "/", json={"query": "q", "texts": ["a"]}), 429, "Overloaded")
        finally:
            held.close()
        state.draining = True
        try:
            tei_error(httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]}), 503, "Unhealthy")
        finally:
            state.draining = False


def test_stalled_upload_on_tei_route_is_validation(reranker):
    with running_server(reranker, body_timeout_s=0.5) as (url, _):
        sock = start_upload(url, json.dumps({"query": "q", "texts": ["a"]}).encode(), sent=5)
        try:
            status, _, body = read_response(sock)
        finally:
            sock.close()
        assert status == 408 and json.loads(body)["error_type"] == "Validation"


def test_info_has_tei_keys_beside_ours(server):
    url, _ = server
    info = httpx.get(url + "/info").json()
    assert info["model_id"] == info["model"] == info["served_model_name"] == "test-model"
    assert info["model_dtype"] == info["dtype"] == "float32"
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    assert info["max_batch_requests"] >= 1 and info["tokenization_workers"] >= 1
    assert info["max_client_batch_size"] == 4 and info["max_input_length"] == 64
    for key in ("max_concurrent_requests", "max_batch_tokens", "auto_truncate", "version", "model_sha"):
        assert key in info
    assert info["max_documents"] == 1000 and info["backends"] and info["alibi_scheme"]


def test_info_matches_its_schema_in_openapi(server):
    """TEI's generated clients parse /info with the Info schema: every key it requires is there,
    of its type, and the spec (also at TEI's /api-doc/openapi.json) names the operations as TEI's."""
    url, _ = server
    spec = httpx.get(url + "/api-doc/openapi.json").json()
    operation = spec["paths"]["/info"]["get"]
    assert operation["operationId"] == "get_model_info"
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    info = httpx.get(url + "/info").json()
    kinds = {"string": str, "integer": int, "boolean": bool, "object": dict}
    for key in schema["required"]:
        spec_type = schema["properties"][key].get("type")
        if spec_type is not None:
            assert isinstance(info[key], kinds[spec_type]), key
    ids = {path: ops[m]["operationId"] for path, ops in spec["paths"].items() for m in ops}
    assert ids["/rerank"] == "rerank" and ids["/health"] == "health" and ids["/metrics"] == "metrics"


def test_tei_metric_names_beside_ours(server):
    """A TEI dashboard reads te_request_count / _success / _failure (counters without a _total
    suffix, as TEI writes them), te_request_duration and the batch and queue metrics."""
    url, _ = server
    httpx.post(url + "/rerank", json={"query": "q", "texts": ["a", "b"]}).raise_for_status()
    httpx.post(url + "/rerank", json={"query": "", "texts": ["a"]})
    text = httpx.get(url + "/metrics").text
    lines = text.splitlines()

    def value(sample: str) -> float:
        return float(next(line for line in lines if line.startswith(sample + " ")).split()[-1])

    assert value('te_request_count{method="rerank"}') >= 2
    assert value('te_request_success{method="rerank"}') >= 1
    assert value('te_request_failure{err="empty"}') >= 1
    assert "# TYPE te_request_count counter" in lines
    for name in ("te_request_duration_count", "te_request_input_length_count", "te_batch_next_size_count"):
        assert value(name) >= 1, name
    assert any(line.startswith("te_queue_size ") for line in lines)
    assert any(line.startswith("turborank_requests_total") for line in lines)
