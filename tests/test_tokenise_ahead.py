"""predict over a long list in chunks, the next chunk tokenised while this one is scored (the GPU's
path) or one chunk after the other (the CPU's): the same scores, warnings and errors as scoring the
pairs at once."""

from __future__ import annotations

import threading
import types
import warnings

import pytest
import torch

from tests.helpers import sample_pairs
from turborank import NonFiniteScoreError
from turborank import reranker as reranker_module
from turborank import tokenise_ahead as tokenise_ahead_module
from turborank.tokenization import TruncationWarning

CHUNK = 7  # pairs per chunk in these tests: 40 pairs make 6 chunks, the last one short


@pytest.fixture(params=[True, False], ids=["ahead", "in_turn"])
def ahead(request, reranker, monkeypatch):
    """The reranker scoring in chunks of CHUNK pairs, tokenised ahead (on) or in turn (off); counts
    the chunks."""
    monkeypatch.setattr(tokenise_ahead_module, "chunk_pairs", lambda batch_size, ahead=True: CHUNK)
    chunks = []
    real = tokenise_ahead_module.score_in_chunks

    def counting(pairs, encode, score, chunk_pairs, ahead):
        return real(
            pairs, lambda chunk: chunks.append(len(chunk)) or encode(chunk), score, chunk_pairs, ahead
        )

    monkeypatch.setattr(tokenise_ahead_module, "score_in_chunks", counting)
    monkeypatch.setattr(reranker, "overlap_tokenising", request.param)
    return reranker, chunks


def at_once(reranker, pairs, **options):
    """predict scoring the list whole (a chunk as long as the list)."""
    chunked = tokenise_ahead_module.chunk_pairs
    tokenise_ahead_module.chunk_pairs = lambda batch_size, ahead=True: len(pairs)
    try:
        return reranker.predict(pairs, **options)
    finally:
        tokenise_ahead_module.chunk_pairs = chunked


def test_scores_are_those_of_all_pairs_at_once(ahead):
    reranker, chunks = ahead
    pairs = sample_pairs(40, seed=5)
    got = reranker.predict(pairs, activation=False, batch_size=4)
    assert chunks == [7, 7, 7, 7, 7, 5]
    want = at_once(reranker, pairs, activation=False, batch_size=4)
    assert got == pytest.approx(want, abs=1e-4)


def test_long_documents_as_windows_keep_their_pairs_across_chunks(ahead):
    """long_doc="chunk": a pair's windows, and so its aggregated score, stay its own although
    the owners of each chunk start from 0."""
    reranker, chunks = ahead
    pairs = [(f"query {i % 3}", "word " * (40 + 37 * (i % 5)) + f"end {i}") for i in range(20)]
    options = {"max_length": 48, "long_doc": "chunk", "chunk_overlap": 8, "activation": False}
    got = reranker.predict(pairs, **options)
    assert len(chunks) == 3
    assert got == pytest.approx(at_once(reranker, pairs, **options), abs=1e-4)


@pytest.fixture
def bars(monkeypatch) -> list:
    """Every progress bar predict makes (None where it shows none), in order."""
    made = []
    real = reranker_module.progress_bar

    def keep(total, show, unit="pair"):
        made.append(real(total, show, unit))
        return made[-1]

    monkeypatch.setattr(reranker_module, "progress_bar", keep)
    return made


def test_the_progress_bar_counts_pairs_when_long_documents_make_windows(ahead, monkeypatch, bars):
    """A chunk of long documents holds more windows than pairs: the bar, sized in pairs, ends at
    its total (counting windows it ran to 23x past it)."""
    reranker, _ = ahead
    pairs = [("q", "word " * 200) for _ in range(12)]
    reranker.predict(pairs, max_length=48, long_doc="chunk", chunk_overlap=8, show_progress_bar=True)
    (bar,) = [bar for bar in bars if bar is not None]  # scoring a chunk makes none of its own
    assert bar.total == 12 and bar.n == 12 and bar.unit == "pair"
    # Scored at once (a list no longer than a chunk), the bar counts the windows it runs, and
    # calls them windows.
    bars.clear()
    at_once(reranker, pairs, max_length=48, long_doc="chunk", chunk_overlap=8, show_progress_bar=True)
    (bar,) = [bar for bar in bars if bar is not None]
    assert bar.total == bar.n > 12 and bar.unit == "window"


def test_one_truncation_warning_counts_every_chunk(ahead):
    reranker, _ = ahead
    pairs = [("q", "word " * (300 if i % 4 == 0 else 5)) for i in range(30)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reranker.predict(pairs, max_length=64)
    cut = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(cut) == 1
    assert str(cut[0].message) == (
        "8 of 30 pairs were longer than max_length=64 tokens and were truncated (longest_first)"
    )


def test_a_tokenising_error_names_the_pair_in_the_whole_list(ahead):
    """A lone surrogate in pair 23 (the fourth chunk) is refused naming pair 23, as without chunks."""
    reranker, _ = ahead
    pairs = sample_pairs(30, seed=2)
    pairs[23] = ("q", "broken \ud800 text")
    with pytest.raises(ValueError) as ahead_error:
        reranker.predict(pairs)
    with pytest.raises(ValueError) as whole_error:
        at_once(reranker, pairs)
    assert str(ahead_error.value) == str(whole_error.value)
    assert "23" in str(ahead_error.value)
    assert not [t for t in threading.enumerate() if t.name == "turborank-tokenise-ahead"]


def test_a_non_finite_logit_names_its_pair_in_the_whole_list(ahead, monkeypatch):
    reranker, _ = ahead
    pairs = sample_pairs(30, seed=3)
    poison = reranker.encode([pairs[17]], warn=False)[0].input_ids[0]
    real = reranker._score_encoded

    def poisoned(encoded, *args, **kwargs):
        logits = real(encoded, *args, **kwargs)
        for i, ids in enumerate(encoded.input_ids):
            if ids == poison:
                logits[i] = float("nan")
        return logits

    monkeypatch.setattr(reranker, "_score_encoded", poisoned)
    with pytest.raises(NonFiniteScoreError, match=r"for pair 17 \(input order\)"):
        reranker.predict(pairs)


def test_a_failed_forward_stops_the_tokenising_thread(ahead, monkeypatch):
    reranker, chunks = ahead
    tokenised_ahead = reranker.overlap_tokenising

    def failing(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(reranker, "_score_encoded", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        reranker.predict(sample_pairs(40, seed=4))
    assert not [t for t in threading.enumerate() if t.name == "turborank-tokenise-ahead"]
    # the first chunk, and at most the two tokenised ahead of it
    assert len(chunks) <= (3 if tokenised_ahead else 1)


def test_chunks_hold_several_of_the_batches_asked_for():
    assert tokenise_ahead_module.chunk_pairs(32) == tokenise_ahead_module.CHUNK_PAIRS
    assert tokenise_ahead_module.chunk_pairs(1024) == 4096


def test_on_the_cpu_a_long_list_is_tokenised_a_chunk_at_a_time_on_the_calling_thread(reranker, monkeypatch):
    """A list tokenised whole held every pair's ids at once (about 200 bytes a token: 20k pairs of
    20-200 words took 786 MiB, a million pairs would not fit). On the CPU the chunks are tokenised
    and scored in turn on the calling thread (no thread would gain anything there): the same
    scores, one chunk's ids held at a time."""
    assert reranker.overlap_tokenising is None and reranker.device == torch.device("cpu")
    assert tokenise_ahead_module.chunk_pairs(32, ahead=False) == tokenise_ahead_module.CPU_CHUNK_PAIRS
    pairs = sample_pairs(20, seed=1)
    want = at_once(reranker, pairs, activation=False)
    monkeypatch.setattr(tokenise_ahead_module, "chunk_pairs", lambda batch_size, ahead=True: CHUNK)
    calls = []
    real = reranker.encode

    def recording(part, *args, **options):
        calls.append((len(part), threading.current_thread() is threading.main_thread()))
        return real(part, *args, **options)

    monkeypatch.setattr(reranker, "encode", recording)
    got = reranker.predict(pairs, activation=False)
    assert calls == [(7, True), (7, True), (6, True)]
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_predict_tokenises_ahead_with_the_same_scores(small_ckpt, monkeypatch):
    """On CUDA tokenising ahead is the default: the chunks' scores match scoring all pairs at once."""
    from turborank import Reranker

    reranker = Reranker.from_pretrained(small_ckpt, device="cuda", dtype="float32")
    monkeypatch.setattr(tokenise_ahead_module, "chunk_pairs", lambda batch_size: CHUNK)
    pairs = sample_pairs(40, seed=6)
    assert reranker.overlap_tokenising is None
    got = reranker.predict(pairs, activation=False)
    reranker.overlap_tokenising = False
    assert got == pytest.approx(reranker.predict(pairs, activation=False), abs=1e-4)


@pytest.mark.parametrize("ahead_or_at_once", [True, False])
def test_an_interrupted_predict_closes_its_bar(ahead, monkeypatch, bars, ahead_or_at_once):
    """The bar was closed only on success: after a Ctrl-C each later bar was drawn a line lower."""
    reranker, _ = ahead

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(reranker, "overlap_tokenising", ahead_or_at_once)
    monkeypatch.setattr(reranker._model, "check_token_ids", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reranker.predict([("q", "word " * 20)] * 300, show_progress_bar=True)
    shown = [bar for bar in bars if bar is not None]
    assert shown and all(bar.disable for bar in shown)  # tqdm's mark of a closed bar


@pytest.mark.parametrize(
    ("options", "bad_pair", "message"),
    [
        ({}, ("q", "broken \ud800 text"), "pair 17: the document contains a lone surrogate"),
        ({"max_length": 16, "truncation": "only_second"}, ("a long query " * 10, "d"), "shorten the query"),
        (
            {"max_length": 16, "long_doc": "chunk", "chunk_overlap": 2},
            ("a long query " * 10, "d"),
            "leaves no room for the document",
        ),
        (
            {"max_length": 16, "long_doc": "chunk", "chunk_overlap": 9},
            ("a long query", "d " * 30),
            "chunk overlap 9 must be smaller than the [1-8] document tokens",
        ),
    ],
)
def test_a_bad_pair_fails_the_list_before_any_chunk_is_scored(ahead, monkeypatch, options, bad_pair, message):
    """A list tokenised whole failed before its first forward; in chunks, the chunks before the bad
    pair were scored first (minutes of a long list on a CPU), then the whole list was tokenised
    again to name it. Texts no tokenizer takes and queries the settings leave no room are found
    before the first chunk."""
    reranker, _ = ahead
    pairs = [("q", f"doc {i}") for i in range(20)]
    pairs[17] = bad_pair
    scored = []
    real = reranker._score_encoded
    monkeypatch.setattr(reranker, "_score_encoded", lambda e, *a, **k: scored.append(e) or real(e, *a, **k))
    with pytest.raises(ValueError, match=message):
        reranker.predict(pairs, **options)
    assert scored == []


class _Terminated(BaseException):  # as the CLI's SIGTERM exception
    pass


@pytest.mark.parametrize("tokenised_ahead", [True, False])
@pytest.mark.parametrize("error", [_Terminated, MemoryError, ValueError])
def test_a_chunk_that_fails_to_tokenise_raises_as_it_came(tokenised_ahead, error):
    """A chunk's error went through a tokenisation of the whole list first (to name its pair by
    its index there), a SIGTERM or a MemoryError too: a million pairs tokenised at once, the memory
    chunking saves. The pairs are checked before the first chunk instead (above)."""
    calls = []

    def encode(part):
        calls.append(len(part))
        if len(calls) == 2:
            raise error
        return types.SimpleNamespace(truncated=0), None

    with pytest.raises(error):
        tokenise_ahead_module.score_in_chunks(
            [("q", "d")] * 10, encode, lambda e: torch.zeros(1), 3, tokenised_ahead
        )
    assert calls == [3, 3]
