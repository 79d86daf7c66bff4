"""``turborank.modeling.JinaBertReranker``: the forward over packed sequences, built directly from
a synthetic checkpoint (``turborank.testing``) with the PyTorch ops, and its guards."""

from __future__ import annotations

import random

import pytest
import torch

from tests.devices import DEVICE, needs_triton
from tests.helpers import random_ids, sample_pairs
from turborank import Reranker
from turborank.config import JinaBertConfig
from turborank.modeling import JinaBertReranker
from turborank.ops import resolve_ops
from turborank.packing import pack
from turborank.weights import find_weights_file, load_weights


@pytest.fixture(scope="module")
def model(small_ckpt) -> JinaBertReranker:
    config = JinaBertConfig.from_file(small_ckpt / "config.json")
    weights = load_weights(find_weights_file(small_ckpt), config, torch.float32)
    return JinaBertReranker(config, weights, resolve_ops("torch", torch.device("cpu"))).eval()


@pytest.fixture(scope="module")
def reranker(small_ckpt):
    return Reranker.from_pretrained(small_ckpt, device="cpu", dtype="float32")


def _logits(model: JinaBertReranker, sequences: list[list[int]], types=None) -> torch.Tensor:
    """fp32 logits [len(sequences)] of one packed forward."""
    ids, cu_seqlens, longest, type_ids = pack(sequences, types)
    return model(ids, cu_seqlens, longest, type_ids)


def test_forward_gives_one_fp32_logit_per_packed_sequence(model):
    seqs = [random_ids(random.Random(3), n) for n in (12, 1, 40)]
    logits = _logits(model, seqs)
    assert logits.shape == (3,) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert len(set(logits.tolist())) == 3  # distinct inputs, distinct scores


def test_packed_forward_equals_each_sequence_alone(model):
    """Packing is exact: no token of one sequence reaches another through attention."""
    rng = random.Random(4)
    seqs = [random_ids(rng, n) for n in (70, 1, 33, 5)]
    alone = torch.cat([_logits(model, [seq]) for seq in seqs])
    torch.testing.assert_close(_logits(model, seqs), alone, rtol=0, atol=1e-5)


def test_no_token_types_means_type_zero(model):
    seqs = [random_ids(random.Random(5), n) for n in (9, 20)]
    zeros = [[0] * len(seq) for seq in seqs]
    ones = [[1] * len(seq) for seq in seqs]
    torch.testing.assert_close(_logits(model, seqs), _logits(model, seqs, zeros), rtol=0, atol=0)
    assert (_logits(model, seqs, ones) - _logits(model, seqs)).abs().max() > 1e-4  # types are read


@pytest.mark.parametrize("lengths", [(70, 1, 33), (2,), (129, 128, 3)])
def test_last_layer_token0_only_gives_the_full_last_layer_logits(model, lengths):
    """Only token 0 is pooled, so querying the last layer for the token-0 rows alone is exact
    (up to fp32 rounding of the different GEMM shapes)."""
    rng = random.Random(sum(lengths))
    seqs = [random_ids(rng, n) for n in lengths]
    assert model.last_layer_token0_only  # the default
    fast = _logits(model, seqs)
    model.last_layer_token0_only = False
    try:
        full = _logits(model, seqs)
    finally:
        model.last_layer_token0_only = True
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_in_row_blocks_on_cpu_gives_the_whole_mlp_logits(small_ckpt, dtype):
    """On CPU the MLP runs over row blocks (bounded temporaries); the blocks, the last one partial,
    give the logits of the MLP over all rows at once."""
    config = JinaBertConfig.from_file(small_ckpt / "config.json")
    weights = load_weights(find_weights_file(small_ckpt), config, dtype)
    model = JinaBertReranker(config, weights, resolve_ops("torch", torch.device("cpu"))).eval()
    assert model.cpu_mlp_rows_per_step is not None  # the default on CPU
    rng = random.Random(6)
    seqs = [random_ids(rng, n) for n in (70, 1, 33, 129)]  # 233 rows: 14 blocks of 16 and one of 9
    model.cpu_mlp_rows_per_step = 16
    blocks = []
    whole_mlp = model._mlp
    model._mlp = lambda layer, linears, x: blocks.append(x.shape[0]) or whole_mlp(layer, linears, x)
    try:
        stepped = _logits(model, seqs)
        model.cpu_mlp_rows_per_step = None
        whole = _logits(model, seqs)
    finally:
        del model._mlp
    layers = config.num_hidden_layers
    # Full layers run 15 blocks each, then the plain MLP once; the last layer has 4 token-0 rows.
    assert blocks == ([16] * 14 + [9]) * (layers - 1) + [4] + [233] * (layers - 1) + [4]
    # Rows do not interact, but a GEMM library may pick another kernel for another row count.
    torch.testing.assert_close(stepped, whole, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_check_token_ids_accepts_ids_inside_the_tables(model):
    cfg = model.config
    model.check_token_ids(torch.tensor([0, cfg.vocab_size - 1]), torch.tensor([0, cfg.type_vocab_size - 1]))
    model.check_token_ids(torch.tensor([0, 5]), None)
    model.check_token_ids(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


@pytest.mark.parametrize(
    "ids,types,message",
    [
        (
            [0, "vocab"],
            None,
            r"input_ids must lie in \[0, {vocab}\) \(vocab_size of the model\), got ids 0..{vocab}",
        ),
        ([-3, 4], None, r"input_ids must lie in \[0, {vocab}\) .*got ids -3..4"),
        (
            [0, 4],
            [0, 2],
            r"token_type_ids must lie in \[0, 2\) \(type_vocab_size of the model\), got ids 0..2",
        ),
        ([0, 4], [-1, 0], r"token_type_ids must lie in \[0, 2\) .*got ids -1..0"),
    ],
)
def test_check_token_ids_refuses_ids_past_the_tables(model, ids, types, message):
    vocab = model.config.vocab_size
    input_ids = torch.tensor([vocab if i == "vocab" else i for i in ids])
    type_ids = None if types is None else torch.tensor(types)
    with pytest.raises(ValueError, match=message.format(vocab=vocab)):
        model.check_token_ids(input_ids, type_ids)


def test_ids_past_the_tables_are_refused_on_the_host(reranker):
    """Ids are checked where they are packed, on CPU tensors before the copy to the device (no
    device sync): a ValueError naming the ids and the limit."""
    from turborank.tokenization import EncodedPairs

    vocab = reranker.config.vocab_size
    bad = EncodedPairs(
        input_ids=[[0, 5, 6], [0, vocab, 2]], token_type_ids=None, was_truncated=[False, False]
    )
    with pytest.raises(
        ValueError,
        match=f"input_ids must lie in \\[0, {vocab}\\) \\(vocab_size of the model\\), got ids 0..{vocab}",
    ):
        reranker.logits(bad)
    types = EncodedPairs(input_ids=[[0, 5, 6]], token_type_ids=[[0, 0, 2]], was_truncated=[False])
    with pytest.raises(ValueError, match="token_type_ids must lie in \\[0, 2\\)"):
        reranker.logits(types)
    negative = EncodedPairs(input_ids=[[0, -1, 6]], token_type_ids=None, was_truncated=[False])
    with pytest.raises(ValueError, match="got ids -1..6"):
        reranker.logits(negative)


def test_fused_gelu_glu_gemm_is_refused_on_the_torch_backend(model):
    """The fused GEGLU GEMM exists only as a Triton kernel: asking for it with PyTorch ops raises
    instead of running something else, and leaves the model as it was."""
    with pytest.raises(
        ValueError, match="fused GEGLU GEMM is a Triton kernel; the gelu_glu op here is 'torch'"
    ):
        model.use_fused_gelu_glu_gemm(True)
    assert not model.fused_gelu_glu_gemm
    model.use_fused_gelu_glu_gemm(False)  # turning it off needs no Triton
    assert not model.fused_gelu_glu_gemm


@pytest.mark.gpu
@needs_triton
def test_model_with_fused_gemm_matches_unfused(small_ckpt):
    reranker = Reranker.from_pretrained(small_ckpt, device=DEVICE, dtype="float32", backend="triton")
    pairs = sample_pairs(3, seed=21, max_words=30)
    want = reranker.predict(pairs, activation=False)
    reranker.module.use_fused_gelu_glu_gemm(True)
    got = reranker.predict(pairs, activation=False)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4


def test_a_model_on_a_second_gpu_runs_its_ops_with_that_gpu_current(model, monkeypatch):
    """Triton launches on the current CUDA device, not the tensors': a model on cuda:1 called from
    a fresh thread (current device 0) launched every kernel on GPU 0. Simulated on CPU: the current
    device is a fake, the model reports cuda:1, and each op records the device current at launch."""
    import contextlib
    import dataclasses

    current = [0]

    @contextlib.contextmanager
    def device(chosen):
        before, current[0] = current[0], torch.device(chosen).index
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(JinaBertReranker, "device", property(lambda self: torch.device("cuda:1")))
    seen = []

    def recorded(op):
        def run(*args, **kwargs):
            seen.append(current[0])
            return op(*args, **kwargs)

        return run

    names = ("embedding_layer_norm", "alibi_attention", "gelu_glu", "add_layer_norm")
    monkeypatch.setattr(
        model, "ops", dataclasses.replace(model.ops, **{n: recorded(getattr(model.ops, n)) for n in names})
    )
    logits = _logits(model, [[0, 5, 6, 7], [0, 9, 10]])
    assert seen and set(seen) == {1} and current[0] == 0 and logits.shape == (2,)
