"""Fixtures and session setup only: synthetic checkpoints written once per session (nothing is
downloaded). Helpers the tests import live in tests/helpers.py."""

from __future__ import annotations

import os
import random

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter. The variable is read when a
# kernel is defined, so it is set before turborank (and its kernels) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from turborank import Reranker
from turborank.testing import make_checkpoint

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


@pytest.fixture(scope="module")
def reranker(small_ckpt):
    """A Reranker of small_ckpt on the CPU, one per test module (a module may patch it)."""
    return Reranker.from_pretrained(small_ckpt, device="cpu")


@pytest.fixture(scope="session")
def turbo_ckpt(tmp_path_factory):
    """The real jina-reranker-v1-turbo-en shapes (37.8M parameters, 12 heads)."""
    return make_checkpoint(tmp_path_factory.mktemp("turbo"), "turbo", seed=2)


@pytest.fixture(autouse=True)
def _seed():
    """Every test draws the same random numbers whatever ran before it."""
    torch.manual_seed(0)
    random.seed(0)
