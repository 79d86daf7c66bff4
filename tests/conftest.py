"""Shared fixtures: synthetic checkpoints written once per session (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter. The variable is read when a
# kernel is defined, so it is set before turborank (and its kernels) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from turborank.testing import make_checkpoint, random_text

# Deterministic CPU numerics for the parity checks; CI has two cores.
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """Small shapes (hidden 192, 6 heads of 32, 2 layers), reranker-style auto_map."""
    return make_checkpoint(tmp_path_factory.mktemp("small"), "small", seed=1)


@pytest.fixture(scope="session")
def small_public_ckpt(tmp_path_factory):
    """Same shapes, auto_map pointing at jinaai/jina-bert-implementation (standard slopes)."""
    return make_checkpoint(tmp_path_factory.mktemp("small_public"), "small", seed=1, auto_map="public")


@pytest.fixture(scope="session")
def turbo_ckpt(tmp_path_factory):
    """The real jina-reranker-v1-turbo-en shapes (37.8M parameters, 12 heads)."""
    return make_checkpoint(tmp_path_factory.mktemp("turbo"), "turbo", seed=2)


ROOT = Path(__file__).resolve().parents[1]


def run_repo_module(module: str, *args: str, env: dict[str, str]) -> None:
    """``python -m module args`` from the repository root, in a fresh process; fails with the tail
    of its output."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def read_config(directory) -> dict:
    return json.loads((directory / "config.json").read_text())


def random_ids(rng: random.Random, length: int, vocab: int = 1500) -> list[int]:
    """A sequence shaped like a real pair: id 0 (<s>) first, then ordinary token ids."""
    return [0] + [rng.randrange(5, vocab) for _ in range(length - 1)]


def sample_pairs(n: int, seed: int = 0, max_words: int = 60) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (random_text(rng, rng.randint(2, 8)), random_text(rng, rng.randint(0, max_words))) for _ in range(n)
    ]


@pytest.fixture(autouse=True)
def _seed():
    """Every test draws the same random numbers whatever ran before it."""
    torch.manual_seed(0)
    random.seed(0)
