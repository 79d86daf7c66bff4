"""Where the GPU benchmark scripts run.

On a GPU: bf16, Triton's ``do_bench`` (CUDA events, median). With ``--smoke``: the CPU, fp32,
Triton's interpreter, tiny shapes and one call per timing. The smoke mode measures nothing; it runs
every line of a script so that a mistake is found in CI, not in a rare and short GPU session.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from turborank.kernels import interpreting


@dataclasses.dataclass
class BenchEnv:
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    smoke: bool = False

    def bench(self, fn: Callable[[], object]) -> float:
        """Median milliseconds of ``fn`` (one untimed-quality call in smoke mode)."""
        if self.smoke:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def compile(self, fn: Callable) -> Callable:
        """torch.compile on a GPU; as is in smoke mode (Inductor's CPU build would dominate CI time)."""
        return fn if self.smoke else torch.compile(fn)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


ENV = BenchEnv()


def configure(smoke: bool, script: str) -> BenchEnv:
    """Set ``ENV`` for this process: the GPU, or the CPU smoke mode (needs TRITON_INTERPRET=1 set
    before turborank's kernels are imported)."""
    if smoke:
        if not interpreting():
            raise SystemExit(f"{script} --smoke needs TRITON_INTERPRET=1 in the environment")
        ENV.device, ENV.dtype, ENV.smoke = "cpu", torch.float32, True
    elif not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA GPU (or --smoke to run it on CPU without measuring)")
    return ENV
