"""The executor interface: what a bisection receives to probe one commit.

The bisection (`ekka.bisect.search.Bisector`) knows commits, verdicts and this interface, and
nothing of where a commit's framework runs. The executors implement it: `CommandOracle` (a
shell command in a worktree, `ekka bisect --cmd`) here, and in `ekka.containers` the local
executor (a worktree of the commit, its Python sources on the installed release's compiled
extensions), the docker executor (an image built per commit) and the ray executor (probes as
tasks on a cluster's nodes). `ekka.full` puts an executor together with the tracer's oracle
and hands it to the bisection. ekka/bisect imports nothing from ekka/containers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ekka.bisect.history import CommitInfo
from ekka.bisect.verdict import TRANSIENT, ProbeResult, Verdict

# A bare probe function (tests, a one-off oracle): an Executor without `cancel`.
Probe = Callable[[CommitInfo], ProbeResult]


@runtime_checkable
class Executor(Protocol):
    """Runs one commit's framework somewhere and says whether its output is good, bad or skip.

    What an implementation promises:

    - `probe(commit)` returns the commit's ProbeResult: GOOD or BAD only when the commit's own
      code ran and the oracle judged its output; SKIP when this commit cannot be tested here
      (it changes sources this executor cannot build, it does not import, the engine does not
      start), with a one-line reason. A failure that says nothing about the commit (a timeout,
      a lost worker or container, no worktree, cancelled) is a SKIP with
      `details[TRANSIENT] = True`: the verdict cache never stores it. An oracle program that
      cannot start at all sets `details[CANNOT_START] = True` (both endpoints so: the bisection
      stops with OracleStartError). `seconds` is the probe's wall time; `details` must be
      JSON-serializable (the cache and the report store it).
    - It raises only an EkkaError, and only for what stops the whole bisection; any other
      exception is taken as a SKIP of that commit.
    - It is thread-safe: with `workers` > 1 the bisection probes that many commits at once, one
      thread each, and with `repeats` > 1 it probes a commit again (fresh each time: no state
      of one probe may leak into the next).
    - `cancel()` is called, from another thread, when the bisection is interrupted: it stops the
      running probes as far as it can (kill a process group, a container, a remote task) and
      makes later `probe` calls return a TRANSIENT SKIP at once.

    A remote executor sends the commit (`CommitInfo.to_json`) and brings back the verdict
    (`ProbeResult.to_json` / `from_json`): both are plain frozen records.
    """

    def probe(self, commit: CommitInfo) -> ProbeResult: ...

    def cancel(self) -> None: ...


class FunctionExecutor:
    """A bare probe function as an Executor: `cancel` makes later probes skip at once."""

    def __init__(self, function: Probe) -> None:
        self.function = function
        self.cancelled = threading.Event()

    def probe(self, commit: CommitInfo) -> ProbeResult:
        if self.cancelled.is_set():
            return ProbeResult(Verdict.SKIP, "cancelled", 0.0, {TRANSIENT: True})
        return self.function(commit)

    def cancel(self) -> None:
        self.cancelled.set()


def as_executor(probe: Executor | Probe) -> Executor:
    """`probe` itself when it is an Executor, else the function wrapped as one."""
    if isinstance(probe, Executor):
        return probe
    return FunctionExecutor(probe)
