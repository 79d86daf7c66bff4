"""Whole-model benchmarks on a GPU: the turbo shapes (synthetic weights), bf16.

    python -m benchmarks.gpu.gpu_model [--out DIR] [--quick] [--checkpoint DIR] [--smoke]

Cases: one 8,192-token document (latency, activation memory), 10 x 512-token pairs (forward latency
and pairs/s, plus pairs/s at a larger steady-state batch), the model-card example end to end
(p50/p99 of ``rank`` from strings), each for the Triton and the PyTorch backends; the effect of
running the last layer for the token-0 rows only and of the fused GEGLU GEMM; and the small-request
path: the model card from token ids, host enqueue time against GPU time, eager against CUDA-graph
replay. GPU time is measured with CUDA events around forwards whose inputs are already on the
device, beside the host's time to issue each forward (its ~60 kernel launches: where that exceeds
the GPU time, Python is the bound); "end to end" includes tokenisation. ``--smoke`` runs every
case on CPU with tiny sizes and measures nothing (see benchmarks/gpu/gpu_env.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial

import torch

from benchmarks.gpu.gpu_env import ENV, configure
from benchmarks.report import LOCAL_RESULTS, run_sections
from turborank import Reranker
from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY
from turborank.packing import pack
from turborank.testing import make_checkpoint, random_text
from turborank.tokenization import TruncationWarning


@dataclasses.dataclass(frozen=True)
class Sizes:
    long: int = 8192  # one long document
    pairs: int = 10  # the "10 x 512" case
    pair_tokens: int = 512
    big_batch: int = 256  # steady-state throughput batch of pair_tokens each
    iters: int = 50
    latency_iters: int = 1000  # host-timed small requests
    card_documents: int = len(MODEL_CARD_DOCUMENTS)

    def quick(self) -> Sizes:
        return dataclasses.replace(self, iters=20, latency_iters=200)


SMOKE_SIZES = Sizes(long=40, pairs=3, pair_tokens=24, big_batch=4, iters=1, latency_iters=1, card_documents=1)


def _packed(n: int, tokens: int, vocab: int = 1500) -> tuple[torch.Tensor, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(n * tokens)
    ids = torch.randint(5, vocab, (n * tokens,), generator=gen)
    ids[::tokens] = 0
    cu = torch.arange(0, (n + 1) * tokens, tokens, dtype=torch.int32)
    return ids.to(ENV.device), cu.to(ENV.device), tokens


def _time_forward(model, inputs, iters: int) -> list[float]:
    """Milliseconds per forward: CUDA events on a GPU, the host clock in smoke mode."""
    for _ in range(3 if not ENV.smoke else 0):  # the interpreter has nothing to warm up
        model(*inputs)
    times = []
    for _ in range(iters):
        if ENV.smoke:
            times.append(ENV.bench(lambda: model(*inputs)))
            continue
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(*inputs)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return times


def _host_enqueue_ms(model, inputs, iters: int) -> float:
    """Median host milliseconds to issue one forward (every kernel launch), the device idle at the
    start of each: a forward whose enqueue takes longer than its GPU time keeps the GPU waiting on
    Python, and the events around it then measure the host."""
    times = []
    for _ in range(iters):
        ENV.synchronize()
        start = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - start) * 1e3)
    ENV.synchronize()
    return statistics.median(times)


def _activation_peak_mib(model, inputs) -> float | None:
    if ENV.smoke:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model(*inputs)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _percentiles(fn, iters: int) -> tuple[float, float]:
    for _ in range(10 if not ENV.smoke else 0):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, math.ceil(len(times) * 0.99) - 1)]


def model_rows(reranker: Reranker, backend: str, sizes: Sizes) -> list[dict]:
    model = reranker.module
    rows = []
    long_case = (f"1 x {sizes.long}", 1, sizes.long)
    pair_case = (f"{sizes.pairs} x {sizes.pair_tokens}", sizes.pairs, sizes.pair_tokens)
    cases = [
        long_case,
        pair_case,
        (f"{sizes.big_batch} x {sizes.pair_tokens}", sizes.big_batch, sizes.pair_tokens),
    ]
    for name, n, tokens in cases:
        inputs = _packed(n, tokens)
        times = _time_forward(model, inputs, sizes.iters)
        p50 = statistics.median(times)
        rows.append(
            {
                "case": name,
                "backend": backend,
                "p50_ms": p50,
                "min_ms": min(times),
                "host_enqueue_ms": _host_enqueue_ms(model, inputs, sizes.iters),
                "pairs/s": n / p50 * 1e3,
                "activation_peak_MiB": _activation_peak_mib(model, inputs),
            }
        )
    # What the token-0-only last layer saves, on the long document.
    inputs = _packed(1, sizes.long)
    model.last_layer_token0_only = False
    full = statistics.median(_time_forward(model, inputs, sizes.iters))
    model.last_layer_token0_only = True
    fast = statistics.median(_time_forward(model, inputs, sizes.iters))
    rows.append(
        {
            "case": f"{long_case[0]}, last layer all rows",
            "backend": backend,
            "p50_ms": full,
            "note": f"token-0-only last layer saves {100 * (full - fast) / full:.1f}%",
        }
    )
    # What the band-limited attention saves on the long document (synthetic weights: the saving
    # depends on the query and key norms, which the real checkpoints may not share).
    banded_ops = model.ops
    model.ops = dataclasses.replace(
        banded_ops, alibi_attention=partial(banded_ops.alibi_attention, band=False)
    )
    try:
        unbanded = statistics.median(_time_forward(model, inputs, sizes.iters))
    finally:
        model.ops = banded_ops
    rows.append(
        {
            "case": f"{long_case[0]}, attention band off",
            "backend": backend,
            "p50_ms": unbanded,
            "note": f"the band saves {100 * (unbanded - fast) / unbanded:.1f}%",
        }
    )
    if backend == "triton":
        # The fused GEGLU GEMM (opt-in) against the default cuBLAS + gelu_glu, whole model.
        for name, n, tokens in (pair_case, long_case):
            inputs = _packed(n, tokens)
            default = statistics.median(_time_forward(model, inputs, sizes.iters))
            model.use_fused_gelu_glu_gemm(True)
            fused = statistics.median(_time_forward(model, inputs, sizes.iters))
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
    documents = MODEL_CARD_DOCUMENTS[: sizes.card_documents]
    p50, p99 = _percentiles(lambda: reranker.rank(MODEL_CARD_QUERY, documents), sizes.iters * 2)
    rows.append(
        {
            "case": "model card (1 query, 10 docs), end to end",
            "backend": backend,
            "p50_ms": p50,
            "p99_ms": p99,
        }
    )
    # End to end pairs of pair_tokens from strings (tokenisation included).
    rng = random.Random(0)
    pairs = [("query", random_text(rng, sizes.pair_tokens + 100)) for _ in range(sizes.pairs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        reranker.predict(pairs, max_length=sizes.pair_tokens)
        start = time.perf_counter()
        for _ in range(10 if not ENV.smoke else 1):
            reranker.predict(pairs, max_length=sizes.pair_tokens)
        ENV.synchronize()
        per_call = (time.perf_counter() - start) / (10 if not ENV.smoke else 1)
    rows.append(
        {
            "case": f"{pair_case[0]}, end to end",
            "backend": backend,
            "p50_ms": per_call * 1e3,
            "pairs/s": sizes.pairs / per_call,
        }
    )
    return rows


def small_request_rows(checkpoint: str, sizes: Sizes) -> list[dict]:
    """The model-card request (1 query, 10 short documents) from token ids to logits on the host:
    host launch overhead, then eager vs CUDA-graph replay. Target: p50 < 1 ms on an H200, so that a
    small request pays for its arithmetic rather than for kernel launches."""
    reranker = Reranker.from_pretrained(checkpoint, device=ENV.device, dtype=ENV.dtype, backend="triton")
    documents = MODEL_CARD_DOCUMENTS[: sizes.card_documents]
    encoded, _ = reranker.encode([(MODEL_CARD_QUERY, doc) for doc in documents])
    rows = []
    # Host time to enqueue one eager forward (median) against the GPU time it then takes.
    inputs = _pack_for(encoded)
    model = reranker.module
    gpu_ms = statistics.median(_time_forward(model, inputs, sizes.iters))
    host_ms = _host_enqueue_ms(model, inputs, sizes.iters)
    rows.append(
        {
            "case": "model card forward: GPU time and host enqueue",
            "backend": "triton",
            "p50_ms": gpu_ms,
            "host_enqueue_ms": host_ms,
            "note": f"{len(encoded.lengths)} pairs, {sum(encoded.lengths)} tokens",
        }
    )
    p50, p99 = _percentiles(lambda: reranker.logits(encoded), sizes.latency_iters)
    rows.append(
        {"case": "model card from token ids, eager", "backend": "triton", "p50_ms": p50, "p99_ms": p99}
    )
    runner = reranker.enable_cuda_graphs(capture=not ENV.smoke)
    p50, p99 = _percentiles(lambda: reranker.logits(encoded), sizes.latency_iters)
    rows.append(
        {
            "case": "model card from token ids, CUDA graph",
            "backend": "triton",
            "p50_ms": p50,
            "p99_ms": p99,
            "note": f"buckets captured: {runner.captured}",
        }
    )
    p50, p99 = _percentiles(
        lambda: reranker.rank(MODEL_CARD_QUERY, documents), max(1, sizes.latency_iters // 2)
    )
    rows.append(
        {
            "case": "model card end to end (strings), CUDA graph",
            "backend": "triton",
            "p50_ms": p50,
            "p99_ms": p99,
        }
    )
    return rows


def _pack_for(encoded) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    ids, cu, longest, types = pack(encoded.input_ids, encoded.token_type_ids)
    return ids.to(ENV.device), cu.to(ENV.device), longest, None if types is None else types.to(ENV.device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(LOCAL_RESULTS))
    parser.add_argument("--checkpoint", default=None, help="default: a synthetic turbo-shaped checkpoint")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny sizes: runs, measures nothing")
    args = parser.parse_args()
    configure(args.smoke, "benchmarks.gpu.gpu_model")
    sizes = SMOKE_SIZES if args.smoke else Sizes().quick() if args.quick else Sizes()
    preset = "small" if args.smoke else "turbo"
    checkpoint = args.checkpoint or make_checkpoint(tempfile.mkdtemp(), preset)

    def backend_rows(backend: str) -> list[dict]:
        reranker = Reranker.from_pretrained(checkpoint, device=ENV.device, dtype=ENV.dtype, backend=backend)
        try:
            return model_rows(reranker, backend, sizes)
        finally:
            del reranker
            if not ENV.smoke:
                torch.cuda.empty_cache()

    # Most wanted first: a step stopped at its time limit keeps what finished.
    sections = [
        ("triton backend", partial(backend_rows, "triton")),
        ("small requests", partial(small_request_rows, checkpoint, sizes)),
        ("torch backend", partial(backend_rows, "torch")),
    ]
    columns = [
        "case",
        "backend",
        "p50_ms",
        "min_ms",
        "p99_ms",
        "host_enqueue_ms",
        "pairs/s",
        "activation_peak_MiB",
        "note",
        "error",
    ]
    dtype = str(ENV.dtype).removeprefix("torch.")
    status, _ = run_sections(
        args.out,
        "gpu_model",
        columns,
        sections=sections,
        notes=[
            f"{preset} shapes, synthetic weights, {dtype} on {ENV.device}"
            + (" (SMOKE RUN: nothing here is a measurement)" if ENV.smoke else ""),
            "forward rows: CUDA events around model(ids, cu_seqlens, max_seqlen), inputs on device; "
            "host_enqueue_ms: the host's time to issue one such forward from an idle device (median)",
        ],
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
