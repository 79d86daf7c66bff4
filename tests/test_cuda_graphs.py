"""CUDA graphs for small batches: the bucket layout (checked on CPU by running it eagerly, which is
what a graph replays) and, on a GPU, capture and replay against the eager forward."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.devices import DEVICE, GPU, needs_triton
from tests.helpers import sample_pairs
from turborank import Reranker
from turborank.cuda_graphs import CudaGraphForward
from turborank.packing import PAIR_BUCKETS, TOKEN_BUCKETS, bucket_layout, choose_bucket

pytestmark = pytest.mark.gpu


def test_choose_bucket_leaves_room_for_a_dummy_sequence():
    assert choose_bucket([10]) == (2, 64)
    assert choose_bucket([30, 34]) == (4, 128)  # 64 tokens + 2 dummies do not fit 64
    assert choose_bucket([10] * 7) == (8, 128)
    assert choose_bucket([10] * 8) == (16, 128)  # 8 pairs need a 9th slot
    assert choose_bucket([4096]) is None
    assert choose_bucket([1] * PAIR_BUCKETS[-1]) is None
    assert choose_bucket([]) is None
    assert choose_bucket([100] * 10, max_tokens=512) is None
    assert choose_bucket([100] * 10, max_pairs=8) is None
    for lengths in ([1], [63], [64], [2000, 1000, 95], [7] * 100):
        pairs, tokens = choose_bucket(lengths)
        assert pairs > len(lengths) and tokens >= sum(lengths) + pairs - len(lengths)
        assert pairs in PAIR_BUCKETS and tokens in TOKEN_BUCKETS


def test_bucket_layout_rows_all_belong_to_non_empty_sequences():
    ids = [[0, 5, 6], [0, 7], [0, 8, 9, 10, 11]]
    types = [[0, 1, 1], [0, 1], [0, 0, 1, 1, 1]]
    flat = bucket_layout(ids, types, (8, 64))
    tokens, pairs = 64, 8
    assert flat.shape == (2 * tokens + pairs + 1,)
    assert flat[:10].tolist() == [0, 5, 6, 0, 7, 0, 8, 9, 10, 11]
    assert flat[tokens : tokens + 10].tolist() == [0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    assert flat[tokens + 10 : 2 * tokens].eq(0).all()
    cu = flat[2 * tokens :]
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert lengths[:3] == [3, 2, 5]
    assert lengths[3] == 64 - 10 - 4 and lengths[4:] == [1] * 4  # the spare tokens, then 1 each
    assert cu[0] == 0 and cu[-1] == tokens and min(lengths) >= 1
    for bucket in ((4, 10), (3, 64)):  # no spare token; no dummy slot
        with pytest.raises(ValueError, match="do not fit bucket"):
            bucket_layout(ids, None, bucket)


def test_capture_needs_cuda_and_triton(small_ckpt):
    model = Reranker.from_pretrained(small_ckpt, device="cpu", backend="torch").module
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphForward(model)
    eager = CudaGraphForward(model, capture=False)
    with pytest.raises(ValueError, match="bucket"):
        eager.capture_buckets([(8, 8)])
    eager.capture_buckets([(8, 64)])  # valid, and nothing to capture without CUDA
    assert eager.captured == []


def _engines(checkpoint, device, backend):
    plain = Reranker.from_pretrained(checkpoint, device=device, dtype="float32", backend=backend)
    graphed = Reranker.from_pretrained(checkpoint, device=device, dtype="float32", backend=backend)
    return plain, graphed


@pytest.mark.parametrize("n,max_words", [(1, 5), (10, 40), (13, 1200), (40, 30)])
def test_bucketed_layout_gives_the_unbucketed_logits(small_ckpt, n, max_words):
    """capture=False runs exactly the graph's layout (dummies, spare tokens, max_seqlen = bucket
    tokens) eagerly: real sequences must not notice it. 40 pairs make two batches (32 + 8), both
    bucketed; 13 pairs of up to 1,200 words exceed the largest token bucket and run eagerly."""
    plain, graphed = _engines(small_ckpt, "cpu", "torch")
    runner = graphed.enable_cuda_graphs(capture=False)
    pairs = sample_pairs(n, seed=n, max_words=max_words)
    want = plain.predict(pairs, activation=False)
    got = graphed.predict(pairs, activation=False, max_batch_tokens=10**6)  # 32 pairs per batch
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
    assert runner.batches == {1: 1, 10: 1, 13: 0, 40: 2}[n]


def test_bucketed_path_refuses_ids_past_the_tables_on_the_host(small_ckpt):
    from turborank.tokenization import EncodedPairs

    reranker = Reranker.from_pretrained(small_ckpt, device="cpu", backend="torch")
    runner = reranker.enable_cuda_graphs(capture=False)
    vocab = reranker.config.vocab_size
    bad = EncodedPairs(input_ids=[[0, 5], [0, vocab + 3]], token_type_ids=None, was_truncated=[False, False])
    with pytest.raises(ValueError, match=f"input_ids must lie in \\[0, {vocab}\\)") as refused:
        reranker.logits(bad)
    # Refused by the bucketed path itself, before its forward.
    assert any(entry.path.name == "cuda_graphs.py" for entry in refused.traceback)
    assert runner.batches == 0


@needs_triton
def test_bucketed_layout_with_triton_kernels(small_ckpt):
    """The kernels' grid is sized by the bucket's max_seqlen, far above the real lengths."""
    device = DEVICE
    plain, graphed = _engines(small_ckpt, device, "triton")
    graphed.enable_cuda_graphs(capture=False)
    pairs = sample_pairs(3, seed=5, max_words=12)
    want = plain.predict(pairs, activation=False)
    got = graphed.predict(pairs, activation=False)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4


@pytest.mark.skipif(not GPU, reason="CUDA graph capture needs a GPU")
def test_graph_replays_match_eager_forward(small_ckpt):
    plain, graphed = _engines(small_ckpt, "cuda", "triton")
    runner = graphed.enable_cuda_graphs()
    runner.capture_buckets([(2, 64), (16, 512)])  # as a server would at start-up
    assert runner.captured == [(2, 64), (16, 512)]
    for seed, n, words in ((1, 10, 40), (2, 10, 40), (3, 3, 200), (4, 1, 3), (5, 10, 40)):
        pairs = sample_pairs(n, seed=seed, max_words=words)
        want = plain.predict(pairs, activation=False)
        got = graphed.predict(pairs, activation=False)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4, (seed, n)
    assert runner.captured  # the batches above went through graphs
    # Many batches of one bucket in one call: each output is copied out before the next replay.
    pairs = sample_pairs(100, seed=9, max_words=30)
    want = plain.predict(pairs, activation=False, batch_size=8)
    got = graphed.predict(pairs, activation=False, batch_size=8)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4


@pytest.mark.skipif(not GPU, reason="CUDA graph capture needs a GPU")
def test_graphs_refuse_the_pytorch_attention(small_ckpt):
    reranker = Reranker.from_pretrained(small_ckpt, device="cuda", backend="torch")
    with pytest.raises(ValueError, match="Triton ops"):
        reranker.enable_cuda_graphs()


class _SyncDetector(TorchDispatchMode):
    """Records the ATen ops that make a CUDA host wait for the device (or need data on the host)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique", "item")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(s in name for s in self.SYNCING):
            self.found.append(name)
        if "index" in name:  # a boolean mask as an index runs nonzero inside the kernel
            flat = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
            if any(isinstance(a, torch.Tensor) and a.dtype in (torch.bool, torch.uint8) for a in flat):
                self.found.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


@needs_triton
def test_triton_forward_has_no_host_sync(small_ckpt):
    """What a CUDA graph needs: no op of the Triton-path forward waits on the device. The PyTorch
    path is checked too, to show the detector finds what it looks for (its attention masks)."""
    device = DEVICE
    inputs = bucket_layout([[0, 5, 6, 7], [0, 8, 9]], [[0, 0, 1, 1], [0, 1, 1]], (4, 64))
    found = {}
    for backend in ("triton", "torch"):
        model = Reranker.from_pretrained(small_ckpt, device=device, dtype="float32", backend=backend).module
        flat = inputs.to(device)
        with _SyncDetector() as detector:
            model(flat[:64], flat[128:].to(torch.int32), 64, flat[64:128])
        found[backend] = detector.found
    assert found["triton"] == []
    assert found["torch"], found
