"""The README a user reads first, and the documents it sends them to: short, the two set-up
commands first, and no file cited that the repository does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCUMENTS = [REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("*.md")]
DOCUMENTS += [REPO / "bench" / "FORMAT.md", REPO / "bench" / "real" / "CASES.md"]
DOCUMENTS += [REPO / "bench" / "sglang" / "CASES.md"]
# Backquoted paths under these top-level folders are checked; placeholders are not.
TOP = ("bench/", "docs/", "benchmarks/", "ekka/", "tests/", "deploy/", ".github/", "scripts/")
PLACEHOLDER = re.compile(r"[<>*{}]|\.\.\.|NAME|DIR\b")


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"the README has {len(lines)} lines"
    fence = lines.index("```bash")
    commands = lines[fence + 1 : lines.index("```", fence + 1)]
    assert fence < 5
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]
    assert "python -c" not in "\n".join(lines)  # and nothing outside it: test_bench_layout.py


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_a_document_cites_exists(document: Path) -> None:
    text = document.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        if not (document.parent / target).exists():
            missing.append(target)
    for cited in re.findall(r"`([^`\s]+)`", text):
        path, _, line = cited.partition(":")
        if line and not line.isdigit():  # an image's tag (ekka/base:TAG), not file:line
            continue
        if path.startswith(TOP) and not PLACEHOLDER.search(path):
            if not (REPO / path).exists():
                missing.append(path)
    assert not missing, f"{document.relative_to(REPO)} cites what does not exist: {missing}"
