"""Worktrees: the commit's files in a fresh folder, and nothing left behind whatever happens."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from ekka.bisect.command import CommandOracle
from ekka.bisect.history import commit_range
from ekka.bisect.verdict import Verdict
from ekka.bisect.worktree import worktree
from ekka.errors import WorktreeError
from tests.bisect import assert_no_stray_worktrees, linear_repo, worktrees


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    repo = tmp_path_factory.mktemp("worktree") / "repo"
    return repo, linear_repo(repo, 5)


def test_the_worktree_holds_the_commit_and_goes_away(linear):
    repo, shas = linear
    with worktree(repo, shas[2]) as path:
        assert (path / "value.txt").read_text() == "2\n"
        assert str(path) in worktrees(repo)
    assert not path.exists()
    assert_no_stray_worktrees(repo)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_removed_after_an_exception_in_the_body(linear, error):
    repo, shas = linear
    with pytest.raises(error):
        with worktree(repo, shas[3]) as path:
            (path / "junk.txt").write_text("untracked and modified files do not stop removal\n")
            (path / "value.txt").write_text("changed\n")
            raise error("boom")
    assert not path.exists()
    assert_no_stray_worktrees(repo)


def test_an_unknown_commit_is_a_worktree_error_and_leaves_nothing(linear, tmp_path):
    repo, _ = linear
    with pytest.raises(WorktreeError, match="0000000000"):
        with worktree(repo, "0" * 40, parent=tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []
    assert_no_stray_worktrees(repo)


def test_a_failing_command_leaves_nothing(linear):
    repo, shas = linear
    oracle = CommandOracle(repo, "echo checking; exit 3")
    result = oracle(commit_range(repo, shas[0], shas[1])[0])
    assert result.verdict is Verdict.BAD and "exit 3" in result.reason
    assert_no_stray_worktrees(repo)


def test_concurrent_worktrees(linear):
    repo, shas = linear
    seen: dict[int, str] = {}
    errors: list[BaseException] = []

    def check(i: int) -> None:
        try:
            with worktree(repo, shas[i]) as path:
                seen[i] = (Path(path) / "value.txt").read_text().strip()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=check, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen == {i: str(i) for i in range(6)}
    assert_no_stray_worktrees(repo)


def _worktrees_in_a_process(repo: Path, shas: list[str], rounds: int) -> list[str]:
    """Worktrees of every commit, `rounds` times over, in this process; what failed."""
    failures = []
    for _ in range(rounds):
        for i, sha in enumerate(shas):
            try:
                with worktree(repo, sha) as path:
                    if (Path(path) / "value.txt").read_text().strip() != str(i):
                        failures.append(f"{sha[:10]}: wrong files")
            except WorktreeError as exc:
                failures.append(str(exc))
    return failures


def test_worktrees_made_by_several_processes_at_once(linear):
    """Probes that are processes of their own (Ray tasks on one node) add and remove worktrees
    of one repository at the same time: git's own admin files would be half-made for another
    (without the lock across processes, some adds failed with "failed to read ... commondir")."""
    repo, shas = linear
    with multiprocessing.get_context("fork").Pool(6) as pool:
        results = pool.starmap(_worktrees_in_a_process, [(repo, shas, 5)] * 6)
    assert [f for failures in results for f in failures] == []
    assert_no_stray_worktrees(repo)
