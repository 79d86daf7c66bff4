"""The CPU's bf16 capability, as `turborank --version` and the server's /info report it."""

from __future__ import annotations

import pytest

from turborank.cli import main
from turborank.cpu_features import cpu_bf16_support

ZEN4 = "processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags : avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
HASWELL = "flags : fpu sse avx avx2 fma\n"
NEOVERSE_V1 = "processor : 0\nFeatures : fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "instructions"),
    [
        (ZEN4, ("AVX512-BF16",)),
        (SAPPHIRE_RAPIDS, ("AMX-BF16", "AVX512-BF16")),
        (HASWELL, ()),
        (NEOVERSE_V1, ("Arm BF16",)),
    ],
)
def test_bf16_instructions_from_cpu_flags(cpuinfo, instructions):
    support = cpu_bf16_support(cpuinfo)
    assert support.instructions == instructions
    assert support.native is bool(instructions)
    line = support.describe()
    assert ("pays on CPU" in line) is bool(instructions)
    assert all(name in line for name in instructions)


def test_no_cpuinfo_is_unknown_not_false(monkeypatch):
    """Off Linux there is no /proc/cpuinfo: "unknown", which a caller must not take for "no"."""
    monkeypatch.setattr("turborank.cpu_features.platform.system", lambda: "Darwin")
    support = cpu_bf16_support()
    assert support.instructions is None and support.native is None
    assert "unknown" in support.describe()
    assert support.as_dict()["native_bf16"] is None


def test_version_prints_the_cpu_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("turborank ") and "torch" in out[0]
    assert out[1] == f"cpu: {cpu_bf16_support().describe()}"
