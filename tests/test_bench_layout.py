"""The public benchmark lives in the repository (bench/): its folders, its format and its case
documentation are there, and every case loads. The tests that run the cases read them from
here, never from outside the checkout."""

from __future__ import annotations

import re
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
        assert re.search(r"^\+\+\+ b/vllm/", patch, re.MULTILINE), case.id
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
