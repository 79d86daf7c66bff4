"""`turborank eval` on a synthetic BEIR-format dataset, long documents, shards, interrupted runs."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import warnings
from pathlib import Path

import pytest

from turborank import Reranker
from turborank.cli import main
from turborank.eval.beir import load_corpus, load_qrels, load_queries
from turborank.eval.trec import read_run
from turborank.testing import make_beir_dataset, random_text
from turborank.tokenization import TruncationWarning

ir_measures = pytest.importorskip("ir_measures")
pytest.importorskip("bm25s")

from turborank.eval.metrics import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_beir_dataset(
        tmp_path_factory.mktemp("beir"), n_queries=10, n_documents=80, long_documents=4, seed=3
    )


@pytest.fixture(scope="module")
def short_dataset(tmp_path_factory):
    """The same shape without the 3,000-20,000-word documents, for the tests where length is not
    the subject: their 8,192-token forwards made these tests most of the suite's time."""
    return make_beir_dataset(
        tmp_path_factory.mktemp("beir-short"), n_queries=10, n_documents=80, long_documents=0, seed=3
    )


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """`turborank eval` writes run.trec in the working directory by default: never in the repo."""
    monkeypatch.chdir(tmp_path)


def eval_args(checkpoint, data) -> list[str]:
    return ["eval", "--model", str(checkpoint), "--data", str(data)]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_dataset_has_long_documents_and_planted_answers(dataset, reranker):
    corpus, queries, qrels = load_corpus(dataset), load_queries(dataset), load_qrels(dataset)
    lengths = reranker.encode([("q", d) for d in corpus.values()], max_length=8192, warn=False)[0]
    assert sum(enc for enc in lengths.was_truncated) >= 3  # documents past 8,192 tokens
    assert set(qrels) == set(queries)
    for qid, judged in qrels.items():
        words = queries[qid].split()
        assert all(all(w in corpus[d] for w in words) for d in judged)


def test_metrics_match_the_library_on_hand_built_runs():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 2}, "q3": {"d9": 1}}
    run = {
        "q1": [("d1", 3.0), ("x", 2.0), ("d2", 1.0)],  # relevant at ranks 1 and 3
        "q2": [("x", 2.0), ("d3", 1.0)],  # relevant at rank 2
        "q3": [(f"x{i}", 100.0 - i) for i in range(20)],  # nothing relevant retrieved
    }
    ours = evaluate(qrels, run)
    direct = ir_measures.calc_aggregate(
        [ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 100, ir_measures.Success @ 10],
        qrels,
        {q: dict(docs) for q, docs in run.items()},
    )
    assert ours["NDCG@10"] == pytest.approx(direct[ir_measures.nDCG @ 10])
    assert ours["MRR@10"] == pytest.approx(direct[ir_measures.RR @ 10])
    assert ours["Recall@100"] == pytest.approx(direct[ir_measures.R @ 100])
    assert ours["HitRate@10"] == pytest.approx(direct[ir_measures.Success @ 10])
    # And by hand: NDCG@10 with gains 2^rel - 1 (pytrec_eval uses rel as the gain).
    q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    q2 = (1 / math.log2(3)) / 1
    assert ours["NDCG@10"] == pytest.approx((q1 + q2 + 0) / 3)
    assert ours["MRR@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert ours["HitRate@10"] == pytest.approx(2 / 3)
    assert ours["queries"] == 3


def test_tied_scores_rank_as_trec_eval_ranks_them_for_every_measure():
    """trec_eval puts tied documents in descending id order: d3, d2, d1. Every measure, MRR@10
    included, must read the run so (ir-measures' default sent RR@10 to a provider going
    ascending: d1 first, reciprocal rank 1 instead of 1/3)."""
    qrels = {"q": {"d1": 1}}
    run = {"q": [("d1", 0.5), ("d2", 0.5), ("d3", 0.5)]}
    ours = evaluate(qrels, run)
    assert ours["MRR@10"] == pytest.approx(1 / 3)
    assert ours["NDCG@10"] == pytest.approx(1 / math.log2(4))


def test_eval_bm25_end_to_end_matches_reranker_rank(short_dataset, reranker, small_ckpt, tmp_path, capsys):
    output = tmp_path / "run.trec"
    code, out, err = run_cli(
        [
            *eval_args(small_ckpt, short_dataset),
            "--bm25",
            "--top-k",
            "8",
            "--output",
            str(output),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert set(metrics) == {"first stage", "reranked"}
    assert metrics["first stage"]["queries"] == metrics["reranked"]["queries"] == 10
    assert metrics["first stage"]["HitRate@10"] == 1.0  # BM25 finds the planted topic words
    assert "docs/s" in err and "pairs truncated" in err
    run = read_run(output)
    corpus, queries = load_corpus(short_dataset), load_queries(short_dataset)
    for qid, ranked in run.items():
        docs = [d for d, _ in ranked]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            want = reranker.rank(queries[qid], [corpus[d] for d in docs])
        assert [docs[w["corpus_id"]] for w in want] == docs
        assert [s for _, s in ranked] == pytest.approx([w["score"] for w in want], abs=1e-6)


def test_eval_with_a_first_stage_run_file(short_dataset, reranker, small_ckpt, tmp_path, capsys):
    corpus_ids = sorted(load_corpus(short_dataset))
    rng = random.Random(0)
    first = tmp_path / "first.trec"
    with open(first, "w") as f:
        for qid in sorted(load_qrels(short_dataset)):
            for rank, doc in enumerate(rng.sample(corpus_ids, 5), 1):
                f.write(f"{qid} Q0 {doc} {rank} {10 - rank} bm25\n")
    output = tmp_path / "reranked.trec"
    code, _, err = run_cli(
        [
            *eval_args(small_ckpt, short_dataset),
            "--run",
            str(first),
            "--output",
            str(output),
        ],
        capsys,
    )
    assert code == 0, err
    reranked, first_stage = read_run(output), read_run(first)
    assert set(reranked) == set(first_stage)
    for qid in reranked:
        assert sorted(d for d, _ in reranked[qid]) == sorted(d for d, _ in first_stage[qid])


def test_shards_merge_to_the_unsharded_run(short_dataset, small_ckpt, tmp_path, capsys):
    base = [*eval_args(small_ckpt, short_dataset), "--bm25", "--top-k", "5"]
    assert run_cli([*base, "--output", str(tmp_path / "all.trec")], capsys)[0] == 0
    for i in range(3):
        assert run_cli([*base, "--shard", f"{i}/3", "--output", str(tmp_path / f"s{i}.trec")], capsys)[0] == 0
    code, out, _ = run_cli(
        [
            "merge-runs",
            *(str(tmp_path / f"s{i}.trec") for i in range(3)),
            "--output",
            str(tmp_path / "merged.trec"),
            "--data",
            str(short_dataset),
        ],
        capsys,
    )
    assert code == 0 and "NDCG@10" in out
    merged, whole = read_run(tmp_path / "merged.trec"), read_run(tmp_path / "all.trec")
    assert merged.keys() == whole.keys()
    for qid in whole:
        assert [d for d, _ in merged[qid]] == [d for d, _ in whole[qid]]
        assert [s for _, s in merged[qid]] == pytest.approx([s for _, s in whole[qid]], abs=1e-6)
    code, _, err = run_cli(
        [
            "merge-runs",
            str(tmp_path / "s0.trec"),
            str(tmp_path / "s0.trec"),
            "--output",
            str(tmp_path / "bad.trec"),
        ],
        capsys,
    )
    assert code == 1 and "shards must not overlap" in err


def test_interrupt_leaves_a_valid_partial_run(short_dataset, small_ckpt, tmp_path, capsys, monkeypatch):
    import turborank.eval.rerank_run as rerank_run_module

    # Groups of two queries, so the interrupt lands after two complete groups.
    monkeypatch.setattr(
        rerank_run_module,
        "query_groups",
        lambda qids, first_stage, options: [qids[i : i + 2] for i in range(0, len(qids), 2)],
    )
    real = Reranker.logits
    calls = {"n": 0}

    def interrupt_third_group(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Reranker, "logits", interrupt_third_group)
    output = tmp_path / "partial.trec"
    code, out, err = run_cli(
        [
            *eval_args(small_ckpt, short_dataset),
            "--bm25",
            "--top-k",
            "3",
            "--output",
            str(output),
        ],
        capsys,
    )
    assert code == 130 and "valid partial run" in err
    run = read_run(output)  # parses: no half-written line
    assert len(run) == 4 and all(len(docs) == 3 for docs in run.values())
    assert "reranked" in out


@pytest.mark.slow
def test_chunking_finds_a_passage_beyond_8192_tokens_that_truncation_misses(reranker):
    """The passage the model likes best among 300, buried after more than 8,192 tokens of the
    passages it likes least: truncation never sees it; 80-token windows do."""
    rng = random.Random(5)
    query = "where is the planted passage"
    passages = [random_text(rng, 20) for _ in range(300)]
    logits = reranker.predict([(query, p) for p in passages], activation=False)
    order = sorted(range(len(passages)), key=lambda i: -logits[i])
    best, worst = passages[order[0]], [passages[i] for i in order[-60:]]
    head = " ".join(rng.choice(worst) for _ in range(460))
    long_doc = head + " " + best + " " + " ".join(rng.choice(worst) for _ in range(5))
    prefix = reranker.encode([(query, head)], max_length=8192, warn=False)[0]
    assert prefix.was_truncated == [True]  # the passage starts after token 8,192
    competitors = [passages[i] for i in order[100:105]]  # better than two thirds of the passages
    docs = [long_doc, *competitors]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        truncated = reranker.rank(query, docs)
    chunked = reranker.rank(query, docs, long_doc="chunk", max_length=80, chunk_overlap=40)
    assert truncated[-1]["corpus_id"] == 0
    assert chunked[0]["corpus_id"] == 0
    mean = reranker.rank(
        query, docs, long_doc="chunk", max_length=80, chunk_overlap=40, chunk_aggregate="mean"
    )
    assert [r["corpus_id"] for r in mean][-1] == 0  # averaging over ~300 windows drowns it again


def test_eval_truncates_the_long_documents_and_counts_them(dataset, small_ckpt, tmp_path, capsys):
    """Length is the subject here: a first-stage run holding every long document (and two short
    ones) for one query, cut to 256 tokens per pair so the test stays quick."""
    corpus = load_corpus(dataset)
    words = {d: len(text.split()) for d, text in corpus.items()}
    long_docs = [d for d, n in words.items() if n >= 3000]
    short_docs = sorted(d for d, n in words.items() if n < 200)[:2]
    qid = sorted(load_qrels(dataset))[0]
    first = tmp_path / "first.trec"
    first.write_text(
        "".join(f"{qid} Q0 {d} {r} {9 - r} bm25\n" for r, d in enumerate([*long_docs, *short_docs], 1))
    )
    output = tmp_path / "run.trec"
    code, _, err = run_cli(
        [
            *eval_args(small_ckpt, dataset),
            "--run",
            str(first),
            "--max-length",
            "256",
            "--output",
            str(output),
        ],
        capsys,
    )
    assert code == 0, err
    assert len(long_docs) == 4
    assert f"{len(long_docs)} pairs truncated" in err  # the short ones fit
    assert sorted(d for d, _ in read_run(output)[qid]) == sorted([*long_docs, *short_docs])


def test_eval_chunk_mode_reports_windows(dataset, small_ckpt, tmp_path, capsys):
    code, _, err = run_cli(
        [
            *eval_args(small_ckpt, dataset),
            "--bm25",
            "--top-k",
            "4",
            "--long-doc",
            "chunk",
            "--max-length",
            "512",
            "--output",
            str(tmp_path / "c.trec"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "documents scored as" in err
    assert read_run(tmp_path / "c.trec")


@pytest.mark.parametrize(
    "target,content,message",
    [
        ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{oops\n', "corpus.jsonl:2: invalid JSON"),
        ("corpus.jsonl", '{"text": "no id"}\n', 'corpus.jsonl:1: expected an object with an "_id"'),
        ("queries.jsonl", '{"_id": "q1", "text": 5}\n', "queries.jsonl:1: field 'text' must be a string"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1 d1 1\n", "test.tsv:2: expected 3 tab-separated"),
        ("qrels/test.tsv", "q1\td1\thigh\n", "test.tsv:1: score 'high' is not an integer"),
        # Read as the id "True", and a judgment silently dropped, before.
        ("corpus.jsonl", '{"_id": true, "text": "a"}\n', 'corpus.jsonl:1: expected an object with an "_id"'),
        ("qrels/test.tsv", "q1\td1\t1\n \td2\t1\n", "test.tsv:2: empty query-id"),
        # pytrec_eval took 8 GB for this grade, and printed zeros for every metric under a memory cap.
        ("qrels/test.tsv", "q1\td1\t1000000000\n", "test.tsv:1: score 1000000000 is outside -1000..1000"),
        # The last judgment won silently (q1 left with nothing relevant).
        ("qrels/test.tsv", "q1\td1\t1\nq1\td1\t0\n", "test.tsv:2: q1 d1 is judged 0 here and 1 on line 1"),
    ],
)
def test_malformed_files_name_file_and_line(dataset, small_ckpt, tmp_path, capsys, target, content, message):
    import shutil

    data = shutil.copytree(dataset, tmp_path / "data")
    (data / target).write_text(content)
    code, _, err = run_cli([*eval_args(small_ckpt, data), "--bm25"], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_qrels_header_after_blank_lines_and_a_judgment_repeated_alike(tmp_path):
    """The header was taken on line 1 only (after a blank line: "score 'score' is not an
    integer"); a judgment repeated with the same grade is the same judgment."""
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "\n\nquery-id\tcorpus-id\tscore\nq1\td1\t2\n\nq1\td1\t2\nq2\td1\t-1\n"
    )
    assert load_qrels(tmp_path) == {"q1": {"d1": 2}, "q2": {"d1": -1}}


def test_chunking_names_a_query_too_long_for_its_windows_before_scoring_any(reranker, monkeypatch):
    """The query was found too long when its group came, after the groups before it were scored,
    and the error did not say which query it was."""
    import io

    from turborank.eval.rerank_run import RerankJob, RerankOptions, rerank_run

    queries = {f"q{i}": f"query {i}" for i in range(40)}
    queries["q39"] = "word " * 80
    first_stage = {q: [("d1", 1.0), ("d2", 0.5)] for q in queries}
    options = RerankOptions(top_k=2, max_length=64, long_doc="chunk", chunk_overlap=8, pairs_per_group=4)
    job = RerankJob(queries, {"d1": "a text", "d2": "another"}, first_stage, sorted(queries), options)
    scored = []
    monkeypatch.setattr(reranker, "logits", lambda *a, **k: scored.append(a))
    out = io.StringIO()
    with pytest.raises(ValueError, match="^query 'q39': query of [0-9]+ tokens leaves no room"):
        rerank_run(reranker, job, out)
    assert scored == [] and out.getvalue() == ""


def test_bad_run_file_and_options(dataset, small_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.trec"
    bad.write_text("q0 Q0 d1 1 2.0\n")
    code, _, err = run_cli([*eval_args(small_ckpt, dataset), "--run", str(bad)], capsys)
    assert code == 1 and "bad.trec:1: expected 6 fields" in err
    missing = tmp_path / "missing.trec"
    missing.write_text("q0 Q0 nosuchdoc 1 2.0 x\n")
    earlier = tmp_path / "earlier.trec"
    earlier.write_text("q0 Q0 d1 1 2.0 kept\n")
    code, _, err = run_cli(
        [*eval_args(small_ckpt, dataset), "--run", str(missing), "--output", str(earlier)], capsys
    )
    assert code == 1 and "'nosuchdoc' of query 'q0' is not in the corpus" in err
    assert earlier.read_text() == "q0 Q0 d1 1 2.0 kept\n"  # the failed run did not truncate it
    code, _, err = run_cli([*eval_args(small_ckpt, dataset), "--bm25", "--shard", "3/3"], capsys)
    assert code == 1 and "0 <= i < n" in err


def test_a_nan_score_in_a_first_stage_run_is_named(dataset, small_ckpt, tmp_path, capsys):
    """A NaN leaves the order of the query's documents undefined (and with it which are reranked)."""
    bad = tmp_path / "nan.trec"
    bad.write_text("q0 Q0 d1 1 3.0 x\nq0 Q0 d2 2 nan x\n")
    code, _, err = run_cli([*eval_args(small_ckpt, dataset), "--run", str(bad)], capsys)
    assert code == 1 and "nan.trec:2: score 'nan' is not a finite number" in err


def test_texts_holding_unicode_line_separators_are_one_line_each(dataset, small_ckpt, tmp_path, capsys):
    """JSON strings may hold U+2028, U+2029 and U+0085 raw (json.dumps with ensure_ascii=False
    writes them so); a JSON-lines file ends its lines at newlines only."""
    data = shutil.copytree(dataset, tmp_path / "data")
    lines = (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["text"] += " one\u2028two\u2029three\u0085four"
    lines[0] = json.dumps(first, ensure_ascii=False)
    (data / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_corpus(data)[first["_id"]].endswith("one\u2028two\u2029three\u0085four")


def test_an_interrupt_while_the_model_loads_keeps_the_earlier_output(
    dataset, small_ckpt, tmp_path, capsys, monkeypatch
):
    earlier = tmp_path / "run.trec"
    earlier.write_text("q0 Q0 d1 1 2.0 kept\n")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("turborank.cli.eval.load_reranker", interrupted)
    code, _, _ = run_cli([*eval_args(small_ckpt, dataset), "--bm25", "--output", str(earlier)], capsys)
    assert code == 130
    assert earlier.read_text() == "q0 Q0 d1 1 2.0 kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]


def test_rerank_options_are_validated():
    from turborank.eval.rerank_run import RerankOptions

    with pytest.raises(ValueError, match="chunk_aggregate='sum'"):
        RerankOptions(chunk_aggregate="sum")
    with pytest.raises(ValueError, match="long_doc='split'"):
        RerankOptions(long_doc="split")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        RerankOptions(top_k=0)
    with pytest.raises(ValueError, match="chunk_overlap must be >= 0, got -1"):
        RerankOptions(chunk_overlap=-1)  # also with long_doc="truncate", where it would go unused


@pytest.mark.parametrize(
    "target,content,message",
    [
        ("corpus.jsonl", "", "corpus.jsonl: no records"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\n", "test.tsv: no judgments"),
        (
            "qrels/test.tsv",
            "nosuchquery\td1\t1\n",
            "test.tsv: none of its 1 judged queries (for example 'nosuchquery') is in",
        ),
        (
            "corpus.jsonl",
            '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b \\ud800"}\n',
            "corpus.jsonl:2: field 'text' contains a lone surrogate U+D800 at character 2",
        ),
        (
            "queries.jsonl",
            '{"_id": "q0", "text": "\\udfff"}\n',
            "queries.jsonl:1: field 'text' contains a lone surrogate U+DFFF at character 0",
        ),
        ("queries.jsonl", '{"_id": "q0", "text": "  "}\n', "queries.jsonl: query 'q0' (judged in"),
    ],
)
def test_empty_or_unusable_inputs_are_named(dataset, small_ckpt, tmp_path, capsys, target, content, message):
    """Each was a bare "max() arg is an empty sequence", "not enough values to unpack", a tokenizer
    error naming no file, or (the empty query) silently reranked."""
    import shutil

    data = shutil.copytree(dataset, tmp_path / "data")
    (data / target).write_text(content)
    code, _, err = run_cli([*eval_args(small_ckpt, data), "--bm25"], capsys)
    assert code == 1 and message in err
    assert len(err.strip().splitlines()) == 1, err


def test_shard_without_queries_is_named(dataset, small_ckpt, capsys):
    code, _, err = run_cli([*eval_args(small_ckpt, dataset), "--bm25", "--shard", "30/40"], capsys)
    assert code == 1 and "--shard 30/40 takes none of the 10 judged queries" in err


@pytest.mark.parametrize("output", ["a_file/run.trec", "a_dir"])
def test_unwritable_output_is_found_before_bm25_and_the_model(
    dataset, small_ckpt, tmp_path, capsys, monkeypatch, output
):
    import turborank.cli.eval as eval_command
    import turborank.eval.bm25 as bm25

    def too_late(*args, **kwargs):
        raise AssertionError("the output should have been checked before this")

    monkeypatch.setattr(bm25, "bm25_run", too_late)
    monkeypatch.setattr(eval_command, "load_reranker", too_late)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir").mkdir()
    code, _, err = run_cli(
        [*eval_args(small_ckpt, dataset), "--bm25", "--output", str(tmp_path / output)], capsys
    )
    want = "a_file is not a directory" if output.startswith("a_file") else "a_dir: is a directory"
    assert code == 1 and want in err and "File exists" not in err


def test_a_missing_eval_extra_is_named_before_the_model_and_before_any_output(
    short_dataset, small_ckpt, tmp_path, capsys, monkeypatch
):
    """Without ir-measures, eval reranked everything and wrote its run (hours on a BEIR set), then
    failed on the metrics; merge-runs --data wrote the merged run, then failed likewise."""
    import importlib.util

    import turborank.cli.eval as eval_command

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "ir_measures" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    def too_late(*args, **kwargs):
        raise AssertionError("the missing extra should have been named before this")

    monkeypatch.setattr(eval_command, "load_reranker", too_late)
    output = tmp_path / "run.trec"
    code, _, err = run_cli([*eval_args(small_ckpt, short_dataset), "--bm25", "--output", str(output)], capsys)
    assert code == 1 and "pip install 'turborank[eval]'" in err and not output.exists()
    shard = tmp_path / "shard.trec"
    shard.write_text("q1 Q0 d1 1 0.5 t\n")
    merged = tmp_path / "merged.trec"
    code, _, err = run_cli(
        ["merge-runs", str(shard), "--output", str(merged), "--data", str(short_dataset)], capsys
    )
    assert code == 1 and "pip install 'turborank[eval]'" in err and not merged.exists()


def test_failed_run_keeps_the_earlier_output_and_leaves_no_partial_file(
    dataset, small_ckpt, tmp_path, capsys, monkeypatch
):
    earlier = tmp_path / "run.trec"
    earlier.write_text("q0 Q0 d1 1 2.0 kept\n")

    def broken(self, *args, **kwargs):
        raise ValueError("the forward broke")

    monkeypatch.setattr(Reranker, "logits", broken)
    code, _, err = run_cli([*eval_args(small_ckpt, dataset), "--bm25", "--output", str(earlier)], capsys)
    assert code == 1 and "the forward broke" in err
    assert earlier.read_text() == "q0 Q0 d1 1 2.0 kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]


def test_a_non_finite_score_writes_no_run(short_dataset, small_ckpt, tmp_path, capsys, monkeypatch):
    """eval stops at the first non-finite score: status 1 naming it, no run written, an earlier one kept."""
    earlier = tmp_path / "run.trec"
    earlier.write_text("q0 Q0 d1 1 2.0 kept\n")
    real = Reranker._score_encoded

    def nan_scores(self, *args, **kwargs):
        return real(self, *args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(Reranker, "_score_encoded", nan_scores)
    args = [*eval_args(small_ckpt, short_dataset), "--bm25", "--output", str(earlier)]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "non-finite score (nan)" in err
    assert earlier.read_text() == "q0 Q0 d1 1 2.0 kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]


def test_a_symlinked_output_is_followed_and_stays_a_link(short_dataset, small_ckpt, tmp_path, capsys):
    """The run goes to the file the link points to; the link is not replaced by a regular file."""
    target = tmp_path / "runs" / "real.trec"
    target.parent.mkdir()
    target.write_text("stale\n")
    link = tmp_path / "run.trec"
    link.symlink_to(target)
    code, _, err = run_cli(
        [*eval_args(small_ckpt, short_dataset), "--bm25", "--top-k", "3", "--output", str(link)], capsys
    )
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() != "stale\n" and read_run(target)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_outputs_that_are_not_regular_files_are_refused_before_the_work(
    short_dataset, small_ckpt, tmp_path, capsys, kind
):
    """A FIFO would block the write, a device (here /dev/null; as root, /dev/full became a file)
    would take the run: refused by name, before BM25 and the model load."""
    if kind == "fifo":
        output = tmp_path / "pipe"
        os.mkfifo(output)
        want = "is a FIFO"
    else:
        output = Path("/dev/null")
        want = "is a character device"
    code, _, err = run_cli([*eval_args(small_ckpt, short_dataset), "--bm25", "--output", str(output)], capsys)
    assert code == 1 and f"{output}: {want}; outputs are written to regular files only" in err
    assert "docs/s" not in err  # no reranking started
    assert output.exists() and not output.is_file()


def test_missing_parent_directories_are_created_only_when_asked(short_dataset, small_ckpt, tmp_path, capsys):
    output = tmp_path / "new" / "deeper" / "run.trec"
    args = [*eval_args(small_ckpt, short_dataset), "--bm25", "--top-k", "3", "--output", str(output)]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and f"the directory {output.parent} does not exist (create it, or pass --parents)" in err
    assert not (tmp_path / "new").exists()
    code, _, err = run_cli([*args, "--parents"], capsys)
    assert code == 0, err
    assert read_run(output)


def test_an_id_a_trec_run_cannot_hold_is_named_before_the_work(short_dataset, small_ckpt, tmp_path, capsys):
    """TREC fields are whitespace-separated: a corpus id with a space would shift its line (the run
    was written and then refused by merge-runs); it is an error naming the id, and nothing is written."""
    data = tmp_path / "spaced"
    shutil.copytree(short_dataset, data)
    corpus = (data / "corpus.jsonl").read_text().splitlines()
    first = json.loads(corpus[0])
    first["_id"] = "doc with spaces"
    (data / "corpus.jsonl").write_text("\n".join([json.dumps(first), *corpus[1:]]) + "\n")
    output = tmp_path / "run.trec"
    code, _, err = run_cli(
        [*eval_args(small_ckpt, data), "--bm25", "--top-k", "200", "--output", str(output)], capsys
    )
    assert code == 1 and "document id 'doc with spaces' cannot be written to a TREC run" in err
    assert not output.exists()


def test_merge_runs_refuses_a_device_and_follows_a_link(tmp_path, capsys):
    shard = tmp_path / "shard.trec"
    shard.write_text("q1 Q0 d1 1 0.5 t\n")
    code, _, err = run_cli(["merge-runs", str(shard), "--output", "/dev/null"], capsys)
    assert code == 1 and "/dev/null: is a character device" in err
    target, link = tmp_path / "merged.trec", tmp_path / "link.trec"
    target.write_text("")
    link.symlink_to(target)
    code, _, err = run_cli(["merge-runs", str(shard), "--output", str(link)], capsys)
    assert code == 0, err
    assert link.is_symlink() and target.read_text() == "q1 Q0 d1 1 0.5 turborank\n"


def test_an_output_that_is_also_an_input_is_refused(short_dataset, small_ckpt, tmp_path, capsys):
    """--output naming the first-stage run, a dataset file (or a link to one) would replace an input
    with the result: refused before anything runs, the input left as it was."""
    first_stage = tmp_path / "first.trec"
    queries = list(load_queries(short_dataset))[:3]
    first_stage.write_text("".join(f"{q} Q0 d{q} 1 1.0 bm25\n" for q in queries))
    link = tmp_path / "corpus-link.jsonl"
    link.symlink_to(short_dataset / "corpus.jsonl")
    corpus = (short_dataset / "corpus.jsonl").read_bytes()
    for output, run in ((first_stage, first_stage), (short_dataset / "queries.jsonl", None), (link, None)):
        args = [*eval_args(small_ckpt, short_dataset), "--output", str(output)]
        args += ["--run", str(run)] if run is not None else ["--bm25"]
        before = Path(output).read_bytes()
        code, _, err = run_cli(args, capsys)
        assert code == 1 and f"{output}: is also an input" in err, err
        assert Path(output).read_bytes() == before
    assert (short_dataset / "corpus.jsonl").read_bytes() == corpus
    shard = tmp_path / "shard.trec"
    shard.write_text("q1 Q0 d1 1 0.5 t\n")
    code, _, err = run_cli(["merge-runs", str(shard), "--output", str(shard)], capsys)
    assert code == 1 and "is also an input" in err and shard.read_text() == "q1 Q0 d1 1 0.5 t\n"


def test_an_interrupt_before_the_first_query_keeps_the_earlier_output(
    short_dataset, small_ckpt, tmp_path, capsys, monkeypatch
):
    earlier = tmp_path / "run.trec"
    earlier.write_text("q0 Q0 d1 1 2.0 kept\n")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Reranker, "logits", interrupted)
    args = [*eval_args(small_ckpt, short_dataset), "--bm25", "--output", str(earlier)]
    code, _, err = run_cli(args, capsys)
    assert code == 130 and "before the first query was done" in err and "was left as it was" in err
    assert earlier.read_text() == "q0 Q0 d1 1 2.0 kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]


def test_merge_runs_reads_its_judgments_before_it_writes_and_never_writes_part(
    short_dataset, tmp_path, capsys, monkeypatch
):
    import turborank.eval.trec as trec

    shard = tmp_path / "shard.trec"
    shard.write_text("q1 Q0 d1 1 0.5 t\nq2 Q0 d2 1 0.5 t\n")
    merged = tmp_path / "merged.trec"
    merged.write_text("earlier\n")
    args = ["merge-runs", str(shard), "--output", str(merged), "--data", str(short_dataset)]
    code, _, err = run_cli([*args, "--split", "tset"], capsys)
    assert code == 1 and "tset.tsv" in err and merged.read_text() == "earlier\n"
    real, written = trec.write_query, []

    def interrupted_after_one(out, *rest):
        if written:
            raise KeyboardInterrupt
        written.append(real(out, *rest))

    monkeypatch.setattr(trec, "write_query", interrupted_after_one)
    code, _, _ = run_cli(args, capsys)
    assert code == 130 and merged.read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.trec", "shard.trec"]


def test_eval_refuses_to_write_over_the_checkpoint_it_scores_with(dataset, small_ckpt, tmp_path, capsys):
    """--output <model>/model.safetensors replaced the weights with the run (exit 0), and a link
    into a hub cache's snapshot would have replaced the cached blob."""
    import argparse

    from turborank.cli.eval import _inputs_of

    model = shutil.copytree(small_ckpt, tmp_path / "model")
    weights = model / "model.safetensors"
    before = weights.read_bytes()
    link = tmp_path / "run.trec"
    link.symlink_to(weights)
    for output in (weights, link):
        code, _, err = run_cli([*eval_args(model, dataset), "--bm25", "--output", str(output)], capsys)
        assert code == 1 and "is also an input" in err and "model.safetensors" in err
        assert weights.read_bytes() == before
    # A hub id is checked against the snapshot it loaded, once loaded.
    args = argparse.Namespace(model="org/name", data=dataset, split="test", run=None)
    assert weights in _inputs_of(args, model) and weights not in _inputs_of(args)


def test_merge_runs_refuses_to_write_over_the_judgments_it_reads(short_dataset, tmp_path, capsys):
    """Only the runs counted as inputs: --output naming the dataset's qrels replaced them with the
    merged run."""
    data = shutil.copytree(short_dataset, tmp_path / "data")
    qrels = data / "qrels" / "test.tsv"
    before = qrels.read_text()
    shard = tmp_path / "shard.trec"
    shard.write_text("q1 Q0 d1 1 0.5 t\n")
    code, _, err = run_cli(["merge-runs", str(shard), "--output", str(qrels), "--data", str(data)], capsys)
    assert code == 1 and "test.tsv" in err and qrels.read_text() == before


def test_merge_runs_refuses_runs_without_queries_and_runs_nothing_judges(short_dataset, tmp_path, capsys):
    """Empty runs merged into an empty run, and runs whose queries the judgments do not hold were
    scored as all-zero metrics over 0 queries, both with status 0; eval refuses both cases."""
    empty = tmp_path / "empty.trec"
    empty.write_text("")
    merged = tmp_path / "merged.trec"
    code, _, err = run_cli(["merge-runs", str(empty), "--output", str(merged)], capsys)
    assert code == 1 and "the runs hold no query" in err and not merged.exists()
    stranger = tmp_path / "stranger.trec"
    stranger.write_text("not-a-query Q0 d1 1 0.5 t\n")
    args = ["merge-runs", str(stranger), "--output", str(merged), "--data", str(short_dataset)]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "none of the 1 merged queries is judged in" in err and not merged.exists()


def test_sigterm_leaves_the_earlier_output_and_no_partial_file(short_dataset, small_ckpt, tmp_path):
    """SIGTERM mid-run: exit 143, the earlier output as it was, no temporary file left behind."""
    import signal
    import subprocess
    import sys
    import time

    earlier = tmp_path / "run.trec"
    earlier.write_text("q0 Q0 d1 1 2.0 kept\n")
    stalled = tmp_path / "stall.py"  # the first forward never returns: the run is mid-way for sure
    stalled.write_text(
        "import sys, time\n"
        "from turborank import Reranker\n"
        "from turborank.cli import main\n"
        "Reranker.logits = lambda self, *a, **k: time.sleep(3600)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [*eval_args(small_ckpt, short_dataset), "--bm25", "--output", str(earlier)]
    proc = subprocess.Popen([sys.executable, str(stalled), *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err, err
    assert earlier.read_text() == "q0 Q0 d1 1 2.0 kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec", "stall.py"]


def test_bm25_on_a_corpus_without_a_word_to_index_says_so(short_dataset, small_ckpt, tmp_path, capsys):
    data = tmp_path / "stopwords"
    shutil.copytree(short_dataset, data)
    ids = list(load_corpus(data))
    (data / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": "the a of"}) + "\n" for d in ids)
    )
    code, _, err = run_cli(
        [*eval_args(small_ckpt, data), "--bm25", "--output", str(tmp_path / "r.trec")], capsys
    )
    assert code == 1 and f"{data / 'corpus.jsonl'}: BM25 finds no word to index" in err, err


def test_a_run_file_keeps_float32_scores_apart(tmp_path):
    """Adjacent float32 scores (0.10991342 for both at 8 digits) stay two scores in the file."""
    import io

    import numpy as np

    from turborank.eval.trec import write_query

    low = np.float32(0.1099134162068367)
    high = np.nextafter(low, np.float32(1))
    out = io.StringIO()
    write_query(out, "q", [("d1", float(high)), ("d2", float(low))], "t")
    path = tmp_path / "run.trec"
    path.write_text(out.getvalue())
    scores = [score for _, score in read_run(path)["q"]]
    assert [np.float32(s) for s in scores] == [high, low]
