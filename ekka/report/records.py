"""The records of a diagnosis: typed, frozen, and written to and read from JSON.

A diagnosis leaves one `report.json` (`Diagnosis.to_json()`); another process (the bot, a
later `ekka` command) reads it back with `Diagnosis.from_json()` and renders the same report
without torch, NumPy or the tracer: this module imports none of them.

Every record has `to_json() -> dict` and `from_json(dict)`, which round-trip exactly: through
the one codec (`ekka.codec`), every field checked against its annotation. JSON has no infinity
and no NaN: a non-finite float is written as the string "inf", "-inf" or "nan" and read back as
a float. Tuples are written as lists. `from_json` ignores keys it does not know (a
`BisectResult.to_json()` or an `Attribution.to_json()` holds more than the summary keeps) and
raises `ReportFormatError`, naming the record and the field, where one it needs is missing or
holds a value of the wrong kind. `Diagnosis` keeps a layout of its own (the verdict first, the
localization at the top level) over the same codec.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ekka import codec
from ekka.codec import JsonRecord, Unknown, absent
from ekka.errors import ReportFormatError
from ekka.frameworks import FRAMEWORKS


class ReportRecord(JsonRecord):
    """A report's record: malformed JSON is a ReportFormatError; unknown keys are skipped."""

    __slots__ = ()
    JSON_ERROR: ClassVar[type[Exception]] = ReportFormatError
    JSON_UNKNOWN: ClassVar[Unknown] = "ignore"


def _read(cls: type[codec.T], data: Any) -> codec.T:
    return codec.decode(cls, data, error=ReportFormatError, unknown="ignore")


# --- localization -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison(ReportRecord):
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


@dataclass(frozen=True, slots=True)
class Suspect(ReportRecord):
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


@dataclass(frozen=True, slots=True)
class Localization(ReportRecord):
    """The change point and the ranked suspects (none when nothing diverges)."""

    threshold: float
    suspects: tuple[Suspect, ...] = ()
    change_point: Comparison | None = None

    @property
    def diverged(self) -> bool:
        return self.change_point is not None

    def __bool__(self) -> bool:  # "did it pass?"
        return not self.diverged


class LatentVerdict(str, enum.Enum):
    """What the replay says of a latent candidate (`Latent`)."""

    MODULE = "module"  # alone on the reference's input it reproduces the error: it differs
    GLUE = "glue"  # its input differs, the output before it matched, alone it matches
    UPSTREAM = "upstream"  # alone it matches and its input came in wrong from upstream
    LAYOUT = "layout"  # alone it differs only in the order of its features (a weight layout)
    UNREPLAYED = "unreplayed"  # not replayable (or the replay failed): to be named or examined


@dataclass(frozen=True, slots=True)
class Latent(ReportRecord):
    """A component above the threshold whose error does not persist (no change point: the
    output still matches on this prompt), with the replay's verdict on it. A confirmed one
    (`MODULE`, `GLUE`) is a latent finding: `owner` differs (the module itself, or for `GLUE`
    the caller whose forward feeds it)."""

    component: str
    module_class: str
    source_file: str | None
    source_line: int | None
    owner: str
    verdict: LatentVerdict
    ratio: float  # its output's ratio (0.0 where its output stayed below the threshold)
    input_ratio: float  # its input's ratio (0.0 where not compared or below)
    pass_index: int
    replay_ratio: float | None = None  # alone on the reference's input (None: not replayed)

    @property
    def confirmed(self) -> bool:
        return self.verdict in (LatentVerdict.MODULE, LatentVerdict.GLUE)

    def statement(self) -> str:
        """One line: what differs and the evidence."""
        replay = (
            ""
            if self.replay_ratio is None
            else f"; alone on the reference's input {self.replay_ratio:.3g}"
        )
        figures = f"output ratio {self.ratio:.3g}, input ratio {self.input_ratio:.3g}{replay}"
        if self.verdict is LatentVerdict.MODULE:
            return f"latent: {self.component} ({self.module_class}) differs by itself ({figures}); the output still matches on this prompt"
        if self.verdict is LatentVerdict.GLUE:
            return (
                f"latent: the code in {self.owner}'s forward that feeds {self.component} "
                f"({self.module_class}) differs ({figures}: the output before it matched, the "
                "module alone matches); the output still matches on this prompt"
            )
        if self.verdict is LatentVerdict.UPSTREAM:
            return f"{self.component}: its error arrives from upstream ({figures})"
        if self.verdict is LatentVerdict.LAYOUT:
            return (
                f"{self.component} ({self.module_class}): alone it gives the reference's values "
                f"in another order, a weight layout, not a value ({figures})"
            )
        return (
            f"{self.component} ({self.module_class}) above the threshold, not replayed ({figures})"
        )


@dataclass(frozen=True, slots=True)
class OutputCheck(ReportRecord):
    """The end-to-end check of the target's output (`ekka.tracer.output`): its logits and
    greedy tokens against the reference's, step by step."""

    diverged: bool
    step: int | None = field(metadata=absent(None))  # the first step that diverges
    reason: str  # why it diverges, or what matched
    worst_ratio: float  # the largest error ratio of the logits up to there


# --- the target -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetInfo(ReportRecord):
    """The framework that served the target run, as its trace's manifest names it."""

    framework: str | None = None
    version: str | None = None
    commit: str | None = None
    path: str | None = None  # where its sources were imported from
    # how it ran, where a report must say so ("SGLang's torch-native paths; no sgl_kernel")
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """The framework as reports name it (`ekka.frameworks`: "vLLM", "SGLang")."""
        known = FRAMEWORKS.get(self.framework or "")
        return known.title if known is not None else (self.framework or "the target")

    def describe(self) -> str:
        """The framework, its version and how it ran, as one phrase: "SGLang 0.5.23 (SGLang's
        torch-native paths; no sgl_kernel)"."""
        words = " ".join(w for w in (self.title, self.version) if w)
        return words + "".join(f" ({note})" for note in self.notes)


# --- full mode: root cause and bisection ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TouchedSymbol(ReportRecord):
    """One class or function (qualified name) of a file whose lines the first bad commit
    changed (`ekka.bisect.attribution.Touched`)."""

    file: str
    qualname: str
    lines_added: int
    lines_removed: int


@dataclass(frozen=True, slots=True)
class RootCause(ReportRecord):
    """The first bad commit joined with the suspects (`ekka.bisect.attribution.Attribution`;
    build one with `RootCause.from_json(attribution.to_json())`)."""

    commit: str
    pr: int | None = field(metadata=absent(None))
    statement: str  # the sentence a report leads with
    matched: bool  # a suspect's class, owner or file is among what the commit changed
    level: str  # "class", "owner", "file", "machinery" or "none"
    component: str | None = field(metadata=absent(None))  # the suspect it names (None: nothing)
    touched: tuple[TouchedSymbol, ...] = ()


@dataclass(frozen=True, slots=True)
class CommitRef(ReportRecord):
    """A commit as a report names it."""

    sha: str
    summary: str = ""
    pr: int | None = None

    @property
    def short(self) -> str:
        return self.sha[:10]


@dataclass(frozen=True, slots=True)
class ProbeStep(ReportRecord):
    """One commit decided during a bisection: a line of the probe log."""

    round: int  # 0: the endpoint checks
    commit: str  # sha
    summary: str = field(metadata=absent(""))
    verdict: str  # "good", "bad", "skip" or "inconclusive"
    reason: str = field(metadata=absent(""))
    seconds: float = 0.0
    cached: bool = False  # the verdict came from the verdict cache


@dataclass(frozen=True, slots=True)
class BisectionSummary(ReportRecord):
    """What a report shows of a bisection (`ekka.bisect.search.BisectResult`; build one with
    `BisectionSummary.from_json(result.to_json())`)."""

    status: str  # "found", "ambiguous" or "inconclusive"
    good: CommitRef
    bad: CommitRef
    first_bad: CommitRef | None = field(metadata=absent(None))  # set when status is "found"
    probes: int  # probe executions (repeats included, cached verdicts not)
    cached: int = field(metadata=absent(0))  # verdicts taken from the cache
    rounds: int = field(metadata=absent(0))  # search rounds after the endpoint checks
    steps: tuple[ProbeStep, ...] = ()
    candidates: tuple[CommitRef, ...] = ()  # the commits the first bad one is among


# --- the diagnosis ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reduction(ReportRecord):
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


@dataclass(frozen=True, slots=True)
class Coverage(ReportRecord):
    """One target module in the coverage map: the passes it was compared in, those it ran in
    and was not, and why (the passes left out all share it: "no reference counterpart", "a
    definition that differs", "a pass without a span" and what it is in this case)."""

    component: str
    module_class: str
    compared: tuple[int, ...]  # passes with a comparison of its output or input
    not_compared: tuple[int, ...] = ()  # passes it ran in without one
    reason: str = ""  # why not, where `not_compared` holds a pass

    @property
    def complete(self) -> bool:
        return not self.not_compared


# The order of report.json's keys after the verdict (a reader's order, not the fields').
_LAYOUT = (
    "model",
    "dtype",
    "prompt",
    "prompt_ids",
    "max_tokens",
    "threshold",
    "engine",
    "target",
    "target_tokens",
    "reference_tokens",
    "change_point",
    "suspects",
    "root_cause",
    "bisection",
    "output",
    "notes",
    "scenario",
    "reduction",
    "unmapped",
    "coverage",
    "comparisons",
    "timings",
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
    prompt: str | None = field(metadata=absent(None))
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
    # every target module: which passes compared it, which did not and why
    coverage: tuple[Coverage, ...] = ()
    # no change point: the components above the threshold whose error fades, replayed alone
    latent: tuple[Latent, ...] = ()

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
        localization's threshold, change point and suspects at the top level; `unmapped` as
        an object."""
        fields = codec.encode(self)
        loc = fields.pop("localization")
        fields.update(
            change_point=loc["change_point"],
            suspects=loc["suspects"],
            unmapped=dict(fields["unmapped"]),
        )
        head = {"verdict": self.verdict, "diverged": self.diverged}
        rest = {key: value for key, value in fields.items() if key not in _LAYOUT}
        return {**head, **{key: fields[key] for key in _LAYOUT}, **rest}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Diagnosis:
        if not isinstance(data, Mapping):
            raise ReportFormatError(f"malformed Diagnosis: not an object ({type(data).__name__})")
        fields = dict(data)
        for key in ("threshold", "suspects", "change_point"):
            if key not in fields:
                raise ReportFormatError(f"malformed Diagnosis: missing field {key!r}")
        localization = _read(
            Localization,
            {
                "threshold": fields["threshold"],
                "suspects": fields.pop("suspects"),
                "change_point": fields.pop("change_point"),
            },
        )
        fields["localization"] = localization.to_json()
        unmapped = fields.get("unmapped")
        if unmapped is not None and not isinstance(unmapped, Mapping):
            raise ReportFormatError(
                f"malformed Diagnosis: 'unmapped' is not an object: {unmapped!r}"
            )
        fields["unmapped"] = [[k, v] for k, v in (unmapped or {}).items()]
        return _read(cls, fields)
