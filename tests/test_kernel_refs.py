"""The PyTorch references of each op against direct formulas in fp64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.helpers import dense_attention
from turborank.alibi import alibi_slopes
from turborank.kernels import add_layer_norm_torch, alibi_attention_cpu, alibi_attention_torch, gelu_glu_torch
from turborank.packing import cu_seqlens

# The PyTorch engine's module, for its call-size settings.
attention_module = alibi_attention_cpu


def _cu(lengths: list[int]) -> torch.Tensor:
    return cu_seqlens(lengths)


@pytest.mark.parametrize("lengths", [[1], [2], [17], [64, 97], [129, 1, 300, 5]])
@pytest.mark.parametrize("heads,d", [(12, 32), (6, 64), (3, 128)])
def test_alibi_attention_ref_matches_dense(lengths, heads, d):
    gen = torch.Generator().manual_seed(sum(lengths) + d)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, d, generator=gen) for _ in range(3))
    slopes = alibi_slopes(heads, "jina-reranker-v1")
    cu = _cu(lengths)
    got = alibi_attention_torch(q, k, v, cu, cu, max(lengths), max(lengths), slopes)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(
        got.double(), dense_attention(q, k, v, lengths, lengths, slopes), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("band", [False, True])
def test_alibi_attention_ref_runs_of_equal_lengths(band):
    """Neighbouring sequences of one length share a call; each must still see only its own keys."""
    lengths = [50, 50, 50, 7, 50, 50, 1, 1]
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(sum(lengths), 12, 32, generator=gen) for _ in range(3))
    slopes = alibi_slopes(12)
    cu = _cu(lengths)
    got = alibi_attention_torch(q, k, v, cu, cu, 50, 50, slopes, band=band)
    torch.testing.assert_close(
        got.double(), dense_attention(q, k, v, lengths, lengths, slopes), rtol=1e-5, atol=1e-5
    )
    # The same pairs with one key changed in the second sequence: only its rows may move.
    k2 = k.clone()
    k2[60] += 10.0
    moved = (alibi_attention_torch(q, k2, v, cu, cu, 50, 50, slopes, band=band) - got).abs().amax((1, 2))
    assert moved[50:100].max() > 0 and moved[:50].max() == 0 and moved[100:].max() == 0


def test_runs_are_cut_to_the_call_size(monkeypatch):
    lengths = [50] * 5 + [7, 1, 1]
    starts = _cu(lengths).tolist()
    assert list(attention_module._runs_of_one_length(starts, starts, 12)) == [
        (0, 5, 50, 50),
        (5, 1, 7, 7),
        (6, 2, 1, 1),
    ]
    monkeypatch.setattr(attention_module, "_CALL_BIAS_ELEMENTS", 12 * 50 * 50 * 2)  # two 50-token sequences
    assert [run[:2] for run in attention_module._runs_of_one_length(starts, starts, 12)] == [
        (0, 2),
        (2, 2),
        (4, 1),
        (5, 1),
        (6, 2),
    ]
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(sum(lengths), 12, 32, generator=gen) for _ in range(3))
    slopes = alibi_slopes(12)
    got = alibi_attention_torch(q, k, v, _cu(lengths), _cu(lengths), 50, 50, slopes)
    torch.testing.assert_close(
        got.double(), dense_attention(q, k, v, lengths, lengths, slopes), rtol=1e-5, atol=1e-5
    )


def test_alibi_attention_ref_query_prefix():
    """Queries that are a prefix of each sequence (token 0 only, as in the last layer)."""
    lengths_k, lengths_q = [5, 40, 1, 77], [1, 1, 1, 1]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(sum(lengths_q), 4, 32, generator=gen)
    k, v = (torch.randn(sum(lengths_k), 4, 32, generator=gen) for _ in range(2))
    slopes = alibi_slopes(4)
    got = alibi_attention_torch(q, k, v, _cu(lengths_q), _cu(lengths_k), 1, max(lengths_k), slopes)
    torch.testing.assert_close(
        got.double(), dense_attention(q, k, v, lengths_q, lengths_k, slopes), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("band", [False, True])
def test_alibi_attention_ref_blocking_is_exact(monkeypatch, band):
    """Calls of a few query rows give the same result as one call per sequence."""
    lengths = [300, 129]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(sum(lengths), 6, 32, generator=gen) for _ in range(3))
    args = (q, k, v, _cu(lengths), _cu(lengths), 300, 300, alibi_slopes(6))
    whole = alibi_attention_torch(*args, band=False)
    monkeypatch.setattr(attention_module, "_CALL_BIAS_ELEMENTS", 6 * 300 * 7)  # 7 query rows per call
    monkeypatch.setattr(attention_module, "_BAND_ROWS", 7)
    monkeypatch.setattr(attention_module, "_MERGE_SLACK", 1.0)
    torch.testing.assert_close(alibi_attention_torch(*args, band=band), whole, rtol=0, atol=1e-6)


def test_band_blocks_merge_only_where_little_is_added(monkeypatch):
    monkeypatch.setattr(attention_module, "_BAND_ROWS", 4)
    monkeypatch.setattr(attention_module, "_MERGED_ROWS_STEP", 8)
    # Three blocks reading every key, then two narrow ones; 18 query rows in all.
    ranges = [(0, 100), (0, 100), (0, 100), (10, 20), (14, 24)]
    calls = list(attention_module._merged_blocks(ranges, 18, 1))
    # Rows are covered in order, once, each call reading at least its blocks' keys.
    assert [c[0] for c in calls] == [0, *[c[1] for c in calls[:-1]]] and calls[-1][1] == 18
    for start, stop, lo, hi in calls:
        blocks = ranges[start // 4 : (stop + 3) // 4]
        assert lo <= min(b[0] for b in blocks) and hi >= max(b[1] for b in blocks)
    # The whole-key blocks merge, but only to 8 rows (12 is not a multiple of the step); a narrow
    # block never joins a wide one, and the two narrow ones stay apart: merged, they would compute
    # 6 x 14 scores for 4 x 10 + 2 x 10 of their own, more than the 15% slack.
    assert calls == [(0, 8, 0, 100), (8, 12, 0, 100), (12, 16, 10, 20), (16, 18, 14, 24)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_alibi_attention_ref_half_dtypes(dtype):
    lengths = [33, 70]
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(sum(lengths), 4, 32, generator=gen) for _ in range(3))
    slopes = alibi_slopes(4)
    cu = _cu(lengths)
    got = alibi_attention_torch(q.to(dtype), k.to(dtype), v.to(dtype), cu, cu, 70, 70, slopes)
    assert got.dtype == dtype
    want = dense_attention(q, k, v, lengths, lengths, slopes)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=3e-2 if dtype == torch.bfloat16 else 4e-3)


def _bf16_reference(q, k, v, lengths, slopes):
    """What the reference's own bf16 forward computes: scores with the bias rounded to bf16, softmax,
    weights rounded to bf16, product in bf16; the yardstick for the bf16 tiles."""
    out, offset = [], 0
    d = q.shape[-1]
    for n in lengths:
        qs, ks, vs = (t[offset : offset + n].bfloat16().transpose(0, 1) for t in (q, k, v))
        i = torch.arange(n, dtype=torch.float32)[:, None]
        bias = (-slopes.float()[:, None, None] * (i - i.T).abs()).bfloat16()
        scores = (qs @ ks.transpose(1, 2)) / math.sqrt(d) + bias
        out.append((torch.softmax(scores.float(), dim=-1).bfloat16() @ vs).transpose(0, 1))
        offset += n
    return torch.cat(out)


@pytest.mark.parametrize(
    "lengths",
    [[1], [17], [300, 300, 300], [129, 1, 64], [1024], [1025, 5]],
    ids=["one", "17", "run-of-3", "mixed", "last-tiled", "past-the-tiles"],
)
def test_alibi_attention_ref_bf16_within_twice_the_bf16_reference_error(lengths):
    """bf16 runs of up to _TILE_MAX_KEYS keys take bf16 score tiles (longer ones SDPA in fp32):
    judged against fp64 with flash-attention's rule, at most twice the error of the reference's own
    bf16 attention, plus one bf16 unit of the output as a floor."""
    heads = 12
    gen = torch.Generator().manual_seed(sum(lengths))
    q, k, v = (torch.randn(sum(lengths), heads, 32, generator=gen) for _ in range(3))
    slopes = alibi_slopes(heads, "jina-reranker-v1")
    cu = _cu(lengths)
    want = dense_attention(q, k, v, lengths, lengths, slopes)
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    got = alibi_attention_torch(q16, k16, v16, cu, cu, max(lengths), max(lengths), slopes)
    assert got.dtype == torch.bfloat16
    error = (got.double() - want).abs().max().item()
    reference_error = (_bf16_reference(q16, k16, v16, lengths, slopes).double() - want).abs().max().item()
    floor = torch.finfo(torch.bfloat16).eps * want.abs().max().item()
    assert error <= 2 * reference_error + floor, (error, reference_error)


def test_bf16_tiles_cut_into_row_blocks_are_exact(monkeypatch):
    """A tile of a few query rows gives what one tile per sequence gives."""
    lengths = [300, 300, 129]
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(sum(lengths), 6, 32, generator=gen).bfloat16() for _ in range(3))
    args = (q, k, v, _cu(lengths), _cu(lengths), 300, 300, alibi_slopes(6))
    whole = alibi_attention_torch(*args)
    monkeypatch.setattr(attention_module, "_CALL_BIAS_ELEMENTS", 6 * 300 * 7)  # 7 query rows per tile
    torch.testing.assert_close(alibi_attention_torch(*args), whole, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_input_reaches_only_its_own_sequence(dtype):
    """NaN in one sequence's key and inf in another's value: those sequences' rows are not finite
    (as in exact arithmetic), every other row is finite and unchanged. Lengths cover the bf16 tiles
    (run of two, a lone short one) and SDPA with the band (1,100 keys)."""
    lengths = [1100, 40, 40, 7, 300]
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(sum(lengths), 4, 32, generator=gen).to(dtype) for _ in range(3))
    cu = _cu(lengths)
    args = (cu, cu, 1100, 1100, alibi_slopes(4))
    clean = alibi_attention_torch(q, k, v, *args)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[1100 + 3, 2, 5] = float("nan")  # second sequence
    v_bad[1100 + 80 + 40 + 2, 0, 0] = float("inf")  # fifth (300 keys): the last short one
    got = alibi_attention_torch(q, k_bad, v_bad, *args)
    starts = cu.tolist()
    for index, (a, b) in enumerate(itertools.pairwise(starts)):
        rows = got[a:b]
        if index in (1, 4):
            assert not torch.isfinite(rows).all(), index
        else:
            torch.testing.assert_close(rows, clean[a:b], rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("shape", [(1, 2), (7, 3072), (33, 258)])
def test_gelu_glu_ref(activation, shape):
    u = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    half = shape[1] // 2
    gate, lin = u[:, :half], u[:, half:]
    act = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2))) if activation == "gelu" else gate.clamp(min=0)
    got = gelu_glu_torch(u.float(), activation)
    torch.testing.assert_close(got.double(), act * lin, rtol=1e-6, atol=1e-6)


def test_gelu_glu_ref_is_not_tanh_gelu():
    u = torch.full((1, 2), 1.5)
    exact = gelu_glu_torch(u)
    tanh_form = torch.nn.functional.gelu(u[:, :1], approximate="tanh") * u[:, 1:]
    assert (exact - tanh_form).abs().item() > 1e-4


def test_gelu_glu_ref_rejects_bad_input():
    with pytest.raises(ValueError, match="even last dimension"):
        gelu_glu_torch(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown GLU activation 'silu'"):
        gelu_glu_torch(torch.zeros(2, 4), "silu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_layer_norm_ref(dtype, with_residual):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(37, 384, generator=gen) * 3 + 1
    r = torch.randn(37, 384, generator=gen) if with_residual else None
    w, b = torch.randn(384, generator=gen), torch.randn(384, generator=gen)
    h = x.double() + (r.double() if with_residual else 0)
    want = (h - h.mean(-1, keepdim=True)) / torch.sqrt(
        h.var(-1, unbiased=False, keepdim=True) + 1e-12
    ) * w.double() + b.double()
    got = add_layer_norm_torch(
        x.to(dtype), None if r is None else r.to(dtype), w.to(dtype), b.to(dtype), 1e-12
    )
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-1, torch.bfloat16: 2.5e-1}[dtype]
    # Half inputs are rounded before the add; compare against the fp64 result of the rounded inputs.
    if dtype != torch.float32:
        h = x.to(dtype).double() + (r.to(dtype).double() if with_residual else 0)
        wd, bd = w.to(dtype).double(), b.to(dtype).double()
        want = (h - h.mean(-1, keepdim=True)) / torch.sqrt(
            h.var(-1, unbiased=False, keepdim=True) + 1e-12
        ) * wd + bd
        tol = 2 * torch.finfo(dtype).eps * want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)


def test_add_layer_norm_ref_constant_row_is_finite():
    """eps = 1e-12 would vanish in fp16; fp32 statistics keep a constant row finite."""
    x = torch.full((2, 64), 3.0, dtype=torch.float16)
    got = add_layer_norm_torch(
        x, None, torch.ones(64, dtype=torch.float16), torch.zeros(64, dtype=torch.float16), 1e-12
    )
    assert torch.isfinite(got).all()


def _attention_inputs(lengths: list[int], heads: int = 4, d: int = 32):
    gen = torch.Generator().manual_seed(len(lengths))
    q, k, v = (torch.randn(sum(lengths), heads, d, generator=gen) for _ in range(3))
    return q, k, v, _cu(lengths), torch.tensor([2.0**-i for i in range(1, heads + 1)])


@pytest.mark.parametrize("scale", [-0.5, 0.0, float("nan"), float("inf"), True, "0.1"])
def test_alibi_attention_ref_rejects_bad_softmax_scale(scale):
    q, k, v, cu, slopes = _attention_inputs([10])
    with pytest.raises(ValueError, match="softmax_scale must be a positive finite number"):
        alibi_attention_torch(q, k, v, cu, cu, 10, 10, slopes, scale)


def test_alibi_attention_ref_rejects_bad_lengths():
    q, k, v, cu, slopes = _attention_inputs([10, 20])
    cases = [
        (dict(max_seqlen_q=19), "max_seqlen_q=19 is below the longest sequence in cu_seqlens_q \\(20\\)"),
        (dict(max_seqlen_k=5), "max_seqlen_k=5 is below the longest"),
        (dict(max_seqlen_q=0), "max_seqlen_q must be a Python int >= 1"),
        (dict(max_seqlen_k=20.0), "max_seqlen_k must be a Python int >= 1"),
        (dict(cu_seqlens_q=torch.tensor([1, 10, 30], dtype=torch.int32)), "cu_seqlens_q must start at 0"),
        (
            dict(cu_seqlens_k=torch.tensor([0, 20, 10], dtype=torch.int32)),
            "cu_seqlens_k must start at 0, never",
        ),
        (dict(cu_seqlens_k=torch.tensor([0, 10, 31], dtype=torch.int32)), "end within the 30 rows of k"),
        (dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), "the same number of sequences"),
        (
            dict(cu_seqlens_k=torch.tensor([0, 0, 20], dtype=torch.int32)),
            "sequence 0 has queries but no keys",
        ),
    ]
    for override, message in cases:
        args = dict(
            q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=20, max_seqlen_k=20, slopes=slopes
        )
        with pytest.raises(ValueError, match=message):
            alibi_attention_torch(**{**args, **override})


def test_alibi_attention_ref_takes_any_slopes_and_lengths_strides():
    """The PyTorch path reads slopes and cu_seqlens on the host: strided views are fine there."""
    q, k, v, cu, slopes = _attention_inputs([10, 20])
    strided_slopes = torch.stack([slopes, slopes], 1)[:, 0]
    strided_cu = torch.stack([cu, cu], 1)[:, 0]
    assert not strided_slopes.is_contiguous() and not strided_cu.is_contiguous()
    want = alibi_attention_torch(q, k, v, cu, cu, 20, 20, slopes)
    got = alibi_attention_torch(q, k, v, strided_cu, strided_cu, 20, 20, strided_slopes)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.bfloat16, torch.float32, torch.float32),  # failed inside a kernel ("Bad in-place call")
        (torch.float32, torch.bfloat16, torch.bfloat16),  # ran, in fp32 after a silent mix
        (torch.float64, torch.float64, torch.float64),  # ran in fp32 and came back as fp64
    ],
)
def test_alibi_attention_ref_refuses_dtypes_it_does_not_compute_in(dtypes):
    q, k, v = (torch.randn(5, 2, 8).to(dtype) for dtype in dtypes)
    cu = _cu([5])
    with pytest.raises(ValueError, match="q, k, v must share one of float16/bfloat16/float32"):
        alibi_attention_torch(q, k, v, cu, cu, 5, 5, alibi_slopes(2))


@pytest.mark.parametrize("key_lengths", [[5, 7], [5, -1], [5, 0]])
def test_padded_ref_names_key_lengths_out_of_range(key_lengths):
    """The errors spoke of cu_seqlens_k, which the caller never passed."""
    from turborank.kernels import alibi_attention_padded_torch

    q, k, v = (torch.randn(2, 5, 2, 8) for _ in range(3))
    lengths = torch.tensor(key_lengths, dtype=torch.int32)
    with pytest.raises(ValueError, match=f"key_lengths must lie in 1..5 \\(L\\), got \\{key_lengths}"):
        alibi_attention_padded_torch(q, k, v, lengths, alibi_slopes(2))
