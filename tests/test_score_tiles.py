"""The CPU attention's bf16 score tiles: sequences of different lengths batched into padded groups
give what each sequence gives on its own, and padding never reaches a result."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.helpers import dense_attention
from turborank.alibi import alibi_slopes
from turborank.kernels import alibi_attention_torch, alibi_score_tiles
from turborank.packing import cu_seqlens

HEADS = 6


def _qkv(lengths: list[int], seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(sum(lengths), HEADS, 32, generator=gen).bfloat16() for _ in range(3))


def _attend(q, k, v, lengths_q: list[int], lengths_k: list[int]) -> torch.Tensor:
    return alibi_attention_torch(
        q,
        k,
        v,
        cu_seqlens(lengths_q),
        cu_seqlens(lengths_k),
        max(lengths_q),
        max(lengths_k),
        alibi_slopes(HEADS),
    )


def _one_by_one(q, k, v, lengths: list[int]) -> torch.Tensor:
    starts = [0, *itertools.accumulate(lengths)]
    return torch.cat(
        [_attend(q[a:b], k[a:b], v[a:b], [b - a], [b - a]) for a, b in itertools.pairwise(starts)]
    )


@pytest.mark.parametrize(
    "lengths",
    [[79, 89, 71, 96, 33], [5, 1, 32, 31, 64], [300, 129, 160, 140, 7]],
    ids=["one-bucket", "small", "three-buckets"],
)
def test_a_batch_gives_each_sequence_what_it_gets_alone(lengths):
    """Groups pad keys to a multiple of 32 and queries to the group's longest: the batch's rows
    match each sequence run alone (the GEMMs' shapes differ, so bf16 rounding may land apart by a
    unit in the last place), and both stay within twice the reference bf16 error of fp64."""
    q, k, v = _qkv(lengths, sum(lengths))
    together = _attend(q, k, v, lengths, lengths)
    alone = _one_by_one(q, k, v, lengths)
    torch.testing.assert_close(together.float(), alone.float(), rtol=0, atol=2 * 2**-8)
    want = dense_attention(q.float(), k.float(), v.float(), lengths, lengths, alibi_slopes(HEADS))
    for got in (together, alone):
        assert (got.double() - want).abs().max().item() < 0.05


def test_groups_cut_smaller_give_the_same_rows(monkeypatch):
    """A bucket cut into many groups (two sequences each) matches one group holding all."""
    lengths = [70, 70, 65, 90, 96, 80]
    q, k, v = _qkv(lengths, 3)
    whole = _attend(q, k, v, lengths, lengths)
    monkeypatch.setattr(alibi_score_tiles, "GROUP_ELEMENTS", HEADS * 96 * 96 * 2)
    cut = _attend(q, k, v, lengths, lengths)
    torch.testing.assert_close(cut.float(), whole.float(), rtol=0, atol=2 * 2**-8)


def test_token0_queries_against_padded_keys():
    """The last layer queries token 0 of each sequence only: one query row against every key."""
    lengths = [79, 89, 71, 3, 300]
    q, k, v = _qkv(lengths, 5)
    first_rows = torch.tensor([0, *itertools.accumulate(lengths)][:-1])
    got = _attend(q[first_rows], k, v, [1] * len(lengths), lengths)
    want = dense_attention(
        q[first_rows].float(), k.float(), v.float(), [1] * len(lengths), lengths, alibi_slopes(HEADS)
    )
    assert (got.double() - want).abs().max().item() < 0.03


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_stay_in_their_sequence(bad):
    """A NaN or inf in one sequence's key and value rows reaches that sequence's rows only, although
    its padded slots sit in the same tile as its neighbours'."""
    lengths = [40, 37, 50, 33]  # one bucket of 64 keys
    q, k, v = _qkv(lengths, 7)
    clean = _attend(q, k, v, lengths, lengths)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[40 + 5, 1, 3] = bad
    v_bad[40 + 36, 2, 0] = bad
    got = _attend(q, k_bad, v_bad, lengths, lengths)
    starts = [0, *itertools.accumulate(lengths)]
    for index, (a, b) in enumerate(itertools.pairwise(starts)):
        if index == 1:
            assert not torch.isfinite(got[a:b]).all()
        else:
            torch.testing.assert_close(got[a:b], clean[a:b], rtol=0, atol=0)


def test_padded_key_count():
    assert [alibi_score_tiles.padded_keys(n) for n in (1, 31, 32, 33, 1000, 1024)] == [
        32,
        32,
        32,
        64,
        1024,
        1024,
    ]
