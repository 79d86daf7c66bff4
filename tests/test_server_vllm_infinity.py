"""vLLM's and infinity's contracts over raw HTTP (their client packages are a GPU server and a
client pinned to an old httpx), and OpenAI's SDK on /v1/models: the request bodies their clients
send, the fields those clients read back, happy path and error path; one path (/rerank) serving
TEI's and their dialects, told apart by the body."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_thread import running_server  # noqa: E402
from turborank import Reranker  # noqa: E402

QUERY = "what is alibi"
DOCS = ["a linear bias on attention scores", "a cooking recipe", "attention with linear biases", "tea"]


@pytest.fixture(scope="module")
def server(reranker):
    with running_server(reranker, max_input_length=64, max_documents=8) as s:
        yield s


def vllm_error(response: httpx.Response, status: int = 400) -> str:
    """vLLM's (and OpenAI's) error object, which its users' code reads."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status
    assert error["type"].endswith("Error")
    return error["message"]


def best_first(reranker: Reranker, documents: list[str], **options) -> list[tuple[int, float]]:
    scores = reranker.predict([(QUERY, d) for d in documents], **options)
    return sorted(enumerate(scores), key=lambda item: -item[1])


# vLLM


@pytest.mark.parametrize("route", ["/score", "/v1/score"])
def test_vllm_score_one_to_many_in_request_order(server, reranker, route):
    url, _ = server
    body = httpx.post(url + route, json={"model": "whatever", "text_1": QUERY, "text_2": DOCS}).json()
    assert body["object"] == "list" and body["id"].startswith("score-") and body["model"]
    assert [d["index"] for d in body["data"]] == list(range(len(DOCS)))
    assert {d["object"] for d in body["data"]} == {"score"}
    want = reranker.predict([(QUERY, d) for d in DOCS])
    assert [d["score"] for d in body["data"]] == pytest.approx(list(want), abs=1e-6)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_vllm_score_pairs_one_to_one_and_n_to_n(server, reranker):
    url, _ = server
    one = httpx.post(url + "/score", json={"text_1": QUERY, "text_2": DOCS[0]}).json()
    assert len(one["data"]) == 1
    assert one["data"][0]["score"] == pytest.approx(reranker.compute_score((QUERY, DOCS[0])), abs=1e-6)
    queries = ["alibi", "recipes", "alibi", "drinks"]
    many = httpx.post(url + "/score", json={"text_1": queries, "text_2": DOCS}).json()
    want = reranker.predict(list(zip(queries, DOCS, strict=True)))
    assert [d["score"] for d in many["data"]] == pytest.approx(list(want), abs=1e-6)


def test_vllm_use_activation_false_is_the_logits(server, reranker):
    url, _ = server
    logits = reranker.predict([(QUERY, d) for d in DOCS], activation=False)
    for flag in ("use_activation", "activation", "softmax"):
        body = httpx.post(url + "/score", json={"text_1": QUERY, "text_2": DOCS, flag: False}).json()
        assert [d["score"] for d in body["data"]] == pytest.approx(list(logits), abs=1e-5), flag
    ranked = httpx.post(url + "/rerank", json={"query": QUERY, "documents": DOCS, "use_activation": False})
    assert max(r["relevance_score"] for r in ranked.json()["results"]) == pytest.approx(max(logits), abs=1e-5)


@pytest.mark.parametrize(
    "body,message",
    [
        ({"text_1": ["a", "b"], "text_2": ["x", "y", "z"]}, "text_1 has 2 texts and text_2 3"),
        ({"text_1": "q", "text_2": []}, "text_2 is empty"),
        ({"text_1": "", "text_2": ["x"]}, "text_1 is empty"),
        ({"text_1": ["q", " "], "text_2": ["x", "y"]}, "text_1.1 is empty"),  # N:N names the item
        ({"text_1": "q"}, "text_2: Field required"),
        ({"text_1": "q", "text_2": ["word " * 100]}, "text_2.0: the pair is longer than max_input_length=64"),
        (
            {"text_1": "q", "text_2": ["x"], "truncate_prompt_tokens": 65},
            "truncate_prompt_tokens: 65 is outside",
        ),
        ({"text_1": "q", "text_2": ["x"] * 9}, "9 items exceed max_documents=8"),
    ],
)
def test_vllm_score_errors_are_vllm_error_objects(server, body, message):
    url, _ = server
    assert message in vllm_error(httpx.post(url + "/v1/score", json=body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"text_1": "q", "text_2": 3},
            "text_2: Input should be a valid string; text_2: Input should be a valid list",
        ),
        ({"text_1": "q", "text_2": [None]}, "text_2.0: Input should be a valid string"),
        ({"text_1": 5, "text_2": ["x"]}, "text_1: Input should be a valid string"),
    ],
)
def test_a_field_of_either_shape_is_named_without_pydantic_tags(server, body, message):
    """A string-or-list field's problems name the field and the item, not pydantic's union tags."""
    url, _ = server
    said = vllm_error(httpx.post(url + "/v1/score", json=body))
    assert message in said and "[" not in said and "function-" not in said, said


@pytest.mark.filterwarnings("ignore:.*were truncated")
def test_vllm_truncate_prompt_tokens_cuts_each_pair(server, reranker):
    url, _ = server
    long_doc = "attention with linear biases " * 40
    for tokens, length in ((-1, 64), (20, 20)):
        body = httpx.post(
            url + "/score", json={"text_1": QUERY, "text_2": [long_doc], "truncate_prompt_tokens": tokens}
        ).json()
        want = reranker.compute_score((QUERY, long_doc), max_length=length)
        assert body["data"][0]["score"] == pytest.approx(want, abs=1e-6)
        assert body["usage"]["total_tokens"] == length


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_vllm_rerank_body_and_answer(server, reranker, route):
    """vLLM's rerank: top_n 0 is every document, each result carries its document's text."""
    url, _ = server
    body = httpx.post(url + route, json={"model": "m", "query": QUERY, "documents": DOCS, "top_n": 0}).json()
    want = best_first(reranker, DOCS)
    assert [r["index"] for r in body["results"]] == [i for i, _ in want]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([s for _, s in want], abs=1e-6)
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i, _ in want]
    assert body["id"] and body["model"] and body["usage"]["total_tokens"] > 0
    top = httpx.post(url + route, json={"query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert [r["index"] for r in top["results"]] == [i for i, _ in want[:2]]


def test_vllm_rerank_refuses_long_pairs_unless_told_to_truncate(server):
    url, _ = server
    body = {"query": QUERY, "documents": ["word " * 100]}
    assert "the pair is longer than max_input_length=64" in vllm_error(httpx.post(url + "/rerank", json=body))
    cut = httpx.post(url + "/rerank", json={**body, "truncate_prompt_tokens": -1})
    assert cut.status_code == 200 and cut.json()["usage"]["total_tokens"] == 64


def test_vllm_rerank_errors_in_its_shape(server):
    url, _ = server
    response = httpx.post(url + "/rerank", json={"query": QUERY, "documents": "not a list"})
    assert "documents" in vllm_error(response)
    on_v1 = httpx.post(url + "/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": -1})
    assert on_v1.status_code == 422 and "top_n" in on_v1.json()["detail"]  # Jina's body: Jina's shape
    vllm_v1 = {"query": QUERY, "documents": [1], "truncate_prompt_tokens": -1}
    assert "documents" in vllm_error(httpx.post(url + "/v1/rerank", json=vllm_v1))
    vllm_v2 = {"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": 100000}
    assert "truncate_prompt_tokens: 100000 is outside" in vllm_error(
        httpx.post(url + "/v2/rerank", json=vllm_v2)
    )
    cohere_v2 = httpx.post(url + "/v2/rerank", json={"query": QUERY, "documents": [1]})
    assert cohere_v2.status_code == 422 and "Cohere v2 takes strings" in cohere_v2.json()["message"]


def test_v2_rerank_returns_documents_unless_cohere_sdk(server):
    url, _ = server
    plain = httpx.post(url + "/v2/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in plain["results"])
    sdk = httpx.post(
        url + "/v2/rerank", json={"query": QUERY, "documents": DOCS}, headers={"X-Fern-SDK-Name": "cohere"}
    ).json()
    assert all("document" not in r for r in sdk["results"])


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Fern-SDK-Name": "cohere-ai", "User-Agent": "cohere-ai/8.1.0"},  # TypeScript SDK (npm)
        {"User-Agent": "cohere/5.13.0"},  # Python SDK, by its user agent alone
    ],
)
def test_cohere_sdks_get_no_documents_by_default(server, headers):
    url, _ = server
    for route in ("/v1/rerank", "/v2/rerank"):
        answer = httpx.post(url + route, json={"query": QUERY, "documents": DOCS}, headers=headers).json()
        assert all("document" not in r for r in answer["results"]), (route, headers)


def test_a_strict_server_takes_a_document_max_tokens_per_doc_cut_to_fit(reranker):
    """With --strict-input-length a pair over max_input_length is refused; a document cut by
    Cohere's max_tokens_per_doc is not over it, and the pair is scored."""
    with running_server(reranker, max_input_length=64, strict_input_length=True) as (url, _):
        document = "alpha beta gamma delta epsilon zeta " * 3
        body = {"query": "q", "documents": [document], "max_tokens_per_doc": 5}
        cut = httpx.post(url + "/v2/rerank", json=body)
        assert cut.status_code == 200, cut.text
        assert cut.json()["usage"]["truncated_documents"] == 1
        long = httpx.post(url + "/v2/rerank", json={"query": "q", "documents": [document * 20]})
        assert long.status_code == 422 and "longer than max_input_length=64" in long.text


def test_the_truncation_warning_names_the_limit_that_applied(server):
    """vLLM's truncate_prompt_tokens cut the pairs, not max_input_length: the warning says so."""
    url, _ = server
    body = {"query": QUERY, "documents": ["alpha beta gamma delta " * 20], "truncate_prompt_tokens": 8}
    for route in ("/v1/rerank", "/v2/rerank"):
        warnings = httpx.post(url + route, json=body).json()["meta"]["warnings"]
        assert any("truncate_prompt_tokens=8 tokens" in w for w in warnings), (route, warnings)
        assert not any("max_input_length" in w for w in warnings), (route, warnings)


def test_v1_models_through_openai_sdk(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    models = client.models.list().data
    assert len(models) == 1 and models[0].owned_by == "turborank"
    info = httpx.get(url + "/info").json()
    assert models[0].id == info["model_id"]
    assert httpx.get(url + "/v1/models").json()["data"][0]["max_model_len"] == 64
    # models.retrieve: the listed model, and an unknown id as OpenAI's NotFoundError with the message.
    assert client.models.retrieve(models[0].id).id == models[0].id
    with pytest.raises(openai.NotFoundError, match="the one served is"):
        client.models.retrieve("some-other-model")


def test_a_trailing_slash_serves_a_rerank_post_and_never_redirects(server):
    """httpx-based clients (Haystack's Jina ranker) do not follow an empty 307: it read as a JSON
    error. A rerank POST is served with one trailing slash; elsewhere a 404 names the route."""
    url, _ = server
    body = {"query": QUERY, "documents": DOCS}
    for route in ("/v1/rerank", "/v2/rerank", "/rerank"):
        plain, slashed = httpx.post(url + route, json=body), httpx.post(url + route + "/", json=body)
        assert slashed.status_code == 200 and slashed.json()["results"] == plain.json()["results"]
    health = httpx.get(url + "/health/")
    assert health.status_code == 404 and "the route is /health, without the trailing slash" in health.text


# infinity


def infinity_rerank(response: httpx.Response) -> list[dict]:
    """What infinity's generated client reads from a rerank answer (it raises otherwise)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "rerank"  # parsed as an enum of one value
    assert isinstance(body["model"], str) and isinstance(body["created"], int) and body["id"]
    assert {"prompt_tokens", "total_tokens"} <= set(body["usage"])
    for result in body["results"]:
        assert isinstance(result["relevance_score"], float) and isinstance(result["index"], int)
        assert result.get("document") is None or isinstance(result["document"], str)
    return body["results"]


@pytest.mark.parametrize("route", ["/rerank", "/v1/rerank"])
def test_infinity_rerank(server, reranker, route):
    url, _ = server
    # The body infinity's client sends: its defaults always go out.
    request = {
        "query": QUERY,
        "documents": DOCS,
        "return_documents": False,
        "raw_scores": False,
        "model": "m",
    }
    results = infinity_rerank(httpx.post(url + route, json=request))
    want = best_first(reranker, DOCS)
    assert [r["index"] for r in results] == [i for i, _ in want]
    assert all(r.get("document") is None for r in results)
    with_text = infinity_rerank(
        httpx.post(url + route, json={**request, "return_documents": True, "top_n": 2})
    )
    assert [r["document"] for r in with_text] == [DOCS[i] for i, _ in want[:2]]
    raw = infinity_rerank(httpx.post(url + route, json={**request, "raw_scores": True}))
    logits = sorted(reranker.predict([(QUERY, d) for d in DOCS], activation=False), reverse=True)
    assert [r["relevance_score"] for r in raw] == pytest.approx(logits, abs=1e-5)


def test_infinity_truncates_long_documents(server):
    url, _ = server
    request = {"query": QUERY, "documents": ["word " * 100], "return_documents": False}
    assert infinity_rerank(httpx.post(url + "/rerank", json=request))


def test_infinity_models(server):
    url, _ = server
    body = httpx.get(url + "/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["object"] == "model" and isinstance(card["stats"], dict) and card["id"]
    assert "owned_by" not in card  # infinity's client accepts only its own name there


def test_infinity_errors_parse_as_fastapi_validation(server):
    url, _ = server
    response = httpx.post(url + "/rerank", json={"query": QUERY, "documents": [3], "raw_scores": False})
    assert response.status_code == 422
    body = response.json()
    assert "documents" in body["error"]["message"]
    assert all({"loc", "msg", "type"} <= set(item) for item in body["detail"])


# One path, two dialects


def test_rerank_path_tells_tei_from_documents_bodies(server):
    url, _ = server
    tei = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert isinstance(tei, list) and {"index", "score"} <= set(tei[0])
    documents = httpx.post(url + "/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert isinstance(documents, dict) and "results" in documents
    assert [r["index"] for r in documents["results"]] == [r["index"] for r in tei]
    both = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS, "documents": DOCS})
    assert both.status_code == 422 and "not both" in both.json()["error"]
    assert both.json()["error_type"] == "Validation"  # TEI's shape: neither dialect was chosen
    tei_error = httpx.post(url + "/rerank", json={"query": QUERY, "texts": [1]}).json()
    assert tei_error["error_type"] == "Validation" and isinstance(tei_error["error"], str)


def test_openapi_documents_both_bodies_of_the_shared_path(server):
    url, _ = server
    spec = httpx.get(url + "/openapi.json").json()
    schema = spec["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    refs = {item["$ref"].rsplit("/", 1)[1] for item in schema["oneOf"]}
    assert refs == {"TEIRerankRequest", "DocumentsRerankRequest"}
    for path in ("/score", "/v1/score", "/v1/models", "/models"):
        assert path in spec["paths"]


def test_model_lists_need_the_api_key_and_say_so_in_each_shape(reranker):
    with running_server(reranker, api_key="secret") as (url, _):
        for path in ("/v1/models", "/models"):
            response = httpx.get(url + path)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "UnauthorizedError", path
        assert httpx.get(url + "/models").json()["detail"][0]["type"] == "unauthorized"  # infinity's
        authorized = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer secret"})
        assert authorized.status_code == 200 and authorized.json()["data"][0]["object"] == "model"
        score = httpx.post(url + "/score", json={"text_1": "q", "text_2": ["d"]})
        assert "Bearer" in vllm_error(score, 401)
