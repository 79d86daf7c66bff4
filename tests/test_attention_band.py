"""Band-limited attention: key tiles whose weight is provably below 2^-56 of each row's largest are
skipped (steep ALiBi heads attend to a band around the diagonal). Checked against full attention,
and, with poisoned values outside the band, that the skipped keys are really never read."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tests.devices import DEVICE, GPU, TRITON_RUNS, needs_triton
from turborank.kernels import (
    alibi_attention_padded_torch,
    alibi_attention_padded_triton,
    alibi_attention_torch,
    alibi_attention_triton,
)
from turborank.kernels._launch import ATTENTION_INTERPRETER_TILES, attention_gpu_launch_configs
from turborank.kernels.alibi_band import band_key_ranges
from turborank.packing import cu_seqlens

pytestmark = pytest.mark.gpu
# Steep heads (narrow bands), a JinaBERT-like one, and a zero slope (no band at all).
SLOPES = [8.0, 1.0, 0.5, 2**-5.5, 0.0]
LENGTHS = [300, 17, 130] if not GPU else [8192, 17, 1300, 4097]


def _cu(lengths):
    return cu_seqlens(lengths, DEVICE)


HEADS = len(SLOPES)


def _qkv(total, d=32, scale=1.0, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return tuple(torch.randn(total, HEADS, d, device=DEVICE, generator=gen) * scale for _ in range(3))


def _slopes():
    return torch.tensor(SLOPES, device=DEVICE)


def test_ref_band_equals_full_attention():
    q, k, v = _qkv(sum(LENGTHS), scale=2.0)
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    banded = alibi_attention_torch(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
    full = alibi_attention_torch(q, k, v, cu, cu, longest, longest, _slopes(), band=False)
    torch.testing.assert_close(banded, full, rtol=1e-5, atol=1e-5)


def test_band_ranges_are_narrow_for_steep_heads_and_whole_for_flat_ones():
    length = 512
    q, k, _ = _qkv(length, scale=0.1)
    ranges = band_key_ranges(q.float()[None], k.float()[None], k.float()[None], _slopes(), 32**-0.5, rows=64)
    lo, hi = ranges[0][3]  # slope 8, rows 192..255: 56 bits / (8 / ln 2) is under 5 tokens
    assert 192 - 8 <= lo <= 192 and 256 <= hi <= 256 + 8
    assert ranges[4][3] == (0, length)  # slope 0: every key


def test_padded_ref_band_equals_full():
    q, k, v = (t.view(2, 150, HEADS, 32) for t in _qkv(300, scale=2.0))
    lengths = torch.tensor([150, 77], dtype=torch.int32, device=DEVICE)
    banded = alibi_attention_padded_torch(q, k, v, lengths, _slopes(), band=True)
    full = alibi_attention_padded_torch(q, k, v, lengths, _slopes(), band=False)
    torch.testing.assert_close(banded[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(banded[1, :77], full[1, :77], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_kernel_band_equals_full_attention(scale):
    q, k, v = _qkv(sum(LENGTHS), scale=scale, seed=1)
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    want = alibi_attention_torch(q, k, v, cu, cu, longest, longest, _slopes(), band=False)
    got = alibi_attention_triton(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
    full = alibi_attention_triton(q, k, v, cu, cu, longest, longest, _slopes(), band=False)
    # Skipped keys weigh under 2^-56 of the row's largest: below one unit in the last place.
    torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    # The token-0 queries of the last layer: one query row per sequence.
    first = cu[:-1].long()
    cls_cu = torch.arange(len(LENGTHS) + 1, dtype=torch.int32, device=DEVICE)
    want0 = alibi_attention_torch(q[first], k, v, cls_cu, cu, 1, longest, _slopes(), band=False)
    got0 = alibi_attention_triton(q[first].contiguous(), k, v, cls_cu, cu, 1, longest, _slopes(), band=True)
    torch.testing.assert_close(got0, want0, rtol=1e-5, atol=2e-5)


# Every tile the launchers choose on a GPU, and the interpreter's: the band is tile-granular.
TILES = sorted({ATTENTION_INTERPRETER_TILES, *attention_gpu_launch_configs()})


@needs_triton
@pytest.mark.parametrize("tile", TILES, ids=str)
def test_kernel_never_reads_keys_outside_the_band(tile):
    """Token-0 queries; head 2 (slope 0.5) with small q, k has a band radius of about 78 keys, so
    every tile from key 128 on is skipped. Those values are poisoned with 1e30: finite (the band
    stays on), and large enough that reading them shows (their weights, 2^-92 and below, are not
    zero). Banded, the output equals attention with them zeroed; read, it does not."""
    q, k, v = _qkv(sum(LENGTHS), scale=0.1, seed=2)
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    first = cu[:-1].long()
    far = torch.zeros(v.shape[0], dtype=torch.bool, device=DEVICE)
    for start, n in zip(cu[:-1].tolist(), LENGTHS, strict=True):
        far[start + 128 : start + n] = True
    poisoned = v.clone()
    poisoned[far, 2] = 1e30
    cleaned = v.clone()
    cleaned[far, 2] = 0.0
    cls_cu = torch.arange(len(LENGTHS) + 1, dtype=torch.int32, device=DEVICE)
    q0 = q[first].contiguous()
    run = partial(alibi_attention_triton, q0, k, cu_seqlens_q=cls_cu, cu_seqlens_k=cu, max_seqlen_q=1)
    got = run(v=poisoned, max_seqlen_k=longest, slopes=_slopes(), band=True, launch_config=tile)
    want = alibi_attention_torch(q0, k, cleaned, cls_cu, cu, 1, longest, _slopes(), band=False)
    torch.testing.assert_close(got[:, 2], want[:, 2], rtol=1e-5, atol=1e-6)
    read = run(v=poisoned, max_seqlen_k=longest, slopes=_slopes(), band=False, launch_config=tile)
    assert (read[:, 2] - want[:, 2]).abs().max() > 1.0  # the poison is reachable: the test can fail


@needs_triton
def test_padded_kernel_band_equals_full():
    q, k, v = (t.view(2, 150, HEADS, 32) for t in _qkv(300, scale=2.0, seed=3))
    lengths = torch.tensor([150, 77], dtype=torch.int32, device=DEVICE)
    want = alibi_attention_padded_torch(q, k, v, lengths, _slopes(), band=False)
    got = alibi_attention_padded_triton(q, k, v, lengths, _slopes(), band=True)
    full = alibi_attention_padded_triton(q, k, v, lengths, _slopes(), band=False)
    torch.testing.assert_close(got[0], full[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[1, :77], full[1, :77], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(got[1, :77], want[1, :77], rtol=1e-5, atol=2e-5)


@needs_triton
def test_band_argument_is_checked():
    q, k, v = _qkv(20)
    cu = _cu([20])
    with pytest.raises(ValueError, match="band must be True, False or None"):
        alibi_attention_triton(q, k, v, cu, cu, 20, 20, _slopes(), band="yes")


def _paths():
    """The PyTorch path, and the Triton kernel where it can run."""
    yield "torch", alibi_attention_torch
    if TRITON_RUNS:
        yield "triton", alibi_attention_triton


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_non_finite_input_reaches_the_output_as_without_the_band(where, value):
    """A NaN or inf anywhere in q, k or v must reach the output with the band on exactly as it does
    with the band off (the server fails such forwards on a non-finite logit). Row 250 of the
    300-token sequence, head 0 (slope 8): without the fix the band of most rows never reaches it."""
    q, k, v = _qkv(sum(LENGTHS), scale=2.0, seed=4)
    {"q": q, "k": k, "v": v}[where][250, 0, 3] = value
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    for name, attention in _paths():
        # The GPU's long-sequence tile in the interpreter too: 64 times fewer tile steps than 16 x 16.
        options = {"launch_config": (128, 64, 4, 3)} if name == "triton" and not GPU else {}
        full = attention(q, k, v, cu, cu, longest, longest, _slopes(), band=False, **options)
        banded = attention(q, k, v, cu, cu, longest, longest, _slopes(), band=True, **options)
        assert not torch.isfinite(full[:, 0]).all(), name  # it entered somewhere
        assert torch.equal(torch.isfinite(banded), torch.isfinite(full)), name
        assert torch.equal(torch.isnan(banded), torch.isnan(full)), name
        finite = torch.isfinite(full)
        torch.testing.assert_close(banded[finite], full[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_nan_query_reaches_only_its_own_row():
    q, k, v = _qkv(sum(LENGTHS), scale=2.0, seed=4)
    q[5, 0, 0] = float("nan")
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    for name, attention in _paths():
        got = attention(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
        assert torch.isnan(got[5, 0]).all(), name
        assert torch.isfinite(got[6:, 0]).all() and torch.isfinite(got[:5, 0]).all(), name


@pytest.mark.slow
@pytest.mark.parametrize("key_length", [64, 128, 37])
def test_padding_rows_are_finite_with_the_band(key_length):
    """Padded layout, a key length that is a multiple of the key tile: padding rows past the keys
    once got an empty key range (0 / 0 = NaN). They attend to every key, as the HF reference's
    padding rows do, and equal the reference."""
    seqlen = 160
    q, k, v = (t.view(2, seqlen, HEADS, 32) for t in _qkv(2 * seqlen, seed=6))
    lengths = torch.tensor([seqlen, key_length], dtype=torch.int32, device=DEVICE)
    want = alibi_attention_padded_torch(q, k, v, lengths, _slopes(), band=False)
    checks = [("torch", alibi_attention_padded_torch, {})]
    if TRITON_RUNS:
        checks += [("triton", alibi_attention_padded_triton, {"launch_config": tile}) for tile in TILES]
    for name, attention, options in checks:
        got = attention(q, k, v, lengths, _slopes(), band=True, **options)
        assert torch.isfinite(got).all(), (name, options)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_queries_past_the_last_key_attend_to_every_key():
    """A sequence with more query rows than keys (cu_seqlens_q ahead of cu_seqlens_k): the rows
    past the keys attend to all of them from their own positions, band or not, on both paths; with
    64 keys the band once gave those rows an empty key range (NaN)."""
    lengths_q, lengths_k = [300, 17], [64, 17]
    q, _, _ = _qkv(sum(lengths_q), scale=2.0, seed=7)
    _, k, v = _qkv(sum(lengths_k), scale=2.0, seed=8)
    cu_q, cu_k = _cu(lengths_q), _cu(lengths_k)
    dense = _dense_attention(q[:300], k[:64], v[:64])
    for name, attention in _paths():
        full = attention(q, k, v, cu_q, cu_k, 300, 64, _slopes(), band=False)
        banded = attention(q, k, v, cu_q, cu_k, 300, 64, _slopes(), band=True)
        assert torch.isfinite(banded).all(), name
        torch.testing.assert_close(banded, full, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        # Far past the keys the bias (up to 8 x 300) leaves fp32 a few 1e-4 of relative
        # resolution for the scores: judged against the fp64 definition at that level.
        torch.testing.assert_close(full[:300], dense, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def _dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One sequence, fp64, the [heads, Lq, Lk] scores built outright: the definition."""
    q64, k64, v64 = (t.double().transpose(0, 1) for t in (q, k, v))
    i = torch.arange(q.shape[0], device=q.device, dtype=torch.float64)[:, None]
    j = torch.arange(k.shape[0], device=q.device, dtype=torch.float64)[None, :]
    bias = -_slopes().double()[:, None, None] * (i - j).abs()
    probs = torch.softmax(q64 @ k64.transpose(1, 2) / q.shape[-1] ** 0.5 + bias, dim=-1)
    return (probs @ v64).transpose(0, 1).float()
