"""One measurement in a fresh process: throughput, latency and peak memory of one engine on one case.

    python -m benchmarks.cpu.measure CHECKPOINT --engine turborank --workload 10x512 [--repeats 5]

Workloads (benchmarks.cpu.engines.make_workload): "card" (model-card example), "NxL" (N pairs of L
tokens), "mixed:N:LO-HI" (N documents of LO..HI tokens). Prints one JSON line.

Memory: the process's peak resident set over the whole run (model load included), and the peak
during the timed forwards alone (Linux: VmHWM after resetting it through /proc/self/clear_refs),
minus the resident set before them; on a GPU, the CUDA allocator's peak during the forwards over what
was allocated before them. A fresh process per measurement keeps runs apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from benchmarks.cpu.engines import ENGINES, make_workload
from benchmarks.cpu.gemm_rates import forward_flops
from turborank.config import JinaBertConfig


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak_rss_mib() -> float:
    """This process's peak resident set. Linux's VmHWM belongs to the process's own address space;
    ru_maxrss also counts the parent's peak at the fork before exec, so a child of a large process
    (a test runner) would report the parent's peak."""
    try:
        return _status_mib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(
    checkpoint: str,
    engine_name: str,
    workload: str,
    repeats: int,
    device: str,
    dtype: str,
    threads: int | None,
    slopes: str | None = None,
    batch_size: int = 32,
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    engine_cls, backend = ENGINES[engine_name]
    options = {"slopes": slopes} if slopes else {}  # turborank's engines only: the peers run the code given
    engine = engine_cls(checkpoint, device=device, dtype=dtype, backend=backend, **options)
    pairs, max_length = make_workload(engine, workload)
    lengths = engine.pair_lengths(pairs, max_length)
    tokens = sum(lengths)
    config = JinaBertConfig.from_file(Path(checkpoint) / "config.json")
    engine.logits(pairs, max_length=max_length, batch_size=batch_size)  # warm-up: allocator, lazy init
    peak_after_load = _peak_rss_mib()
    resident = _status_mib("VmRSS")
    reset = _reset_peak()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        logits = engine.logits(pairs, max_length=max_length, batch_size=batch_size)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    median = statistics.median(times)
    versions = {"torch": torch.__version__}
    if engine_name.startswith(("hf", "ort")):
        import transformers

        versions["transformers"] = transformers.__version__
    versions.update(getattr(engine, "versions", {}))
    # turborank: which linear engine ran and why (measured at load on this CPU).
    reranker = getattr(engine, "reranker", None)
    linear = reranker.describe()["linear"] if reranker is not None else None
    return {
        "versions": versions,
        "engine": engine_name,
        "workload": workload,
        "pairs": len(pairs),
        "tokens": tokens,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "median_s": median,
        "p99_s": times[math.ceil(0.99 * len(times)) - 1],  # nearest rank
        "min_s": times[0],
        "pairs_per_s": len(pairs) / median,
        "tokens_per_s": tokens / median,
        # turborank's forward FLOPs for these lengths (gemm_rates.forward_flops), over the median:
        # the rate the suite holds against the CPU's GEMM ceiling.
        "forward_gflop": forward_flops(config, lengths) / 1e9,
        "gflop_per_s": forward_flops(config, lengths) / 1e9 / median,
        "peak_rss_mib": max(peak_after_load, _peak_rss_mib()),
        # Clamped: pages freed after the resident-set reading can leave the new peak below it.
        "forward_peak_over_resident_mib": max(0.0, _status_mib("VmHWM") - resident) if reset else None,
        # On a GPU: device memory the forwards took beyond what was allocated before them (weights,
        # and whatever the engine keeps, such as the reference's ALiBi buffer).
        "gpu_forward_peak_mib": (torch.cuda.max_memory_allocated() - allocated) / 2**20 if cuda else None,
        "gpu_allocated_before_mib": allocated / 2**20 if cuda else None,
        # What else the machine ran meanwhile (a shared machine's load skews every engine's times).
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "linear": linear,
        # Input order, for the suite's error and rank-agreement columns.
        "logits": [float(x) for x in logits],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="turborank")
    parser.add_argument("--workload", default="10x512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--slopes", default=None, help="turborank's ALiBi scheme (default: from config.json)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="pairs per batch (the peers' padded batches)"
    )
    args = parser.parse_args()
    result = measure(
        args.checkpoint,
        args.engine,
        args.workload,
        args.repeats,
        args.device,
        args.dtype,
        args.threads,
        args.slopes,
        args.batch_size,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
