"""The check that the tests leave the working tree clean (tests/conftest.py): what it sees in a
git checkout, and that it stands aside where git cannot tell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, tree_state


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_tree_state_sees_new_and_changed_files_but_not_ignored_ones(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("/out/\n")
    (tmp_path / "kept.txt").write_text("a\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    before = tree_state(tmp_path)
    assert before == frozenset()
    (tmp_path / "unused").mkdir()
    (tmp_path / "unused" / "model.safetensors").write_bytes(b"\0")
    (tmp_path / "kept.txt").write_text("b\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ignored.txt").write_text("x\n")
    after = tree_state(tmp_path)
    assert after is not None
    assert sorted(after - before) == [" M kept.txt", "?? unused/model.safetensors"]


def test_tree_state_is_unknown_outside_a_checkout(tmp_path: Path, monkeypatch) -> None:
    assert tree_state(tmp_path / "no-such-folder") is None
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git looks no higher
    (tmp_path / "plain").mkdir()
    assert tree_state(tmp_path / "plain") is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git at all
    assert tree_state(REPO) is None


def test_the_session_hook_fails_a_run_that_writes_into_the_tree(tmp_path: Path) -> None:
    """A pytest run (with this suite's conftest as a plugin) of a test that writes into the
    checkout exits 1 and names the file."""
    target = REPO / f"left-by-{tmp_path.name}.txt"
    probe = tmp_path / "test_writes.py"
    probe.write_text(
        "from pathlib import Path\n\n\n"
        "def test_writes():\n"
        f"    Path({str(target)!r}).write_text('x')\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # the inner run's test is not one of the suite's: kept out of the suite's time records
    env = {k: v for k, v in os.environ.items() if k != "EKKA_TEST_TIMES"}
    try:
        done = subprocess.run(
            [*command, "-p", "tests.conftest", "--rootdir", str(tmp_path), str(probe)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        target.unlink(missing_ok=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "working tree changed by the tests" in done.stdout
    assert target.name in done.stdout
    # the same run, writing under its own tmp_path instead, passes
    probe.write_text("def test_writes(tmp_path):\n    (tmp_path / 'x.txt').write_text('x')\n")
    done = subprocess.run(
        [*command, "-p", "tests.conftest", "--rootdir", str(tmp_path), str(probe)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
