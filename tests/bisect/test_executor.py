"""The executor interface: the bisection drives an Executor (probe, cancel), a bare probe function
is wrapped as one, and the command oracle is one."""

from __future__ import annotations

import threading

import pytest

from ekka.bisect.command import CommandOracle
from ekka.bisect.executor import Executor, FunctionExecutor, as_executor
from ekka.bisect.history import CommitInfo, commit_range
from ekka.bisect.search import Bisector, BisectStatus
from ekka.bisect.verdict import TRANSIENT, ProbeResult, Verdict
from tests.bisect import git, linear_repo


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """(repo, shas, value of each sha): commit i sets value.txt to i."""
    repo = tmp_path_factory.mktemp("executor") / "repo"
    shas = linear_repo(repo, 12)
    return repo, shas, {sha: int(git(repo, "show", f"{sha}:value.txt")) for sha in shas}


class RecordingExecutor:
    """Bad from value `first_bad` on; `interrupt` raises KeyboardInterrupt at that value."""

    def __init__(self, values, first_bad, interrupt=None):
        self.values, self.first_bad, self.interrupt = values, first_bad, interrupt
        self.probed: list[int] = []
        self.cancelled = threading.Event()
        self.lock = threading.Lock()

    def probe(self, commit: CommitInfo) -> ProbeResult:
        value = self.values[commit.sha]
        with self.lock:
            self.probed.append(value)
        if value == self.interrupt:
            raise KeyboardInterrupt
        return ProbeResult(
            Verdict.GOOD if value < self.first_bad else Verdict.BAD, f"value {value}"
        )

    def cancel(self) -> None:
        self.cancelled.set()


def test_the_bisection_drives_an_executor(history):
    repo, shas, values = history
    executor = RecordingExecutor(values, first_bad=7)
    assert isinstance(executor, Executor)
    result = Bisector(executor).run(commit_range(repo, shas[0], shas[-1]))
    assert result.status is BisectStatus.FOUND and result.first_bad is not None
    assert result.first_bad.sha == shas[7]
    assert executor.probed[:2] == [0, 12] and not executor.cancelled.is_set()


def test_an_interrupted_bisection_cancels_its_executor(history):
    repo, shas, values = history
    executor = RecordingExecutor(values, first_bad=7, interrupt=12)
    with pytest.raises(KeyboardInterrupt):
        Bisector(executor, workers=2).run(commit_range(repo, shas[0], shas[-1]))
    assert executor.cancelled.is_set()


def test_a_bare_probe_function_is_wrapped_and_cancellable(history):
    repo, shas, values = history
    commits = commit_range(repo, shas[0], shas[-1])

    def probe(commit: CommitInfo) -> ProbeResult:
        return ProbeResult(Verdict.GOOD if values[commit.sha] < 3 else Verdict.BAD, "")

    executor = as_executor(probe)
    assert isinstance(executor, FunctionExecutor) and isinstance(executor, Executor)
    assert executor.probe(commits[0]).verdict is Verdict.GOOD  # commits[0]: value 1
    executor.cancel()
    cancelled = executor.probe(commits[0])
    assert cancelled.verdict is Verdict.SKIP and cancelled.details == {TRANSIENT: True}
    result = Bisector(probe).run(commits)
    assert result.first_bad is not None and result.first_bad.sha == shas[3]


def test_an_executor_is_used_as_it_is(history):
    executor = RecordingExecutor({}, first_bad=0)
    assert as_executor(executor) is executor


def test_the_command_oracle_is_an_executor(history):
    repo, shas, _ = history
    oracle = CommandOracle(repo, "test $(cat value.txt) -lt 5")
    assert isinstance(oracle, Executor) and as_executor(oracle) is oracle
    commits = commit_range(repo, shas[0], shas[-1])
    assert oracle.probe(commits[0]).verdict is Verdict.GOOD
    assert oracle.probe(commits[-1]).verdict is Verdict.BAD
