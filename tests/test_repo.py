"""The repository keeps its promises: README's test command is what CI runs; the code is ruff-clean."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    match = re.search(
        r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S
    )
    assert match, "README.md must show the test command after <!-- test-command -->"
    return match.group(1).strip()


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = _readme_test_command()
    assert command in ci.splitlines(), f"{command!r} not a line of .ci/run"


def test_quick_start_is_two_commands_ci_runs():
    """README opens with the quick start: install and `turborank demo`, then the test command.
    .ci/run runs the first from a fresh clone (.ci/quickstart), before the test command."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
    assert match, "README.md must show the quick start after <!-- quickstart -->"
    install, tests = match.group(1).strip().splitlines()
    assert install.endswith("&& turborank demo") and "pip install" in install
    assert tests == _readme_test_command()
    headings = re.findall(r"^## .*$", text, re.M)
    assert headings[0] == "## Quick start", "the quick start is README's first section"
    assert text.index("<!-- quickstart -->") < text.index(headings[1])
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash .ci/quickstart" in ci and ci.index("bash .ci/quickstart") < ci.index(tests)
    assert ci[-1] == tests


def _ruff() -> list[str]:
    # The ruff of this interpreter's environment first: `.venv/bin/python -m pytest` without an
    # activated venv has no ruff on PATH, and the check would skip where it should run.
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    return [ruff]


def test_ruff_clean():
    """Includes TID251 (pyproject's banned-api): `model.*` / `kernels.*` imports, which from the
    repository root load a second copy of a turborank module."""
    proc = subprocess.run([*_ruff(), "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_test_files_that_run_on_the_gpu_carry_the_gpu_marker():
    """benchmarks/gpu/gpu_check.sh selects the GPU tests with `pytest -m gpu`: a file that runs on
    tests.devices.DEVICE but lacks the mark would never run on a GPU."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        if (
            re.search(r"^from tests\.devices import [^\n]*\bDEVICE\b", text, re.M)
            and "pytest.mark.gpu" not in text
        ):
            unmarked.append(path.name)
    assert not unmarked, f"run on DEVICE without pytest.mark.gpu: {unmarked}"


# Where sources live; virtual environments, caches and build output are not the project's text.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks", "build"}
_TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".yml", ".yaml"}


def _project_text_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(folder, name) for name in files if Path(name).suffix in _TEXT_SUFFIXES]
    found += [path for path in (ROOT / ".ci").iterdir() if path.is_file()]
    return sorted(set(found))


def test_developers_md_citations_name_a_section():
    """Code cites the JinaBERT facts as DEVELOPERS.md followed by a quoted heading: each must name a
    heading there, so a renamed section cannot leave a citation pointing nowhere."""
    headings = set(re.findall(r"^#{2,4} (.+?)\s*$", (ROOT / "DEVELOPERS.md").read_text(), re.M))
    dangling = []
    for path in _project_text_files():
        text = path.read_text(errors="replace")
        for match in re.finditer(r'DEVELOPERS\.md, "([^"]+)"', text):
            name = " ".join(match.group(1).split())
            if name not in headings:
                line = text.count("\n", 0, match.start()) + 1
                dangling.append(f"{path.relative_to(ROOT)}:{line}: {name!r}")
    assert not dangling, f"no such DEVELOPERS.md heading: {dangling}"


def test_nothing_points_outside_the_clone():
    """A clone has neither the reference folder that sat beside the repository nor the tracker: text
    that sends the reader to either (a path into it, a tracker number) leads nowhere. Say the fact,
    or cite DEVELOPERS.md."""
    # Spelt in pieces so that this line does not match a grep for what it forbids.
    outside = "shared"
    section = "\u00a7"  # the section sign of the old "spec \u00a7N" references
    pattern = re.compile(
        rf"\.\./{outside}\b|\b{outside}/spec\b|\bissu(?:e|es)\s+#?\d+|\bspec\s*{section}", re.I
    )
    found = []
    for path in _project_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def _names_a_benchmark_module(dotted: str) -> bool:
    """A dotted name under benchmarks: packages down to a module file; what follows is an attribute."""
    folder = ROOT / "benchmarks"
    for part in dotted.split("."):
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
        else:
            return (folder / f"{part}.py").is_file()
    return True


def test_benchmark_commands_and_paths_name_files_that_exist():
    """The benchmark scripts live in subpackages of benchmarks/: a command, import or path still
    naming a script where it used to be would fail only when someone runs it. Committed results
    are left out: they record the commands run at the time."""
    results = ROOT / "benchmarks" / "results"
    module = re.compile(r"\bbenchmarks((?:\.\w+)+)")
    path_pattern = re.compile(r"\bbenchmarks/[\w/]+\.(?:py|sh)\b")
    stale = []
    for path in _project_text_files():
        if results in path.parents:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            bad = [m.group(0) for m in module.finditer(line) if not _names_a_benchmark_module(m.group(1)[1:])]
            bad += [m.group(0) for m in path_pattern.finditer(line) if not (ROOT / m.group(0)).is_file()]
            stale += [f"{path.relative_to(ROOT)}:{number}: {name}" for name in bad]
    assert not stale, "\n".join(stale)


def _modules_on_disk() -> set[str]:
    found = set()
    for folder, package in (("model", "turborank"), ("kernels", "turborank.kernels")):
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join([package, *parts]))
    return found


def test_readme_lists_every_module_once_and_nothing_else():
    listed = re.findall(r"^\| `(turborank(?:\.[\w]+)*)` \| [^|]+ \|$", (ROOT / "README.md").read_text(), re.M)
    doubles = sorted({name for name in listed if listed.count(name) > 1})
    assert not doubles, f"listed twice in README.md's module table: {doubles}"
    on_disk = _modules_on_disk()
    assert not on_disk - set(listed), (
        f"modules missing from README.md's module table: {sorted(on_disk - set(listed))}"
    )
    assert not set(listed) - on_disk, (
        f"README.md lists modules that do not exist: {sorted(set(listed) - on_disk)}"
    )


def test_no_product_file_over_500_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for folder in ("model", "kernels")
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, f"product files over 500 lines: {long}"


def test_every_benchmark_result_is_listed_in_the_results_index():
    results = ROOT / "benchmarks" / "results"
    index = (results / "README.md").read_text()
    listed = set(re.findall(r"`([\w.-]+\.(?:json|md|png))`", index))
    for folder in (results, results / "history"):
        files = {p.name for p in folder.iterdir() if p.is_file() and p.name != "README.md"}
        assert not files - listed, f"not in benchmarks/results/README.md: {sorted(files - listed)}"
    present = {p.name for p in results.rglob("*") if p.is_file()}
    assert not listed - present, (
        f"benchmarks/results/README.md lists missing files: {sorted(listed - present)}"
    )


# Where a module may import libraries that only extras install (the first place that matches):
# everything else in the package runs on the base install, so what it imports must be a base
# dependency.
_EXTRAS_OF_PLACE = {
    "model/serving/ray_": ("serve", "ray"),
    "model/serving/": ("serve",),
    "model/eval/bm25.py": ("eval",),
    "model/eval/metrics.py": ("eval",),
    "model/eval/ray_runs.py": ("ray",),
    "model/ray_cluster.py": ("ray",),
    "model/cli/eval.py": ("ray",),
    "model/eval/verify.py": ("test",),  # the reference's transformers, pinned there (README: Install)
}


def _declared_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_every_library_the_package_imports_is_declared():
    """tqdm (predict's progress bar) was imported by base code but declared only in the eval extra:
    a base install without huggingface_hub's own tqdm would fail on show_progress_bar=True."""
    tomllib = pytest.importorskip("tomllib")
    import ast
    import importlib.metadata

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _declared_names(project["dependencies"])
    extras = {name: _declared_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for path in sorted([*(ROOT / "model").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
        place = path.relative_to(ROOT).as_posix()
        named = next((names for prefix, names in _EXTRAS_OF_PLACE.items() if place.startswith(prefix)), ())
        allowed = base.union(*(extras[name] for name in named))
        if "serve" in named:  # fastapi brings pydantic and starlette, pydantic its core
            allowed |= {"pydantic", "pydantic-core", "starlette"}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "turborank":
                    continue
                names = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not names & {a.replace("_", "-") for a in allowed}:
                    undeclared.append(f"{place}: {module} ({', '.join(sorted(names))})")
    assert not undeclared, "imported but not declared where this code runs:\n" + "\n".join(undeclared)
