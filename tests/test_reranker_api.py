from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import sample_pairs
from turborank import Reranker
from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY
from turborank.ops import OP_NAMES
from turborank.packing import plan_batches


def test_defaults_on_cpu(reranker):
    assert reranker.device.type == "cpu" and reranker.dtype == torch.float32
    assert reranker.max_length == 8192
    assert reranker.describe()["backends"] == dict.fromkeys(OP_NAMES, "torch")


def test_describe_reports_the_spin_count_libgomp_read(reranker, monkeypatch):
    """libgomp reads GOMP_SPINCOUNT once, when torch loads it: describe() read the environment at
    call time, so a value set afterwards (in effect nowhere) showed as the one in effect."""
    before = reranker.describe()["openmp_spin_count"]
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    assert reranker.describe()["openmp_spin_count"] == before != "123"


def test_compute_score_single_pair_is_a_float(reranker):
    score = reranker.compute_score((MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS[0]))
    assert isinstance(score, float) and 0 < score < 1
    assert reranker.compute_score([[MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS[0]]]) == score
    many = reranker.compute_score([(MODEL_CARD_QUERY, d) for d in MODEL_CARD_DOCUMENTS])
    assert isinstance(many, list) and len(many) == 10 and many[0] == pytest.approx(score, abs=1e-6)


def test_predict_activation(reranker):
    pairs = sample_pairs(5, seed=21)
    logits = reranker.predict(pairs, activation=False)
    scores = reranker.predict(pairs)
    assert scores == pytest.approx([1 / (1 + math.exp(-x)) for x in logits], abs=1e-7)
    assert any(x < 0 for x in logits) or any(x > 1 for x in logits)  # raw logits, not probabilities


def test_rank_order_and_ids(reranker):
    docs = MODEL_CARD_DOCUMENTS
    scores = reranker.predict([(MODEL_CARD_QUERY, d) for d in docs])
    ranked = reranker.rank(MODEL_CARD_QUERY, docs, return_documents=True)
    assert [r["score"] for r in ranked] == sorted(scores, reverse=True)
    for item in ranked:
        assert item["score"] == scores[item["corpus_id"]]
        assert item["text"] == docs[item["corpus_id"]]
    assert sorted(r["corpus_id"] for r in ranked) == list(range(len(docs)))
    top = reranker.rank(MODEL_CARD_QUERY, docs, top_k=3)
    assert top == [{"corpus_id": r["corpus_id"], "score": r["score"]} for r in ranked[:3]]


def test_rank_empty_documents(reranker):
    assert reranker.rank("query", []) == []
    assert reranker.predict([]) == []


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda r: r.rank("", ["doc"]), "query is empty"),
        (lambda r: r.rank("   ", ["doc"]), "query is empty"),
        (lambda r: r.rank(None, ["doc"]), "query must be a string"),
        (lambda r: r.rank("q", "a single string"), "documents must be a list"),
        (lambda r: r.rank("q", ["ok", 3]), "pair 1: document must be a string"),
        (lambda r: r.rank("q", ["ok"], top_k=0), "top_k must be a positive integer"),
        (lambda r: r.predict([("q",)]), "pair 0 is not a \\(query, document\\) pair"),
        (lambda r: r.predict("q"), "pairs must be a list"),
        (lambda r: r.predict([("q", "d"), ("", "d")]), "pair 1: query is empty"),
        (lambda r: r.predict([("q", "d")], batch_size=0), "batch_size must be a positive integer, got 0"),
        (lambda r: r.predict([("q", "d")], batch_size="8"), "batch_size must be a positive integer, got '8'"),
        (
            lambda r: r.predict([("q", "d")], batch_size=None),
            "batch_size must be a positive integer, got None",
        ),
        (lambda r: r.predict([("q", "d")], batch_size=1.5), "batch_size must be a positive integer, got 1.5"),
        (lambda r: r.predict([("q", "d")], max_batch_tokens=True), "max_batch_tokens must be a positive"),
        (lambda r: r.predict([("q", "d")], activation="no"), "activation must be True or False, got 'no'"),
        (lambda r: r.compute_score(("q", "d"), activation=0), "activation must be True or False, got 0"),
        (lambda r: r.rank("q", ["d"], return_documents="yes"), "return_documents must be True or False"),
        (
            lambda r: r.rank("q\ud800", ["d"]),
            "pair 0: the query contains a lone surrogate U\\+D800 at character 1",
        ),
        (lambda r: r.rank("q", ["d", "\udc80x"]), "pair 1: the document contains a lone surrogate U\\+DC80"),
        (lambda r: r.predict([("q", "d")], max_length=10**6), "outside the model's range"),
        (lambda r: r.predict([("q", "d")], long_doc="split"), "long_doc='split'"),
        (lambda r: r.predict([("q", "d")], long_doc="chunk", chunk_aggregate="sum"), "chunk_aggregate='sum'"),
        (
            lambda r: r.predict([("q", "d " * 20)], long_doc="chunk", max_length=16, chunk_overlap=12),
            "chunk overlap 12",
        ),
        # Checked whatever reaches the tokenizer: an empty list, or long_doc="chunk".
        (lambda r: r.predict([], max_length=1), "outside the model's range"),
        (lambda r: r.predict([], truncation="bogus"), "truncation='bogus'"),
        (lambda r: r.rank("q", [], long_doc="chunk", chunk_overlap=-1), "chunk overlap must be"),
        (lambda r: r.predict([("q", "d")], long_doc="chunk", truncation="bogus"), "truncation='bogus'"),
        (lambda r: r.predict([("q", "d")], chunk_overlap="x"), "chunk overlap must be a non-negative"),
        (lambda r: r.predict([("q", "d")], show_progress_bar="no"), "show_progress_bar must be True, False"),
        # encode, the low-level entry, checks its pairs as predict does.
        (lambda r: r.encode([("q", None)]), "pair 0: document must be a string, got NoneType"),
        (lambda r: r.encode([("q", "d", "x")]), "pair 0 is not a \\(query, document\\) pair"),
        (lambda r: r.encode("qd"), "pairs must be a list"),
        # Bytes are no list of texts (they were read as a list of ints, or b"" as no documents).
        (lambda r: r.rank("q", b"a document"), "documents must be a list of strings"),
        (lambda r: r.rank("q", b""), "documents must be a list of strings"),
        (lambda r: r.rank("q", bytearray(b"d")), "documents must be a list of strings"),
    ],
)
def test_bad_input_is_rejected_clearly(reranker, call, message):
    with pytest.raises(ValueError, match=message):
        call(reranker)


def test_encode_takes_a_bare_pair_as_a_list_of_one(reranker):
    """Not two texts tokenised each on its own, scored without the pair template."""
    assert reranker.encode(("ab", "cd"))[0].input_ids == reranker.encode([("ab", "cd")])[0].input_ids


def test_from_pretrained_argument_errors(small_ckpt, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="dtype 'float8' is not one of"):
        Reranker.from_pretrained(small_ckpt, device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="backend 'cuda' for op"):
        Reranker.from_pretrained(small_ckpt, device="cpu", backend="cuda")
    with pytest.raises(ValueError, match="backend 'triton' needs a CUDA device"):
        Reranker.from_pretrained(small_ckpt, device="cpu", backend="triton")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Reranker.from_pretrained(small_ckpt, device="cuda")
        with pytest.raises(ValueError, match="device cuda:0 requested but CUDA is not available"):
            Reranker.from_pretrained(small_ckpt, device=0)


@pytest.mark.parametrize(
    "device,message",
    [
        ("gpu", "device 'gpu' is not a device turborank runs on"),
        ("", "device '' is not a device turborank runs on"),
        ("cuda:x", "device 'cuda:x' is not a device"),
        (True, "device True: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a CUDA index"),
        (1.5, "device 1.5: expected"),
        (-1, "device -1: expected"),
        ("meta", "turborank runs on 'cpu' or 'cuda'"),
    ],
)
def test_bad_device_is_named(small_ckpt, device, message):
    with pytest.raises(ValueError, match=message):
        Reranker.from_pretrained(small_ckpt, device=device)


def test_half_dtypes_on_cpu_stay_close_to_fp32(small_ckpt, reranker):
    pairs = sample_pairs(6, seed=22, max_words=200)
    want = torch.tensor(reranker.predict(pairs, activation=False))
    for dtype in ("bfloat16", "float16"):
        half = Reranker.from_pretrained(small_ckpt, device="cpu", dtype=dtype)
        assert half.dtype == getattr(torch, dtype)
        got = torch.tensor(half.predict(pairs, activation=False))
        assert (got - want).abs().max() < 0.25  # a sanity bound; the tight rule lives in the kernel tests


def test_plan_batches_sorted_bounded_complete():
    lengths = [5, 300, 17, 8192, 40, 40, 1, 999]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= 1000
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert [8192] in [[lengths[i] for i in b] for b in batches]  # over budget: alone, never dropped


def test_load_refuses_a_tokenizer_with_ids_past_vocab_size(tmp_path, small_ckpt):
    """An id >= vocab_size has no embedding row: refused at load, naming both numbers, not found
    per request as an IndexError (PyTorch) or a NaN row (Triton)."""
    import shutil

    from turborank.testing import make_checkpoint

    target = make_checkpoint(tmp_path / "narrow", "small", vocab_size=1000)
    Reranker.from_pretrained(target, device="cpu")  # its own tokenizer fits
    shutil.copy(small_ckpt / "tokenizer.json", target / "tokenizer.json")  # ids up to ~1500
    with pytest.raises(
        ValueError, match=r"tokenizer.json: token ids reach 1\d\d\d, but .*config.json has vocab_size 1000"
    ):
        Reranker.from_pretrained(target, device="cpu")


def test_logits_are_an_ordinary_tensor_the_caller_may_write_to(small_ckpt):
    """The forward runs under inference mode; what ``logits`` hands back must not be an inference
    tensor (writing to one outside inference mode raises), whether it came in one batch or several."""
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu")
    for batch_size in (32, 1):
        encoded, _ = reranker.encode([("q", "a document"), ("q", "another one")])
        logits = reranker.logits(encoded, batch_size=batch_size)
        assert not logits.is_inference()
        logits[0] = 0.0


def _poisoned(reranker: Reranker, poison_length: int) -> None:
    """The model's forward gives NaN for every sequence of ``poison_length`` tokens."""
    real = reranker.module.forward

    def forward(input_ids, cu_seqlens, max_seqlen, token_type_ids=None):
        logits = real(input_ids, cu_seqlens, max_seqlen, token_type_ids).clone()
        logits[(cu_seqlens[1:] - cu_seqlens[:-1]) == poison_length] = float("nan")
        return logits

    reranker.module.forward = forward


def test_a_non_finite_score_is_an_error_naming_the_pair_in_input_order(small_ckpt):
    """Length-sorted batches put the poisoned pair elsewhere; the error names its input index."""
    from turborank.scoring_options import NonFiniteScoreError

    reranker = Reranker.from_pretrained(small_ckpt, device="cpu")
    pairs = [("q", "short"), ("q", "a much longer document " * 20), ("q", "mid length doc here")]
    poison = reranker.encode(pairs[2:])[0].lengths[0]
    _poisoned(reranker, poison)
    with pytest.raises(NonFiniteScoreError, match=r"non-finite score \(nan\) for pair 2 \(input order\)"):
        reranker.predict(pairs, batch_size=1)
    with pytest.raises(NonFiniteScoreError, match="for pair 2"):
        reranker.rank("q", [d for _, d in pairs])
    # Windows of a chunked document name the document, not the window.
    long_doc = [("q", "x " * 600)]
    encoded, owners = reranker.encode(long_doc, max_length=64, long_doc="chunk", chunk_overlap=16)
    _poisoned(reranker, encoded.lengths[-1])
    with pytest.raises(NonFiniteScoreError, match=r"for pair 0 \(input order\)"):
        reranker.logits(encoded, owners)


def test_the_finite_check_tells_an_overflowing_sum_from_a_non_finite_logit():
    """The check sums the logits first: finite logits whose sum overflows pass, and every
    non-finite value (NaN, +inf, -inf, +inf beside -inf) is named, whatever its neighbours."""
    from turborank.scoring_options import NonFiniteScoreError, check_finite

    check_finite(torch.empty(0))
    check_finite(torch.tensor([3e38, 3e38, -1.0]))  # the sum is inf, every logit finite
    cases = [  # (logits, the first non-finite one): NaN, inf, -inf, inf beside -inf
        ([1.0, float("nan"), 2.0], 1),
        ([0.5, 3e38, 3e38, float("inf")], 3),
        ([float("-inf"), 0.0], 0),
        ([0.0, float("inf"), float("-inf")], 1),
    ]
    for values, first in cases:
        with pytest.raises(NonFiniteScoreError, match=rf"for pair {first}\b"):
            check_finite(torch.tensor(values))
        owners = [7 + i for i in range(len(values))]
        with pytest.raises(NonFiniteScoreError, match=rf"for pair {owners[first]}\b"):
            check_finite(torch.tensor(values), owners)


def test_rank_takes_no_activation(reranker):
    with pytest.raises(TypeError, match="activation is an option of predict"):
        reranker.rank("q", ["a", "b"], activation=False)


def test_logits_refuse_owners_that_leave_a_pair_without_a_window(reranker):
    """A pair with no window would come back -inf (max) or NaN (mean), never a score."""
    encoded, owners = reranker.encode([("q", "a"), ("q", "b")], long_doc="chunk")
    for how in ("max", "mean"):
        with pytest.raises(ValueError, match="each of the 3 pairs at least one window"):
            reranker.logits(encoded, owners, n_pairs=3, chunk_aggregate=how)


def test_encode_and_logits_check_their_options_as_predict_does(reranker):
    """encode took a misspelt truncation (long_doc="chunk") or a negative overlap (long_doc=
    "truncate") silently, and logits ignored an n_pairs that did not match a one-per-pair batch."""
    with pytest.raises(ValueError, match="truncation='bogus'"):
        reranker.encode([("q", "d")], long_doc="chunk", truncation="bogus")
    with pytest.raises(ValueError, match="chunk overlap must be a non-negative integer, got -1"):
        reranker.encode([("q", "d")], chunk_overlap=-1)
    encoded, owners = reranker.encode([("q", "d")])
    with pytest.raises(ValueError, match="n_pairs=5 but 1 sequences were scored without owners"):
        reranker.logits(encoded, owners, n_pairs=5)
    assert reranker.logits(encoded, owners, n_pairs=1).shape == (1,)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"batch_size": "8"}, "batch_size must be a positive integer, got '8'"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"max_batch_tokens": None}, "max_batch_tokens must be a positive integer, got None"),
        ({"max_batch_tokens": 1.5}, "max_batch_tokens must be a positive integer, got 1.5"),
        ({"show_progress_bar": "no"}, "show_progress_bar must be True, False or None"),
        ({"n_pairs": 3.0}, "n_pairs must be a non-negative integer or None, got 3.0"),
        ({"chunk_aggregate": "sum"}, "chunk_aggregate='sum'"),
    ],
)
def test_logits_checks_its_options_as_predict_does(reranker, options, message):
    """logits is public (what encode returned goes in): a float batch size ran batches of 3, "no"
    showed a bar, "8" was a TypeError from inside the batching."""
    encoded, owners = reranker.encode(
        [("q", "ka lo mi"), ("q", "ne"), ("q", "ru sa ti vo")], long_doc="chunk"
    )
    with pytest.raises(ValueError, match=message):
        reranker.logits(encoded, owners, **options)
    assert reranker.logits(encoded, owners, n_pairs=np.int64(3), batch_size=np.int32(2)).shape == (3,)


_FORKED: dict = {}


def _score_in_a_forked_child(pairs: list) -> tuple[list[float], int]:
    return _FORKED["reranker"].predict(pairs), torch.get_num_threads()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_process_forked_after_loading_scores_on_one_thread(small_ckpt):
    """PyTorch's libgomp cannot start threads again in a forked child: a multiprocessing "fork"
    worker of a loaded model hung in its first parallel op, forever, with no error."""
    import multiprocessing
    import warnings

    reranker = Reranker.from_pretrained(small_ckpt, device="cpu")
    pairs = [("what is alibi", "a linear bias " * i) for i in range(1, 65)]
    threads = torch.get_num_threads()
    want = reranker.predict(pairs)  # the parent's OpenMP threads have run
    _FORKED["reranker"] = reranker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a process with threads
        pool = multiprocessing.get_context("fork").Pool(1)
    try:
        got, child_threads = pool.apply_async(_score_in_a_forked_child, (pairs,)).get(timeout=60)
    finally:
        pool.terminate()
        _FORKED.clear()
    assert got == pytest.approx(want, abs=1e-6) and child_threads == 1
    assert torch.get_num_threads() == threads  # the parent keeps its own


def test_the_truncation_warning_is_importable_from_the_package():
    import turborank
    from turborank.tokenization import TruncationWarning

    assert turborank.TruncationWarning is TruncationWarning and "TruncationWarning" in turborank.__all__
