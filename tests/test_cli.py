from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from turborank import Reranker
from turborank.cli import main
from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_rank_json_matches_api(small_ckpt, capsys):
    code, out, err = run(
        [
            "rank",
            "--model",
            str(small_ckpt),
            "--device",
            "cpu",
            "--query",
            MODEL_CARD_QUERY,
            *MODEL_CARD_DOCUMENTS,
            "--json",
            "--top-k",
            "4",
        ],
        capsys,
    )
    assert code == 0, err
    results = json.loads(out)["results"]
    want = Reranker.from_pretrained(small_ckpt, device="cpu").rank(
        MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS, top_k=4, return_documents=True
    )
    assert results == want


def test_rank_table(small_ckpt, capsys):
    code, out, _ = run(
        ["rank", "--model", str(small_ckpt), "--query", "q", "first doc", "second doc"], capsys
    )
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["rank", "score", "id", "document"] and len(lines) == 3


def test_documents_files(small_ckpt, tmp_path, capsys):
    txt = tmp_path / "docs.txt"
    txt.write_text("alpha doc\n\nbeta doc\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('"gamma doc"\n{"text": "delta doc", "id": 7}\n')
    code, out, err = run(
        [
            "rank",
            "--model",
            str(small_ckpt),
            "--query",
            "q",
            "inline doc",
            "--documents-file",
            str(txt),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(r["text"] for r in json.loads(out)["results"]) == ["alpha doc", "beta doc", "inline doc"]
    code, out, err = run(
        ["rank", "--model", str(small_ckpt), "--query", "q", "--documents-file", str(jsonl), "--json"], capsys
    )
    assert code == 0, err
    assert sorted(r["text"] for r in json.loads(out)["results"]) == ["delta doc", "gamma doc"]


@pytest.mark.parametrize(
    "content,message",
    [
        ('"ok"\n{bad json\n', "docs.jsonl:2: invalid JSON"),
        ('{"title": "x"}\n', "docs.jsonl:1: expected a JSON string"),
    ],
)
def test_bad_jsonl_names_file_and_line(small_ckpt, tmp_path, capsys, content, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    code, out, err = run(
        ["rank", "--model", str(small_ckpt), "--query", "q", "--documents-file", str(path)], capsys
    )
    assert code == 1 and out == ""
    assert (
        err.strip().startswith("turborank: error:") and message in err and len(err.strip().splitlines()) == 1
    )


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["rank", "--query", "q", "doc", "--top-k", "x"], 2, "argument --top-k: invalid int value"),
        (["rank", "doc"], 2, "the following arguments are required: --query"),
        (["rank", "--query", "q", "--device", "tpu", "d"], 2, "argument --device: invalid choice"),
        (["rank", "--query", "q"], 1, "no documents"),
        (["rank", "--query", "q", "d", "--top-k", "0"], 1, "--top-k must be >= 1"),
        (["rank", "--model", "/nonexistent/dir", "--query", "q", "d"], 1, "no such checkpoint directory"),
        (["rank", "--query", "q", "--documents-file", "/nonexistent.txt"], 1, "txt: no such file"),
        (["verify"], 2, "the following arguments are required: --model"),
        (["serve", "--port", "0"], 1, "--port must be >= 1"),
        (["serve", "--max-batch-tokens", "-5"], 1, "--max-batch-tokens must be >= 1"),
    ],
)
def test_bad_arguments_one_line_no_traceback(capsys, args, code, message):
    got, _, err = run(args, capsys) if code == 1 else _exit(args, capsys)
    assert got == code
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def _exit(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_empty_query_is_an_error(small_ckpt, capsys):
    code, _, err = run(["rank", "--model", str(small_ckpt), "--query", " ", "doc"], capsys)
    assert code == 1 and "query is empty" in err


def test_truncation_warning_is_one_line(small_ckpt, capsys):
    code, _, err = run(
        ["rank", "--model", str(small_ckpt), "--query", "q", "word " * 100, "--max-length", "32"], capsys
    )
    assert code == 0
    assert "turborank: warning: 1 of 1 pairs were longer than max_length=32" in err


def test_verify_without_remote_code_explains(small_ckpt, tmp_path, capsys):
    pytest.importorskip("transformers")
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    code, _, err = run(["verify", "--model", str(target)], capsys)
    assert code == 1 and "no modeling_bert.py" in err


def test_console_script_installed(small_ckpt):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "turborank.cli",
            "rank",
            "--model",
            str(small_ckpt),
            "--query",
            "q",
            "d1",
            "d2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["results"]) == 2
    exe = shutil.which("turborank")
    if exe is None:
        pytest.skip("console script not on PATH (package not installed with pip)")
    proc = subprocess.run(
        [exe, "rank", "--model", "/no/such", "--query", "q", "d"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and proc.stderr.startswith("turborank: error:")


def test_serve_cuda_graphs_on_cpu_is_a_clear_error(small_ckpt, capsys):
    pytest.importorskip("fastapi")
    code, _, err = run(["serve", "--model", str(small_ckpt), "--device", "cpu", "--cuda-graphs"], capsys)
    assert code == 1 and "CUDA graphs need the model on a CUDA device" in err
    assert err.count("\n") == 1


def test_version_from_package_metadata():
    from importlib.metadata import version

    for command in (
        [sys.executable, "-m", "turborank", "--version"],
        [sys.executable, "-m", "turborank.cli", "--version"],
    ):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"turborank {version('turborank')}, torch ")


def test_demo_offline_runs_on_a_cached_synthetic_checkpoint_labelled_random(tmp_path):
    """No hub (HF_HUB_OFFLINE=1, an empty HF cache): the example still runs, says why and that the
    weights are random, and the synthetic checkpoint is built once."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TURBORANK_CACHE": str(tmp_path / "cache"),
    }
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "turborank", "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(proc)
    first = json.loads(runs[0].stdout)
    assert first["query"] == MODEL_CARD_QUERY
    assert sorted(r["text"] for r in first["results"]) == sorted(MODEL_CARD_DOCUMENTS)
    assert first["weights"].startswith("random")
    assert "unreachable" in runs[0].stderr and "RANDOM" in runs[0].stderr
    assert json.loads(runs[1].stdout) == first  # the same cached checkpoint
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["synthetic-turbo-seed0"]  # no leftovers
