"""The ONNX Runtime peer's export builds the reference's ALiBi bias in the graph from the input's
length, instead of carrying its dense [1, heads, 8192, 8192] buffer (3 GiB) as a constant."""

from __future__ import annotations

import types

import pytest
import torch

from benchmarks.cpu.onnx_export import _AlibiFromLength, _swap_in_alibi_from_length
from turborank.alibi import alibi_slopes


def _dense_alibi(slopes: torch.Tensor, size: int) -> torch.Tensor:
    """The reference encoder's buffer: [1, heads, size, size] of -slope * |i - j|."""
    position = torch.arange(size)
    return -slopes[None, :, None, None] * (position[None, :] - position[:, None]).abs()[None, None]


def _fake_reference(slopes: torch.Tensor, size: int) -> types.SimpleNamespace:
    encoder = torch.nn.Module()
    encoder.register_buffer("alibi", _dense_alibi(slopes, size), persistent=False)
    encoder._current_alibi_size = size
    return types.SimpleNamespace(bert=types.SimpleNamespace(encoder=encoder))


@pytest.mark.parametrize("scheme", ["standard", "jina-reranker-v1"])
def test_the_swapped_in_bias_is_the_reference_buffer_sliced(scheme):
    slopes = alibi_slopes(12, scheme)
    model = _fake_reference(slopes, 64)
    dense = model.bert.encoder.alibi.clone()
    _swap_in_alibi_from_length(model)
    encoder = model.bert.encoder
    assert "alibi" not in encoder._buffers  # nothing of L x L size is left to export as a constant
    assert isinstance(encoder.alibi, _AlibiFromLength)
    for length in (1, 2, 7, 64):
        torch.testing.assert_close(encoder.alibi[:, :, :length, :length], dense[:, :, :length, :length])
    # Past the buffer's size the reference would rebuild it; the stand-in serves any length.
    assert encoder._current_alibi_size >= 8192
    torch.testing.assert_close(encoder.alibi[:, :, :100, :100], _dense_alibi(slopes, 100))


def test_a_wrong_slope_would_show():
    model = _fake_reference(alibi_slopes(12, "standard"), 16)
    _swap_in_alibi_from_length(model)
    other = _dense_alibi(alibi_slopes(12, "jina-reranker-v1"), 16)
    assert (model.bert.encoder.alibi[:, :, :16, :16] - other).abs().max() > 0.1
