"""The wheel holds every module the editable install imports.

pyproject's `packages` is kept by hand. A new folder under model/ imports fine in the editable install
(and so in every test) but setuptools leaves it out of the wheel, and a user's `import` fails. These
checks read pyproject the way setuptools does and compare it with the folders on disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def packages_on_disk(root: Path, package_dir: dict[str, str]) -> dict[str, str]:
    """{dotted package: folder} for every folder under a mapped one that holds a .py file."""
    found = {}
    for package, folder in package_dir.items():
        base = root / folder
        for source in base.rglob("*.py"):
            relative = source.parent.relative_to(base)
            if "__pycache__" in relative.parts:
                continue
            found[".".join((package, *relative.parts))] = (base / relative).relative_to(root).as_posix()
    return found


def package_list_mismatch(listed: list[str], on_disk: dict[str, str]) -> str:
    """'' when they agree, else what is missing from and extra in the list, named."""
    missing = sorted(set(on_disk) - set(listed))
    extra = sorted(set(listed) - set(on_disk))
    problems = []
    if missing:
        named = ", ".join(f"{name} ({on_disk[name]}/)" for name in missing)
        problems.append(f"not in pyproject's [tool.setuptools] packages, so not in the wheel: {named}")
    if extra:
        problems.append(f"in pyproject's packages but no folder with a .py file: {', '.join(extra)}")
    return "; ".join(problems)


def test_package_list_matches_the_folders():
    tools = _setuptools()
    problem = package_list_mismatch(tools["packages"], packages_on_disk(ROOT, tools["package-dir"]))
    assert not problem, problem


def test_package_data_is_there():
    """Each package-data pattern matches a file in its package's folder (py.typed: without it type
    checkers ignore turborank's annotations)."""
    tools = _setuptools()
    folders = packages_on_disk(ROOT, tools["package-dir"])
    assert "py.typed" in tools["package-data"].get("turborank", [])
    for package, patterns in tools["package-data"].items():
        assert package in tools["packages"], f"package-data for {package}, which is not a listed package"
        folder = folders[package]
        for pattern in patterns:
            assert list((ROOT / folder).glob(pattern)), f"{folder}/{pattern}: no such file"


def test_the_check_names_a_folder_missing_from_the_list(tmp_path):
    """A folder added under model/ without a packages entry is named, with its folder."""
    for folder in ("model", "model/newpkg", "kernels"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "model" / "__pycache__").mkdir()
    (tmp_path / "model" / "__pycache__" / "stale.py").write_text("")
    on_disk = packages_on_disk(tmp_path, {"turborank": "model", "turborank.kernels": "kernels"})
    assert on_disk == {
        "turborank": "model",
        "turborank.newpkg": "model/newpkg",
        "turborank.kernels": "kernels",
    }
    problem = package_list_mismatch(["turborank", "turborank.kernels", "turborank.gone"], on_disk)
    assert "turborank.newpkg (model/newpkg/)" in problem
    assert "no folder with a .py file: turborank.gone" in problem


def test_the_tokenizers_release_refused_at_load_is_told_to_install_what_pyproject_requires():
    """truncation_check's error says what to install: the same requirement pip resolves, or a user
    refused at load would be sent to a range pyproject itself rules out (or the reverse)."""
    from turborank.truncation_check import REQUIREMENT

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in declared if d.startswith("tokenizers")] == [REQUIREMENT]
