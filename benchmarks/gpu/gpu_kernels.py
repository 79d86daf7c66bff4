"""Kernel benchmarks on a GPU: each turborank kernel against what a user would otherwise run.

    python -m benchmarks.gpu.gpu_kernels [--out DIR] [--quick]

alibi_attention_triton (bf16, 12 heads, d=32) vs SDPA with a materialised bf16 bias (built once, outside
the timing: the cost the HF reference pays per layer is the attention with that bias), vs
FlexAttention with a symmetric ALiBi ``score_mod`` (torch.compile'd; a document mask for packed
batches), and flash-attn's ``alibi_slopes`` when importable (flash-attn's ALiBi is |i - j| symmetric
for non-causal attention). gelu_glu_triton and add_layer_norm_triton vs eager PyTorch and
torch.compile; the fused GEGLU GEMM (gelu_glu_linear_triton) vs cuBLAS followed by gelu_glu_triton.
Outputs are checked against the fp32 reference before anything is timed.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch
import torch.nn.functional as F

from benchmarks.gpu.gpu_env import ENV, configure
from benchmarks.gpu.targets import DEFAULT_GEGLU, FUSED_GEGLU, H200_BF16_TFLOPS
from benchmarks.report import LOCAL_RESULTS, run_sections
from turborank.alibi import alibi_slopes
from turborank.kernels import (
    add_layer_norm_torch,
    add_layer_norm_triton,
    alibi_attention_torch,
    alibi_attention_triton,
    gelu_glu_linear_torch,
    gelu_glu_linear_triton,
    gelu_glu_torch,
    gelu_glu_triton,
)
from turborank.packing import cu_seqlens

# Datasheet HBM bandwidth (TB/s) by the card's name: a session is lent an H100 unless it asks for
# an H200, and "% of HBM" against the H200's 4.8 understated an H100's by about 30%.
HBM_TBPS = {"H200": 4.8, "H100": 3.35}


def hbm_tbps() -> tuple[str, float]:
    """(card, TB/s) of the device the run is on (the H200's figure where the name is not known)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    card = next((card for card in HBM_TBPS if card in name), "H200")
    return name, HBM_TBPS[card]


def _bench(fn) -> float:
    return ENV.bench(fn)


def _cu(lengths: list[int]) -> torch.Tensor:
    return cu_seqlens(lengths, ENV.device)


def _check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    err = (got.float() - want.float()).abs().max().item()
    if not err <= tol:
        raise AssertionError(f"{name}: max error {err:.3g} > {tol:.3g}; not timing a wrong result")
    return err


def attention_rows(lengths: list[int], heads: int = 12, d: int = 32) -> list[dict]:
    dtype, device = ENV.dtype, ENV.device
    total, batch, longest = sum(lengths), len(lengths), max(lengths)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(total, heads, d, device=device, generator=gen, dtype=dtype) for _ in range(3))
    slopes = alibi_slopes(heads, "jina-reranker-v1", device=device)
    cu = _cu(lengths)
    flops = 4 * heads * d * sum(n * n for n in lengths)
    shape = f"{batch}x{longest}" if len(set(lengths)) == 1 else f"mixed {batch} seqs, {total} tok"
    # In fp32: for bf16 inputs the PyTorch engine would itself run bf16 score tiles.
    want = alibi_attention_torch(q.float(), k.float(), v.float(), cu, cu, longest, longest, slopes)
    rows = []

    def row(engine: str, ms: float, err: float) -> None:
        tflops = flops / ms / 1e9
        rows.append(
            {
                "op": "alibi_attention",
                "shape": shape,
                "engine": engine,
                "ms": ms,
                "TFLOP/s": tflops,
                "% of bf16 peak": 100 * tflops / H200_BF16_TFLOPS,
                "max_err": err,
            }
        )

    ours = lambda: alibi_attention_triton(q, k, v, cu, cu, longest, longest, slopes)
    row("turborank", _bench(ours), _check("turborank", ours(), want, 2e-2))
    # Without the band (what it saves depends on the q, k norms; these are random normal).
    full = lambda: alibi_attention_triton(q, k, v, cu, cu, longest, longest, slopes, band=False)
    row("turborank, band off", _bench(full), _check("turborank, band off", full(), want, 2e-2))

    uniform = len(set(lengths)) == 1
    if uniform:  # batched layouts for the baselines
        try:
            qb, kb, vb = (t.view(batch, longest, heads, d).transpose(1, 2) for t in (q, k, v))
            pos = torch.arange(longest, device=device)
            bias = (-slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()).to(dtype)[None]
            sdpa = lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias)
            got = sdpa().transpose(1, 2).reshape(total, heads, d)
            row("sdpa + materialised bias", _bench(sdpa), _check("sdpa", got, want, 5e-2))
            del bias
        except Exception as exc:  # a baseline's failure is a row, not the end of the section
            rows.append({"op": "alibi_attention", "shape": shape, "engine": "sdpa", "error": repr(exc)[:200]})

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = flex_attention if ENV.smoke else torch.compile(flex_attention, dynamic=False)

        def alibi_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

        if uniform:
            fq, fk, fv = (t.view(batch, longest, heads, d).transpose(1, 2).contiguous() for t in (q, k, v))
            run = lambda: flex(fq, fk, fv, score_mod=alibi_mod)
            got = run().transpose(1, 2).reshape(total, heads, d)
        else:
            doc = torch.repeat_interleave(
                torch.arange(batch, device=device), torch.tensor(lengths, device=device)
            )
            mask = create_block_mask(
                lambda b, h, qi, ki: doc[qi] == doc[ki], None, None, total, total, device=device
            )
            fq, fk, fv = (t.transpose(0, 1)[None].contiguous() for t in (q, k, v))
            run = lambda: flex(fq, fk, fv, score_mod=alibi_mod, block_mask=mask)
            got = run()[0].transpose(0, 1)
        row("flex_attention (compiled)", _bench(run), _check("flex", got, want, 5e-2))
    except Exception as exc:  # report, do not hide: the row says why it is missing
        rows.append(
            {"op": "alibi_attention", "shape": shape, "engine": "flex_attention", "error": repr(exc)[:200]}
        )

    try:
        from flash_attn import flash_attn_varlen_func

        fa = lambda: flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, alibi_slopes=slopes)
        row("flash-attn alibi_slopes", _bench(fa), _check("flash-attn", fa(), want, 5e-2))
    except ImportError:
        pass
    return rows


def _memory_bound_rows(op: str, shape: str, engines: dict, want: torch.Tensor, nbytes: int) -> list[dict]:
    rows = []
    for engine, fn in engines.items():
        err = _check(f"{op} {engine}", fn(), want, 0.1)
        ms = _bench(fn)
        rows.append(
            {
                "op": op,
                "shape": shape,
                "engine": engine,
                "ms": ms,
                "GB/s": nbytes / ms / 1e6,
                "% of HBM": 100 * nbytes / ms / 1e9 / hbm_tbps()[1],
                "max_err": err,
            }
        )
    return rows


def elementwise_rows(tokens: int) -> list[dict]:
    dtype, device = ENV.dtype, ENV.device
    u = torch.randn(tokens, 3072, device=device, dtype=dtype)
    eager_glu = lambda u: F.gelu(u[:, :1536]) * u[:, 1536:]
    compiled_glu = ENV.compile(eager_glu)
    rows = _memory_bound_rows(
        "gelu_glu",
        f"{tokens}x3072",
        {
            "turborank": lambda: gelu_glu_triton(u),
            "eager": lambda: eager_glu(u),
            "torch.compile": lambda: compiled_glu(u),
        },
        gelu_glu_torch(u),
        (u.numel() + tokens * 1536) * u.element_size(),
    )
    x, r = (torch.randn(tokens, 384, device=device, dtype=dtype) for _ in range(2))
    w, b = torch.randn(384, device=device, dtype=dtype), torch.randn(384, device=device, dtype=dtype)

    def eager_ln(x, r):
        return F.layer_norm(x.float() + r.float(), (384,), w.float(), b.float(), 1e-12).to(dtype)

    compiled_ln = ENV.compile(eager_ln)
    rows += _memory_bound_rows(
        "add_layer_norm",
        f"{tokens}x384",
        {
            "turborank": lambda: add_layer_norm_triton(x, r, w, b, 1e-12),
            "eager": lambda: eager_ln(x, r),
            "torch.compile": lambda: compiled_ln(x, r),
        },
        add_layer_norm_torch(x, r, w, b, 1e-12),
        3 * x.numel() * x.element_size(),
    )
    return rows


def gelu_glu_linear_rows(tokens: int, hidden: int = 384, inner: int = 1536) -> list[dict]:
    """The fused GEGLU GEMM against what the model runs by default (cuBLAS, then the gelu_glu_triton
    kernel), cuBLAS + eager PyTorch, and torch.compile of matmul + gate. The fused kernel becomes the
    default only if it beats "cuBLAS + gelu_glu" here: otherwise it is a second GEMM to maintain for
    nothing."""
    dtype, device = ENV.dtype, ENV.device
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, hidden, device=device, dtype=dtype, generator=gen)
    weight = (torch.randn(2 * inner, hidden, device=device, generator=gen) * hidden**-0.5).to(dtype)
    want = gelu_glu_linear_torch(x.float(), weight.float())
    eager = lambda: (lambda u: F.gelu(u[:, :inner]) * u[:, inner:])(F.linear(x, weight))
    compiled = ENV.compile(lambda x, w: (lambda u: F.gelu(u[:, :inner]) * u[:, inner:])(F.linear(x, w)))
    engines = {
        FUSED_GEGLU: lambda: gelu_glu_linear_triton(x, weight),
        DEFAULT_GEGLU: lambda: gelu_glu_triton(F.linear(x, weight)),
        "cuBLAS + eager": eager,
        "torch.compile": lambda: compiled(x, weight),
    }
    flops = 2 * tokens * hidden * 2 * inner
    rows = []
    for engine, fn in engines.items():
        err = _check(f"gelu_glu_linear {engine}", fn(), want, 5e-2)
        ms = _bench(fn)
        tflops = flops / ms / 1e9
        rows.append(
            {
                "op": "gelu_glu_linear",
                "shape": f"{tokens}x{hidden} @ {2 * inner}",
                "engine": engine,
                "ms": ms,
                "TFLOP/s": tflops,
                "% of bf16 peak": 100 * tflops / H200_BF16_TFLOPS,
                "max_err": err,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(LOCAL_RESULTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny shapes: runs, measures nothing")
    args = parser.parse_args()
    configure(args.smoke, "benchmarks.gpu.gpu_kernels")
    args.quick = args.quick or args.smoke
    shapes = [[1024] * 8, [8192]] if not args.smoke else [[24] * 2, [37, 5]]
    if not args.quick:
        shapes += [[128] * 64, [512] * 16, [2048] * 4, [4096] * 2, [30 + (i * 397) % 1970 for i in range(64)]]
    tokens = 8192 if not args.smoke else 33
    sections = [(f"alibi_attention {lengths[:3]}", partial(attention_rows, lengths)) for lengths in shapes]
    sections.append((f"elementwise {tokens}", partial(elementwise_rows, tokens)))
    glu_shape = (tokens,) if not args.smoke else (tokens, 64, 48)
    sections.append((f"gelu_glu_linear {tokens}", partial(gelu_glu_linear_rows, *glu_shape)))
    if not args.quick:
        sections.append(("elementwise 65536", partial(elementwise_rows, 65536)))
        sections.append(("gelu_glu_linear 65536", partial(gelu_glu_linear_rows, 65536)))
        sections.append(("gelu_glu_linear 5120 (10 x 512)", partial(gelu_glu_linear_rows, 5120)))
    columns = [
        "op",
        "shape",
        "engine",
        "ms",
        "TFLOP/s",
        "% of bf16 peak",
        "GB/s",
        "% of HBM",
        "max_err",
        "error",
    ]
    status, _ = run_sections(
        args.out,
        "gpu_kernels",
        columns,
        sections=sections,
        notes=[
            f"{str(ENV.dtype).removeprefix('torch.')} on {ENV.device}"
            f"{' (SMOKE RUN: nothing here is a measurement)' if ENV.smoke else ''}; d=32, 12 heads; "
            "softmax scale 1/sqrt(32); "
            f"peak figures assumed: {H200_BF16_TFLOPS} TFLOP/s, "
            f"{hbm_tbps()[1]} TB/s (datasheet, {hbm_tbps()[0]})"
        ],
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
