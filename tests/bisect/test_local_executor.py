"""Framework histories and the local executor's overlay, on real git repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from ekka.bisect.executor import Executor
from ekka.bisect.framework_repo import make_base_repo, make_bug_history, patch_files
from ekka.bisect.history import commit_range
from ekka.bisect.verdict import TRANSIENT, Verdict
from ekka.containers.local import LocalExecutor, compiled_changes, overlay_compiled
from ekka.errors import UsageError
from ekka.repo import git

PATCH = """diff --git a/fakefw/model.py b/fakefw/model.py
--- a/fakefw/model.py
+++ b/fakefw/model.py
@@ -1,2 +1,2 @@
 def scale():
-    return 1.0
+    return 1.5
"""


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "site" / "fakefw"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def scale():\n    return 1.0\n")
    (pkg / "ops" / "_C.so").write_bytes(b"\x7fELF compiled")
    return pkg


def test_bug_history_puts_the_patch_among_harmless_commits(tmp_path):
    pkg = _package(tmp_path)
    base = make_base_repo(tmp_path / "base", pkg)
    assert not (base / "fakefw" / "ops" / "_C.so").exists(), (
        "compiled files stay out of the repository"
    )
    patch = tmp_path / "bug.patch"
    patch.write_text(PATCH)
    assert patch_files(patch) == ["fakefw/model.py"]
    history = make_bug_history(
        base,
        tmp_path / "repo",
        patch,
        "Change the scale",
        before=3,
        after=2,
        extra_files=("fakefw/__init__.py",),
    )
    commits = commit_range(history.repo, history.good, history.bad)
    assert [c.sha for c in commits] == list(history.commits)
    assert len(commits) == 6 and commits[3].sha == history.bug
    assert commits[3].pr == history.bug_pr and all(c.pr for c in commits)
    assert "return 1.5" in git(history.repo, "show", f"{history.bad}:fakefw/model.py")
    # harmless neighbours touch the patched file too, harmlessly
    assert "fakefw/model.py" in git(
        history.repo, "show", "--name-only", "--format=", history.commits[4]
    )


def test_overlay_links_compiled_extensions_and_refuses_other_repositories(tmp_path):
    pkg = _package(tmp_path)
    tree = make_base_repo(tmp_path / "base", pkg)
    assert overlay_compiled(tree, pkg) == 1
    link = tree / "fakefw" / "ops" / "_C.so"
    assert link.is_symlink() and link.resolve() == (pkg / "ops" / "_C.so").resolve()
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UsageError, match="no fakefw/ folder"):
        overlay_compiled(other, pkg)


def test_commit_changing_compiled_sources_is_skipped_with_the_reason(tmp_path):
    pkg = _package(tmp_path)
    repo = make_base_repo(tmp_path / "base", pkg)
    good = git(repo, "rev-parse", "HEAD")
    (repo / "csrc").mkdir()
    (repo / "csrc" / "kernel.cu").write_text("__global__ void k() {}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Add a kernel (#5)")
    bad = commit_range(repo, good, "HEAD")
    assert compiled_changes(repo, good, bad[-1].sha) == ["csrc/kernel.cu"]
    executor = LocalExecutor(repo, oracle=None, package_dir=pkg, base=good, workdir=tmp_path / "w")  # type: ignore[arg-type]
    assert isinstance(executor, Executor)
    result = executor.probe(bad[-1])
    assert result.verdict is Verdict.SKIP and "csrc/kernel.cu" in result.reason
    executor.cancel()
    cancelled = executor.probe(bad[-1])
    assert cancelled.verdict is Verdict.SKIP and cancelled.details == {TRANSIENT: True}
