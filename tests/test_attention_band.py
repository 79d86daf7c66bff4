"""Band-limited attention: key tiles whose weight is provably below 2^-56 of each row's largest are
skipped (steep ALiBi heads attend to a band around the diagonal). Checked against full attention,
and, with poisoned values outside the band, that the skipped keys are really never read."""

from __future__ import annotations

import os

import pytest
import torch

from turborank.kernels import TRITON_AVAILABLE, alibi_attention, alibi_attention_padded, alibi_attention_ref
from turborank.kernels.alibi_attention import _band_key_ranges, alibi_attention_padded_ref

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
TRITON = TRITON_AVAILABLE and (GPU or os.environ.get("TRITON_INTERPRET") == "1")
needs_triton = pytest.mark.skipif(not TRITON, reason="needs triton and a GPU or TRITON_INTERPRET=1")
# Steep heads (narrow bands), a JinaBERT-like one, and a zero slope (no band at all).
SLOPES = [8.0, 1.0, 0.5, 2**-5.5, 0.0]
LENGTHS = [300, 17, 130] if not GPU else [8192, 17, 1300, 4097]


def _cu(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu.to(DEVICE)


HEADS = len(SLOPES)


def _qkv(total, d=32, scale=1.0, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return tuple(torch.randn(total, HEADS, d, device=DEVICE, generator=gen) * scale for _ in range(3))


def _slopes():
    return torch.tensor(SLOPES, device=DEVICE)


def test_ref_band_equals_full_attention():
    q, k, v = _qkv(sum(LENGTHS), scale=2.0)
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    banded = alibi_attention_ref(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
    full = alibi_attention_ref(q, k, v, cu, cu, longest, longest, _slopes(), band=False)
    torch.testing.assert_close(banded, full, rtol=1e-5, atol=1e-5)


def test_band_ranges_are_narrow_for_steep_heads_and_whole_for_flat_ones():
    length = 512
    q, k, _ = _qkv(length, scale=0.1)
    qp, kp = q.float().transpose(0, 1)[None], k.float().transpose(0, 1)[None]
    valid = torch.ones(1, length, dtype=torch.bool, device=DEVICE)
    ranges = _band_key_ranges(qp, kp, valid, _slopes(), 32**-0.5, rows=64)
    lo, hi = ranges[0][3]  # slope 8, rows 192..255: 56 bits / (8 / ln 2) is under 5 tokens
    assert 192 - 8 <= lo <= 192 and 256 <= hi <= 256 + 8
    assert ranges[4][3] == (0, length)  # slope 0: every key


def test_padded_ref_band_equals_full():
    q, k, v = (t.view(2, 150, HEADS, 32) for t in _qkv(300, scale=2.0))
    lengths = torch.tensor([150, 77], dtype=torch.int32, device=DEVICE)
    banded = alibi_attention_padded_ref(q, k, v, lengths, _slopes(), band=True)
    full = alibi_attention_padded_ref(q, k, v, lengths, _slopes(), band=False)
    torch.testing.assert_close(banded[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(banded[1, :77], full[1, :77], rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_kernel_band_equals_full_attention(scale):
    q, k, v = _qkv(sum(LENGTHS), scale=scale, seed=1)
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    want = alibi_attention_ref(q, k, v, cu, cu, longest, longest, _slopes(), band=False)
    got = alibi_attention(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
    full = alibi_attention(q, k, v, cu, cu, longest, longest, _slopes(), band=False)
    # Skipped keys weigh under 2^-56 of the row's largest: below one unit in the last place.
    torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    # The token-0 queries of the last layer: one query row per sequence.
    first = cu[:-1].long()
    cls_cu = torch.arange(len(LENGTHS) + 1, dtype=torch.int32, device=DEVICE)
    want0 = alibi_attention_ref(q[first], k, v, cls_cu, cu, 1, longest, _slopes(), band=False)
    got0 = alibi_attention(q[first].contiguous(), k, v, cls_cu, cu, 1, longest, _slopes(), band=True)
    torch.testing.assert_close(got0, want0, rtol=1e-5, atol=2e-5)


@needs_triton
def test_kernel_never_reads_keys_outside_the_band():
    """Token-0 queries, head 0 with slope 8 and small q, k: its band is a few tokens. Its values
    beyond position 64 are NaN: banded, the output is finite and right; reading every key, NaN."""
    q, k, v = _qkv(sum(LENGTHS), scale=0.1, seed=2)
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    first = cu[:-1].long()
    far = torch.zeros(v.shape[0], dtype=torch.bool, device=DEVICE)
    for start, n in zip(cu[:-1].tolist(), LENGTHS, strict=True):
        far[start + 64 : start + n] = True
    poisoned = v.clone()
    poisoned[far, 0] = float("nan")
    cleaned = v.clone()
    cleaned[far, 0] = 0.0
    cls_cu = torch.arange(len(LENGTHS) + 1, dtype=torch.int32, device=DEVICE)
    q0 = q[first].contiguous()
    got = alibi_attention(q0, k, poisoned, cls_cu, cu, 1, longest, _slopes(), band=True)
    want = alibi_attention_ref(q0, k, cleaned, cls_cu, cu, 1, longest, _slopes(), band=False)
    assert torch.isfinite(got[:, 0]).all()
    torch.testing.assert_close(got[:, 0], want[:, 0], rtol=1e-5, atol=1e-6)
    unbanded = alibi_attention(q0, k, poisoned, cls_cu, cu, 1, longest, _slopes(), band=False)
    assert torch.isnan(unbanded[:, 0]).any()  # the poison is reachable: the test can fail


@needs_triton
def test_padded_kernel_band_equals_full():
    q, k, v = (t.view(2, 150, HEADS, 32) for t in _qkv(300, scale=2.0, seed=3))
    lengths = torch.tensor([150, 77], dtype=torch.int32, device=DEVICE)
    want = alibi_attention_padded_ref(q, k, v, lengths, _slopes(), band=False)
    got = alibi_attention_padded(q, k, v, lengths, _slopes(), band=True)
    full = alibi_attention_padded(q, k, v, lengths, _slopes(), band=False)
    torch.testing.assert_close(got[0], full[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[1, :77], full[1, :77], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(got[1, :77], want[1, :77], rtol=1e-5, atol=2e-5)


@needs_triton
def test_band_argument_is_checked():
    q, k, v = _qkv(20)
    cu = _cu([20])
    with pytest.raises(ValueError, match="band must be True, False or None"):
        alibi_attention(q, k, v, cu, cu, 20, 20, _slopes(), band="yes")


def test_nan_input_reaches_the_output_with_the_band_on():
    """A NaN query must give NaN (the server fails such forwards), not an empty key range."""
    q, k, v = _qkv(sum(LENGTHS), scale=2.0, seed=4)
    q[5, 0, 0] = float("nan")
    cu, longest = _cu(LENGTHS), max(LENGTHS)
    got = alibi_attention_ref(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
    assert torch.isnan(got[5, 0]).all()
    assert torch.isfinite(got[6:, 0]).all() and torch.isfinite(got[:5, 0]).all()
    if TRITON:
        got = alibi_attention(q, k, v, cu, cu, longest, longest, _slopes(), band=True)
        assert torch.isnan(got[5, 0]).all() and torch.isfinite(got[6:, 0]).all()
