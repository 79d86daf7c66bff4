from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

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


def test_rank_table_shows_control_characters_escaped(small_ckpt, capsys):
    """A carriage return or an escape sequence in a document would move the terminal's cursor and
    overwrite the table's columns."""
    docs = ["first line\r\nsecond", "red \x1b[31mtext\x1b[0m"]
    code, out, _ = run(["rank", "--model", str(small_ckpt), "--query", "q", *docs], capsys)
    assert code == 0 and "\r" not in out and "\x1b" not in out
    assert "first line\\r second" in out and "red \\x1b[31mtext\\x1b[0m" in out


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
    # Ids are positions in the input, the blank line keeping its place: file line N is id N.
    ids = {r["text"]: r["corpus_id"] for r in json.loads(out)["results"]}
    assert ids == {"inline doc": 0, "alpha doc": 1, "beta doc": 3}
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
        # A RecursionError traceback, and an error naming no file or line, before.
        ('"ok"\n' + "[" * 100_000 + "]" * 100_000 + "\n", "docs.jsonl:2: JSON nested too deeply"),
        ('{"text": "a", "n": ' + "9" * 5000 + "}\n", "docs.jsonl:1: unreadable JSON (Exceeds the limit"),
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


def test_a_documents_file_not_in_utf8_names_the_line(small_ckpt, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'"ok"\r\n"fine"\n"caf\xe9"\n')  # Latin-1 on line 3
    code, _, err = run(
        ["rank", "--model", str(small_ckpt), "--query", "q", "--documents-file", str(path)], capsys
    )
    assert code == 1 and "docs.jsonl:3: not UTF-8 text" in err, err


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
        (["rank", "--query", "q", "--documents-file", "/tmp"], 1, "/tmp: is a directory, not a file"),
        (["verify"], 2, "the following arguments are required: --model"),
        (["verify", "--model", "m", "--dtype", "bfloat16"], 2, "unrecognized arguments: --dtype"),
        (["verify", "--model", "m", "--tolerance", "nan"], 1, "--tolerance must be a finite number >= 0"),
        (["serve", "--front-ends", "0"], 1, "--front-ends must be a positive integer, got '0'"),
        # A value of the wrong type is a command-line error (status 2), as argparse's own types give.
        (["serve", "--front-ends", "x"], 2, "argument --front-ends: must be a positive integer, got 'x'"),
        (["verify", "--model", "m", "--tolerance", "x"], 2, "argument --tolerance: must be a finite number"),
        (["serve", "--port", "0"], 1, "--port must be a TCP port number (1..65535), got 0"),
        (
            ["serve", "--replicas", "4", "--cpus-per-replica", "2"],
            1,
            "--replicas, --cpus-per-replica: options of --ray",
        ),
        (["serve", "--port", "70000"], 1, "--port must be a TCP port number (1..65535), got 70000"),
        (["serve", "--body-timeout", "0"], 1, "--body-timeout must be a positive number of seconds, got 0.0"),
        (["serve", "--drain-timeout", "nan"], 1, "--drain-timeout must be a positive number of seconds"),
        (["serve", "--min-body-rate", "-1"], 1, "--min-body-rate must be a non-negative integer, got -1"),
        (["serve", "--tokenization-workers", "0"], 1, "--tokenization-workers must be a positive integer"),
        (["serve", "--max-batch-tokens", "-5"], 1, "--max-batch-tokens must be a positive integer"),
        (["serve", "--header-timeout", "inf"], 1, "--header-timeout must be a positive number of seconds"),
        (["serve", "--max-requests-per-client", "0"], 1, "--max-requests-per-client must be a positive"),
        (["serve", "--max-connections", "100000000"], 1, "--max-connections 100000000 is more than the open"),
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


def test_verify_checks_its_inputs_before_the_reference(small_ckpt, tmp_path, capsys):
    """A lone surrogate in --pairs-file was a TypeError traceback from the reference's tokenizer, a
    negative --max-length an OverflowError: both are named now, before the reference loads."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('["q", "d"]\n["q", "\\ud800"]\n')
    code, _, err = run(["verify", "--model", str(small_ckpt), "--pairs-file", str(pairs)], capsys)
    assert code == 1 and "pairs.jsonl:2: the document contains a lone surrogate U+D800" in err
    code, _, err = run(["verify", "--model", str(small_ckpt), "--max-length", "-1"], capsys)
    assert code == 1 and "max_length=-1 is outside the model's range" in err


def test_verify_lets_a_termination_during_the_reference_load_through(tmp_path, monkeypatch):
    """A snapshot whose code does not load is one line naming it; a SIGTERM landing meanwhile (the
    CLI's Terminated, a BaseException) was turned into that error and status 1 instead of 143."""
    transformers = pytest.importorskip("transformers")
    import torch

    from turborank.cli import Terminated
    from turborank.eval import verify

    (tmp_path / "modeling_bert.py").write_text("")
    for raised, expected in ((SyntaxError("invalid syntax"), ValueError), (Terminated(), Terminated)):

        def load(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", load)
        with pytest.raises(expected):
            verify._load_reference(tmp_path, torch.device("cpu"))


def test_verify_scores_the_reference_on_the_ids_it_compares(reranker, monkeypatch):
    """The reference was scored on the tokenizer called with one pair, which drops an empty
    document's segment where the batch call (the ids compared) keeps it: an empty document failed
    with its token ids equal. Here a reference that is turborank's own model on the ids it is given
    must match (to the rounding of another batch), the empty document included."""
    import types

    from turborank.eval import verify
    from turborank.packing import pack

    class Tokenizer:
        def __call__(self, queries, documents, truncation, max_length, **options):
            if isinstance(queries, str):
                raise AssertionError("the reference must be scored on the batch's ids")
            encoded, _ = reranker.encode(list(zip(queries, documents, strict=True)), max_length, warn=False)
            return {"input_ids": encoded.input_ids}

    def model(input_ids):
        ids, cu_seqlens, max_seqlen, _ = pack([input_ids[0].tolist()])
        logits = reranker.module(ids, cu_seqlens, max_seqlen)
        return types.SimpleNamespace(logits=logits[:, None])

    loaded_from = []
    monkeypatch.setattr(
        verify,
        "_load_reference",
        lambda directory, device: loaded_from.append(directory) or ("4.49", Tokenizer(), model),
    )
    monkeypatch.setattr(verify.Reranker, "from_pretrained", lambda *a, **k: reranker)
    report = verify.verify_against_reference("org/name", pairs=[("q", ""), ("q", "d")], max_length=64)
    assert report["token_ids_equal"] and report["max_abs_logit_diff"] < 1e-5
    # The reference is looked for where turborank's model came from (a hub id's snapshot, a "~"
    # path expanded), not in a directory named "org/name".
    assert loaded_from == [reranker.checkpoint_directory]


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
    # One error line after the load's log lines, no traceback.
    assert "Traceback" not in err and err.splitlines()[-1].startswith("turborank: error: ")


def test_serve_on_a_port_in_use_fails_before_loading_the_model(small_ckpt, capsys):
    """uvicorn found out only after the load (minutes for a large model on a GPU) and exited 3."""
    import socket

    pytest.importorskip("fastapi")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # With --ray this process is the front that listens: refused before any cluster is
        # started or joined (an address where nothing answers is not even tried).
        for ray in ([], ["--ray"], ["--ray", "127.0.0.1:1"]):
            code, _, err = run(["serve", "--model", str(small_ckpt), "--port", str(port), *ray], capsys)
            assert code == 1
            assert err.startswith(f"turborank: error: --host 127.0.0.1 --port {port}: cannot listen there (")
            assert len(err.splitlines()) == 1  # checked before the load: not one log line
    code, _, err = run(["serve", "--model", str(small_ckpt), "--host", "no-such-host.invalid"], capsys)
    assert code == 1 and "--host no-such-host.invalid --port 8080: cannot resolve the host" in err
    assert "loaded" not in err and "Traceback" not in err


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
        # One linear engine for both runs: "auto" times F.linear against oneDNN at load, and where
        # they tie (Zen 3) the choice can differ between the runs, and the scores with it in the
        # 7th digit. The runs must be equal because they score the same cached checkpoint.
        proc = subprocess.run(
            [sys.executable, "-m", "turborank", "demo", "--json", "--linear", "aten"],
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


def test_serve_max_input_length_outside_the_model_range(small_ckpt, capsys):
    """Refused before serving: 2 leaves no room for the pair's 4 special tokens (every request
    failed with 500 while /ready said 200)."""
    pytest.importorskip("fastapi")
    for length, text in (("2", "--max-input-length 2"), ("9000", "--max-input-length 9000")):
        code, _, err = run(["serve", "--model", str(small_ckpt), "--max-input-length", length], capsys)
        assert code == 1 and f"{text} is outside the model's range (5..8192)" in err
        assert "Traceback" not in err and err.splitlines()[-1].startswith("turborank: error: ")


def test_serve_puts_the_callers_logging_back(small_ckpt, capsys):
    """The command line replaces the root's handlers while serving: in-process (as here), they are
    back afterwards, not left writing to a stream that is gone."""
    import logging

    pytest.importorskip("fastapi")
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("turborank").level)
    code, _, _ = run(["serve", "--model", str(small_ckpt), "--json-logs", "--max-input-length", "2"], capsys)
    assert code == 1
    assert (list(root.handlers), root.level, logging.getLogger("turborank").level) == before


def test_documents_file_byte_order_mark_is_dropped(small_ckpt, tmp_path, capsys):
    for name, content in (
        ("docs.txt", "first doc\nsecond doc\n"),
        ("docs.jsonl", '"first doc"\n"second doc"\n'),
    ):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + content.encode())
        code, out, err = run(
            ["rank", "--model", str(small_ckpt), "--query", "q", "--documents-file", str(path), "--json"],
            capsys,
        )
        assert code == 0, err
        assert sorted(r["text"] for r in json.loads(out)["results"]) == ["first doc", "second doc"]


def test_lone_surrogate_in_documents_file_names_the_line(small_ckpt, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text('"fine"\n"bad \\ud800 text"\n')
    code, _, err = run(
        ["rank", "--model", str(small_ckpt), "--query", "q", "--documents-file", str(path)], capsys
    )
    assert code == 1 and "docs.jsonl:2: the document contains a lone surrogate U+D800 at character 4" in err


@pytest.mark.parametrize("command", ["rank", "--version"])
def test_closed_pipe_exits_quietly(small_ckpt, command):
    """`turborank rank ... | head -1` or `turborank --version | head -1` once head has gone: no
    "Broken pipe" message, no traceback, and the status of a tool stopped by SIGPIPE."""
    args = (
        ["rank", "--model", str(small_ckpt), "--query", "q", "a", "b"] if command == "rank" else ["--version"]
    )
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "turborank.cli", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141


@pytest.mark.parametrize(
    ("command", "module"),
    [
        ("rank", "torch"),  # before torch has run a line
        ("rank", "torch.nn"),  # torch half imported: its finalisers must not run
        ("--version", "torch"),  # --version imports torch while the options are parsed
        ("--version", "torch.nn"),
        # While torch's C extension imports NumPy: it swallowed the interrupt (the command ran on).
        ("rank", "numpy"),
        ("--version", "numpy"),
    ],
)
def test_ctrl_c_while_torch_is_imported_is_one_line(small_ckpt, tmp_path, command, module):
    """SIGINT lands while the console script is importing torch, at its start or halfway (made
    certain by an import hook that sends it then): one line and status 130, no traceback."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys

            class InterruptOnImport:
                def find_spec(self, name, path=None, target=None):
                    if name == {module!r}:
                        sys.meta_path.remove(self)
                        os.kill(os.getpid(), signal.SIGINT)
                    return None

            sys.meta_path.insert(0, InterruptOnImport())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = ["rank", "--model", str(small_ckpt), "--query", "q", "d"] if command == "rank" else ["--version"]
    proc = subprocess.run(
        [sys.executable, "-m", "turborank.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        # As in a terminal: a suite started in the background by a non-interactive shell has
        # SIGINT ignored, which its children would inherit (and Ctrl-C would never arrive).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "turborank: error: interrupted\n"
    assert proc.stdout == ""


@pytest.mark.parametrize("as_json", [False, True])
def test_rank_refuses_a_non_finite_score(small_ckpt, capsys, monkeypatch, as_json):
    """No `nan` in the table, no NaN (invalid JSON) on stdout: status 1 naming the pair."""
    real = Reranker.from_pretrained.__func__

    def poisoned(cls, *args, **kwargs):
        reranker = real(cls, *args, **kwargs)
        forward = reranker.module.forward
        reranker.module.forward = lambda *a: forward(*a).clone().fill_(float("nan"))
        return reranker

    monkeypatch.setattr(Reranker, "from_pretrained", classmethod(poisoned))
    args = ["rank", "--model", str(small_ckpt), "--query", "q", "first doc", "second doc"]
    code, out, err = run([*args, "--json"] if as_json else args, capsys)
    assert code == 1 and out == ""
    assert err.startswith("turborank: error: the model produced a non-finite score (nan) for pair 0")


@pytest.mark.parametrize("value", ["0", "1", "4", "-3", "100000"])
def test_serve_max_input_length_out_of_range_is_one_answer_before_loading(small_ckpt, capsys, value):
    """Every value outside the model's range gets the same message, from the config and tokenizer,
    before the weights are loaded (0 used to say '>= 1' and then 1..4 '(5..8192)')."""
    code, out, err = run(["serve", "--model", str(small_ckpt), "--max-input-length", value], capsys)
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]  # (the config's slope-scheme line is logged before it)
    assert last.startswith("turborank: error: ") and "Traceback" not in err
    assert f"--max-input-length {value} is outside the model's range (5.." in last


def test_serve_ray_replicas_that_do_not_fit_the_local_cores_are_refused(small_ckpt, capsys):
    """A local cluster has exactly this machine's cores: replicas beyond them would wait forever."""
    pytest.importorskip("ray")
    pytest.importorskip("fastapi")
    from turborank.testing_server import free_port

    command = ["serve", "--model", str(small_ckpt), "--ray", "--replicas", "4096", "--port", str(free_port())]
    code, _, err = run(command, capsys)
    assert code == 1 and "this machine has" in err and "--replicas 4096" in err


@pytest.mark.parametrize(
    "command,flag",
    [
        (["serve", "--ray", "--replicas", "0"], "--replicas"),
        (["serve", "--ray", "--cpus-per-replica", "-1"], "--cpus-per-replica"),
        (["serve", "--ray", "--gpus-per-replica", "nan"], "--gpus-per-replica"),
        (["serve", "--ray", "127.0.0.1:9", "--ray-timeout", "0"], "--ray-timeout"),
        (["eval", "--ray", "--ray-timeout", "-5", "--data", "d", "--bm25"], "--ray-timeout"),
        (["eval", "--ray", "--ray-workers", "0", "--data", "d", "--bm25"], "--ray-workers"),
    ],
)
def test_ray_options_out_of_range_are_named_before_anything_loads(small_ckpt, capsys, command, flag):
    """Refused while the command line is read (nothing loaded, no Ray started), naming the option,
    with status 1 as every value out of its range (they surfaced after the tokenizer had loaded, as
    'replicas must be...' or a socket library's 'Timeout value out of range')."""
    code, _, err = run([command[0], "--model", str(small_ckpt), *command[1:]], capsys)
    assert code == 1 and f"turborank: error: {flag} must be" in err and len(err.strip().splitlines()) == 1
