"""turborank's PyTorch path against the independent eager reference (tests/eager_reference.py).

The oracle runs in fp64. fp32 logits must agree within 1e-5, relative to the logit's magnitude when
it exceeds 1: on turbo-shaped random weights with logits near 7, two independent fp32
implementations (ours and the eager one run in fp32) each land about 2e-5 from the fp64 value, so an
absolute 1e-5 between two fp32 runs would test rounding luck rather than correctness.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import random_ids, read_config
from tests.eager_reference import EagerJinaBert
from turborank import Reranker

FP32_TOL = 1e-5


def assert_fp32_parity(got: torch.Tensor, want64: torch.Tensor) -> None:
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want64.double(), rtol=FP32_TOL, atol=FP32_TOL)


def _eager(ckpt, scheme: str) -> EagerJinaBert:
    return EagerJinaBert(ckpt, read_config(ckpt), scheme=scheme, dtype=torch.float64)


def _packed_logits(reranker: Reranker, sequences: list[list[int]]) -> torch.Tensor:
    lengths = torch.tensor([len(s) for s in sequences])
    cu = torch.zeros(len(sequences) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    ids = torch.tensor([t for s in sequences for t in s])
    return reranker.model(ids, cu, int(lengths.max()))


@pytest.fixture(scope="module")
def small(small_ckpt):
    return Reranker.from_pretrained(small_ckpt, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def small_eager(small_ckpt):
    return _eager(small_ckpt, "jina-reranker-v1")


@pytest.mark.parametrize("length", [1, 2, 3, 17, 64, 97, 128, 129, 300, 511, 512, 1000, 2049])
def test_single_sequence_matches_eager(small, small_eager, length):
    seq = random_ids(random.Random(length), length)
    got = _packed_logits(small, [seq])
    want = small_eager.logits([seq])
    assert_fp32_parity(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("length", [4096, 8192])
def test_long_sequence_matches_eager(small, small_eager, length):
    seq = random_ids(random.Random(length), length)
    assert_fp32_parity(_packed_logits(small, [seq]), small_eager.logits([seq]))


@pytest.mark.parametrize("lengths", [[5, 1, 64, 33, 129], [300, 2, 97, 17, 17, 250, 1]])
def test_mixed_length_batch_matches_eager(small, small_eager, lengths):
    rng = random.Random(sum(lengths))
    seqs = [random_ids(rng, n) for n in lengths]
    assert_fp32_parity(_packed_logits(small, seqs), small_eager.logits(seqs))


def test_turbo_shapes_both_schemes_match_eager(turbo_ckpt):
    """12 heads: the only head count where the two schemes are reported to differ in the wild."""
    rng = random.Random(7)
    seqs = [random_ids(rng, n) for n in (200, 37, 1)]
    outputs = {}
    for scheme in ("standard", "jina-reranker-v1"):
        reranker = Reranker.from_pretrained(turbo_ckpt, device="cpu", dtype="float32", slopes=scheme)
        got = _packed_logits(reranker, seqs)
        want = _eager(turbo_ckpt, scheme).logits(seqs)
        assert_fp32_parity(got, want)
        outputs[scheme] = got
    # The test would be vacuous if the schemes produced the same logits.
    assert (outputs["standard"] - outputs["jina-reranker-v1"]).abs().max() > 1e-3


def test_scheme_follows_auto_map(small_ckpt, small_public_ckpt):
    local = Reranker.from_pretrained(small_ckpt, device="cpu")
    public = Reranker.from_pretrained(small_public_ckpt, device="cpu")
    assert local.config.alibi_scheme == "jina-reranker-v1"
    assert public.config.alibi_scheme == "standard"
    seq = random_ids(random.Random(3), 150)
    for reranker, ckpt, scheme in (
        (local, small_ckpt, "jina-reranker-v1"),
        (public, small_public_ckpt, "standard"),
    ):
        assert_fp32_parity(_packed_logits(reranker, [seq]), _eager(ckpt, scheme).logits([seq]))
    # Same weights (same seed), different scheme: the scores must differ.
    assert (_packed_logits(local, [seq]) - _packed_logits(public, [seq])).abs().max() > 1e-4


def test_reglu_checkpoint_matches_eager(tmp_path):
    from turborank.testing import make_checkpoint

    ckpt = make_checkpoint(tmp_path, "small", seed=5, feed_forward_type="reglu")
    reranker = Reranker.from_pretrained(ckpt, device="cpu")
    seqs = [random_ids(random.Random(1), n) for n in (40, 9)]
    assert_fp32_parity(_packed_logits(reranker, seqs), _eager(ckpt, "jina-reranker-v1").logits(seqs))


def test_last_layer_token0_only_is_exact(small, small_eager):
    rng = random.Random(9)
    seqs = [random_ids(rng, n) for n in (70, 1, 33)]
    fast = _packed_logits(small, seqs)
    small.model.last_layer_token0_only = False
    try:
        full = _packed_logits(small, seqs)
    finally:
        small.model.last_layer_token0_only = True
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)
    assert_fp32_parity(full, small_eager.logits(seqs))
