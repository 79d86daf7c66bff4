"""turborank.packing: the packed layout (cu_seqlens, pack/unpack), the stable longest-first order,
batch planning, and putting batch outputs back in input order."""

from __future__ import annotations

import pytest
import torch

from turborank.packing import (
    cu_seqlens,
    in_input_order,
    pack,
    plan_batches,
    to_device,
    unpack,
)
from turborank.ranking import best_first, ranked_results


def test_cu_seqlens_of_known_lengths():
    got = cu_seqlens([3, 1, 5, 1])
    assert got.dtype == torch.int32
    assert got.tolist() == [0, 3, 4, 9, 10]
    assert cu_seqlens([1]).tolist() == [0, 1]
    assert cu_seqlens(torch.tensor([2, 2])).tolist() == [0, 2, 4]


def test_cu_seqlens_of_no_sequences_is_a_lone_zero():
    got = cu_seqlens([])
    assert got.dtype == torch.int32 and got.tolist() == [0]


def test_cu_seqlens_moves_to_the_device_asked_for():
    assert cu_seqlens([4], "cpu").device.type == "cpu"


def test_best_first_is_stable_on_ties():
    assert best_first([3, 7, 3, 7, 1]) == [1, 3, 0, 2, 4]
    assert best_first([0.5, 0.5, 0.5]) == [0, 1, 2]
    assert best_first([]) == []


def test_ranked_results_cut_and_carry_the_text():
    results = ranked_results([0.1, 0.9, 0.5], ["a", "b", "c"], top_k=2, return_documents=True)
    assert results == [
        {"corpus_id": 1, "score": 0.9, "text": "b"},
        {"corpus_id": 2, "score": 0.5, "text": "c"},
    ]
    assert ranked_results([0.2], ["a"], None, False) == [{"corpus_id": 0, "score": 0.2}]


def test_plan_batches_respects_the_pair_cap_and_the_token_budget():
    lengths = [10] * 7 + [100, 100, 100]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=250)
    # Longest first; a batch counts as padded to its first (longest) member: 3 x 100 > 250 closes
    # the first batch at two, the third 100 takes one 10 (2 x 100 <= 250), then the 10s by threes.
    assert batches == [[7, 8], [9, 0], [1, 2, 3], [4, 5, 6]]
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 250


def test_plan_batches_gives_an_over_budget_pair_its_own_batch():
    assert plan_batches([5, 500, 5], batch_size=8, max_batch_tokens=100) == [[1], [0, 2]]


def test_plan_batches_of_no_pairs_is_no_batches():
    assert plan_batches([], batch_size=4, max_batch_tokens=100) == []


def test_pack_layout_and_unpack_round_trip():
    ids = [[101, 7, 102], [101], [101, 8, 9, 102, 10]]
    types = [[0, 0, 0], [0], [0, 0, 1, 1, 1]]
    flat_ids, cu, longest, flat_types = pack(ids, types)
    assert flat_ids.dtype == torch.long and flat_types.dtype == torch.long
    assert flat_ids.tolist() == [101, 7, 102, 101, 101, 8, 9, 102, 10]
    assert cu.tolist() == [0, 3, 4, 9] and longest == 5
    assert unpack(flat_ids, cu) == ids
    assert unpack(flat_types, cu) == types


def test_pack_takes_any_sequence_of_ints():
    """Lists take a fast path; tuples, ranges and empty sequences give the same layout."""
    flat_ids, cu, longest, _ = pack([(101, 7), range(3), [], [2**40, -1]])
    assert flat_ids.tolist() == [101, 7, 0, 1, 2, 2**40, -1]
    assert cu.tolist() == [0, 2, 5, 5, 7] and longest == 3


def test_pack_without_token_types():
    _, cu, longest, flat_types = pack([[1, 2], [3]])
    assert flat_types is None and cu.tolist() == [0, 2, 3] and longest == 2


def test_pack_needs_a_sequence():
    with pytest.raises(ValueError):
        pack([])


def test_outputs_come_back_in_input_order():
    lengths = [2, 9, 4, 9, 1]
    batches = plan_batches(lengths, batch_size=2, max_batch_tokens=100)
    order = [i for batch in batches for i in batch]
    # Each "output" is its pair's length: put back, it must read as the input lengths.
    outputs = [torch.tensor([float(lengths[i]) for i in batch]) for batch in batches]
    got = in_input_order(outputs, order, len(lengths))
    assert got.dtype == torch.float32 and got.tolist() == lengths
    assert in_input_order([], [], 0).tolist() == []


def test_to_device_on_the_host_is_the_tensor_itself():
    ids = torch.arange(5)
    assert to_device(ids, torch.device("cpu")) is ids


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_on_cuda_queues_copies_that_keep_their_values():
    # Many copies queued back to back, the host never waiting: each keeps its own values (a pinned
    # block handed out again before its copy ran would not).
    sources = [torch.full((50_000,), i, dtype=torch.int64) for i in range(32)]
    copies = [to_device(source, torch.device("cuda")) for source in sources]
    torch.cuda.synchronize()
    assert all(
        c.device.type == "cuda" and torch.equal(c.cpu(), s) for c, s in zip(copies, sources, strict=True)
    )
