"""A document's score does not depend on its batch neighbours, their order, or padding."""

from __future__ import annotations

import random

import pytest
import torch

from tests.helpers import sample_pairs
from turborank import Reranker
from turborank.packing import pack

TOL = 1e-6


@pytest.fixture(scope="module")
def reranker(small_ckpt):
    return Reranker.from_pretrained(small_ckpt, device="cpu", dtype="float32")


def test_alone_vs_shuffled_neighbours(reranker):
    pairs = sample_pairs(7, seed=11, max_words=400)
    alone = [reranker.predict([pair])[0] for pair in pairs]
    rng = random.Random(0)
    for _ in range(4):
        order = list(range(7))
        rng.shuffle(order)
        batched = reranker.predict([pairs[i] for i in order], batch_size=7)
        for position, index in enumerate(order):
            assert abs(batched[position] - alone[index]) <= TOL


@pytest.mark.parametrize("batch_size,max_batch_tokens", [(1, 16384), (2, 16384), (64, 700), (64, 100000)])
def test_batch_composition_does_not_matter(reranker, batch_size, max_batch_tokens):
    pairs = sample_pairs(13, seed=12, max_words=300)
    reference = reranker.predict(pairs, batch_size=64)
    got = reranker.predict(pairs, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    assert max(abs(a - b) for a, b in zip(got, reference, strict=True)) <= TOL


def test_extra_padding_inside_attention(reranker):
    """The PyTorch attention pads to max_seqlen internally; a larger max_seqlen changes nothing."""
    enc = reranker.encode(sample_pairs(3, seed=13))[0]
    ids, cu, _, _ = pack(enc.input_ids)
    tight = reranker.module(ids, cu, max(enc.lengths))
    loose = reranker.module(ids, cu, max(enc.lengths) + 37)
    torch.testing.assert_close(loose, tight, rtol=0, atol=TOL)


def test_duplicates_score_identically(reranker):
    pair = sample_pairs(1, seed=14)[0]
    scores = reranker.predict([pair] * 5 + sample_pairs(4, seed=15), batch_size=9)
    assert max(scores[:5]) - min(scores[:5]) <= TOL
