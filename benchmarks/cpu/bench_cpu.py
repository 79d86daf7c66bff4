"""pytest-benchmark regression guards for the CPU path (small synthetic checkpoint; seconds in CI).

Figures from these runs are not targets; `python -m benchmarks.cpu.run` produces the comparison
figures. Run alone with `python -m pytest benchmarks/cpu/bench_cpu.py --benchmark-only`.
"""

from __future__ import annotations

import random

import pytest
import torch

from turborank.alibi import alibi_slopes
from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY
from turborank.kernels import add_layer_norm_torch, alibi_attention_torch, gelu_glu_torch
from turborank.testing import random_text


def test_rank_model_card_example(benchmark, small_reranker):
    ranked = benchmark(small_reranker.rank, MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS)
    assert len(ranked) == len(MODEL_CARD_DOCUMENTS)


@pytest.mark.parametrize("n_docs,words", [(16, 200)])
def test_predict_mixed_lengths(benchmark, small_reranker, n_docs, words):
    rng = random.Random(0)
    pairs = [("query words", random_text(rng, rng.randint(10, words))) for _ in range(n_docs)]
    scores = benchmark(small_reranker.predict, pairs)
    assert len(scores) == n_docs


def test_alibi_attention_ref_2k(benchmark):
    q, k, v = (torch.randn(2048, 6, 32) for _ in range(3))
    cu = torch.tensor([0, 2048], dtype=torch.int32)
    out = benchmark(alibi_attention_torch, q, k, v, cu, cu, 2048, 2048, alibi_slopes(6))
    assert out.shape == q.shape


def test_gelu_glu_ref(benchmark):
    u = torch.randn(4096, 768)
    assert benchmark(gelu_glu_torch, u).shape == (4096, 384)


def test_add_layer_norm_ref(benchmark):
    x, r = torch.randn(4096, 384), torch.randn(4096, 384)
    w, b = torch.ones(384), torch.zeros(384)
    assert benchmark(add_layer_norm_torch, x, r, w, b, 1e-12).shape == x.shape
