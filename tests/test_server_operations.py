"""What an operator relies on, through one real `turborank serve --api-key ... --json-logs` process:
the API key on the right routes, a startup line and one access-log line per request (JSON lines),
/openapi.json naming every request body, and a /docs page that loads nothing from outside."""

from __future__ import annotations

import json
import re
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_process import serve_process  # noqa: E402

API_KEY = "operations-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(small_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("operations") / "server.log"
    options = ("--api-key", API_KEY, "--json-logs", "--max-input-length", "64", "--max-documents", "50")
    with serve_process(small_ckpt, log, *options) as (_, url):
        yield url, log


def log_records(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def access_record(log, request_id: str) -> dict:
    """The access-log record of a request; it is written once the response has gone."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            r for r in log_records(log) if r["logger"] == "turborank.access" and r["request_id"] == request_id
        ]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)


# --- --api-key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route,body,shape",
    [
        ("/v1/rerank", {"query": "q", "documents": ["a"]}, "jina_cohere"),
        ("/v2/rerank", {"query": "q", "documents": ["a"]}, "jina_cohere"),
        ("/rerank", {"query": "q", "texts": ["a"]}, "tei"),
        ("/", {"query": "q", "texts": ["a"]}, "tei"),
    ],
)
def test_api_key_guards_the_rerank_routes(server, route, body, shape):
    url, _ = server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        refused = httpx.post(url + route, json=body, headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        payload = refused.json()
        assert "missing or wrong API key" in payload["error"]
        if shape == "jina_cohere":
            assert payload["detail"] == payload["error"] and payload["error_type"] == "unauthorized"
        else:
            assert payload["error_type"] == "Validation"  # TEI's names have no other for it
    assert httpx.post(url + route, json=body, headers=AUTH).status_code == 200
    assert (
        httpx.post(url + route, json=body, headers={"authorization": f"bearer {API_KEY}"}).status_code == 200
    )


def test_probes_metrics_and_docs_stay_open_info_does_not(server):
    url, _ = server
    for route in ("/health", "/ready", "/metrics", "/", "/openapi.json", "/docs"):
        assert httpx.get(url + route).status_code == 200, route
    assert httpx.get(url + "/info").status_code == 401
    assert httpx.get(url + "/info", headers=AUTH).json()["max_documents"] == 50


# --- logs -----------------------------------------------------------------------------------------


def test_startup_line_names_model_device_dtype_backends_alibi_and_limits(server, small_ckpt):
    _, log = server
    (startup,) = [r for r in log_records(log) if r["message"].startswith("turborank ")]
    assert (
        startup["model"] == str(small_ckpt) and startup["device"] == "cpu" and startup["dtype"] == "float32"
    )
    assert startup["backends"] and startup["alibi_scheme"] == "jina-reranker-v1"
    assert startup["max_input_length"] == 64 and startup["max_documents"] == 50
    assert startup["api_key"] is True and API_KEY not in json.dumps(startup)
    for word in ("cpu", "float32", "jina-reranker-v1", "max_input_length=64", "max_documents=50"):
        assert word in startup["message"]


def test_one_access_line_per_request_with_pairs_tokens_and_times(server):
    url, log = server
    response = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a", "b c"]}, headers=AUTH)
    record = access_record(log, response.headers["x-request-id"])
    assert record["route"] == "/v1/rerank" and record["method"] == "POST" and record["status"] == 200
    assert record["pairs"] == 2 and record["tokens"] == response.json()["usage"]["total_tokens"]
    assert record["queue_ms"] >= 0 and record["total_ms"] >= record["queue_ms"]
    refused = httpx.post(url + "/rerank", json={"query": "", "texts": ["a"]}, headers=AUTH)
    record = access_record(log, refused.headers["x-request-id"])
    assert record["status"] == 400 and record["pairs"] is None and record["queue_ms"] is None
    health = httpx.get(url + "/health")
    assert access_record(log, health.headers["x-request-id"])["status"] == 200


def test_a_path_cannot_forge_access_log_fields_or_break_a_json_line(server):
    """The route is logged as sent, percent-encoded: a decoded %20 would split it into fields that
    read as another request's status and id. U+2028 and C1 controls in a JSON record are escaped,
    so the record stays one line for every reader (str.splitlines splits at U+2028)."""
    url, log = server
    forged = "/v1/rerank%20200%20pairs=1000%20id=victim%20"
    response = httpx.get(url + forged, headers={"x-request-id": "forger"})
    record = access_record(log, "forger")
    assert record["route"] == forged and record["status"] == response.status_code == 404
    httpx.get(url + "/a%E2%80%A8b%C2%9Bc", headers={"x-request-id": "separator"})
    assert access_record(log, "separator")["route"] == "/a%E2%80%A8b%C2%9Bc"


def test_a_json_log_record_holding_line_separators_and_controls_stays_one_line():
    import logging

    from turborank.serving.logs import JsonLinesFormatter

    text = "a\u2028b\u2029c\x85d\x9be\x7ff\nend"
    record = logging.LogRecord("turborank.serving", logging.INFO, __file__, 1, "%s", (text,), None)
    line = JsonLinesFormatter().format(record)
    assert len(line.splitlines()) == 1 and all(c not in line for c in "\u2028\u2029\x85\x9b\x7f")
    assert json.loads(line)["message"] == text


def test_every_line_is_json(server):
    _, log = server
    records = log_records(log)  # raises on a line that is not JSON
    assert {"uvicorn.error", "turborank.serving", "turborank.access"} <= {r["logger"] for r in records}
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


# --- OpenAPI and /docs ----------------------------------------------------------------------------


def test_openapi_has_a_schema_for_every_request_body(server):
    url, _ = server
    spec = httpx.get(url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    posts = {path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops}
    assert set(posts) == {"/v1/rerank", "/v2/rerank", "/rerank", "/", "/score", "/v1/score"}
    for path, operation in posts.items():
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        for reference in [item["$ref"] for item in body.get("oneOf", [body])]:
            schema = schemas[reference.rsplit("/", 1)[1]]
            wanted = {"text_1", "text_2"} if path.endswith("/score") else {"query"}
            assert wanted <= set(schema["required"]), path
        assert operation["responses"]["200"]["content"]["application/json"]["schema"], path
        client_error = "400" if path.endswith("/score") else "422"  # vLLM answers 400 for both
        assert client_error in operation["responses"] and operation["security"] == [{"bearer": []}]
    assert {"documents", "rank_fields", "top_n", "return_documents"} <= set(
        schemas["JinaRerankRequest"]["properties"]
    )
    assert "max_tokens_per_doc" in schemas["CohereV2RerankRequest"]["properties"]
    assert {"texts", "truncate", "raw_scores"} <= set(schemas["TEIRerankRequest"]["properties"])
    tei_error = schemas["TEIError"]["properties"]["error_type"]
    assert set(tei_error["enum"]) == {
        "Unhealthy",
        "Backend",
        "Overloaded",
        "Validation",
        "Tokenizer",
        "Empty",
    }


def test_docs_page_loads_nothing_from_outside(server):
    url, _ = server
    page = httpx.get(url + "/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    addresses = re.findall(r"""(?:src|href|url)\s*[:=]\s*["']([^"']*)["']""", page.text)
    assert addresses and all(a.startswith("/") for a in addresses), addresses
    for address in addresses:
        assert httpx.get(url + address).status_code == 200, address
    assert '"validatorUrl": null' in page.text  # Swagger UI's default fetches a badge online
