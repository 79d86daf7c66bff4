import math

import pytest
import torch

from tests.eager_reference import reference_slopes
from turborank.alibi import alibi_slope_values, alibi_slopes, slopes_differ


def test_twelve_heads_standard_matches_spec():
    want = [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slope_values(12, "standard") == pytest.approx(want, rel=1e-15)


def test_twelve_heads_reranker_scheme_matches_spec():
    want = [2.0**-k for k in range(1, 9)] + [2**-1.5, 2**-2.5, 2**-3.5, 2**-4.5]
    got = alibi_slope_values(12, "jina-reranker-v1")
    assert got == pytest.approx(want, rel=1e-15)
    # Reported as "the interpolated tail halved".
    assert got[8:] == pytest.approx([s / 2 for s in alibi_slope_values(12, "standard")[8:]], rel=1e-15)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32])
def test_schemes_agree_with_press_reference(heads):
    for scheme in ("standard", "jina-reranker-v1"):
        assert alibi_slope_values(heads, scheme) == pytest.approx(reference_slopes(heads, scheme), rel=1e-12)
    assert slopes_differ(heads) == (not math.log2(heads).is_integer())


def test_slopes_tensor_is_fp32():
    t = alibi_slopes(12, "jina-reranker-v1")
    assert t.dtype == torch.float32 and t.shape == (12,)


def test_unknown_scheme_rejected():
    with pytest.raises(ValueError, match="unknown ALiBi slope scheme 'alibi2'"):
        alibi_slope_values(12, "alibi2")
