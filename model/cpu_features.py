"""What this CPU is (vendor, family, model, the vector instructions that decide GEMM speed) and
whether it computes bf16 natively, which decides if ``dtype="bfloat16"`` on CPU pays.

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
    fields = _first_processor(cpuinfo)
    return set(fields.get("flags", fields.get("Features", "")).split())


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """The ``key: value`` fields of the first processor block of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _read_cpuinfo() -> str | None:
    if platform.system() != "Linux":
        return None
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


# x86 flags that decide how fast a GEMM can run, in the order they are shown.
_ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}
# AMD family 25 (0x19) holds both Zen 3 and Zen 4 parts; the model number tells them apart.
_AMD_FAMILY_25_ZEN4_MODELS = (range(0x10, 0x20), range(0x60, 0x80), range(0xA0, 0xB0))
# Intel family 6 server models whose microarchitecture the GEMM paths differ on.
_INTEL_FAMILY_6 = {
    85: "Skylake-SP / Cascade Lake / Cooper Lake",
    106: "Ice Lake-SP",
    108: "Ice Lake-SP",
    143: "Sapphire Rapids",
    207: "Emerald Rapids",
    173: "Granite Rapids",
    174: "Granite Rapids",
    175: "Sierra Forest",
}


def _microarchitecture(vendor: str, family: int | None, model: int | None) -> str | None:
    """The core generation a (vendor, family, model) names, where it is unambiguous; else None."""
    if family is None or model is None:
        return None
    if vendor == "AuthenticAMD":
        if family == 23:
            return "Zen / Zen+ / Zen 2"
        if family == 25:
            return "Zen 4" if any(model in r for r in _AMD_FAMILY_25_ZEN4_MODELS) else "Zen 3"
        if family == 26:
            return "Zen 5" if model < 0x50 else None
    if vendor == "GenuineIntel" and family == 6:
        return _INTEL_FAMILY_6.get(model)
    return None


@dataclasses.dataclass(frozen=True)
class CpuIdentity:
    """The CPU as /proc/cpuinfo names it: every benchmark figure says which CPU it was taken on."""

    model_name: str | None
    vendor: str | None
    family: int | None
    model: int | None
    microarchitecture: str | None
    isa: tuple[str, ...]
    logical_cpus: int | None

    def describe(self) -> str:
        """One line, e.g. "AMD EPYC (AuthenticAMD family 25 model 17: Zen 4; AVX2, FMA, AVX-512F,
        AVX512-VNNI, AVX512-BF16; 2 logical CPUs)"."""
        if self.vendor is None and self.model_name is None:
            return f"CPU not identified here (no /proc/cpuinfo; {self.logical_cpus} logical CPUs)"
        where = f"{self.vendor} family {self.family} model {self.model}"
        if self.microarchitecture:
            where += f": {self.microarchitecture}"
        isa = ", ".join(self.isa) if self.isa else "no AVX2"
        return f"{self.model_name or 'unnamed CPU'} ({where}; {isa}; {self.logical_cpus} logical CPUs)"

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def cpu_identity(cpuinfo: str | None = None) -> CpuIdentity:
    """Vendor, family, model and the GEMM-relevant instruction sets (from ``/proc/cpuinfo`` on
    Linux, or the text given)."""
    import os

    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    logical = os.cpu_count()
    if cpuinfo is None:
        return CpuIdentity(None, None, None, None, None, (), logical)
    fields = _first_processor(cpuinfo)

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    vendor, family, model = fields.get("vendor_id"), number("cpu family"), number("model")
    flags = set(fields.get("flags", "").split())
    return CpuIdentity(
        model_name=fields.get("model name"),
        vendor=vendor,
        family=family,
        model=model,
        microarchitecture=_microarchitecture(vendor or "", family, model),
        isa=tuple(name for flag, name in _ISA_FLAGS.items() if flag in flags),
        logical_cpus=logical,
    )


def cpu_bf16_support(cpuinfo: str | None = None) -> CpuBf16Support:
    """Read the CPU's bf16 capability (from ``/proc/cpuinfo`` on Linux, or the text given)."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    isa = torch.backends.cpu.get_cpu_capability()
    if cpuinfo is None:
        return CpuBf16Support(None, isa)
    flags = _flags(cpuinfo)
    return CpuBf16Support(tuple(name for flag, name in _BF16_FLAGS.items() if flag in flags), isa)
