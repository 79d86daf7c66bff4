"""turborank's GPU performance targets on an H200, judged from the benchmark reports of one gpu_check run.

The targets are what makes each GPU piece worth keeping: the ALiBi attention kernel must beat the
best PyTorch alternatives (compiled FlexAttention, SDPA with a materialised bias), the Triton model
must serve 8k-token pairs in milliseconds and bounded memory, a small request under CUDA graphs must
not be bound by launch overhead, and the fused GEGLU GEMM becomes the default only if it is faster.

    python -m benchmarks.gpu.targets DIR      # DIR holds gpu_kernels_*.json and gpu_model_*.json

Prints (and writes ``DIR/targets.md``) one line per target: the measured figure, the target, met or
missed and by how much. A target whose rows are missing says so instead of guessing.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path

# H200 (sm_90): 132 SMs at up to 1.98 GHz; the special-function units return 16 exp2 per SM per
# clock. At head_dim 32 a score costs 4 * 32 = 128 tensor-core FLOPs but one exp2, so the exp unit,
# not the tensor cores, bounds attention: 4.2e12 exp2/s against 790e12 / 128 = 6.2e12 scores/s.
# The fp32 work per score (scale and bias FMAs, |i - j|, running max, sum, conversion: about 8 ops on
# 132 x 128 lanes) is a second bound of the same size, ~4e12 scores/s: the two overlap at best.
H200_EXP2_PER_S = 132 * 16 * 1.98e9
ATTENTION_SHAPES = {"8x1024": [1024] * 8, "1x8192": [8192]}


# The GPU forward the host-side benchmarks assume until a GPU run measures it (benchmarks.serve):
# the turbo forward's FLOPs at half an H200's measured dense bf16 rate, plus a fixed cost per forward
# for its launches and the device-to-host copy of the logits (one CUDA-graph replay: tens of us).
H200_BF16_TFLOPS = 790.0  # dense bf16 GEMM, measured on the lent H200 (device notes)
# The engine names of the fused GEGLU GEMM and of the default it must beat, as gpu_kernels writes them.
FUSED_GEGLU = "turborank fused"
DEFAULT_GEGLU = "cuBLAS + gelu_glu_triton (default)"
PROJECTED_EFFICIENCY = 0.5
PROJECTED_FIXED_S = 50e-6


@functools.cache
def _turbo_config():
    from turborank.config import JinaBertConfig
    from turborank.testing import make_config

    return JinaBertConfig.from_dict(make_config("turbo"))


def projected_forward_seconds(lengths: list[int]) -> float:
    """How long one forward of sequences of ``lengths`` tokens should take on an H200 (turbo
    shapes): ``forward_flops / (PROJECTED_EFFICIENCY * H200 bf16 rate) + PROJECTED_FIXED_S``.
    1 query x 50 documents of 300 tokens: about 1 ms; one short pair: about 50 us."""
    from benchmarks.cpu.gemm_rates import forward_flops

    flops = forward_flops(_turbo_config(), lengths)
    return flops / (PROJECTED_EFFICIENCY * H200_BF16_TFLOPS * 1e12) + PROJECTED_FIXED_S


def exp_bound_ms(lengths: list[int], heads: int = 12) -> float:
    """The fastest any exact softmax attention can be on an H200: one exp2 per score."""
    return heads * sum(n * n for n in lengths) / H200_EXP2_PER_S * 1e3


def _latest(directory: Path, stem: str) -> list[dict]:
    files = sorted(directory.glob(f"{stem}_*.json"))
    return json.loads(files[-1].read_text())["rows"] if files else []


def _find(rows: list[dict], **match: str) -> dict | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and "error" not in row:
            return row
    return None


def _ratio(rows, shape: str, baseline: str) -> float | None:
    ours = _find(rows, op="alibi_attention", shape=shape, engine="turborank")
    other = _find(rows, op="alibi_attention", shape=shape, engine=baseline)
    return other["ms"] / ours["ms"] if ours and other else None


def _field(rows, field: str, **match: str) -> float | None:
    row = _find(rows, **match)
    return row.get(field) if row else None


def judge(kernels: list[dict], model: list[dict]) -> list[dict]:
    """[{target, measured, goal, verdict}] for each GPU target of the kernels and the Triton model."""
    fused = _find(kernels, op="gelu_glu_linear", engine=FUSED_GEGLU)
    default = _find(kernels, op="gelu_glu_linear", engine=DEFAULT_GEGLU)
    # (target, measured value, goal, higher is better, unit)
    checks: list[tuple[str, Callable[[], float | None], float, bool, str]] = [
        (
            "alibi_attention 8x1024 vs FlexAttention",
            lambda: _ratio(kernels, "8x1024", "flex_attention (compiled)"),
            1.2,
            True,
            "x",
        ),
        (
            "alibi_attention 1x8192 vs FlexAttention",
            lambda: _ratio(kernels, "1x8192", "flex_attention (compiled)"),
            1.2,
            True,
            "x",
        ),
        (
            "alibi_attention 8x1024 vs SDPA + bias",
            lambda: _ratio(kernels, "8x1024", "sdpa + materialised bias"),
            3.0,
            True,
            "x",
        ),
        (
            "alibi_attention 1x8192 vs SDPA + bias",
            lambda: _ratio(kernels, "1x8192", "sdpa + materialised bias"),
            3.0,
            True,
            "x",
        ),
        (
            "turbo, 1 x 8192, forward latency",
            lambda: _field(model, "p50_ms", case="1 x 8192", backend="triton"),
            3.0,
            False,
            "ms",
        ),
        (
            "turbo, 1 x 8192, activation memory",
            lambda: _field(model, "activation_peak_MiB", case="1 x 8192", backend="triton"),
            1024.0,
            False,
            "MiB",
        ),
        (
            "turbo, 10 x 512, pairs/s (forward)",
            lambda: _field(model, "pairs/s", case="10 x 512", backend="triton"),
            20000.0,
            True,
            "pairs/s",
        ),
        (
            "model card from token ids, p50 (CUDA graph)",
            lambda: _field(model, "p50_ms", case="model card from token ids, CUDA graph", backend="triton"),
            1.0,
            False,
            "ms",
        ),
        (
            "fused GEGLU GEMM vs cuBLAS + gelu_glu",
            lambda: default["ms"] / fused["ms"] if fused and default else None,
            1.0,
            True,
            "x",
        ),
    ]
    out = []
    for name, measure, goal, higher, unit in checks:
        value = measure()
        if value is None:
            verdict = "not measured (rows missing or failed)"
        else:
            met = value >= goal if higher else value < goal
            gap = value / goal if higher else goal / value
            verdict = "met" if met else f"missed: {gap:.2f} of the target"
        out.append(
            {
                "target": name,
                "measured": value,
                "goal": f"{'>=' if higher else '<'} {goal:g} {unit}",
                "verdict": verdict,
                "bound": _bound(kernels, name),
            }
        )
    return out


def _bound(kernels: list[dict], target: str) -> str:
    """For the attention targets: our time against the exp-unit bound of full attention at that
    shape (the band-limited kernel skips work, so it can go below it)."""
    shape = next((s for s in ATTENTION_SHAPES if f" {s} " in target), None)
    ours = _find(kernels, op="alibi_attention", shape=shape, engine="turborank") if shape else None
    if not ours:
        return ""
    bound = exp_bound_ms(ATTENTION_SHAPES[shape])
    reached = 100 * bound / ours["ms"]
    return f"ours {ours['ms']:.4g} ms; exp-unit bound {bound:.3g} ms ({reached:.0f}% of it reached)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    rows = judge(_latest(args.directory, "gpu_kernels"), _latest(args.directory, "gpu_model"))
    lines = ["| target | measured | goal | verdict | bound |", "|---|---|---|---|---|"]
    for r in rows:
        measured = "" if r["measured"] is None else f"{r['measured']:.4g}"
        lines.append(f"| {r['target']} | {measured} | {r['goal']} | {r['verdict']} | {r['bound']} |")
    text = "## Targets\n\n" + "\n".join(lines) + "\n"
    (args.directory / "targets.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
