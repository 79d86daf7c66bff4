"""One measurement in a fresh process: throughput, latency and peak memory of one engine on one case.

    python -m benchmarks.measure CHECKPOINT --engine turborank --pairs 10 --tokens 512 [--repeats 5] [--json]

Memory: the process's peak resident set over the whole run (model load included), and the peak
during the timed forwards alone (Linux: VmHWM after resetting it through /proc/self/clear_refs),
minus the resident set before them. A fresh process per measurement keeps runs apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from benchmarks.engines import ENGINES, pairs_of_length


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


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
    n_pairs: int,
    tokens: int,
    repeats: int,
    device: str,
    dtype: str,
    threads: int | None,
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    engine = ENGINES[engine_name](checkpoint, device=device, dtype=dtype)
    pairs = pairs_of_length(engine, n_pairs, tokens)
    engine.logits(pairs, max_length=tokens)  # warm-up: allocator, kernels, lazy init
    peak_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    resident = _status_mib("VmRSS")
    reset = _reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.logits(pairs, max_length=tokens)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    versions = {"torch": torch.__version__}
    if engine_name == "hf":
        import transformers

        versions["transformers"] = transformers.__version__
    return {
        "versions": versions,
        "engine": engine_name,
        "pairs": n_pairs,
        "tokens_per_pair": tokens,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "median_s": median,
        "min_s": min(times),
        "pairs_per_s": n_pairs / median,
        "peak_rss_mib": max(peak_after_load, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "forward_peak_over_resident_mib": (_status_mib("VmHWM") - resident) if reset else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="turborank")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(
        json.dumps(
            measure(
                args.checkpoint,
                args.engine,
                args.pairs,
                args.tokens,
                args.repeats,
                args.device,
                args.dtype,
                args.threads,
            )
        )
    )


if __name__ == "__main__":
    main()
