"""Compile every Triton kernel for an H100/H200 (sm_90) on a machine without a GPU, at the launch
configurations our launchers really choose, and report what ptxas made of each: registers per
thread, the stack frame its spilled registers take (local memory), shared memory, and whether
Hopper's wgmma was used.

Why: a GPU session is short and rare; a kernel that does not compile for sm_90, spills, or asks for
more shared memory than an SM has should be caught here, not there. The launchers are run for real
on CPU tensors with each kernel swapped for a recorder, so the configurations compiled are exactly
the ones the code picks for those shapes. Triton's own ptxas and cuobjdump (shipped in its wheel)
do the work; no CUDA driver is needed.

    python -m benchmarks.compile.sm90_compile [--out DIR] [--quick]

Must run without TRITON_INTERPRET=1 (the interpreter replaces the kernels with Python).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from benchmarks.report import markdown_table, write_report
from turborank.kernels import interpreting
from turborank.packing import cu_seqlens

KERNEL_MODULES = ("alibi_attention", "alibi_band", "gelu_glu", "gelu_glu_linear", "add_layer_norm")
# Hopper: 227 KiB of shared memory per block at most (opt-in), 255 registers per thread.
SHARED_LIMIT = 227 * 1024
TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}


@dataclasses.dataclass
class Launch:
    kernel: str
    problem: str
    fn: object
    args: tuple
    kwargs: dict


@dataclasses.dataclass
class Compiled:
    kernel: str
    problems: list[str]
    config: str
    registers: int
    stack_bytes: int
    shared_bytes: int
    wgmma: bool
    ctas_per_sm: int


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records instead of running."""

    def __init__(self, fn, name: str, sink: list[Launch], problem: list[str]) -> None:
        self.fn, self.name, self.sink, self.problem = fn, name, sink, problem

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.sink.append(Launch(self.name, self.problem[0], self.fn, args, kwargs))

        return record


@contextmanager
def recording() -> Iterator[tuple[list[Launch], list[str]]]:
    """Swap every kernel of turborank.kernels for a recorder while the block runs."""
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    problem = [""]
    swapped = []
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"turborank.kernels.{module_name}")
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                swapped.append((module, attr, value))
                setattr(module, attr, _Recorder(value, attr.strip("_"), launches, problem))
    try:
        yield launches, problem
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)


def problems(quick: bool) -> Iterator[tuple[str, Callable[[], object]]]:
    """(name, call) for the shapes the rerankers run: the calls go through the public functions."""
    from turborank.kernels import (
        add_layer_norm_triton,
        alibi_attention_padded_triton,
        alibi_attention_triton,
        embedding_layer_norm_triton,
        gelu_glu_linear_triton,
        gelu_glu_triton,
    )

    dtypes = (torch.bfloat16, torch.float32) if quick else (torch.bfloat16, torch.float16, torch.float32)
    # Every head-dim class the attention accepts (its tiles are sized by the padded head dim, up to
    # MAX_HEAD_DIM = 256): shared memory grows with it, fp32 most, so quick mode takes the large
    # classes in fp32 only.
    dims = (16, 32, 64, 128, 256)
    for dtype in dtypes:
        tag = TRITON_TYPES[dtype]
        for d in dims:
            if quick and (d == 16 or (d > 64 and dtype != torch.float32)):
                continue
            heads = 384 // d if d < 128 else 8
            slopes = torch.ones(heads)
            for length in (16, 8192) if quick else (1, 16, 512, 8192):
                lengths = [length] if length > 16 else [length] * 8
                q, k, v = torch.zeros(sum(lengths), 3, heads, d, dtype=dtype).unbind(1)
                cu = cu_seqlens(lengths)
                m = max(lengths)
                yield (
                    f"alibi_attention {tag} d={d} L={length}",
                    partial(alibi_attention_triton, q, k, v, cu, cu, m, m, slopes),
                )
            # The token-0 queries of the last layer: one query row per sequence.
            kv = torch.zeros(512, heads, d, dtype=dtype)
            yield (
                f"alibi_attention {tag} d={d} token-0 queries",
                partial(alibi_attention_triton, kv[:1], kv, kv, _cu([1]), _cu([512]), 1, 512, slopes),
            )
        if not quick:
            qp = torch.zeros(2, 128, 12, 32, dtype=dtype)
            key_lengths = torch.tensor([128, 7], dtype=torch.int32)
            yield (
                f"alibi_attention_padded {tag} d=32",
                partial(alibi_attention_padded_triton, qp, qp, qp, key_lengths, torch.ones(12)),
            )
        for inner in (384, 1536, 3072):
            u = torch.zeros(4, 2 * inner, dtype=dtype)
            yield f"gelu_glu {tag} I={inner}", partial(gelu_glu_triton, u, "gelu")
        x, w = torch.zeros(64, 384, dtype=dtype), torch.zeros(2 * 1536, 384, dtype=dtype)
        yield f"gelu_glu_linear {tag} K=384 I=1536", partial(gelu_glu_linear_triton, x, w, "gelu")
        for hidden in (192, 384, 768, 1024):
            x = torch.zeros(4, hidden, dtype=dtype)
            w = torch.ones(hidden, dtype=dtype)
            yield f"add_layer_norm {tag} H={hidden}", partial(add_layer_norm_triton, x, x, w, w, 1e-12)
        ids = torch.zeros(4, dtype=torch.long)
        table, types = torch.zeros(64, 384, dtype=dtype), torch.zeros(2, 384, dtype=dtype)
        w = torch.ones(384, dtype=dtype)
        yield (
            f"embedding_layer_norm {tag} H=384",
            partial(embedding_layer_norm_triton, ids, ids, table, types, w, w, 1e-12),
        )


def _cu(lengths: list[int]) -> torch.Tensor:
    return cu_seqlens(lengths)


def candidate_problems() -> Iterator[tuple[str, Callable[[], object]]]:
    """benchmarks.gpu.tune_attention's candidate tiles, bf16, d=32 and 64, long and token-0 queries."""
    from benchmarks.gpu.tune_attention import CANDIDATES, TOKEN0_CANDIDATES
    from turborank.kernels import alibi_attention_triton

    for d in (32, 64):
        heads = 384 // d
        q = torch.zeros(1024, heads, d, dtype=torch.bfloat16)
        slopes = torch.ones(heads)
        for config in CANDIDATES:
            yield (
                f"d={d} L=1024 {config}",
                partial(
                    alibi_attention_triton,
                    q,
                    q,
                    q,
                    _cu([1024]),
                    _cu([1024]),
                    1024,
                    1024,
                    slopes,
                    launch_config=config,
                ),
            )
        for config in TOKEN0_CANDIDATES:
            yield (
                f"d={d} token-0 {config}",
                partial(
                    alibi_attention_triton,
                    q[:1],
                    q,
                    q,
                    _cu([1]),
                    _cu([1024]),
                    1,
                    1024,
                    slopes,
                    launch_config=config,
                ),
            )


def _signature(launch: Launch) -> tuple[dict, dict, dict, dict]:
    """Triton's (signature, constexprs, attrs, options) for a recorded launch, as its JIT would build."""
    from triton.backends.nvidia.compiler import CUDABackend

    fn = launch.fn
    names = fn.arg_names
    values = dict(zip(names, launch.args, strict=False))  # the rest come as keywords
    if launch.kwargs.get("enable_fp_fusion") is not True:
        # Left unset, Triton's default decides, and 3.10 changes it (kernels/_launch.py).
        raise ValueError(f"{launch.kernel} is launched without enable_fp_fusion=ENABLE_FP_FUSION")
    options = {
        k: launch.kwargs[k] for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in launch.kwargs
    }
    values.update({k: v for k, v in launch.kwargs.items() if k not in options})
    constexpr_names = {names[i] for i in fn.constexprs}
    no_specialize = {names[i] if isinstance(i, int) else i for i in fn.do_not_specialize}
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(names):
        value = values[name]
        if name in constexpr_names or value is None:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TRITON_TYPES[value.dtype]
            # Our allocations are 16-byte aligned, as CUDA's caching allocator guarantees.
            attrs[(index,)] = CUDABackend.parse_attr("D")
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if name not in no_specialize and value % 16 == 0 and value != 0:
                attrs[(index,)] = CUDABackend.parse_attr("D")
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{launch.kernel}: argument {name} has unsupported type {type(value).__name__}")
    return signature, constexprs, attrs, options


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_launch(launch: Launch, arch: int = 90) -> tuple[str, dict]:
    """Compile for sm_``arch``; returns (config text, resource usage)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs, options = _signature(launch)
    source = ASTSource(launch.fn, signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        dump = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", cubin.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    # ptxas puts the registers it spills in the kernel's STACK frame, which cuobjdump reports apart
    # from LOCAL (local arrays the PTX declares itself; 0 for every kernel here): a tile that spilled
    # 18 KB of stores showed LOCAL:0 STACK:7304. Both are per-thread local memory.
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", dump))
    shown = {k: v for k, v in constexprs.items() if v is not None}
    tiles = {k: v for k, v in options.items() if k != "enable_fp_fusion"}  # on in every launch
    config = " ".join(f"{k}={v}" for k, v in {**shown, **tiles}.items())
    registers, shared = int(usage["REG"]), int(kernel.metadata.shared)
    return config, {
        "registers": registers,
        "stack_bytes": int(usage.get("STACK", 0)) + int(usage.get("LOCAL", 0)),
        "shared_bytes": shared,
        "wgmma": "versionMajor = 3" in kernel.asm["ttgir"],
        "ctas_per_sm": ctas_per_sm(registers, shared, options.get("num_warps", 4)),
    }


def ctas_per_sm(registers: int, shared_bytes: int, warps: int) -> int:
    """Blocks an H100/H200 SM holds at once: 64 Ki registers (allocated per warp in units of 256,
    i.e. per thread in units of 8), 228 KiB shared memory (1 KiB reserved per block), 64 warps,
    32 blocks. The fewer, the less latency the SM can hide."""
    per_warp = -(-registers // 8) * 8 * 32
    by_registers = 65536 // (per_warp * warps)
    by_shared = 228 * 1024 // (shared_bytes + 1024)
    return min(by_registers, by_shared, 64 // warps, 32)


def report(quick: bool = False, candidates: bool = False) -> list[Compiled]:
    if interpreting():
        raise SystemExit("sm90_compile must run without TRITON_INTERPRET=1")
    with recording() as (launches, problem):
        for name, call in candidate_problems() if candidates else problems(quick):
            problem[0] = name
            call()
    unique: dict[tuple, list[Launch]] = {}
    for launch in launches:
        signature, constexprs, _, options = _signature(launch)
        key = (
            launch.kernel,
            repr(sorted(signature.items())),
            repr(sorted(constexprs.items())),
            repr(options),
        )
        unique.setdefault(key, []).append(launch)
    compiled = _compile_all([same[0] for same in unique.values()])
    return [
        Compiled(same[0].kernel, [launch.problem for launch in same], config, **usage)
        for same, (config, usage) in zip(unique.values(), compiled, strict=True)
    ]


_TO_COMPILE: list[Launch] = []


def _compile_nth(index: int) -> tuple[str, dict]:
    return compile_launch(_TO_COMPILE[index])


def _compile_all(launches: list[Launch]) -> list[tuple[str, dict]]:
    """``compile_launch`` of each, in order, one process per core: each compile is seconds of
    single-threaded LLVM and ptxas. Forked workers read the launches from this module (a launch
    holds a JITFunction, which does not pickle) and send back plain results."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores, len(launches))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [compile_launch(launch) for launch in launches]
    _TO_COMPILE[:] = launches
    try:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_compile_nth, range(len(launches))))
    finally:
        _TO_COMPILE.clear()


# What the report's columns mean, written beside every table.
NOTES = [
    "compiled for sm_90 (H100/H200) by Triton's bundled ptxas on a machine without a GPU, at the "
    "configurations the launchers chose for the shapes in used_for",
    "registers: per thread (255 at most); stack_bytes: local memory per thread (ptxas's stack frame, "
    "where the registers it spills go, plus any local arrays): 0 unless registers ran out; shared_bytes: "
    "shared memory per block; ctas_per_sm: blocks one SM holds at once by registers, shared memory "
    "and warps; wgmma: whether Hopper's tensor-core instructions were used",
]
COLUMNS = ["kernel", "used_for", "config", "registers", "stack_bytes", "shared_bytes", "ctas_per_sm", "wgmma"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write sm90_compile_triton<version>_<date>.{json,md} here")
    parser.add_argument("--quick", action="store_true", help="bf16 and fp32, fewer lengths")
    parser.add_argument(
        "--candidates", action="store_true", help="the attention tiles benchmarks.gpu.tune_attention times"
    )
    args = parser.parse_args(argv)
    import triton

    rows = report(args.quick, args.candidates)
    table = [{**dataclasses.asdict(r), "used_for": "; ".join(r.problems)} for r in rows]
    if args.out:
        # The shared report writer: <name>_<date>.{json,md}, the machine's versions in the header.
        name = f"sm90_compile{'_candidates' if args.candidates else ''}_triton{triton.__version__}"
        write_report(args.out, name, table, COLUMNS, NOTES)
    else:
        print(markdown_table(table, COLUMNS))
    problems_found = [
        f"{r.kernel} [{r.config}]: {r.stack_bytes} bytes of stack (spilled registers)"
        for r in rows
        if r.stack_bytes
    ] + [
        f"{r.kernel} [{r.config}]: {r.shared_bytes} bytes of shared memory > {SHARED_LIMIT}"
        for r in rows
        if r.shared_bytes > SHARED_LIMIT
    ]
    for line in problems_found:
        print("WARNING:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
