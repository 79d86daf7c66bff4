"""Whether this CPU computes bf16 natively, which decides if ``dtype="bfloat16"`` on CPU pays.

turborank never casts to bf16 behind the caller's back: the CPU default stays float32, and bf16 is
an opt-in (``dtype="bfloat16"``). It pays where the CPU has bf16 dot-product instructions that
PyTorch's GEMMs (oneDNN) use: AMX-BF16 tiles (Intel Xeon from Sapphire Rapids on), AVX512-BF16
(AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids), or the Arm BF16 extension. Elsewhere a
bf16 GEMM is emulated through fp32 and is no faster, only less accurate.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import torch

# /proc/cpuinfo flag -> name shown to users, most capable first.
_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "Arm BF16"}


@dataclasses.dataclass(frozen=True)
class CpuBf16Support:
    """bf16 instructions this CPU has (``None``: the flags could not be read here)."""

    instructions: tuple[str, ...] | None
    vector_isa: str  # PyTorch's CPU vectorisation level, e.g. "AVX512", "AVX2", "DEFAULT"

    @property
    def native(self) -> bool | None:
        return None if self.instructions is None else bool(self.instructions)

    def describe(self) -> str:
        """One line for ``turborank --version`` and the server's ``/info``."""
        if self.instructions is None:
            return f"bf16 support unknown (no CPU flags readable here; {self.vector_isa})"
        if not self.instructions:
            return f"no native bf16 ({self.vector_isa}): dtype='bfloat16' on CPU would not be faster"
        names = ", ".join(self.instructions)
        return f"native bf16: {names} ({self.vector_isa}): dtype='bfloat16' pays on CPU"

    def as_dict(self) -> dict[str, object]:
        return {
            "bf16_instructions": self.instructions,
            "native_bf16": self.native,
            "vector_isa": self.vector_isa,
        }


def _flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor: x86 ``flags``, Arm ``Features``."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_support(cpuinfo: str | None = None) -> CpuBf16Support:
    """Read the CPU's bf16 capability (from ``/proc/cpuinfo`` on Linux, or the text given)."""
    if cpuinfo is None and platform.system() == "Linux":
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = None
    isa = torch.backends.cpu.get_cpu_capability()
    if cpuinfo is None:
        return CpuBf16Support(None, isa)
    flags = _flags(cpuinfo)
    return CpuBf16Support(tuple(name for flag, name in _BF16_FLAGS.items() if flag in flags), isa)
