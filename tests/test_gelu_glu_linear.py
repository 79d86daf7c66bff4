"""The fused GEGLU GEMM against ``F.linear`` + ``gelu_glu_torch``: interpreter here, full size on a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.devices import DEVICE, GPU, HALF_DTYPES, needs_triton
from turborank.kernels import gelu_glu_linear_torch, gelu_glu_linear_triton
from turborank.kernels._launch import gelu_glu_linear_gpu_launch_config

pytestmark = [pytest.mark.gpu, needs_triton]
# (tokens, hidden, intermediate): odd sizes for every tile tail, and the rerankers' own.
SHAPES = [(1, 32, 16), (17, 100, 50), (64, 64, 64), (33, 384, 96)]
if GPU:
    SHAPES += [(8192, 384, 1536), (4097, 768, 3072), (513, 384, 1536)]


def _inputs(m: int, k: int, inner: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(m, k, device=DEVICE, generator=gen)
    weight = torch.randn(2 * inner, k, device=DEVICE, generator=gen) * k**-0.5 * 2  # pre-activations ~N(0, 4)
    return x, weight


def _exact(x: torch.Tensor, weight: torch.Tensor, activation: str) -> torch.Tensor:
    u = F.linear(x.double(), weight.double())
    gate, linear = u.chunk(2, dim=-1)
    return (F.gelu(gate) if activation == "gelu" else F.relu(gate)) * linear


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("m,k,inner", SHAPES)
def test_fp32_matches_reference(m, k, inner, activation):
    x, weight = _inputs(m, k, inner, seed=m + k)
    got = gelu_glu_linear_triton(x, weight, activation)
    want = gelu_glu_linear_torch(x, weight, activation)
    assert got.shape == (m, inner) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("m,k,inner", SHAPES)
def test_half_within_twice_pytorch_error(m, k, inner, dtype):
    x, weight = _inputs(m, k, inner, seed=m * k)
    x, weight = x.to(dtype), weight.to(dtype)
    exact = _exact(x, weight, "gelu")
    ours = (gelu_glu_linear_triton(x, weight).double() - exact).abs().max().item()
    pytorch = (gelu_glu_linear_torch(x, weight).double() - exact).abs().max().item()
    assert ours <= 2 * pytorch + 1e-6


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_a_nan_weight_reaches_its_column(activation):
    """A NaN in a gate row makes that gate NaN for every row of x; ReGLU must keep it NaN."""
    x, weight = _inputs(5, 40, 24, seed=8)
    weight[3, 7] = float("nan")
    got = gelu_glu_linear_triton(x, weight, activation)
    assert torch.isnan(got).nonzero()[:, 1].unique().tolist() == [3]
    assert torch.equal(torch.isnan(got), torch.isnan(gelu_glu_linear_torch(x, weight, activation)))


def test_no_reads_past_the_ends():
    """x is a view into a NaN-filled buffer (NaN rows below it, NaN columns right of it): a masked
    load that slipped would turn outputs into NaN."""
    m, k, inner = 19, 40, 24
    x, weight = _inputs(m, k, inner, seed=3)
    buffer = torch.full((m + 16, k + 24), float("nan"), device=DEVICE)
    buffer[:m, :k] = x
    wbuffer = torch.full((2 * inner + 8, k + 8), float("nan"), device=DEVICE)
    wbuffer[: 2 * inner, :k] = weight
    got = gelu_glu_linear_triton(buffer[:m, :k], wbuffer[: 2 * inner, :k])
    torch.testing.assert_close(got, gelu_glu_linear_torch(x, weight), rtol=1e-5, atol=1e-5)
    assert gelu_glu_linear_triton(buffer[:0, :k], weight).shape == (0, inner)


def test_rejects_bad_input():
    x, weight = _inputs(4, 32, 8, seed=0)
    with pytest.raises(ValueError, match="weight \\[2I, K\\]"):
        gelu_glu_linear_triton(x, weight[:, :16])
    with pytest.raises(ValueError, match="weight \\[2I, K\\]"):
        gelu_glu_linear_triton(x, weight[:15])
    with pytest.raises(ValueError, match="share dtype"):
        gelu_glu_linear_triton(x, weight.half())
    with pytest.raises(ValueError, match="unknown GLU activation"):
        gelu_glu_linear_triton(x, weight, "swish")
    with pytest.raises(ValueError, match="contiguous rows"):
        gelu_glu_linear_triton(x.t().contiguous().t(), weight)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES])
def test_gpu_tiles_in_the_interpreter(dtype):
    """The tiles the launcher picks on a GPU (the interpreter otherwise runs 16 x 32 x 32), on
    shapes with a tail in every dimension of them."""
    config = gelu_glu_linear_gpu_launch_config(dtype)
    block_m, block_n, block_k = config[:3]
    x, weight = _inputs(block_m + 3, block_k * 2 + 5, block_n + 7, seed=3)
    x, weight = x.to(dtype), weight.to(dtype)
    exact = _exact(x, weight, "gelu")
    got = gelu_glu_linear_triton(x, weight, launch_config=config)
    ours = (got.double() - exact).abs().max().item()
    if dtype == torch.float32:
        assert ours <= 1e-5 * exact.abs().max().item()
    else:
        assert ours <= 2 * (gelu_glu_linear_torch(x, weight).double() - exact).abs().max().item() + 1e-6


def test_launch_config_is_checked():
    x, weight = _inputs(4, 32, 16, seed=0)
    for bad in ((16, 16, 16, 3, 1), (8, 16, 16, 1, 1), (16, 16, 16, 1), (16, 16, 16, 1, 0)):
        with pytest.raises(ValueError, match="launch_config must be"):
            gelu_glu_linear_triton(x, weight, launch_config=bad)
