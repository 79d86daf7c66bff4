"""Triton kernels against their PyTorch engines (``*_torch``): in Triton's CPU interpreter here
(small shapes), full size on a GPU (the same file; lengths up to 8192, bf16).

Half-precision rule (flash-attention's): the kernel's error against an fp32 reference may be at
most twice the error of plain PyTorch computing in that same half dtype.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.devices import DEVICE, GPU, HALF_DTYPES, needs_triton
from turborank.alibi import alibi_slopes
from turborank.kernels import (
    add_layer_norm_torch,
    add_layer_norm_triton,
    alibi_attention_padded_torch,
    alibi_attention_padded_triton,
    alibi_attention_torch,
    alibi_attention_triton,
    embedding_layer_norm_torch,
    embedding_layer_norm_triton,
    gelu_glu_linear_triton,
    gelu_glu_torch,
    gelu_glu_triton,
)
from turborank.kernels._launch import attention_gpu_launch_configs
from turborank.packing import cu_seqlens

pytestmark = [pytest.mark.gpu, needs_triton]
# bf16 attention goes through tl.dot: checked on GPUs only (HALF_DTYPES skips it in the interpreter);
# bf16 elementwise kernels are fine in the interpreter.
LENGTH_SETS = [[1], [2], [17], [64, 97], [129, 1, 300, 5], [16, 32, 48]]
if GPU:
    LENGTH_SETS += [[1024] * 8, [8192], [8192, 1, 4097, 333, 2048], [513] * 33]


def _cu(lengths: list[int]) -> torch.Tensor:
    return cu_seqlens(lengths, DEVICE)


def _qkv(total: int, heads: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return tuple(torch.randn(total, heads, d, generator=gen, device=DEVICE).to(dtype) for _ in range(3))


def _eager_same_dtype(q, k, v, lengths, slopes):
    """Plain PyTorch attention in the inputs' dtype (what the HF reference does in half precision)."""
    out, offset = [], 0
    scale = 1 / math.sqrt(q.shape[-1])
    for n in lengths:
        qs, ks, vs = (t[offset : offset + n].transpose(0, 1) for t in (q, k, v))
        pos = torch.arange(n, device=q.device)
        bias = (-slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()).to(q.dtype)
        probs = torch.softmax(qs @ ks.transpose(1, 2) * scale + bias, dim=-1)
        out.append((probs @ vs).transpose(0, 1))
        offset += n
    return torch.cat(out)


def _heads_dims():
    return [(12, 32), (4, 64), (2, 128)]


@pytest.mark.parametrize("lengths", LENGTH_SETS, ids=lambda x: "-".join(map(str, x[:5])))
@pytest.mark.parametrize("heads,d", _heads_dims())
def test_attention_fp32_matches_ref(lengths, heads, d):
    # The interpreter's time grows with the programs (heads x query tiles): the mixed lengths run
    # there with 4 and 2 heads, 12 heads with the shorter sets.
    if not GPU and sum(lengths) * heads * d > 300 * 12 * 32 * 1.25:
        pytest.skip("too slow for the interpreter")
    q, k, v = _qkv(sum(lengths), heads, d, torch.float32, seed=sum(lengths) + d)
    slopes = alibi_slopes(heads, "jina-reranker-v1", device=DEVICE)
    cu = _cu(lengths)
    got = alibi_attention_triton(q, k, v, cu, cu, max(lengths), max(lengths), slopes)
    want = alibi_attention_torch(q, k, v, cu, cu, max(lengths), max(lengths), slopes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("lengths", LENGTH_SETS, ids=lambda x: "-".join(map(str, x[:5])))
def test_attention_half_within_twice_pytorch_error(dtype, lengths):
    heads, d = 12, 32
    if not GPU and sum(lengths) > 300:
        pytest.skip("too slow for the interpreter")
    q32, k32, v32 = _qkv(sum(lengths), heads, d, torch.float32, seed=len(lengths))
    q, k, v = q32.to(dtype), k32.to(dtype), v32.to(dtype)
    slopes = alibi_slopes(heads, "jina-reranker-v1", device=DEVICE)
    cu = _cu(lengths)
    # The fp32 reference sees the same rounded inputs: the comparison is about the computation.
    want = alibi_attention_torch(q.float(), k.float(), v.float(), cu, cu, max(lengths), max(lengths), slopes)
    got = alibi_attention_triton(q, k, v, cu, cu, max(lengths), max(lengths), slopes)
    pytorch_error = (_eager_same_dtype(q, k, v, lengths, slopes).float() - want).abs().max().item()
    kernel_error = (got.float() - want).abs().max().item()
    assert got.dtype == dtype
    assert kernel_error <= 2 * pytorch_error + 1e-5, (kernel_error, pytorch_error)


@pytest.mark.parametrize(
    "config,cases",
    sorted(attention_gpu_launch_configs().items()),
    ids=[str(c) for c in sorted(attention_gpu_launch_configs())],
)
def test_attention_at_every_gpu_tile(config, cases):
    """Each (BLOCK_M, BLOCK_N, warps, stages) the launcher picks on a GPU, forced here so that the
    interpreter runs the production tiles too (it otherwise runs 16 x 16), at the first (head_dim,
    dtype) that picks it, band on and off, every query row and the token-0 rows."""
    head_dim, dtype, max_q = cases[0]
    if dtype == torch.bfloat16 and not GPU:
        dtype = torch.float16  # the interpreter's bf16 tl.dot is wrong; the GPU runs bf16 itself
    lengths = [1, 17, 200, 129]
    heads = 2
    q32, k32, v32 = _qkv(sum(lengths), heads, head_dim, torch.float32, seed=head_dim)
    q, k, v = q32.to(dtype), k32.to(dtype), v32.to(dtype)
    slopes = alibi_slopes(heads, device=DEVICE)
    cu_k = _cu(lengths)
    cu_q, longest_q = cu_k, max(lengths)
    if max_q <= 16:  # the last layer's token-0 queries
        q = q[cu_k[:-1].long()].contiguous()
        cu_q, longest_q = _cu([1] * len(lengths)), 1
    want = alibi_attention_torch(q.float(), k.float(), v.float(), cu_q, cu_k, longest_q, max(lengths), slopes)
    if dtype == torch.float32:
        allowed = 2e-5
    else:
        eager = alibi_attention_torch(q, k, v, cu_q, cu_k, longest_q, max(lengths), slopes)
        allowed = 2 * (eager.float() - want).abs().max().item() + 1e-5
    for band in (True, False):
        got = alibi_attention_triton(
            q, k, v, cu_q, cu_k, longest_q, max(lengths), slopes, band=band, launch_config=config
        )
        error = (got.float() - want).abs().max().item()
        assert error <= allowed, (config, band, error, allowed)


def test_attention_query_prefix_token0_rows():
    lengths_k = [5, 40, 1, 77] if not GPU else [5, 4000, 1, 8192]
    heads, d = 12, 32
    q, _, _ = _qkv(len(lengths_k), heads, d, torch.float32, seed=3)
    _, k, v = _qkv(sum(lengths_k), heads, d, torch.float32, seed=4)
    slopes = alibi_slopes(heads, device=DEVICE)
    cu_q, cu_k = _cu([1] * len(lengths_k)), _cu(lengths_k)
    got = alibi_attention_triton(q, k, v, cu_q, cu_k, 1, max(lengths_k), slopes)
    want = alibi_attention_torch(q, k, v, cu_q, cu_k, 1, max(lengths_k), slopes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_attention_fused_qkv_views():
    """q, k, v as strided views of one [T, 3, heads, d] projection, as the model passes them."""
    lengths = [33, 70]
    qkv = torch.randn(sum(lengths), 3, 6, 32, device=DEVICE)
    q, k, v = qkv.unbind(1)
    slopes = alibi_slopes(6, device=DEVICE)
    cu = _cu(lengths)
    got = alibi_attention_triton(q, k, v, cu, cu, 70, 70, slopes)
    want = alibi_attention_torch(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, 70, 70, slopes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_attention_does_not_read_past_the_ends():
    """Memory right after the last token is NaN: any out-of-bounds read poisons the output."""
    lengths = [17, 3, 29] if not GPU else [17, 3, 2900, 8191]
    total, heads, d = sum(lengths), 4, 32
    storage = torch.full((3, total + 64, heads, d), float("nan"), device=DEVICE)
    storage[:, :total] = torch.randn(3, total, heads, d, device=DEVICE)
    q, k, v = storage[0, :total], storage[1, :total], storage[2, :total]
    cu = _cu(lengths)
    out = alibi_attention_triton(
        q, k, v, cu, cu, max(lengths), max(lengths), alibi_slopes(heads, device=DEVICE)
    )
    assert torch.isfinite(out).all()


def test_padded_layout_ignores_poisoned_padding_and_matches_varlen():
    key_lengths = [40, 1, 17] if not GPU else [4000, 1, 1700, 4096]
    batch, seqlen, heads, d = len(key_lengths), max(key_lengths), 4, 32
    q, k, v = (torch.randn(batch, seqlen, heads, d, device=DEVICE) for _ in range(3))
    lengths = torch.tensor(key_lengths, dtype=torch.int32, device=DEVICE)
    for b, n in enumerate(key_lengths):  # keys and values past each length must never be used
        k[b, n:] = float("nan")
        v[b, n:] = float("nan")
    slopes = alibi_slopes(heads, device=DEVICE)
    got = alibi_attention_padded_triton(q, k, v, lengths, slopes)
    want = alibi_attention_padded_torch(q, k.nan_to_num(), v.nan_to_num(), lengths, slopes)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    # Valid rows equal the packed (varlen) kernel's rows for the same sequences.
    valid = torch.arange(seqlen, device=DEVICE)[None, :] < lengths[:, None]
    cu = _cu(key_lengths)
    packed = alibi_attention_triton(q[valid], k[valid], v[valid], cu, cu, seqlen, seqlen, slopes)
    torch.testing.assert_close(got[valid], packed, rtol=1e-5, atol=2e-5)


def test_attention_repeated_runs_are_bitwise_equal():
    lengths = [97, 5] if not GPU else [8192, 97, 5]
    heads = 12 if GPU else 3  # the interpreter's time is per program (heads x query tiles)
    q, k, v = _qkv(sum(lengths), heads, 32, torch.bfloat16 if GPU else torch.float16, seed=5)
    cu = _cu(lengths)
    slopes = alibi_slopes(heads, device=DEVICE)
    first = alibi_attention_triton(q, k, v, cu, cu, max(lengths), max(lengths), slopes)
    for _ in range(2):
        assert torch.equal(alibi_attention_triton(q, k, v, cu, cu, max(lengths), max(lengths), slopes), first)


def _compiled_variants(kernel) -> int:
    """How many binaries the JIT cache holds (triton 3.x keeps them per device)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:  # {device: (kernel_cache, target, backend, binder)}
        return sum(len(entry[0]) if isinstance(entry, tuple) else len(entry) for entry in caches.values())
    return sum(len(entry) for entry in kernel.cache.values())


@pytest.mark.skipif(not GPU, reason="the interpreter does not compile")
def test_attention_does_not_recompile_per_length():
    from turborank.kernels import alibi_attention

    kernel = alibi_attention._alibi_attention_kernel
    slopes = alibi_slopes(12, device=DEVICE)

    def run(lengths):
        q, k, v = _qkv(sum(lengths), 12, 32, torch.bfloat16, seed=0)
        cu = _cu(lengths)
        alibi_attention_triton(q, k, v, cu, cu, max(lengths), max(lengths), slopes)

    run([300, 200])
    compiled = _compiled_variants(kernel)
    assert compiled >= 1
    for lengths in ([301], [1000, 17], [4097], [7, 8191, 33]):
        run(lengths)
    assert _compiled_variants(kernel) == compiled


def test_attention_rejects_bad_input():
    q, k, v = _qkv(10, 2, 32, torch.float32, seed=0)
    cu = _cu([10])
    slopes = alibi_slopes(2, device=DEVICE)
    with pytest.raises(ValueError, match="cu_seqlens_q must be a 1-D int32"):
        alibi_attention_triton(q, k, v, cu.long(), cu, 10, 10, slopes)
    with pytest.raises(ValueError, match="slopes must be fp32 \\[2\\]"):
        alibi_attention_triton(q, k, v, cu, cu, 10, 10, slopes.half())
    with pytest.raises(ValueError, match="q, k, v must share one of"):
        alibi_attention_triton(q, k.half(), v, cu, cu, 10, 10, slopes)


@pytest.mark.parametrize("scale", [-0.5, 0.0, float("nan"), float("inf"), True])
def test_attention_rejects_bad_softmax_scale(scale):
    """A negative scale turns the band's upper bound into a lower one (wrong rows, not an error)."""
    q, k, v = _qkv(10, 2, 32, torch.float32, seed=0)
    cu = _cu([10])
    with pytest.raises(ValueError, match="softmax_scale must be a positive finite number"):
        alibi_attention_triton(q, k, v, cu, cu, 10, 10, alibi_slopes(2, device=DEVICE), scale, band=True)


def test_attention_rejects_strided_slopes_lengths_and_bad_sizes():
    q, k, v = _qkv(30, 2, 32, torch.float32, seed=0)
    cu = _cu([10, 20])
    slopes = alibi_slopes(2, device=DEVICE)
    strided_slopes = torch.stack([slopes, slopes], 1)[:, 0]
    strided_cu = torch.stack([cu, cu], 1)[:, 0]
    with pytest.raises(ValueError, match="slopes must be contiguous"):
        alibi_attention_triton(q, k, v, cu, cu, 20, 20, strided_slopes)
    with pytest.raises(ValueError, match="cu_seqlens_q must be contiguous"):
        alibi_attention_triton(q, k, v, strided_cu, cu, 20, 20, slopes)
    with pytest.raises(ValueError, match="cu_seqlens_k must be contiguous"):
        alibi_attention_triton(q, k, v, cu, strided_cu, 20, 20, slopes)
    with pytest.raises(ValueError, match="max_seqlen_q must be a Python int >= 1, got 0"):
        alibi_attention_triton(q, k, v, cu, cu, 0, 20, slopes)
    with pytest.raises(ValueError, match="max_seqlen_k must be a Python int >= 1"):
        alibi_attention_triton(q, k, v, cu, cu, 20, torch.tensor(20), slopes)
    lengths = torch.tensor([10, 20], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="key_lengths must be contiguous"):
        padded = q.view(1, 30, 2, 32).expand(2, 30, 2, 32)
        alibi_attention_padded_triton(
            padded, padded, padded, torch.stack([lengths, lengths], 1)[:, 0], slopes
        )
    wide = torch.zeros(4, 1, 257, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim \\(q.shape\\[-1\\]\\) must be in 1..256, got 257"):
        alibi_attention_triton(wide, wide, wide, _cu([4]), _cu([4]), 4, 4, alibi_slopes(1, device=DEVICE))


def test_attention_max_seqlen_q_below_the_longest_is_still_right():
    """max_seqlen_q sizes the grid; the kernel does not read cu_seqlens on the host to check it.
    Too small a value must cost speed only: every row computed (once, rows uninitialised)."""
    lengths = [40, 5, 33]
    q, k, v = _qkv(sum(lengths), 4, 32, torch.float32, seed=9)
    cu = _cu(lengths)
    slopes = alibi_slopes(4, device=DEVICE)
    want = alibi_attention_torch(q, k, v, cu, cu, 40, 40, slopes)
    for max_q in (1, 16, 17):
        got = alibi_attention_triton(q, k, v, cu, cu, max_q, 40, slopes)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_attention_lengths_past_the_tensor_are_clamped_never_read():
    """cu_seqlens that claim more rows than q or k have are not checked on the host (a sync); the
    kernel clamps them to the tensor, so memory past it (NaN here) is never read."""
    heads, d = 2, 32
    storage = torch.full((3, 64, heads, d), float("nan"), device=DEVICE)
    storage[:, :30] = torch.randn(3, 30, heads, d, device=DEVICE)
    q, k, v = storage[0, :30], storage[1, :30], storage[2, :30]
    slopes = alibi_slopes(heads, device=DEVICE)
    claimed = torch.tensor([0, 10, 50], dtype=torch.int32, device=DEVICE)
    got = alibi_attention_triton(q, k, v, claimed, claimed, 40, 40, slopes, band=True)
    cu = _cu([10, 20])
    torch.testing.assert_close(
        got, alibi_attention_torch(q, k, v, cu, cu, 20, 20, slopes), rtol=1e-5, atol=2e-5
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("shape", [(1, 2), (7, 3072), (33, 258), (5, 4098)])
def test_gelu_glu(dtype, activation, shape):
    u = (torch.randn(shape, device=DEVICE) * 3).to(dtype)
    got = gelu_glu_triton(u, activation)
    want = gelu_glu_torch(u, activation)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        # Both compute in fp32 and round once: one unit in the last place apart, plus the fp32
        # cancellation of 1 + erf(x) deep in the negative tail (outputs ~1e-5 of the largest).
        floor = 1e-5 * want.float().abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=torch.finfo(dtype).eps, atol=floor)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_gelu_glu_keeps_a_nan_where_it_entered(activation):
    """Triton's default maximum drops a NaN (PTX max.f32 returns the other operand): a ReGLU gate of
    NaN came out 0 and the pair got a finite score."""
    u = torch.randn(3, 16, device=DEVICE)
    u[1, 2] = float("nan")  # a gate
    u[2, 8 + 5] = float("nan")  # a linear half
    got = gelu_glu_triton(u, activation)
    assert torch.isnan(got).nonzero().tolist() == [[1, 2], [2, 5]]
    assert torch.equal(torch.isnan(got), torch.isnan(gelu_glu_torch(u, activation)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,hidden", [(1, 384), (37, 384), (5, 100), (3, 1024)])
@pytest.mark.parametrize("residual", ["none", "full", "broadcast"])
def test_add_layer_norm(dtype, rows, hidden, residual):
    x = (torch.randn(rows, hidden, device=DEVICE) * 4 + 2).to(dtype)
    res = {
        "none": None,
        "full": torch.randn(rows, hidden, device=DEVICE).to(dtype),
        "broadcast": torch.randn(hidden, device=DEVICE).to(dtype).expand(rows, hidden),
    }[residual]
    w, b = torch.randn(hidden, device=DEVICE).to(dtype), torch.randn(hidden, device=DEVICE).to(dtype)
    got = add_layer_norm_triton(x, res, w, b, 1e-12)
    want = add_layer_norm_torch(x, res, w, b, 1e-12)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=tol)


@pytest.mark.parametrize("with_types", [True, False])
def test_embedding_layer_norm(with_types):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    words, types = (
        torch.randn(500, 384, device=DEVICE, generator=gen),
        torch.randn(2, 384, device=DEVICE, generator=gen),
    )
    ids = torch.randint(0, 500, (77,), device=DEVICE, generator=gen)
    type_ids = torch.randint(0, 2, (77,), device=DEVICE, generator=gen) if with_types else None
    w, b = torch.randn(384, device=DEVICE, generator=gen), torch.randn(384, device=DEVICE, generator=gen)
    got = embedding_layer_norm_triton(ids, type_ids, words, types, w, b, 1e-12)
    torch.testing.assert_close(
        got, embedding_layer_norm_torch(ids, type_ids, words, types, w, b, 1e-12), rtol=1e-5, atol=1e-5
    )


def test_layer_norm_rejects_bad_shapes():
    x = torch.randn(4, 64, device=DEVICE)
    with pytest.raises(ValueError, match="x must be \\[rows, 32\\]"):
        add_layer_norm_triton(x, None, torch.ones(32, device=DEVICE), torch.zeros(32, device=DEVICE), 1e-12)


def test_layer_norm_refuses_strided_vectors_it_would_read_as_contiguous():
    """weight, bias, input_ids and token_type_ids are read as consecutive elements: a strided view
    was accepted and read wrong (the PyTorch engines read it right)."""
    x, every_other = torch.randn(3, 8, device=DEVICE), torch.randn(16, device=DEVICE)[::2]
    ones, zeros = torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)
    with pytest.raises(
        ValueError, match="weight must be a contiguous \\[8\\], got shape \\(8,\\) stride \\(2,\\)"
    ):
        add_layer_norm_triton(x, None, every_other, zeros, 1e-12)
    with pytest.raises(ValueError, match="bias must be a contiguous \\[8\\]"):
        add_layer_norm_triton(x, None, ones, torch.zeros(9, device=DEVICE), 1e-12)
    words, types = torch.randn(10, 8, device=DEVICE), torch.randn(2, 8, device=DEVICE)
    pairs = torch.tensor([[1, 0], [7, 1], [3, 0]], device=DEVICE)  # [tokens, (id, type)]
    with pytest.raises(ValueError, match="input_ids must be a contiguous \\[3\\]"):
        embedding_layer_norm_triton(pairs[:, 0], None, words, types, ones, zeros, 1e-12)
    with pytest.raises(ValueError, match="token_type_ids must be a contiguous \\[3\\]"):
        embedding_layer_norm_triton(pairs[:, 0].clone(), pairs[:, 1], words, types, ones, zeros, 1e-12)
    got = embedding_layer_norm_triton(
        pairs[:, 0].clone(), pairs[:, 1].clone(), words, types, ones, zeros, 1e-12
    )
    want = embedding_layer_norm_torch(pairs[:, 0], pairs[:, 1], words, types, ones, zeros, 1e-12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(GPU, reason="the interpreter's limit")
def test_the_interpreter_refuses_bf16_products_it_computes_wrongly():
    """Its bf16 tl.dot is off by ~1e10: the ops built on it gave wrong logits without a word."""
    q, k, v = _qkv(5, 2, 32, torch.bfloat16, seed=1)
    cu = _cu([5])
    with pytest.raises(ValueError, match="alibi_attention: Triton's CPU interpreter computes bf16"):
        alibi_attention_triton(q, k, v, cu, cu, 5, 5, alibi_slopes(2, device=DEVICE))
    x, weight = torch.randn(3, 16, dtype=torch.bfloat16), torch.randn(32, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="gelu_glu_linear: Triton's CPU interpreter computes bf16"):
        gelu_glu_linear_triton(x, weight)
    assert gelu_glu_triton(x, "relu").dtype == torch.bfloat16  # no product: bf16 runs


@pytest.mark.parametrize("band", [False, True])
def test_a_batch_past_the_grids_y_limit_runs_in_parts(monkeypatch, band):
    """CUDA caps a grid's y extent (the sequences) at 65,535: a larger batch launches in parts.
    The limit is lowered here so that the parts run in the interpreter: the same numbers, packed
    and padded."""
    from turborank.kernels import alibi_attention

    lengths = [3, 40, 1, 17, 9]
    heads = 2
    q, k, v = _qkv(sum(lengths), heads, 16, torch.float32, seed=7)
    slopes, cu = alibi_slopes(heads, device=DEVICE), _cu(lengths)
    padded = [torch.randn(5, 40, heads, 16, device=DEVICE) for _ in range(3)]
    key_lengths = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    whole = alibi_attention_triton(q, k, v, cu, cu, 40, 40, slopes, band=band)
    whole_padded = alibi_attention_padded_triton(*padded, key_lengths, slopes, band=band)
    monkeypatch.setattr(alibi_attention, "MAX_GRID_Y", 2)
    assert torch.equal(alibi_attention_triton(q, k, v, cu, cu, 40, 40, slopes, band=band), whole)
    assert torch.equal(alibi_attention_padded_triton(*padded, key_lengths, slopes, band=band), whole_padded)


def test_attention_launch_config_override():
    """The tuner's candidate tiles give the same attention; malformed ones are refused."""
    lengths = [37, 5, 64]
    q, k, v = _qkv(sum(lengths), 2, 32, torch.float32, seed=4)
    slopes = alibi_slopes(2, device=DEVICE)
    cu = _cu(lengths)
    want = alibi_attention_torch(q, k, v, cu, cu, 64, 64, slopes)
    for config in ((16, 32, 1, 1), (32, 16, 2, 2)):
        got = alibi_attention_triton(q, k, v, cu, cu, 64, 64, slopes, launch_config=config)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for bad in ((24, 16, 4, 2), (16, 8, 4, 2), (16, 16, 3, 2), (16, 16, 4)):
        with pytest.raises(ValueError, match="launch_config must be"):
            alibi_attention_triton(q, k, v, cu, cu, 64, 64, slopes, launch_config=bad)


def test_embedding_ids_out_of_range_read_nothing_and_give_nan_rows():
    """Ids are checked on the host where they are made (no device sync); the kernel itself never
    reads outside the tables and marks such a row NaN, which reaches the logit. The PyTorch path
    raises a ValueError naming the ids and the table."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    storage = torch.full((64 + 32, 48), float("nan"), device=DEVICE)  # NaN past the word table
    words = storage[:64]
    words.copy_(torch.randn(64, 48, device=DEVICE, generator=gen))
    types = torch.randn(2, 48, device=DEVICE, generator=gen)
    w, b = torch.ones(48, device=DEVICE), torch.zeros(48, device=DEVICE)
    ids = torch.tensor([3, 64, 5, -1, 70, 63], device=DEVICE)
    type_ids = torch.tensor([0, 0, 2, 1, 1, -3], device=DEVICE)
    got = embedding_layer_norm_triton(ids, type_ids, words, types, w, b, 1e-12)
    bad = torch.tensor([False, True, True, True, True, True], device=DEVICE)  # 2, -3: bad types
    assert torch.isnan(got[bad]).all() and torch.isfinite(got[~bad]).all()
    torch.testing.assert_close(
        got[0],
        embedding_layer_norm_torch(ids[:1], type_ids[:1], words, types, w, b, 1e-12)[0],
        rtol=1e-5,
        atol=1e-5,
    )
    no_types = embedding_layer_norm_triton(ids, None, words, types, w, b, 1e-12)
    assert torch.equal(torch.isnan(no_types).any(1), (ids < 0) | (ids >= 64))
    with pytest.raises(
        ValueError, match="input_ids must lie in \\[0, 64\\) \\(word_embeddings has 64 rows\\)"
    ):
        embedding_layer_norm_torch(ids, type_ids, words, types, w, b, 1e-12)
    with pytest.raises(ValueError, match="token_type_ids must lie in \\[0, 2\\)"):
        embedding_layer_norm_torch(ids[:1], type_ids, words, types, w, b, 1e-12)
