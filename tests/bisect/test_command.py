"""The shell-command oracle on real repositories: exit codes, output, timeouts, flaky scripts."""

from __future__ import annotations

import threading
import time

import pytest

from ekka.bisect.command import CommandOracle
from ekka.bisect.history import commit_range
from ekka.bisect.search import Bisector, BisectStatus, NullObserver
from ekka.bisect.verdict import Verdict
from ekka.errors import OracleStartError, UsageError
from tests.bisect import assert_no_stray_worktrees, commit_file, git, init_repo, linear_repo

CHECK_SCRIPT = """#!/usr/bin/env bash
# the oracle, committed in the repository: good while the value is below 17
test "$(cat value.txt)" -lt 17
"""


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    repo = tmp_path_factory.mktemp("command") / "repo"
    shas = linear_repo(repo, 20)
    return repo, shas, commit_range(repo, shas[0], shas[20])


def test_an_inline_oracle_finds_the_first_bad_commit(linear):
    repo, shas, commits = linear
    result = Bisector(CommandOracle(repo, 'test "$(cat value.txt)" -lt 17')).run(commits)
    assert result.status is BisectStatus.FOUND and result.first_bad.sha == shas[17]
    assert result.first_bad.pr == 117
    assert result.probes <= 7
    assert_no_stray_worktrees(repo)


def test_an_oracle_script_committed_in_the_repository(tmp_path):
    repo = init_repo(tmp_path / "repo")
    shas = [commit_file(repo, "check.sh", CHECK_SCRIPT, "Add the check (#1)", executable=True)]
    shas += [
        commit_file(repo, "value.txt", f"{i}\n", f"Value {i} (#{i + 1})") for i in range(1, 25)
    ]
    result = Bisector(CommandOracle(repo, "./check.sh"), workers=3).run(
        commit_range(repo, shas[1], shas[-1])
    )
    assert result.first_bad.sha == shas[17] and result.first_bad.pr == 18
    assert_no_stray_worktrees(repo)


def test_the_command_runs_in_the_commits_worktree_with_its_sha(linear):
    repo, shas, commits = linear
    oracle = CommandOracle(
        repo,
        f'test "$EKKA_COMMIT" = "$(git rev-parse HEAD)" && test "$EKKA_REPO" = {repo.resolve()} '
        '&& test "$PWD" != "$EKKA_REPO" && test -z "$GIT_DIR"',
    )
    assert oracle(commits[4]).verdict is Verdict.GOOD


def test_the_reason_carries_the_last_lines_of_output(linear):
    repo, _, commits = linear
    result = CommandOracle(repo, 'echo "loading"; echo "ratio 37.5 > 2" >&2; exit 3')(commits[0])
    assert result.verdict is Verdict.BAD and result.details["exit_code"] == 3
    assert result.reason == "exit 3: loading | ratio 37.5 > 2"
    assert not result.cannot_start


@pytest.mark.parametrize(
    ("cmd", "verdict", "reason"),
    [
        ("exit 125", Verdict.SKIP, "exit 125"),
        ("exit 200", Verdict.SKIP, "outside"),
        ("kill -9 $$", Verdict.SKIP, "SIGKILL"),
    ],
)
def test_exit_codes_that_skip(linear, cmd, verdict, reason):
    repo, _, commits = linear
    result = CommandOracle(repo, cmd)(commits[0])
    assert result.verdict is verdict and reason in result.reason


def test_a_timeout_is_a_transient_skip_and_kills_the_whole_group(linear):
    repo, _, commits = linear
    start = time.monotonic()
    result = CommandOracle(repo, "echo started; sleep 30 & sleep 30; echo never", timeout=0.5)(
        commits[0]
    )
    assert time.monotonic() - start < 10
    assert result.verdict is Verdict.SKIP and result.transient
    assert result.reason == "timed out after 0.5 s: started"
    assert_no_stray_worktrees(repo)


def test_cancel_stops_running_commands(linear):
    repo, _, commits = linear
    oracle = CommandOracle(repo, "sleep 30")
    results = []
    thread = threading.Thread(target=lambda: results.append(oracle(commits[0])))
    thread.start()
    time.sleep(0.5)
    oracle.cancel()
    thread.join(timeout=10)
    assert not thread.is_alive() and results[0].verdict is Verdict.SKIP
    assert oracle(commits[1]).reason == "cancelled"
    assert_no_stray_worktrees(repo)


def test_a_command_that_cannot_start(linear):
    repo, _, commits = linear
    result = CommandOracle(repo, "nosuchprogram --check")(commits[0])
    assert result.verdict is Verdict.BAD and result.cannot_start
    assert "command not found" in result.reason
    with pytest.raises(
        OracleStartError, match="the oracle command could not start: exit 127.*nosuchprogram"
    ):
        Bisector(CommandOracle(repo, "nosuchprogram --check")).run(commits)
    with pytest.raises(OracleStartError, match="No such file"):
        Bisector(CommandOracle(repo, "./missing-script.sh")).run(commits)
    assert_no_stray_worktrees(repo)


def test_bad_arguments(linear):
    repo, _, _ = linear
    with pytest.raises(UsageError, match="empty"):
        CommandOracle(repo, "  ")
    with pytest.raises(UsageError, match="positive"):
        CommandOracle(repo, "true", timeout=0)


def test_a_flaky_script_is_decided_by_majority(linear, tmp_path):
    """Every third run (a counter file outside the repository) gives the wrong answer."""
    repo, shas, commits = linear
    counter = tmp_path / "counter"
    cmd = (
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; "
        'if test "$(cat value.txt)" -lt 13; then right=0; else right=1; fi; '
        "if [ $((n % 3)) -eq 0 ]; then exit $((1 - right)); fi; exit $right"
    )
    result = Bisector(CommandOracle(repo, cmd), repeats=3).run(commits)
    assert result.first_bad.sha == shas[13]
    assert any(s.verdict is not None and "2 of 3 runs" in s.reason for s in result.steps)
    counter.unlink()
    once = Bisector(CommandOracle(repo, cmd)).run(commits)  # one run each: misled by a flip
    assert once.first_bad is None or once.first_bad.sha != shas[13]


def test_a_50_50_script_is_inconclusive(linear, tmp_path):
    repo, shas, commits = linear
    counter = tmp_path / "counter"
    cmd = (
        'v=$(cat value.txt); if [ "$v" = 10 ]; then '
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; exit $((n % 2)); fi; "
        'test "$v" -lt 13'
    )
    result = Bisector(CommandOracle(repo, cmd), repeats=2).run(commits)
    assert result.status is BisectStatus.INCONCLUSIVE and result.inconclusive.sha == shas[10]
    assert result.first_bad is None
    assert_no_stray_worktrees(repo)


def test_first_parent_bisection_through_merges(tmp_path):
    """The bug comes in with a merged branch: the merge commit is the first bad one."""
    repo = init_repo(tmp_path / "repo")
    good = commit_file(repo, "value.txt", "1\n", "Start")
    commit_file(repo, "other.txt", "x\n", "Main work (#2)")
    git(repo, "checkout", "-q", "-b", "feature")
    commit_file(repo, "value.txt", "99\n", "Break it on the branch")
    commit_file(repo, "note.txt", "n\n", "More branch work")
    git(repo, "checkout", "-q", "main")
    commit_file(repo, "other.txt", "y\n", "More main work (#3)")
    git(repo, "merge", "-q", "--no-ff", "feature", "-m", "Merge pull request #4 from dev/feature")
    merge = git(repo, "rev-parse", "HEAD")
    bad = commit_file(repo, "other.txt", "z\n", "Later (#5)")
    result = Bisector(CommandOracle(repo, 'test "$(cat value.txt)" -lt 50')).run(
        commit_range(repo, good, bad)
    )
    assert result.first_bad.sha == merge and result.first_bad.pr == 4
    assert len(result.candidates) == 1 and len(commit_range(repo, good, bad)) == 4


def test_an_interrupted_parallel_search_stops_its_probes_and_leaves_nothing(linear):
    repo, _, commits = linear

    class Interrupt(NullObserver):
        def verdict(self, commit, step):
            if step.round == 1:  # the first of round 1 (value 5) is back; 10 and 15 still sleep
                raise KeyboardInterrupt

    cmd = 'v=$(cat value.txt); [ "$v" -le 5 ] && exit 0; [ "$v" = 20 ] && exit 1; sleep 30'
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Bisector(CommandOracle(repo, cmd), workers=3, observer=Interrupt()).run(commits)
    assert time.monotonic() - start < 15
    assert_no_stray_worktrees(repo)


def test_a_cancel_while_a_probe_is_starting_its_command_still_stops_it(linear, monkeypatch):
    """The search is interrupted after a probe checked for a cancel and before its command is
    in the running set (its worktree takes seconds under load): the command is killed at once
    instead of running to its end."""
    import subprocess

    from ekka.bisect import command

    repo, _, commits = linear
    oracle = CommandOracle(repo, "sleep 30")
    real = subprocess.Popen

    def cancel_then_start(*args, **kwargs):
        oracle.cancel()
        return real(*args, **kwargs)

    monkeypatch.setattr(command.subprocess, "Popen", cancel_then_start)
    result = oracle.probe(commits[3])
    assert result.details["exit_code"] == -9, "the command was killed, not left to sleep"
    assert_no_stray_worktrees(repo)
