"""The whole model with the Triton backend against the PyTorch path (interpreter on CPU, GPU when present)."""

from __future__ import annotations

import random

import pytest
import torch

from tests.devices import BF16_DOT_SKIP, DEVICE, GPU, needs_triton
from tests.eager_reference import EagerJinaBert
from tests.helpers import random_ids, read_config, sample_pairs
from turborank import Reranker
from turborank.ops import OP_NAMES
from turborank.packing import pack

pytestmark = [pytest.mark.gpu, needs_triton]


@pytest.fixture(scope="module")
def engines(small_ckpt):
    triton = Reranker.from_pretrained(small_ckpt, device=DEVICE, dtype="float32", backend="triton")
    torch_path = Reranker.from_pretrained(small_ckpt, device=DEVICE, dtype="float32", backend="torch")
    return triton, torch_path


def test_backend_is_triton_for_every_op(engines):
    assert engines[0].describe()["backends"] == dict.fromkeys(OP_NAMES, "triton")


def test_fp32_logits_match_torch_path(engines):
    triton, torch_path = engines
    pairs = sample_pairs(4 if not GPU else 64, seed=31, max_words=60 if not GPU else 1500)
    got = torch.tensor(triton.predict(pairs, activation=False))
    want = torch.tensor(torch_path.predict(pairs, activation=False))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_packed_batch_equals_each_alone(engines):
    triton, _ = engines
    pairs = sample_pairs(3, seed=32, max_words=50)
    batched = triton.predict(pairs)
    alone = [triton.predict([p])[0] for p in pairs]
    assert max(abs(a - b) for a, b in zip(batched, alone, strict=True)) <= 1e-6


@BF16_DOT_SKIP
def test_bf16_model_within_twice_eager_bf16_error(small_ckpt):
    rng = random.Random(0)
    seqs = [random_ids(rng, n) for n in (512, 97, 2048, 1)]
    config = read_config(small_ckpt)
    scheme = "jina-reranker-v1"
    want = EagerJinaBert(small_ckpt, config, scheme, dtype=torch.float64).logits(seqs).double()
    eager_bf16 = EagerJinaBert(small_ckpt, config, scheme, dtype=torch.bfloat16).logits(seqs).double()
    model = Reranker.from_pretrained(small_ckpt, device="cuda", dtype="bfloat16", backend="triton").module
    ids, cu, longest, _ = pack(seqs)
    got = model(ids.cuda(), cu.cuda(), longest).double().cpu()
    assert (got - want).abs().max() <= 2 * (eager_bf16 - want).abs().max() + 1e-3
