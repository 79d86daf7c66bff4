"""benchmarks.gpu.targets judges the GPU performance targets from report rows: checked on hand-made rows."""

from __future__ import annotations

import json

from benchmarks.gpu.targets import DEFAULT_GEGLU, FUSED_GEGLU, exp_bound_ms, judge, main


def _kernels(flex_ms: float, sdpa_ms: float) -> list[dict]:
    rows = []
    for shape in ("8x1024", "1x8192"):
        rows += [
            {"op": "alibi_attention", "shape": shape, "engine": "turborank", "ms": 1.0},
            {"op": "alibi_attention", "shape": shape, "engine": "flex_attention (compiled)", "ms": flex_ms},
            {"op": "alibi_attention", "shape": shape, "engine": "sdpa + materialised bias", "ms": sdpa_ms},
        ]
    rows += [
        {"op": "gelu_glu_linear", "engine": FUSED_GEGLU, "ms": 2.0},
        {"op": "gelu_glu_linear", "engine": DEFAULT_GEGLU, "ms": 1.0},
    ]
    return rows


MODEL = [
    {"case": "1 x 8192", "backend": "triton", "p50_ms": 2.5, "activation_peak_MiB": 2048.0},
    {"case": "1 x 8192", "backend": "torch", "p50_ms": 0.1},  # another backend: never picked
    {"case": "10 x 512", "backend": "triton", "pairs/s": 25000.0},
    {"case": "model card from token ids, CUDA graph", "backend": "triton", "p50_ms": 1.25},
]


def test_verdicts():
    by_name = {r["target"]: r for r in judge(_kernels(flex_ms=1.5, sdpa_ms=2.0), MODEL)}
    assert by_name["alibi_attention 8x1024 vs FlexAttention"]["verdict"] == "met"
    assert by_name["alibi_attention 8x1024 vs FlexAttention"]["measured"] == 1.5
    assert by_name["alibi_attention 1x8192 vs SDPA + bias"]["verdict"] == "missed: 0.67 of the target"
    assert by_name["turbo, 1 x 8192, forward latency"]["verdict"] == "met"
    assert by_name["turbo, 1 x 8192, activation memory"]["verdict"] == "missed: 0.50 of the target"
    assert by_name["turbo, 10 x 512, pairs/s (forward)"]["verdict"] == "met"
    assert by_name["model card from token ids, p50 (CUDA graph)"]["verdict"] == "missed: 0.80 of the target"
    assert by_name["fused GEGLU GEMM vs cuBLAS + gelu_glu"]["verdict"] == "missed: 0.50 of the target"
    # 12 heads x 8192^2 scores at 16 exp2 per SM-clock on 132 SMs at 1.98 GHz: 0.193 ms.
    assert abs(exp_bound_ms([8192]) - 12 * 8192**2 / (132 * 16 * 1.98e9) * 1e3) < 1e-12
    assert by_name["alibi_attention 1x8192 vs SDPA + bias"]["bound"].startswith(
        "ours 1 ms; exp-unit bound 0.193 ms"
    )
    assert by_name["turbo, 10 x 512, pairs/s (forward)"]["bound"] == ""


def test_missing_or_failed_rows_are_not_guessed(tmp_path, capsys):
    kernels = _kernels(1.5, 4.0)
    kernels[1]["error"] = "compile failed"  # flex at 8x1024 failed: that target cannot be judged
    (tmp_path / "gpu_kernels_2026-11-29.json").write_text(json.dumps({"rows": kernels}))
    main([str(tmp_path)])
    text = (tmp_path / "targets.md").read_text()
    assert "| alibi_attention 8x1024 vs FlexAttention |  | >= 1.2 x | not measured" in text
    assert "| alibi_attention 1x8192 vs SDPA + bias | 4 | >= 3 x | met | ours 1 ms; exp-unit" in text
    assert "turbo, 1 x 8192, forward latency |  | < 3 ms | not measured" in text
    assert text in capsys.readouterr().out
