"""The records of a diagnosis: typed, frozen, and written to and read from JSON.

A diagnosis leaves one `report.json` (`Diagnosis.to_json()`); another process (the bot, a
later `ekka` command) reads it back with `Diagnosis.from_json()` and renders the same report
without torch, NumPy or the tracer: this module imports none of them.

Every record has `to_json() -> dict` and `from_json(dict)`, which round-trip exactly. JSON has
no infinity and no NaN: a non-finite float is written as the string "inf", "-inf" or "nan" and
read back as a float. Tuples are written as lists. `from_json` ignores keys it does not know
(a `BisectResult.to_json()` or an `Attribution.to_json()` holds more than the summary keeps)
and raises `ReportFormatError`, naming the record and the key, where one it needs is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ekka.errors import ReportFormatError


def dump_float(x: float) -> float | str:
    """A float as JSON holds it: itself where finite, else "inf", "-inf" or "nan"."""
    return x if math.isfinite(x) else str(x)


def load_float(value: Any) -> float:
    """The float that `dump_float` wrote (a number or "inf", "-inf", "nan")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ReportFormatError(f"not a number: {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ReportFormatError(f"not a number: {value!r}") from None


def _get(data: Mapping[str, Any], key: str, record: str) -> Any:
    """data[key], or a ReportFormatError naming the record and the missing key."""
    if not isinstance(data, Mapping):
        raise ReportFormatError(f"{record}: expected a JSON object, got {type(data).__name__}")
    try:
        return data[key]
    except KeyError:
        raise ReportFormatError(f"{record}: the key {key!r} is missing") from None


# --- localization -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """One aligned component in one target pass: the figures and how they were made.

    The analysis builds these positionally (a few hundred per diagnosis): keep the order of
    the fields.
    """

    sequence: int
    target: str
    module_class: str
    source_file: str | None
    source_line: int | None
    pass_index: int
    step: int
    call_index: int
    plan: str
    inferred: bool
    ratio: float
    error: float
    noise: float
    nonfinite: bool
    worst_position: int
    rows: int
    # "output", "input" (what the module received), or "metadata" (the serving metadata that
    # `target` consumes first: input ids, positions, attention metadata)
    kind: str = "output"
    discounted_tokens: int = 0  # MoE: tokens at a near-tied router choice, left out of the ratio
    token_ratio: float = 0.0  # the largest per-token ratio (at worst_position)
    # kind "metadata": what the serving metadata held against what it should have
    detail: str = ""

    def passed(self, threshold: float) -> bool:
        return self.ratio <= threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "target": self.target,
            "module_class": self.module_class,
            "source_file": self.source_file,
            "source_line": self.source_line,
            "pass_index": self.pass_index,
            "step": self.step,
            "call_index": self.call_index,
            "plan": self.plan,
            "inferred": self.inferred,
            "ratio": dump_float(self.ratio),
            "error": dump_float(self.error),
            "noise": dump_float(self.noise),
            "nonfinite": self.nonfinite,
            "worst_position": self.worst_position,
            "rows": self.rows,
            "kind": self.kind,
            "discounted_tokens": self.discounted_tokens,
            "token_ratio": dump_float(self.token_ratio),
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        def get(key: str) -> Any:
            return _get(data, key, "Comparison")

        return cls(
            sequence=get("sequence"),
            target=get("target"),
            module_class=get("module_class"),
            source_file=get("source_file"),
            source_line=get("source_line"),
            pass_index=get("pass_index"),
            step=get("step"),
            call_index=get("call_index"),
            plan=get("plan"),
            inferred=get("inferred"),
            ratio=load_float(get("ratio")),
            error=load_float(get("error")),
            noise=load_float(get("noise")),
            nonfinite=get("nonfinite"),
            worst_position=get("worst_position"),
            rows=get("rows"),
            kind=data.get("kind", "output"),
            discounted_tokens=data.get("discounted_tokens", 0),
            token_ratio=load_float(data.get("token_ratio", 0.0)),
            detail=data.get("detail", ""),
        )


@dataclass(frozen=True, slots=True)
class Suspect:
    """A component that may be the root cause, with its location and the evidence."""

    rank: int
    component: str
    module_class: str
    source_file: str | None
    source_line: int | None
    ratio: float
    jump: float
    persistence: float
    pass_index: int
    step: int
    position: int
    evidence: str
    confirmed: bool | None = None  # replay: True = the module alone reproduces the error
    metadata: str = ""  # the wrong serving metadata it consumed first, where that is the cause

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "component": self.component,
            "module_class": self.module_class,
            "source_file": self.source_file,
            "source_line": self.source_line,
            "ratio": dump_float(self.ratio),
            "jump": dump_float(self.jump),
            "persistence": dump_float(self.persistence),
            "pass_index": self.pass_index,
            "step": self.step,
            "position": self.position,
            "evidence": self.evidence,
            "confirmed": self.confirmed,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Suspect:
        def get(key: str) -> Any:
            return _get(data, key, "Suspect")

        return cls(
            rank=get("rank"),
            component=get("component"),
            module_class=get("module_class"),
            source_file=get("source_file"),
            source_line=get("source_line"),
            ratio=load_float(get("ratio")),
            jump=load_float(get("jump")),
            persistence=load_float(get("persistence")),
            pass_index=get("pass_index"),
            step=get("step"),
            position=get("position"),
            evidence=get("evidence"),
            confirmed=data.get("confirmed"),
            metadata=data.get("metadata", ""),
        )


@dataclass(frozen=True, slots=True)
class Localization:
    """The change point and the ranked suspects (none when nothing diverges)."""

    threshold: float
    suspects: tuple[Suspect, ...] = ()
    change_point: Comparison | None = None

    @property
    def diverged(self) -> bool:
        return self.change_point is not None

    def __bool__(self) -> bool:  # "did it pass?"
        return not self.diverged

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": dump_float(self.threshold),
            "change_point": None if self.change_point is None else self.change_point.to_json(),
            "suspects": [s.to_json() for s in self.suspects],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Localization:
        change = _get(data, "change_point", "Localization")
        return cls(
            threshold=load_float(_get(data, "threshold", "Localization")),
            suspects=tuple(Suspect.from_json(s) for s in _get(data, "suspects", "Localization")),
            change_point=None if change is None else Comparison.from_json(change),
        )


@dataclass(frozen=True, slots=True)
class OutputCheck:
    """The end-to-end check of the target's output (`ekka.tracer.output`): its logits and
    greedy tokens against the reference's, step by step."""

    diverged: bool
    step: int | None  # the first step that diverges
    reason: str  # why it diverges, or what matched
    worst_ratio: float  # the largest error ratio of the logits up to there

    def to_json(self) -> dict[str, Any]:
        return {
            "diverged": self.diverged,
            "step": self.step,
            "reason": self.reason,
            "worst_ratio": dump_float(self.worst_ratio),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputCheck:
        def get(key: str) -> Any:
            return _get(data, key, "OutputCheck")

        return cls(get("diverged"), data.get("step"), get("reason"), load_float(get("worst_ratio")))


# --- the target -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """The framework that served the target run, as its trace's manifest names it."""

    framework: str | None = None
    version: str | None = None
    commit: str | None = None
    path: str | None = None  # where its sources were imported from

    def to_json(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "version": self.version,
            "commit": self.commit,
            "path": self.path,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TargetInfo:
        if not isinstance(data, Mapping):
            raise ReportFormatError(f"TargetInfo: expected a JSON object, got {data!r}")
        return cls(
            framework=data.get("framework"),
            version=data.get("version"),
            commit=data.get("commit"),
            path=data.get("path"),
        )


# --- full mode: root cause and bisection ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TouchedSymbol:
    """One class or function (qualified name) of a file whose lines the first bad commit
    changed (`ekka.bisect.attribution.Touched`)."""

    file: str
    qualname: str
    lines_added: int
    lines_removed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "qualname": self.qualname,
            "lines_added": self.lines_added,
            "lines_removed": self.lines_removed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TouchedSymbol:
        def get(key: str) -> Any:
            return _get(data, key, "TouchedSymbol")

        return cls(get("file"), get("qualname"), get("lines_added"), get("lines_removed"))


@dataclass(frozen=True, slots=True)
class RootCause:
    """The first bad commit joined with the suspects (`ekka.bisect.attribution.Attribution`;
    build one with `RootCause.from_json(attribution.to_json())`)."""

    commit: str
    pr: int | None
    statement: str  # the sentence a report leads with
    matched: bool  # a suspect's class, owner or file is among what the commit changed
    level: str  # "class", "owner", "file", "machinery" or "none"
    component: str | None  # the suspect it names (None when nothing matched)
    touched: tuple[TouchedSymbol, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "pr": self.pr,
            "statement": self.statement,
            "matched": self.matched,
            "level": self.level,
            "component": self.component,
            "touched": [t.to_json() for t in self.touched],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RootCause:
        def get(key: str) -> Any:
            return _get(data, key, "RootCause")

        return cls(
            commit=get("commit"),
            pr=data.get("pr"),
            statement=get("statement"),
            matched=get("matched"),
            level=get("level"),
            component=data.get("component"),
            touched=tuple(TouchedSymbol.from_json(t) for t in data.get("touched") or ()),
        )


@dataclass(frozen=True, slots=True)
class CommitRef:
    """A commit as a report names it."""

    sha: str
    summary: str = ""
    pr: int | None = None

    @property
    def short(self) -> str:
        return self.sha[:10]

    def to_json(self) -> dict[str, Any]:
        return {"sha": self.sha, "summary": self.summary, "pr": self.pr}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CommitRef:
        return cls(_get(data, "sha", "CommitRef"), data.get("summary", ""), data.get("pr"))


@dataclass(frozen=True, slots=True)
class ProbeStep:
    """One commit decided during a bisection: a line of the probe log."""

    round: int  # 0: the endpoint checks
    commit: str  # sha
    summary: str
    verdict: str  # "good", "bad", "skip" or "inconclusive"
    reason: str
    seconds: float = 0.0
    cached: bool = False  # the verdict came from the verdict cache

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "commit": self.commit,
            "summary": self.summary,
            "verdict": self.verdict,
            "reason": self.reason,
            "seconds": dump_float(self.seconds),
            "cached": self.cached,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeStep:
        def get(key: str) -> Any:
            return _get(data, key, "ProbeStep")

        return cls(
            round=get("round"),
            commit=get("commit"),
            summary=data.get("summary", ""),
            verdict=get("verdict"),
            reason=data.get("reason", ""),
            seconds=load_float(data.get("seconds", 0.0)),
            cached=bool(data.get("cached", False)),
        )


@dataclass(frozen=True, slots=True)
class BisectionSummary:
    """What a report shows of a bisection (`ekka.bisect.search.BisectResult`; build one with
    `BisectionSummary.from_json(result.to_json())`)."""

    status: str  # "found", "ambiguous" or "inconclusive"
    good: CommitRef
    bad: CommitRef
    first_bad: CommitRef | None  # set when status is "found"
    probes: int  # probe executions (repeats included, cached verdicts not)
    cached: int  # verdicts taken from the cache
    rounds: int  # search rounds after the endpoint checks
    steps: tuple[ProbeStep, ...] = ()
    candidates: tuple[CommitRef, ...] = ()  # the commits the first bad one is among

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "good": self.good.to_json(),
            "bad": self.bad.to_json(),
            "first_bad": None if self.first_bad is None else self.first_bad.to_json(),
            "probes": self.probes,
            "cached": self.cached,
            "rounds": self.rounds,
            "steps": [s.to_json() for s in self.steps],
            "candidates": [c.to_json() for c in self.candidates],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BisectionSummary:
        def get(key: str) -> Any:
            return _get(data, key, "BisectionSummary")

        first = data.get("first_bad")
        return cls(
            status=get("status"),
            good=CommitRef.from_json(get("good")),
            bad=CommitRef.from_json(get("bad")),
            first_bad=None if first is None else CommitRef.from_json(first),
            probes=get("probes"),
            cached=data.get("cached", 0),
            rounds=data.get("rounds", 0),
            steps=tuple(ProbeStep.from_json(s) for s in data.get("steps") or ()),
            candidates=tuple(CommitRef.from_json(c) for c in data.get("candidates") or ()),
        )


# --- the diagnosis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reduction:
    """A diverging scenario reduced to the requests it needs (`ekka.reduce`).

    `kept`: the labels of the other requests the divergence needs ("before 0"); empty with
    `alone` True when the traced request diverges by itself. `statement` says it in a
    sentence, `command` reproduces the reduced scenario (written to `scenario_file`).
    """

    kept: tuple[str, ...]
    alone: bool
    statement: str
    command: str
    scenario_file: str
    runs: int  # scenarios run to find it
    seconds: float
    requests: int  # the other requests of the scenario before reducing

    def to_json(self) -> dict[str, Any]:
        return {
            "kept": list(self.kept),
            "alone": self.alone,
            "statement": self.statement,
            "command": self.command,
            "scenario_file": self.scenario_file,
            "runs": self.runs,
            "seconds": dump_float(self.seconds),
            "requests": self.requests,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reduction:
        def get(key: str) -> Any:
            return _get(data, key, "Reduction")

        return cls(
            kept=tuple(get("kept")),
            alone=bool(get("alone")),
            statement=get("statement"),
            command=get("command"),
            scenario_file=get("scenario_file"),
            runs=int(get("runs")),
            seconds=load_float(get("seconds")),
            requests=int(get("requests")),
        )


@dataclass(frozen=True)
class Diagnosis:
    """A whole diagnosis: the run's settings, both sides' tokens, every comparison, the
    localization and, in full mode, the root cause and the bisection.

    `timings` holds internal phase timings (seconds): written to the JSON's own "timings"
    section, never shown in a user's report. The diagnosis' threshold is its localization's.
    """

    model: str
    dtype: str
    prompt: str | None
    prompt_ids: tuple[int, ...]
    max_tokens: int
    threshold: float
    target: TargetInfo
    target_tokens: tuple[int, ...]
    reference_tokens: tuple[int, ...]
    localization: Localization
    comparisons: tuple[Comparison, ...]
    unmapped: tuple[tuple[str, str], ...]  # (component, why it has no reference counterpart)
    engine: Mapping[str, Any] = field(default_factory=dict)  # the target's engine arguments
    root_cause: RootCause | None = None
    bisection: BisectionSummary | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    output: OutputCheck | None = None  # the end-to-end check of the target's output
    notes: tuple[str, ...] = ()  # what a reader must know beside the verdict
    # the requests around the traced one (`Scenario.to_json`), None for a lone request
    scenario: Mapping[str, Any] | None = None
    reduction: Reduction | None = None  # a diverging scenario reduced to what it needs

    def __post_init__(self) -> None:
        if self.localization.threshold != self.threshold:
            raise ValueError(
                f"the localization's threshold {self.localization.threshold:g} is not the "
                f"diagnosis' {self.threshold:g}"
            )

    @property
    def diverged(self) -> bool:
        """A component diverges, or the output does (never "no divergence" while it does)."""
        return self.localization.diverged or (self.output is not None and self.output.diverged)

    @property
    def verdict(self) -> str:
        if self.root_cause is not None:
            return self.root_cause.statement
        if not self.diverged:
            return "no divergence"
        change = self.localization.change_point
        if change is None and self.output is not None:
            closest = ", ".join(f"{name} ({ratio:.3g})" for name, ratio in self.closest())
            return (
                f"the output diverges at step {self.output.step} ({self.output.reason}), but no "
                "traced component does: the cause is outside the traced modules, e.g. the "
                "sampler or the serving metadata" + (f"; closest: {closest}" if closest else "")
            )
        if not self.localization.suspects:
            return f"divergence at {change.target if change else '?'}"
        top = self.localization.suspects[0]
        if change is not None and change.kind == "metadata":
            return (
                f"divergence: {top.component} ({top.module_class}) consumed wrong serving "
                f"metadata first: {change.detail}"
            )
        return (
            f"divergence: {top.component} ({top.module_class}) is the first component that diverges"
        )

    def closest(self, count: int = 5) -> list[tuple[str, float]]:
        """The components with the largest error ratios (each once): where to look when the
        output diverges and no component crosses the threshold."""
        best: dict[str, float] = {}
        for c in self.comparisons:
            if c.kind != "metadata" and math.isfinite(c.ratio):
                best[c.target] = max(best.get(c.target, 0.0), c.ratio)
        return sorted(best.items(), key=lambda item: -item[1])[:count]

    def to_json(self) -> dict[str, Any]:
        """The report.json object: "verdict" and "diverged" (derived, for readers) first; the
        localization's threshold, change point and suspects at the top level."""
        loc = self.localization
        return {
            "verdict": self.verdict,
            "diverged": self.diverged,
            "model": self.model,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "prompt_ids": list(self.prompt_ids),
            "max_tokens": self.max_tokens,
            "threshold": dump_float(self.threshold),
            "engine": dict(self.engine),
            "target": self.target.to_json(),
            "target_tokens": list(self.target_tokens),
            "reference_tokens": list(self.reference_tokens),
            "change_point": None if loc.change_point is None else loc.change_point.to_json(),
            "suspects": [s.to_json() for s in loc.suspects],
            "root_cause": None if self.root_cause is None else self.root_cause.to_json(),
            "bisection": None if self.bisection is None else self.bisection.to_json(),
            "output": None if self.output is None else self.output.to_json(),
            "notes": list(self.notes),
            "scenario": None if self.scenario is None else dict(self.scenario),
            "reduction": None if self.reduction is None else self.reduction.to_json(),
            "unmapped": dict(self.unmapped),
            "comparisons": [c.to_json() for c in self.comparisons],
            "timings": {k: dump_float(v) for k, v in self.timings.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Diagnosis:
        def get(key: str) -> Any:
            return _get(data, key, "Diagnosis")

        threshold = load_float(get("threshold"))
        change = get("change_point")
        root_cause = data.get("root_cause")
        bisection = data.get("bisection")
        unmapped = data.get("unmapped") or {}
        if not isinstance(unmapped, Mapping):
            raise ReportFormatError(f"Diagnosis: 'unmapped' is not an object: {unmapped!r}")
        return cls(
            model=get("model"),
            dtype=get("dtype"),
            prompt=data.get("prompt"),
            prompt_ids=tuple(get("prompt_ids")),
            max_tokens=get("max_tokens"),
            threshold=threshold,
            target=TargetInfo.from_json(get("target")),
            target_tokens=tuple(get("target_tokens")),
            reference_tokens=tuple(get("reference_tokens")),
            localization=Localization(
                threshold,
                tuple(Suspect.from_json(s) for s in get("suspects")),
                None if change is None else Comparison.from_json(change),
            ),
            comparisons=tuple(Comparison.from_json(c) for c in get("comparisons")),
            unmapped=tuple((str(k), str(v)) for k, v in unmapped.items()),
            engine=dict(data.get("engine") or {}),
            root_cause=None if root_cause is None else RootCause.from_json(root_cause),
            bisection=None if bisection is None else BisectionSummary.from_json(bisection),
            timings={k: load_float(v) for k, v in (data.get("timings") or {}).items()},
            output=None if data.get("output") is None else OutputCheck.from_json(data["output"]),
            notes=tuple(data.get("notes") or ()),
            scenario=data.get("scenario"),
            reduction=None
            if data.get("reduction") is None
            else Reduction.from_json(data["reduction"]),
        )
