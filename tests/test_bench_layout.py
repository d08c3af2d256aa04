"""The public benchmark lives in the repository (bench/): its folders, its format and its case
documentation are there, and every case loads. The tests that run the cases read them from
here, never from outside the checkout. SGLang's cases (bench/sglang) name SGLang's release and
their patches apply to it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from ekka.bench import find_cases
from tests.conftest import BENCH

REPO = BENCH.parent
# Each folder of cases and the file that documents its cases.
FOLDERS = {
    "cases": BENCH / "CASES.md",
    "scenarios": BENCH / "FORMAT.md",
    "real": BENCH / "real" / "CASES.md",
    "sglang": BENCH / "sglang" / "CASES.md",
}


def test_the_format_is_in_the_repository() -> None:
    text = (BENCH / "FORMAT.md").read_text()
    assert "case.toml" in text and "bug.patch" in text and "[truth]" in text


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_case_loads_and_is_documented(folder: str) -> None:
    cases = find_cases(BENCH / folder)
    assert cases, f"bench/{folder} holds no case"
    documented = FOLDERS[folder].read_text()
    for case in cases:
        assert case.id == case.path.name, "a case's id is its folder's name"
        assert case.truth_components, case.id
        patch = (case.path / "bug.patch").read_text()
        assert re.search(rf"^\+\+\+ b/{case.framework}/", patch, re.MULTILINE), case.id
        assert case.id in documented, f"{case.id} is not described in {FOLDERS[folder]}"


def _tracked_text_files() -> list[Path]:
    roots = [REPO / "README.md", REPO / "Makefile", *(REPO / "docs").glob("*.md")]
    for folder in ("ekka", "tests", "benchmarks", ".github", ".ci", "bench"):
        roots += [
            p
            for p in (REPO / folder).rglob("*")
            if p.is_file() and p.suffix in {".py", ".md", ".yml", ".toml", ""}
        ]
    return [p for p in roots if p.is_file() and p != Path(__file__)]


def test_nothing_reads_the_benchmark_from_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|shared/bench|\"shared\" / \"bench\"")
    found = [
        str(p.relative_to(REPO))
        for p in _tracked_text_files()
        if outside.search(p.read_text(errors="replace"))
    ]
    assert not found, f"these read the benchmark from outside the repository: {found}"


# ---------------------------------------------------------------- bench/sglang

SGLANG_CASES = BENCH / "sglang"
SGLANG_RELEASE = "0.5.23"


def _patched_files(patch: str) -> list[str]:
    return re.findall(r"^\+\+\+ b/(\S+)", patch, re.MULTILINE)


def test_sglang_cases_are_sglang_cases_in_several_classes() -> None:
    """At least six cases, each on SGLang's release with prompt token ids (the engine runs
    without a tokenizer), patching Python files of the sglang package that its truth names;
    at least five categories and two cases in bfloat16."""
    cases = find_cases(SGLANG_CASES)
    assert len(cases) >= 6
    categories, bf16 = set(), 0
    for case in cases:
        data = tomllib.loads((case.path / "case.toml").read_text())
        assert case.framework == "sglang", case.id
        assert data["framework_version"] == SGLANG_RELEASE, case.id
        assert case.prompt_ids, f"{case.id}: give [run] prompt_token_ids"
        files = _patched_files((case.path / "bug.patch").read_text())
        assert files and all(f.startswith("sglang/") and f.endswith(".py") for f in files), case.id
        assert set(case.truth_files) <= set(files), f"{case.id}: truth.files not in the patch"
        categories.add(data["category"])
        bf16 += case.dtype == "bfloat16"
    assert len(categories) >= 5, categories
    assert bf16 >= 2


def _sglang_python() -> Path | None:
    """SGLang's interpreter: EKKA_SGLANG_PYTHON, else the checkout's .venv-sglang."""
    named = os.environ.get("EKKA_SGLANG_PYTHON")
    path = Path(named) if named else REPO / ".venv-sglang" / "bin" / "python"
    return path if path.exists() else None


def _installed_sglang(python: Path) -> tuple[Path, str]:
    """The installed sglang package's folder and version, found without importing it."""
    code = (
        "import importlib.util, importlib.metadata, pathlib;"
        "s = importlib.util.find_spec('sglang');"
        "print(pathlib.Path(s.origin).parent); print(importlib.metadata.version('sglang'))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    folder, version = out.stdout.split()
    return Path(folder), version


@pytest.mark.parametrize(
    "case_id", sorted(p.name for p in SGLANG_CASES.iterdir() if (p / "case.toml").is_file())
)
def test_sglang_case_patch_applies_to_the_installed_release(case_id: str, tmp_path: Path) -> None:
    python = _sglang_python()
    if python is None:
        pytest.skip("SGLang's environment (.venv-sglang, or EKKA_SGLANG_PYTHON) is absent")
    package, version = _installed_sglang(python)
    assert version == SGLANG_RELEASE, f"the cases are written for SGLang {SGLANG_RELEASE}"
    patch = SGLANG_CASES / case_id / "bug.patch"
    for name in _patched_files(patch.read_text()):
        source = package.parent / name
        assert source.is_file(), f"{case_id}: {name} is not in the installed release"
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, tmp_path / name)
    applied = subprocess.run(
        ["git", "apply", "-p1", "--check", str(patch)], cwd=tmp_path, capture_output=True, text=True
    )
    assert applied.returncode == 0, f"{case_id}: {applied.stderr}"
