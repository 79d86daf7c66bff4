"""The CPU's GEMM ceiling at the model's own shapes, measured in the run that uses it.

    python -m benchmarks.cpu.gemm_rates [--threads 2] [--rows 5120] [--model turbo]   # one JSON line

The same torch build reaches very different fractions of the hardware from one x86 CPU to the next
(MKL's fp32 SGEMM takes narrower paths on some AMD parts; oneDNN with a prepacked weight, or ONNX
Runtime's MLAS, may not). Each figure is GFLOP/s (2 * M * K * N per call, best of several calls
after a warm-up) at the four linear shapes of one layer (QKV, output projection, GEGLU
up-projection, down-projection) for ``--rows`` tokens, and on a square 2,048 GEMM:

Each shape's figure is the best of ``--rows`` and 256 rows (the CPU forward's MLP row blocks).

- ``torch_fp32``: ``F.linear`` (MKL); ``onednn_fp32``: oneDNN with the weight packed once;
- ``torch_bf16``, ``onednn_bf16``: the same in bf16 (fp32 accumulation);
- ``ort_fp32``: ONNX Runtime's MatMul (MLAS) on a one-node graph, when onnxruntime is installed.

``layer`` is one layer's four GEMMs together (their FLOPs over the sum of their times);
``best_fp32`` and ``best_bf16`` are the best ``layer`` figure of each dtype over the engines: the
ceilings the suite measures turborank's forward against (``benchmarks.cpu.run``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from turborank.config import JinaBertConfig
from turborank.cpu_features import cpu_identity
from turborank.linear_engines import onednn_unavailable_reason
from turborank.ops import resolve_ops
from turborank.testing import make_config

_REPEATS = 7
# Rows per MLP block of the CPU forward at turbo width (turborank.modeling).
_MLP_BLOCK_ROWS = 256
# The backends the CPU model runs on (oneDNN's epilogues stand in for these PyTorch engines).
_TORCH_OPS = resolve_ops("torch", torch.device("cpu")).backends


def _best_seconds(call: Callable[[], object], repeats: int = _REPEATS) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def layer_shapes(config: JinaBertConfig, rows: int) -> dict[str, tuple[int, int, int]]:
    """(M, K, N) of one layer's linear maps for ``rows`` tokens."""
    H, I = config.hidden_size, config.intermediate_size
    return {"qkv": (rows, H, 3 * H), "out": (rows, H, H), "up": (rows, H, 2 * I), "down": (rows, I, H)}


def _torch_rates(shapes: dict[str, tuple[int, int, int]], dtype: torch.dtype) -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(0)
    rates: dict[str, dict[str, float]] = {"torch": {}, "onednn": {}}
    # The product's own check: oneDNN packs no bf16 weight on a CPU without AVX-512 (BW, VL, DQ)
    # or AVX-NE-CONVERT (Zen 3, say); the engine is then left out, as the product leaves it out.
    onednn = onednn_unavailable_reason(torch.device("cpu"), dtype, _TORCH_OPS) is None
    for name, (m, k, n) in shapes.items():
        x = torch.randn(m, k, generator=generator).to(dtype)
        weight = torch.randn(n, k, generator=generator).to(dtype)
        flops = 2 * m * k * n
        with torch.inference_mode():
            rates["torch"][name] = flops / _best_seconds(lambda x=x, w=weight: F.linear(x, w)) / 1e9
            if onednn:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                rates["onednn"][name] = (
                    flops
                    / _best_seconds(
                        lambda x=x, p=packed: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                    )
                    / 1e9
                )
    return rates


def _ort_rates(shapes: dict[str, tuple[int, int, int]], threads: int) -> dict[str, float] | None:
    try:
        import numpy as np
        import onnx
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    rates = {}
    for name, (m, k, n) in shapes.items():
        weight = helper.make_tensor(
            "w", TensorProto.FLOAT, (k, n), rng.standard_normal((k, n)).astype("float32").ravel()
        )
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, (m, k))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, (m, n))],
            initializer=[weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = min(model.ir_version, 9)
        session = onnxruntime.InferenceSession(
            onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        x = rng.standard_normal((m, k)).astype("float32")
        rates[name] = 2 * m * k * n / _best_seconds(lambda s=session, x=x: s.run(None, {"x": x})) / 1e9
    return rates


def forward_flops(config: JinaBertConfig, lengths: list[int]) -> int:
    """FLOPs of turborank's forward over sequences of ``lengths`` tokens, as it runs it: every
    layer's linear maps (2 * K * N per row) and attention (4 * Lq * Lk * hidden per sequence: the
    two products, dense, whatever the band skips), the last layer for the token-0 rows only (its
    keys and values for every token). Embeddings, LayerNorms, the pooler and the classifier are
    left out (under 1%)."""
    H, I, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens, pairs = sum(lengths), len(lengths)
    row_after_attention = 2 * H * (H + 2 * I + I)  # output projection, up-projection, down-projection
    full_layer = tokens * (2 * H * 3 * H + row_after_attention) + sum(4 * n * n * H for n in lengths)
    last_layer = (
        tokens * 2 * H * 2 * H + pairs * (2 * H * H + row_after_attention) + sum(4 * n * H for n in lengths)
    )
    return (layers - 1) * full_layer + last_layer


def _best_over_row_counts(
    rates_of: Callable[[dict[str, tuple[int, int, int]]], dict[str, dict[str, float] | None]],
    config: JinaBertConfig,
    rows: int,
) -> dict[str, dict[str, float]]:
    """Per engine and layer shape, the best rate at ``rows`` tokens and at ``_MLP_BLOCK_ROWS`` (the
    row blocks the CPU forward runs its MLP in): the ceiling is the best the GEMM library does at
    either."""
    best: dict[str, dict[str, float]] = {}
    for count in sorted({rows, _MLP_BLOCK_ROWS}):
        for engine, figures in rates_of(layer_shapes(config, count)).items():
            for name, rate in (figures or {}).items():
                if name in ("qkv", "out", "up", "down"):
                    best.setdefault(engine, {})[name] = max(best.get(engine, {}).get(name, 0.0), rate)
    return best


def _layer_rate(figures: dict[str, float], shapes: dict[str, tuple[int, int, int]]) -> float:
    """One layer's four GEMMs at these rates: their FLOPs over the sum of their times."""
    flops = {name: 2 * m * k * n for name, (m, k, n) in shapes.items()}
    return sum(flops.values()) / sum(flops[name] / figures[name] for name in shapes)


def measure(
    model: str = "turbo", rows: int = 5120, threads: int | None = None, square_size: int = 2048
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    config = JinaBertConfig.from_dict(make_config(model))
    shapes = layer_shapes(config, rows)
    square = {"square": (square_size, square_size, square_size)}
    result: dict = {
        "cpu": cpu_identity().describe(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "model": model,
    }
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for engine, figures in _best_over_row_counts(
            lambda shapes, dtype=dtype: _torch_rates(shapes, dtype), config, rows
        ).items():
            if figures:
                square_rate = _torch_rates(square, dtype)[engine].get("square")
                result[f"{engine}_{label}"] = {
                    **figures,
                    "square": square_rate,
                    "layer": _layer_rate(figures, shapes),
                }
    ort = _best_over_row_counts(
        lambda shapes: {"ort": _ort_rates({**shapes, **square}, torch.get_num_threads())}, config, rows
    ).get("ort")  # absent without onnxruntime
    if ort:
        import onnxruntime

        result["ort_fp32"] = {**ort, "layer": _layer_rate(ort, shapes)}
        result["onnxruntime"] = onnxruntime.__version__
    for label in ("fp32", "bf16"):
        layer_rates = [
            f["layer"] for key, f in result.items() if key.endswith(f"_{label}") and isinstance(f, dict)
        ]
        result[f"best_{label}"] = max(layer_rates, default=None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="turbo", choices=["turbo", "tiny-en", "small"])
    parser.add_argument("--rows", type=int, default=5120, help="tokens per GEMM (5,120: the 10 x 512 case)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.rows, args.threads)))


if __name__ == "__main__":
    main()
