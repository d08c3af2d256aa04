"""The search: verify both endpoints, then binary search (or k-way multisection) with skips,
repeats for flaky oracles and a verdict cache.

Three roles, as in mozregression: `Bisector` is the driver (it owns the probe, the cache and the
observer), `BisectState` holds one run's state (the live range and the history of steps), and an
`Observer` is told what happens (the terminal prints it, the bot edits its progress comment).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ekka.bisect.executor import Executor, Probe, as_executor
from ekka.bisect.history import CommitInfo, CommitRange
from ekka.bisect.verdict import TRANSIENT, ProbeResult, Verdict
from ekka.errors import EkkaError, EndpointError, OracleStartError, UsageError

if TYPE_CHECKING:
    from ekka.bisect.cache import VerdictCache


class BisectStatus(str, Enum):
    """How a bisection ended."""

    FOUND = "found"  # one first bad commit
    AMBIGUOUS = (
        "ambiguous"  # skipped commits next to the first bad one: `candidates` holds them all
    )
    INCONCLUSIVE = "inconclusive"  # a commit gave no majority over its repeats: stopped there


@dataclass(frozen=True)
class BisectStep:
    """One commit decided: its verdict (None: inconclusive), why, in which round, from the cache or
    from `runs` (the probes it took; more than one with repeats)."""

    commit: CommitInfo
    verdict: Verdict | None
    reason: str
    round: int  # 0: the endpoint checks
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    runs: tuple[ProbeResult, ...] = ()

    @property
    def inconclusive(self) -> bool:
        return self.verdict is None

    @property
    def result(self) -> ProbeResult | None:
        """The decided verdict as one ProbeResult (what the cache stores); None when inconclusive."""
        if self.verdict is None:
            return None
        return ProbeResult(self.verdict, self.reason, self.seconds, self.details)

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit.sha,
            "summary": self.commit.summary,
            "verdict": self.verdict.value if self.verdict else "inconclusive",
            "reason": self.reason,
            "round": self.round,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass(frozen=True)
class BisectResult:
    """A finished bisection. True when it found the first bad commit."""

    status: BisectStatus
    good: CommitInfo
    bad: CommitInfo
    first_bad: CommitInfo | None  # set when status is FOUND
    last_good: CommitInfo  # the newest commit known good (the good endpoint at least)
    candidates: CommitRange  # the commits the first bad one is among (one when FOUND)
    steps: tuple[BisectStep, ...]
    probes: int  # probe executions (repeats included, cached verdicts not)
    rounds: int  # search rounds after the endpoint checks
    skipped: tuple[str, ...]  # shas that probed skip
    inconclusive: CommitInfo | None = None  # the commit that stopped an INCONCLUSIVE run

    def __bool__(self) -> bool:
        return self.status is BisectStatus.FOUND

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps if s.cached)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "good": self.good.to_json(),
            "bad": self.bad.to_json(),
            "first_bad": self.first_bad.to_json() if self.first_bad else None,
            "last_good": self.last_good.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "inconclusive": self.inconclusive.to_json() if self.inconclusive else None,
            "probes": self.probes,
            "cached": self.cached,
            "rounds": self.rounds,
            "skipped": list(self.skipped),
            "steps": [s.to_json() for s in self.steps],
        }


class Observer(Protocol):
    """Told what a bisection does; called from the driver's thread only."""

    def started(self, commit_range: CommitRange) -> None: ...

    def probing(self, commit: CommitInfo) -> None: ...

    def verdict(self, commit: CommitInfo, step: BisectStep) -> None: ...

    def finished(self, result: BisectResult) -> None: ...


class NullObserver:
    """Says nothing."""

    def started(self, commit_range: CommitRange) -> None:
        pass

    def probing(self, commit: CommitInfo) -> None:
        pass

    def verdict(self, commit: CommitInfo, step: BisectStep) -> None:
        pass

    def finished(self, result: BisectResult) -> None:
        pass


class PrintObserver:
    """Writes one plain line per event through `write` (print by default); the final result
    through `write_result` when given (the CLI: progress on stderr, the answer on stdout)."""

    def __init__(
        self,
        write: Callable[[str], None] = print,
        write_result: Callable[[str], None] | None = None,
    ) -> None:
        self.write = write
        self.write_result = write_result or write

    def started(self, commit_range: CommitRange) -> None:
        self.write(
            f"bisecting {len(commit_range)} commits: good {commit_range.good.short}, "
            f"bad {commit_range.bad.short}"
        )

    def probing(self, commit: CommitInfo) -> None:
        self.write(f"probing {commit.short} {_clip(commit.summary)}")

    def verdict(self, commit: CommitInfo, step: BisectStep) -> None:
        self.write(describe_step(step))

    def finished(self, result: BisectResult) -> None:
        self.write_result(describe_result(result))


def describe_step(step: BisectStep) -> str:
    """One line: `[round 2] 1a2b3c4d5e Summary: bad — exit 1: ...`."""
    where = "endpoint" if step.round == 0 else f"round {step.round}"
    verdict = step.verdict.value if step.verdict else "inconclusive"
    cached = ", cached" if step.cached else ""
    return f"[{where}] {step.commit.short} {_clip(step.commit.summary)}: {verdict}{cached} — {step.reason}"


def describe_result(result: BisectResult) -> str:
    """A few lines saying what the bisection found."""
    cost = f"{result.probes} probes, {result.cached} cached, {result.rounds} rounds"
    if result.status is BisectStatus.FOUND and result.first_bad is not None:
        c = result.first_bad
        pr = f"PR #{c.pr}" if c.pr is not None else "no PR found"
        return f"first bad commit: {c.sha} {c.summary}\n  {pr}; {c.author}, {c.date}\n  {cost}"
    listing = "\n".join(f"  {c.short} {_clip(c.summary)}" for c in result.candidates)
    if result.status is BisectStatus.INCONCLUSIVE and result.inconclusive is not None:
        return (
            f"inconclusive: {result.inconclusive.short} ({_clip(result.inconclusive.summary)}) gave no "
            f"majority; the first bad commit is among:\n{listing}\n  {cost}"
        )
    return (
        f"ambiguous: skipped commits hide the first bad commit; it is one of:\n{listing}\n  {cost}"
    )


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def split_points(size: int, parts: int) -> list[int]:
    """Indices to probe in a window of `size` untested commits with `parts` probes at once.

    The window's size + 1 outcomes (the first bad is window[i], or the known bad after it) are
    cut into parts + 1 near-equal pieces, so one probe halves them (binary search) and k probes
    cut them into k + 1 (multisection).
    """
    k = min(parts, size)
    return [(j + 1) * (size + 1) // (k + 1) - 1 for j in range(k)]


def majority(runs: Sequence[ProbeResult], repeats: int) -> ProbeResult | None:
    """The verdict more than half of `repeats` runs agree on, as one ProbeResult; else None."""
    votes = Counter(r.verdict for r in runs)
    for verdict, count in votes.items():
        if count * 2 > repeats:
            if repeats == 1:
                return runs[0]
            last = next(r for r in reversed(runs) if r.verdict is verdict)
            return ProbeResult(
                verdict,
                f"{count} of {len(runs)} runs {verdict.value}: {last.reason}",
                sum(r.seconds for r in runs),
                {
                    "votes": {v.value: n for v, n in votes.items()},
                    TRANSIENT: all(r.transient for r in runs if r.verdict is verdict),
                },
            )
    return None


def _settled(runs: Sequence[ProbeResult], repeats: int) -> bool:
    """True when more runs cannot change the outcome (a majority, or none is reachable)."""
    top = max(Counter(r.verdict for r in runs).values())
    return top * 2 > repeats or (top + repeats - len(runs)) * 2 <= repeats


class BisectState:
    """One run's state: the live range (skips removed), the bounds found so far, the steps."""

    def __init__(self, commit_range: CommitRange) -> None:
        self.range = commit_range
        self.live = commit_range.copy()
        self.last_good = commit_range.good
        self.first_bad = commit_range.bad
        self.steps: list[BisectStep] = []
        self.skipped: list[str] = []
        self.probes = 0
        self.rounds = 0

    def _live_position(self, commit: CommitInfo) -> int:
        return -1 if commit.sha == self.range.good.sha else self.live.position(commit.sha)

    def window(self) -> list[CommitInfo]:
        """The untested, unskipped commits strictly between the last good and the first bad."""
        lo, hi = self._live_position(self.last_good), self._live_position(self.first_bad)
        return list(self.live[lo + 1 : hi])

    def is_open(self, commit: CommitInfo) -> bool:
        """True when the commit still matters: between the last good and the first bad."""
        if commit not in self.live:
            return False
        pos = self.live.position(commit.sha)
        return self._live_position(self.last_good) < pos < self._live_position(self.first_bad)

    def apply(self, steps: Sequence[BisectStep]) -> None:
        """Narrow the bounds by one round's verdicts; skipped commits leave the live range."""
        for step in steps:
            if step.verdict is Verdict.BAD and self.is_open(step.commit):
                self.first_bad = step.commit
        for step in steps:
            if step.verdict is Verdict.GOOD and self.is_open(step.commit):
                self.last_good = step.commit
        for step in steps:
            if step.verdict is Verdict.SKIP and step.commit in self.live:
                self.live.remove(step.commit.sha)
                self.skipped.append(step.commit.sha)

    def candidates(self) -> CommitRange:
        """The original range's commits after the last good up to the first bad, skips included."""
        lo = (
            -1
            if self.last_good.sha == self.range.good.sha
            else self.range.position(self.last_good.sha)
        )
        hi = self.range.position(self.first_bad.sha)
        return CommitRange(self.last_good, self.first_bad, self.range[lo + 1 : hi + 1])

    def result(self, inconclusive: CommitInfo | None = None) -> BisectResult:
        candidates = self.candidates()
        if inconclusive is not None:
            status = BisectStatus.INCONCLUSIVE
        elif len(candidates) == 1:
            status = BisectStatus.FOUND
        else:
            status = BisectStatus.AMBIGUOUS
        return BisectResult(
            status=status,
            good=self.range.good,
            bad=self.range.bad,
            first_bad=self.first_bad if status is BisectStatus.FOUND else None,
            last_good=self.last_good,
            candidates=candidates,
            steps=tuple(self.steps),
            probes=self.probes,
            rounds=self.rounds,
            skipped=tuple(self.skipped),
            inconclusive=inconclusive,
        )


class Bisector:
    """Finds the first bad commit of a range with an executor (see `ekka.bisect.executor`: commit
    in, verdict out), or a bare probe function.

    `workers` commits are probed at once (k-way multisection). Each commit is probed up to
    `repeats` times and decided by strict majority (probing stops early once more runs cannot
    change the outcome); no majority makes the run inconclusive. A probe that raises anything
    but an EkkaError counts as a skip. When the search is interrupted, the executor's
    `cancel()` stops its running probes.

    With a `cache`, each commit's decided verdict is looked up first and stored afterwards under
    (repo_key, sha, config_hash); cached verdicts are steps with `cached=True`, not probes.
    """

    def __init__(
        self,
        executor: Executor | Probe,
        *,
        workers: int = 1,
        repeats: int = 1,
        observer: Observer | None = None,
        cache: VerdictCache | None = None,
        repo_key: str = "",
        config_hash: str = "",
    ) -> None:
        if workers < 1:
            raise UsageError(f"workers must be at least 1 (got {workers}).")
        if repeats < 1:
            raise UsageError(f"repeats must be at least 1 (got {repeats}).")
        self.executor = as_executor(executor)
        self.workers = workers
        self.repeats = repeats
        self.observer: Observer = observer or NullObserver()
        self.cache = cache
        self.repo_key = repo_key
        self.config_hash = config_hash

    def run(self, commit_range: CommitRange) -> BisectResult:
        """Verify the endpoints, then search; raises EndpointError when they do not behave."""
        if not commit_range or commit_range[-1].sha != commit_range.bad.sha:
            raise ValueError(f"{commit_range!r} must be non-empty and end with its bad commit")
        state = BisectState(commit_range)
        self.observer.started(commit_range)
        self._verify_endpoints(state)
        inconclusive: CommitInfo | None = None
        while inconclusive is None:
            window = state.window()
            if not window:
                break
            state.rounds += 1
            picks = [window[i] for i in split_points(len(window), self.workers)]
            steps = self._decide_all(state, picks, state.rounds)
            state.apply(steps)
            inconclusive = next(
                (s.commit for s in steps if s.inconclusive and state.is_open(s.commit)), None
            )
        result = state.result(inconclusive)
        self.observer.finished(result)
        return result

    def _verify_endpoints(self, state: BisectState) -> None:
        good, bad = state.range.good, state.range.bad
        steps = {s.commit.sha: s for s in self._decide_all(state, [good, bad], 0, store=False)}
        good_step, bad_step = steps[good.sha], steps[bad.sha]
        if _cannot_start(good_step) and _cannot_start(bad_step):
            raise OracleStartError(f"the oracle command could not start: {bad_step.reason}")
        problems = []
        if good_step.verdict is not Verdict.GOOD:
            problems.append(_endpoint_problem("good", good_step))
        if bad_step.verdict is not Verdict.BAD:
            problems.append(_endpoint_problem("bad", bad_step))
        if problems:
            raise EndpointError(
                "; ".join(problems)
                + ". The good endpoint must probe good and the bad one bad: check --good/--bad and the oracle.",
                good_step=good_step if good_step.verdict is not Verdict.GOOD else None,
                bad_step=bad_step if bad_step.verdict is not Verdict.BAD else None,
            )
        for step in (good_step, bad_step):
            self._store(step)

    def _decide_all(
        self, state: BisectState, commits: Sequence[CommitInfo], round_: int, *, store: bool = True
    ) -> list[BisectStep]:
        """Decide each commit (cache first, then probes, `workers` at once); steps in completion order."""
        steps: list[BisectStep] = []

        def record(step: BisectStep) -> None:
            state.steps.append(step)
            state.probes += len(step.runs)
            steps.append(step)
            self.observer.verdict(step.commit, step)
            if store:
                self._store(step)

        pending = []
        for commit in commits:
            cached = self._lookup(commit, round_)
            if cached is not None:
                record(cached)
            else:
                pending.append(commit)
        if self.workers == 1 or len(pending) <= 1:
            for commit in pending:
                self.observer.probing(commit)
                record(self._decide(commit, round_))
            return steps
        with ThreadPoolExecutor(
            max_workers=min(self.workers, len(pending)), thread_name_prefix="ekka-probe"
        ) as pool:
            for commit in pending:
                self.observer.probing(commit)
            futures = [pool.submit(self._decide, commit, round_) for commit in pending]
            try:
                for future in as_completed(futures):
                    record(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                self.executor.cancel()
                raise
        return steps

    def _decide(self, commit: CommitInfo, round_: int) -> BisectStep:
        """Probe one commit up to `repeats` times; the strict majority decides."""
        start = time.monotonic()
        runs: list[ProbeResult] = []
        while len(runs) < self.repeats and not (runs and _settled(runs, self.repeats)):
            runs.append(self._probe_once(commit))
        seconds = time.monotonic() - start
        decided = majority(runs, self.repeats)
        if decided is None:
            votes = Counter(r.verdict.value for r in runs)
            tally = ", ".join(f"{n} {v}" for v, n in sorted(votes.items()))
            return BisectStep(
                commit, None, f"no majority over {len(runs)} runs ({tally})", round_, seconds,
                {"votes": dict(votes)}, runs=tuple(runs),
            )  # fmt: skip
        return BisectStep(
            commit,
            decided.verdict,
            decided.reason,
            round_,
            seconds,
            decided.details,
            runs=tuple(runs),
        )

    def _probe_once(self, commit: CommitInfo) -> ProbeResult:
        start = time.monotonic()
        try:
            return self.executor.probe(commit)
        except EkkaError:
            raise
        except Exception as exc:  # an infrastructure failure says nothing about the commit
            return ProbeResult(
                Verdict.SKIP,
                f"the probe failed: {type(exc).__name__}: {exc}",
                time.monotonic() - start,
                {TRANSIENT: True},
            )

    def _lookup(self, commit: CommitInfo, round_: int) -> BisectStep | None:
        if self.cache is None:
            return None
        hit = self.cache.get(self.repo_key, commit.sha, self.config_hash)
        if hit is None:
            return None
        return BisectStep(
            commit, hit.verdict, hit.reason, round_, hit.seconds, hit.details, cached=True
        )

    def _store(self, step: BisectStep) -> None:
        result = step.result
        if self.cache is None or step.cached or result is None or result.transient:
            return
        self.cache.put(self.repo_key, step.commit.sha, self.config_hash, result)


def _cannot_start(step: BisectStep) -> bool:
    return any(r.cannot_start for r in step.runs)


def _endpoint_problem(role: str, step: BisectStep) -> str:
    commit = f"{role} endpoint {step.commit.short} ({_clip(step.commit.summary, 50)})"
    if step.verdict is None:
        return f"the {commit} is flaky: {step.reason}"
    if step.verdict is Verdict.SKIP:
        return f"the {commit} probes skip, so it cannot be verified: {step.reason}"
    started = " (the command could not start there)" if _cannot_start(step) else ""
    return f"the {commit} probes {step.verdict.value}, not {role}{started}: {step.reason}"
