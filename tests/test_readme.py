"""Every code block in README.md runs, as a reader would run it, so the README cannot drift from the
program: its Python blocks in order in one namespace, its shell commands one by one; the hub model
becomes a synthetic checkpoint and the server's address a live test server.

Commands that cannot run here are checked for what can drift instead, each for a stated reason:
an install names only extras pyproject.toml has; a usage synopsis (``[--flag ...]``, ``M``, ``DIR``,
``...``), a Ray cluster, a GPU benchmark or a reference snapshot uses only flags its command's
``--help`` lists; the quick start and the test command are what CI runs (``.ci/quickstart``,
``.ci/run``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from tests.serve_thread import running_server
from turborank import Reranker

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "jinaai/jina-reranker-v1-turbo-en"
SERVER_ADDRESSES = ("http://127.0.0.1:8080", "localhost:8080")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    text: str


def readme_blocks() -> list[Block]:
    blocks, lines = [], (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = language = None
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence is None:
            continue
        if start is None:
            start, language = number, fence.group(1)
        else:
            blocks.append(Block(start, language, "\n".join(lines[start : number - 1])))
            start = None
    return blocks


def commands(block: Block) -> list[str]:
    """The block's shell commands: continuation lines joined, a quoted argument kept whole across
    lines, comment lines dropped."""
    result, buffer = [], ""
    for line in block.text.splitlines():
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buffer = f"{buffer}\n{line}" if buffer else line
        if buffer.endswith("\\"):
            buffer = buffer[:-1]
            continue
        try:
            shlex.split(buffer, comments=True)
        except ValueError:  # a quote still open: the argument goes on
            continue
        result.append(re.sub(r"\s*\n\s*", " ", buffer).strip() if "'" not in buffer else buffer.strip())
        buffer = ""
    assert not buffer, f"README.md:{block.line}: unterminated command {buffer!r}"
    return result


def test_every_block_is_python_or_bash():
    languages = {block.language for block in readme_blocks()}
    assert languages <= {"python", "bash"}, languages


@pytest.fixture(scope="module")
def live(small_ckpt, tmp_path_factory):
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu")
    with running_server(reranker) as (url, _):
        yield url, small_ckpt, tmp_path_factory.mktemp("readme")


def substitute(text: str, url: str, checkpoint: Path, scratch: Path) -> str:
    text = text.replace(HUB_ID, str(checkpoint))
    for address in SERVER_ADDRESSES:
        text = text.replace(address, url if address.startswith("http") else url.removeprefix("http://"))
    return text.replace("/tmp/turborank-small", str(scratch / "small")).replace(
        "/tmp/beir-demo", str(scratch / "beir-demo")
    )


def test_python_blocks_run_in_order(live):
    url, checkpoint, scratch = live
    namespace: dict = {"__name__": "readme"}
    ran = 0
    for block in readme_blocks():
        if block.language != "python":
            continue
        source = substitute(block.text, url, checkpoint, scratch)
        try:
            exec(compile(source, f"README.md:{block.line}", "exec"), namespace)
        except Exception as exc:  # the block's line in the failure, not only this file's
            pytest.fail(f"README.md's Python block at line {block.line} fails: {exc!r}")
        ran += 1
    assert ran >= 6


# What a shell command is, and how it is checked when it cannot run here.
SYNOPSIS = re.compile(r"\[--|(^|\s)\.\.\.(\s|$)|\bDIR\b|--model M\b|/path/to/")


def help_text(command: list[str]) -> str:
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def program_of(words: list[str]) -> list[str]:
    """The argv prefix naming the program: ``turborank <sub>`` or ``python -m <module>``."""
    if words[0] == "turborank":
        return [sys.executable, "-m", "turborank", words[1]]
    if words[:2] == ["python", "-m"]:
        return [sys.executable, "-m", words[2]]
    raise AssertionError(f"no rule for {words[0]!r}")


def check_flags(command: str) -> None:
    words = command.split()
    program = program_of(words)
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", help_text(program)))
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command))
    assert used <= listed, f"{command!r}: flags not in --help: {sorted(used - listed)}"


def check_install(command: str) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for group in re.findall(r"\.\[([a-z,]+)\]", command):
        assert set(group.split(",")) <= extras, f"{command!r}: no such extra in pyproject.toml"


def run_command(command: str, url: str, checkpoint: Path, scratch: Path) -> None:
    text = substitute(command, url, checkpoint, scratch)
    words = shlex.split(text, comments=True)
    if words[0] == "turborank":
        words = [sys.executable, "-m", "turborank", *words[1:]]
    elif words[:2] == ["python", "-m"]:
        words = [sys.executable, *words[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(words, capture_output=True, text=True, timeout=300, cwd=scratch, env=env)
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}: {proc.stderr[-2000:]}"
    if words[0] == "curl":
        answer = json.loads(proc.stdout)
        assert not (isinstance(answer, dict) and "error" in answer), proc.stdout


def test_shell_commands_run_or_are_checked(live):
    url, checkpoint, scratch = live
    ci = (ROOT / ".ci" / "run").read_text()
    seen = {"ran": 0, "checked": 0}
    for block in readme_blocks():
        if block.language != "bash":
            continue
        for command in commands(block):
            where = f"README.md:{block.line}: {command[:80]}"
            if "turborank demo" in command:
                # The quick start: .ci/quickstart runs it verbatim in a fresh clone and venv.
                assert "bash .ci/quickstart" in ci, where
            elif command.startswith(("pip install", "python3 -m venv")):
                check_install(command)  # installing is CI's job; what it names must exist
            elif command.startswith("python -m pytest") or "python -m pytest" in command:
                # The test command (CI runs README's, tests/test_repo.py checks which), or a
                # reference run that needs a snapshot of the hub's modeling code.
                target = command.split("python -m pytest", 1)[1].split()
                for path in (t for t in target if t.startswith("tests/")):
                    assert (ROOT / path).exists(), where
            elif SYNOPSIS.search(command) or "--ray" in command or command.startswith("python -m benchmarks"):
                # A synopsis, a cluster, a benchmark of minutes: its flags must be the program's.
                check_flags(command)
                seen["checked"] += 1
                continue
            else:
                run_command(command, url, checkpoint, scratch)
                seen["ran"] += 1
                continue
            seen["checked"] += 1
    assert seen["ran"] >= 8 and seen["checked"] >= 5, seen
