"""The CPU's bf16 capability, as `turborank --version` and the server's /info report it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from turborank.cli import main
from turborank.cpu_features import cpu_bf16_support, cpu_identity

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
    assert out[2] == f"cpu model: {cpu_identity().describe()}"


def _cpuinfo(vendor: str, family: int, model: int, name: str, flags: str) -> str:
    block = (
        f"processor\t: {{}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        f"model name\t: {name}\nflags\t\t: {flags}\n"
    )
    return "\n".join(block.format(i) for i in range(2))


@pytest.mark.parametrize(
    ("vendor", "family", "model", "microarchitecture", "flags", "isa"),
    [
        # The CI class: an EPYC whose family says Zen 5, with full-width AVX-512.
        (
            "AuthenticAMD",
            26,
            2,
            "Zen 5",
            "fma avx2 avx512f avx512_bf16",
            ("AVX2", "FMA", "AVX-512F", "AVX512-BF16"),
        ),
        ("AuthenticAMD", 25, 17, "Zen 4", "avx2 fma avx512f avx512_vnni avx512_bf16", None),
        ("AuthenticAMD", 25, 1, "Zen 3", "avx2 fma", ("AVX2", "FMA")),
        ("GenuineIntel", 6, 143, "Sapphire Rapids", "avx2 avx512f amx_tile amx_bf16 amx_int8", None),
        ("GenuineIntel", 6, 999, None, "avx2", ("AVX2",)),
    ],
)
def test_cpu_identity_names_vendor_family_model_and_isa(vendor, family, model, microarchitecture, flags, isa):
    identity = cpu_identity(_cpuinfo(vendor, family, model, "Some CPU", flags))
    assert (identity.vendor, identity.family, identity.model) == (vendor, family, model)
    assert identity.microarchitecture == microarchitecture
    if isa is not None:
        assert identity.isa == isa
    line = identity.describe()
    assert f"{vendor} family {family} model {model}" in line and line.startswith("Some CPU (")
    assert (microarchitecture or "") in line
    assert ("AMX" in line) is ("amx_tile" in flags)


def test_cpu_identity_without_cpuinfo_says_so(monkeypatch):
    monkeypatch.setattr("turborank.cpu_features.platform.system", lambda: "Darwin")
    identity = cpu_identity()
    assert identity.vendor is None and identity.isa == ()
    assert identity.describe().startswith("CPU not identified here")


@pytest.mark.parametrize(
    ("code", "env", "expected"),
    [
        ("import turborank", {}, "10000"),
        ("import turborank.cli", {}, "10000"),
        ("import turborank", {"GOMP_SPINCOUNT": "5"}, "5"),  # the user's choice stands
        ("import turborank", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
        ("import torch, turborank", {}, None),  # too late: libgomp has read its settings
    ],
)
def test_openmp_spin_default_is_set_only_before_torch_and_never_over_the_user(code, env, expected):
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; import os; print(os.environ.get('GOMP_SPINCOUNT'))"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(expected)
