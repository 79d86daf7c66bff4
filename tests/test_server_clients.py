"""Contract tests: the client libraries people already run, from PyPI, against one `turborank serve`
process (synthetic checkpoint, loopback, an API key as the hosted APIs ask for one).

Cohere's SDK (``ClientV2.rerank`` on /v2/rerank, ``Client.rerank`` on /v1/rerank) and Haystack's
``JinaRanker`` (Jina's shape; LlamaIndex's and LangChain's Jina rerankers read the same fields and
raise ``resp["detail"]`` the same way): happy path, 40 documents, a long document, and errors that
surface as each library's exception carrying our message.
"""

from __future__ import annotations

import os

import pytest

cohere = pytest.importorskip("cohere")
pytest.importorskip("fastapi")

from tests.serve_process import serve_process  # noqa: E402
from turborank import Reranker  # noqa: E402

API_KEY = "contract-test-key"
MAX_INPUT_LENGTH = 128
QUERY = "what is a linear bias in attention"
DOCUMENTS = [
    "ALiBi adds a linear bias to attention scores",
    "a recipe for bread with flour and water",
    "attention with linear biases extrapolates to longer inputs",
]
LONG_DOCUMENT = "attention bias words " * 2_000  # far over MAX_INPUT_LENGTH tokens


@pytest.fixture(scope="module")
def server(small_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("clients") / "server.log"
    options = ("--api-key", API_KEY, "--max-input-length", str(MAX_INPUT_LENGTH))
    with serve_process(small_ckpt, log, *options) as (_, url):
        yield url


def expected(reranker: Reranker, documents: list[str]) -> list[tuple[int, float]]:
    """(index, score) best first, as the library gives them with the server's length limit."""
    ranked = reranker.rank(QUERY, documents, max_length=MAX_INPUT_LENGTH)
    return [(item["corpus_id"], item["score"]) for item in ranked]


def got(results) -> list[tuple[int, float]]:
    return [(r.index, r.relevance_score) for r in results]


def assert_same_ranking(actual: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in actual] == [i for i, _ in want]
    assert [s for _, s in actual] == pytest.approx([s for _, s in want], abs=1e-5)


# --- Cohere v2: ClientV2.rerank -> POST /v2/rerank ----------------------------------------------------


@pytest.fixture(scope="module")
def co_v2(server):
    return cohere.ClientV2(api_key=API_KEY, base_url=server)


def test_cohere_v2_happy_path(co_v2, reranker):
    response = co_v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS, top_n=2)
    assert_same_ranking(got(response.results), expected(reranker, DOCUMENTS)[:2])
    assert response.id and response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1
    assert response.model_extra["model"] != "rerank-v3.5"  # our model's name, not the client's


def test_cohere_v2_forty_documents(co_v2, reranker):
    documents = [f"{DOCUMENTS[i % 3]} number {i}" for i in range(40)]
    response = co_v2.rerank(model="rerank-v3.5", query=QUERY, documents=documents)
    assert_same_ranking(got(response.results), expected(reranker, documents))


def test_cohere_v2_long_document_is_truncated_and_counted(co_v2, reranker):
    response = co_v2.rerank(model="rerank-v3.5", query=QUERY, documents=[LONG_DOCUMENT, DOCUMENTS[0]])
    assert_same_ranking(got(response.results), expected(reranker, [LONG_DOCUMENT, DOCUMENTS[0]]))
    assert response.model_extra["usage"]["truncated_documents"] == 1
    assert "1 of 2 documents were truncated" in response.meta.warnings[0]


def test_cohere_v2_max_tokens_per_doc_cuts_the_document_first(co_v2, reranker):
    response = co_v2.rerank(model="m", query=QUERY, documents=[DOCUMENTS[2]], max_tokens_per_doc=4)
    encoded, _ = reranker.encode([(QUERY, DOCUMENTS[2])], MAX_INPUT_LENGTH, warn=False, max_document_tokens=4)
    want = float(reranker.logits(encoded).sigmoid()[0])
    assert response.results[0].relevance_score == pytest.approx(want, abs=1e-5)
    assert response.meta.tokens.input_tokens == len(encoded.input_ids[0])
    assert response.model_extra["usage"]["truncated_documents"] == 1
    assert response.meta.warnings == [
        f"1 of 1 documents were truncated to max_tokens_per_doc=4 tokens or to fit "
        f"max_input_length={MAX_INPUT_LENGTH} tokens with the query"
    ]


def test_cohere_v2_errors_are_typed_exceptions_with_our_message(co_v2, server):
    with pytest.raises(cohere.UnprocessableEntityError) as caught:
        co_v2.rerank(model="m", query=QUERY, documents=["fine", 3])  # type: ignore[list-item]
    assert "documents: item 1: expected a string, got int" in caught.value.body["message"]
    with pytest.raises(cohere.BadRequestError) as caught:
        co_v2.rerank(model="m", query=" ", documents=["a"])
    assert caught.value.body["detail"] == "query is empty"
    with pytest.raises(cohere.UnprocessableEntityError) as caught:
        co_v2.rerank(model="m", query=QUERY, documents=["a"], relevant_spans={"mode": "enabled"})
    assert "relevant_spans" in caught.value.body["message"]
    with pytest.raises(cohere.UnauthorizedError) as caught:
        cohere.ClientV2(api_key="wrong", base_url=server).rerank(model="m", query=QUERY, documents=["a"])
    assert "missing or wrong API key" in caught.value.body["message"]


# --- Cohere v1: Client.rerank -> POST /v1/rerank ------------------------------------------------------


@pytest.fixture(scope="module")
def co_v1(server):
    return cohere.Client(api_key=API_KEY, base_url=server)


def test_cohere_v1_happy_path_returns_no_documents_unless_asked(co_v1, reranker):
    response = co_v1.rerank(query=QUERY, documents=DOCUMENTS)
    assert_same_ranking(got(response.results), expected(reranker, DOCUMENTS))
    assert all(r.document is None for r in response.results)  # Cohere's default
    assert response.meta.api_version.version == "1"


def test_cohere_v1_objects_come_back_whole(co_v1):
    documents = [{"text": text, "id": f"doc-{i}", "source": "wiki"} for i, text in enumerate(DOCUMENTS)]
    response = co_v1.rerank(query=QUERY, documents=documents, return_documents=True, top_n=2)
    for result in response.results:
        assert result.document.model_dump() == documents[result.index]


def test_cohere_v1_rank_fields(co_v1, reranker):
    documents = [{"title": "ALiBi", "body": DOCUMENTS[0]}, {"title": "Bread", "body": DOCUMENTS[1]}]
    response = co_v1.rerank(query=QUERY, documents=documents, rank_fields=["title", "body"])
    texts = [f"title: {d['title']}\nbody: {d['body']}" for d in documents]
    assert_same_ranking(got(response.results), expected(reranker, texts))


def test_cohere_v1_forty_documents_and_a_long_one(co_v1, reranker):
    documents = [LONG_DOCUMENT] + [f"{DOCUMENTS[i % 3]} number {i}" for i in range(39)]
    response = co_v1.rerank(query=QUERY, documents=documents, max_chunks_per_doc=10)
    assert_same_ranking(got(response.results), expected(reranker, documents))
    assert response.meta.warnings == [
        f"1 of 40 documents were truncated to fit max_input_length={MAX_INPUT_LENGTH} tokens with the query",
        "max_chunks_per_doc: each document is scored as one window of max_input_length tokens",
    ]


def test_cohere_v1_error_is_a_typed_exception_with_our_message(co_v1):
    with pytest.raises(cohere.UnprocessableEntityError) as caught:
        co_v1.rerank(query=QUERY, documents=[{"title": "no text field"}])
    assert 'documents: item 0: expected a string or an object with a string "text" field' in str(caught.value)


# --- Jina's shape: Haystack's JinaRanker -> POST /v1/rerank ------------------------------------------


@pytest.fixture(scope="module")
def jina_ranker(server):
    os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # read when haystack is imported
    jina = pytest.importorskip("haystack_integrations.components.rankers.jina")
    from haystack.utils import Secret

    def make(key: str = API_KEY, **options):
        return jina.JinaRanker(api_key=Secret.from_token(key), base_url=server + "/v1/rerank", **options)

    return make


def test_jina_ranker_happy_path_and_forty_documents(jina_ranker, reranker):
    from haystack import Document

    for texts in (DOCUMENTS, [LONG_DOCUMENT] + [f"{DOCUMENTS[i % 3]} {i}" for i in range(39)]):
        result = jina_ranker().run(query=QUERY, documents=[Document(content=t) for t in texts])
        ranked = [(texts.index(d.content), d.score) for d in result["documents"]]
        assert_same_ranking(ranked, expected(reranker, texts))
        assert result["meta"]["usage"]["total_tokens"] > 0


def test_jina_ranker_errors_raise_our_message_not_key_error(jina_ranker):
    from haystack import Document

    with pytest.raises(RuntimeError, match="^query is empty$"):
        jina_ranker().run(query="", documents=[Document(content="a")])
    with pytest.raises(RuntimeError, match="documents: 1001 items exceed max_documents=1000"):
        jina_ranker().run(query=QUERY, documents=[Document(content="a")] * 1001)
    with pytest.raises(RuntimeError, match="missing or wrong API key"):
        jina_ranker(key="wrong").run(query=QUERY, documents=[Document(content="a")])
