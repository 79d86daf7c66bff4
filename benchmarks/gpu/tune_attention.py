"""Time alibi_attention's candidate tile configurations on a GPU, per workload, and show how far the
built-in choice (`attention_gpu_launch_config` in kernels/_launch.py) is from the best one measured.

    python -m benchmarks.gpu.tune_attention [--out DIR] [--quick]

Every candidate's output is checked against the fp32 reference before it is timed. What ptxas
makes of each candidate (registers, spilled bytes, shared memory) is in ``python -m
benchmarks.compile.sm90_compile --candidates``: a few spill tens of bytes at head_dim 32, hundreds at
64, which the timings then weigh. The tuned choice is written into ``attention_gpu_launch_config`` by
hand, with the table that justifies it committed under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch

import turborank.kernels.alibi_attention
from benchmarks.gpu.gpu_env import ENV, configure
from benchmarks.report import LOCAL_RESULTS, run_sections
from turborank.alibi import alibi_slopes
from turborank.kernels import alibi_attention_torch
from turborank.kernels._launch import attention_launch_config
from turborank.packing import cu_seqlens

# (BLOCK_M, BLOCK_N, num_warps, num_stages)
CANDIDATES = (
    (64, 64, 4, 3),
    (64, 128, 4, 3),
    (128, 32, 4, 3),
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (128, 128, 8, 3),
    (256, 64, 8, 3),
    (256, 128, 16, 2),
)
WRONG = "WRONG RESULT"
TOKEN0_CANDIDATES = ((16, 64, 4, 2), (16, 128, 4, 2), (16, 128, 4, 3), (16, 256, 4, 2), (16, 256, 8, 2))


def workloads(quick: bool) -> list[tuple[str, list[int], bool]]:
    """(name, sequence lengths, token-0 queries only)."""
    if ENV.smoke:
        return [("2 x 40", [40, 40], False), ("token-0 queries, 3 x 20", [20] * 3, True)]
    mixed = [30 + (i * 397) % 1970 for i in range(64)]
    rows = [("8x1024", [1024] * 8, False), ("1x8192", [8192], False), ("64 mixed 30..2000", mixed, False)]
    rows.append(("token-0 queries, 64 x 512", [512] * 64, True))
    if not quick:
        rows += [("64x128", [128] * 64, False), ("16x512", [512] * 16, False)]
    return rows


def tune_workload(
    dtype: torch.dtype, d: int, heads: int, name: str, lengths: list[int], token0: bool
) -> list[dict]:
    """Every candidate tile for one workload: checked against the fp32 reference, then timed."""
    module = turborank.kernels.alibi_attention
    tag = str(dtype).removeprefix("torch.")
    device = ENV.device
    gen = torch.Generator(device=device).manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, d, device=device, dtype=dtype, generator=gen) for _ in range(3))
    slopes = alibi_slopes(heads, "jina-reranker-v1", device=device)
    cu_k = cu_seqlens(lengths, device)
    if token0:
        q = q[cu_k[:-1].long()].contiguous()
        cu_q = torch.arange(len(lengths) + 1, dtype=torch.int32, device=device)
        max_q, flops = 1, 4 * heads * d * total
    else:
        cu_q, max_q, flops = cu_k, max(lengths), 4 * heads * d * sum(n * n for n in lengths)
    # In fp32: for bf16 inputs the PyTorch engine would itself run bf16 score tiles.
    want = alibi_attention_torch(q.float(), k.float(), v.float(), cu_q, cu_k, max_q, max(lengths), slopes)
    default = attention_launch_config(d, max_q, dtype)
    candidates = TOKEN0_CANDIDATES if token0 else CANDIDATES
    if ENV.smoke:  # the interpreter is slow at large tiles; two candidates show the mechanics
        candidates = ((16, 16, 1, 1), (32, 16, 1, 1))
    candidates = tuple(dict.fromkeys((*candidates, default)))  # the built-in choice is always timed
    rows, timed = [], {}
    for config in candidates:
        base = {"dtype": tag, "d": d, "workload": name, "config": str(config), "default": config == default}
        run = partial(
            module.alibi_attention_triton,
            q,
            k,
            v,
            cu_q,
            cu_k,
            max_q,
            max(lengths),
            slopes,
            launch_config=config,
        )
        try:
            err = (run().float() - want).abs().max().item()
        except Exception as exc:  # a config may not fit this GPU's shared memory; say so, go on
            rows.append({**base, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        if not err <= (2e-2 if dtype != torch.float32 else 1e-4):
            # A kernel bug at this tile: recorded (and the script fails), never timed.
            rows.append({**base, "max_err": err, "error": f"{WRONG} (max error {err:.3g})"})
            continue
        ms = ENV.bench(run)
        timed[config] = ms
        rows.append({**base, "ms": ms, "TFLOP/s": flops / ms / 1e9, "max_err": err})
    if timed:
        best = min(timed, key=timed.get)
        for row in rows:
            if "ms" in row:
                row["x best"] = row["ms"] / timed[best]
        print(
            f"{tag} d={d} {name}: best {best} {timed[best]:.4f} ms; default {default} "
            f"{timed.get(default, float('nan')):.4f} ms",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(LOCAL_RESULTS))
    parser.add_argument("--quick", action="store_true", help="bf16, d=32 only; four workloads")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny shapes: runs, measures nothing")
    args = parser.parse_args()
    configure(args.smoke, "benchmarks.gpu.tune_attention")
    settings = [(ENV.dtype, 32)]
    if not args.quick and not args.smoke:
        settings += [(torch.bfloat16, 64), (torch.float16, 32)]
    sections = [
        (f"{dtype} d={d} {name}", partial(tune_workload, dtype, d, 12, name, lengths, token0))
        for dtype, d in settings
        for name, lengths, token0 in workloads(args.quick)
    ]
    columns = ["dtype", "d", "workload", "config", "default", "ms", "x best", "TFLOP/s", "max_err", "error"]
    status, rows = run_sections(
        args.out,
        "tune_attention",
        columns,
        sections=sections,
        notes=[
            "config = (BLOCK_M, BLOCK_N, num_warps, num_stages); x best = ms / best ms for the workload"
            + ("; SMOKE RUN: nothing here is a measurement" if ENV.smoke else "")
        ],
    )
    return 1 if status or any(WRONG in str(row.get("error", "")) for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
