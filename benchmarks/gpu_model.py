"""Whole-model benchmarks on a GPU: the turbo shapes (synthetic weights), bf16.

    python -m benchmarks.gpu_model [--out DIR] [--quick] [--checkpoint DIR]

Cases: one 8,192-token document (latency, activation memory), 10 x 512-token pairs (forward latency
and pairs/s, plus pairs/s at a larger steady-state batch), the model-card example end to end
(p50/p99 of ``rank`` from strings), each for the Triton and the PyTorch backends, and the effect of
running the last layer for the token-0 rows only. GPU time is measured with CUDA events around
forwards whose inputs are already on the device; "end to end" includes tokenisation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

from benchmarks.report import write_report
from turborank import Reranker
from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY
from turborank.testing import make_checkpoint, random_text
from turborank.tokenization import TruncationWarning


def _packed(n: int, tokens: int, vocab: int = 1500) -> tuple[torch.Tensor, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(n * tokens)
    ids = torch.randint(5, vocab, (n * tokens,), generator=gen)
    ids[::tokens] = 0
    cu = torch.arange(0, (n + 1) * tokens, tokens, dtype=torch.int32)
    return ids.cuda(), cu.cuda(), tokens


def _time_forward(model, inputs, iters: int) -> list[float]:
    ids, cu, max_len = inputs
    for _ in range(3):
        model(ids, cu, max_len)
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(ids, cu, max_len)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return times


def _activation_peak_mib(model, inputs) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model(*inputs)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def model_rows(reranker: Reranker, backend: str, quick: bool) -> list[dict]:
    model = reranker.model
    rows = []
    iters = 20 if quick else 50
    cases = [("1 x 8192", 1, 8192), ("10 x 512", 10, 512), ("256 x 512", 256, 512)]
    for name, n, tokens in cases:
        inputs = _packed(n, tokens)
        times = _time_forward(model, inputs, iters)
        p50 = statistics.median(times)
        rows.append(
            {
                "case": name,
                "backend": backend,
                "p50_ms": p50,
                "min_ms": min(times),
                "pairs/s": n / p50 * 1e3,
                "activation_peak_MiB": _activation_peak_mib(model, inputs),
            }
        )
    # What the token-0-only last layer saves, on the long document.
    inputs = _packed(1, 8192)
    model.last_layer_token0_only = False
    full = statistics.median(_time_forward(model, inputs, iters))
    model.last_layer_token0_only = True
    fast = statistics.median(_time_forward(model, inputs, iters))
    rows.append(
        {
            "case": "1 x 8192, last layer all rows",
            "backend": backend,
            "p50_ms": full,
            "note": f"token-0-only last layer saves {100 * (full - fast) / full:.1f}%",
        }
    )
    if backend == "triton":
        # The fused GEGLU GEMM (opt-in) against the default cuBLAS + gelu_glu, whole model.
        for name, n, tokens in (("10 x 512", 10, 512), ("1 x 8192", 1, 8192)):
            inputs = _packed(n, tokens)
            default = statistics.median(_time_forward(model, inputs, iters))
            model.use_fused_gelu_glu_gemm(True)
            fused = statistics.median(_time_forward(model, inputs, iters))
            model.use_fused_gelu_glu_gemm(False)
            rows.append(
                {
                    "case": f"{name}, fused GEGLU GEMM",
                    "backend": backend,
                    "p50_ms": fused,
                    "note": f"default (cuBLAS + gelu_glu) {default:.4f} ms: fused is {default / fused:.2f}x",
                }
            )
    # End to end from strings, the model-card example.
    for _ in range(5):
        reranker.rank(MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS)
    latencies = []
    for _ in range(100 if not quick else 30):
        start = time.perf_counter()
        reranker.rank(MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS)
        latencies.append((time.perf_counter() - start) * 1e3)
    latencies.sort()
    rows.append(
        {
            "case": "model card (1 query, 10 docs), end to end",
            "backend": backend,
            "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        }
    )
    # End to end 10 x 512 from strings (tokenisation included).
    rng = __import__("random").Random(0)
    pairs = [("query", random_text(rng, 600)) for _ in range(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        reranker.predict(pairs, max_length=512)
        start = time.perf_counter()
        for _ in range(10):
            reranker.predict(pairs, max_length=512)
        torch.cuda.synchronize()
    per_call = (time.perf_counter() - start) / 10
    rows.append(
        {
            "case": "10 x 512, end to end",
            "backend": backend,
            "p50_ms": per_call * 1e3,
            "pairs/s": 10 / per_call,
        }
    )
    return rows


def _percentiles(fn, iters: int) -> tuple[float, float]:
    for _ in range(10):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[max(0, int(len(times) * 0.99) - 1)]


def small_request_rows(checkpoint: str, quick: bool) -> list[dict]:
    """The model-card request (1 query, 10 short documents) from token ids to logits on the host:
    host launch overhead, then eager vs CUDA-graph replay (issue target: p50 < 1 ms on an H200)."""
    reranker = Reranker.from_pretrained(checkpoint, device="cuda", dtype="bfloat16", backend="triton")
    encoded, _ = reranker.encode([(MODEL_CARD_QUERY, doc) for doc in MODEL_CARD_DOCUMENTS])
    iters = 200 if quick else 1000
    rows = []
    # Host time to enqueue one eager forward (no sync) against the GPU time it then takes.
    ids, cu, max_len, types = _pack_for(encoded)
    model = reranker.model
    for _ in range(5):
        model(ids, cu, max_len, types)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model(ids, cu, max_len, types)
    host_ms = (time.perf_counter() - start) * 1e3
    torch.cuda.synchronize()
    gpu_ms = statistics.median(_time_forward(model, (ids, cu, max_len), 50))
    rows.append(
        {
            "case": "model card forward: host enqueue vs GPU time",
            "backend": "triton",
            "p50_ms": gpu_ms,
            "note": f"host enqueue {host_ms:.3f} ms for {len(encoded.lengths)} pairs, "
            f"{sum(encoded.lengths)} tokens",
        }
    )
    p50, p99 = _percentiles(lambda: reranker.score_encoded(encoded), iters)
    rows.append(
        {"case": "model card from token ids, eager", "backend": "triton", "p50_ms": p50, "p99_ms": p99}
    )
    runner = reranker.enable_cuda_graphs()
    p50, p99 = _percentiles(lambda: reranker.score_encoded(encoded), iters)
    rows.append(
        {
            "case": "model card from token ids, CUDA graph",
            "backend": "triton",
            "p50_ms": p50,
            "p99_ms": p99,
            "note": f"buckets captured: {runner.captured}",
        }
    )
    p50, p99 = _percentiles(lambda: reranker.rank(MODEL_CARD_QUERY, MODEL_CARD_DOCUMENTS), iters // 2)
    rows.append(
        {
            "case": "model card end to end (strings), CUDA graph",
            "backend": "triton",
            "p50_ms": p50,
            "p99_ms": p99,
        }
    )
    return rows


def _pack_for(encoded) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    lengths = encoded.lengths
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    ids = torch.tensor([t for seq in encoded.input_ids for t in seq])
    types = (
        torch.tensor([t for seq in encoded.token_type_ids for t in seq]) if encoded.token_type_ids else None
    )
    return ids.cuda(), cu.cuda(), max(lengths), None if types is None else types.cuda()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/local")
    parser.add_argument("--checkpoint", default=None, help="default: a synthetic turbo-shaped checkpoint")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_model needs a CUDA GPU")
    checkpoint = args.checkpoint or make_checkpoint(tempfile.mkdtemp(), "turbo")
    rows = []
    for backend in ("triton", "torch"):
        reranker = Reranker.from_pretrained(checkpoint, device="cuda", dtype="bfloat16", backend=backend)
        rows += model_rows(reranker, backend, args.quick)
        del reranker
        torch.cuda.empty_cache()
    rows += small_request_rows(checkpoint, args.quick)
    columns = ["case", "backend", "p50_ms", "min_ms", "p99_ms", "pairs/s", "activation_peak_MiB", "note"]
    write_report(
        args.out,
        "gpu_model",
        rows,
        columns,
        notes=[
            "turbo shapes (6 layers, 384 hidden, 12 heads), synthetic weights, bf16",
            "forward rows: CUDA events around model(ids, cu_seqlens, max_seqlen), inputs on device",
        ],
    )


if __name__ == "__main__":
    main()
