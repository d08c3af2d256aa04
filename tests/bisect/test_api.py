"""The public surface of ekka.bisect is what `__all__` says, and importing the CLI loads none of it."""

from __future__ import annotations

import subprocess
import sys

import ekka.bisect


def test_exported_names():
    assert sorted(ekka.bisect.__all__) == sorted(
        [
            "Bisector", "BisectResult", "BisectState", "BisectStatus", "BisectStep", "CommandOracle",
            "CommitInfo", "CommitRange", "Executor", "NullObserver", "Observer", "PrintObserver", "Probe",
            "ProbeResult", "Verdict", "VerdictCache", "commit_range", "config_hash", "default_url",
            "parse_pr_number", "verdict_from_exit_code", "worktree",
        ]
    )  # fmt: skip
    for name in ekka.bisect.__all__:
        assert getattr(ekka.bisect, name) is not None


def test_cli_startup_imports_neither_git_nor_sqlalchemy():
    code = "import sys, ekka.cli; print([m for m in ('git', 'sqlalchemy', 'ekka.bisect') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sqlalchemy_is_imported_only_with_the_cache():
    code = (
        "import sys, ekka.bisect; before = 'sqlalchemy' in sys.modules; "
        "from ekka.bisect import VerdictCache; print(before, 'sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True"
