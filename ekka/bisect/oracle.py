"""The tracer's end-to-end oracle for bisection: good, bad or skip for one target trace.

The reference does not change from commit to commit: `TracerOracle.prepare()` runs it once per
job (transformers, greedy, in the serving dtype and in float32) and keeps the logits of every
step. A probe captures only the target's logits and greedy tokens; the oracle then judges,
step by step while the target's tokens still equal the reference's, with the judgement the
diagnosis uses too (`ekka.tracer.output.judge_step`):

- the robust error ratio of the logits (as in localization): above `logits_threshold` is bad;
- the greedy token: a different token where the float32 reference is decisive (its top-1 /
  top-2 margin is more than `margin_factor` times the dtype's noise in the logits) is bad;
  a different token at a near tie is not evidence, and the comparison stops there.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ekka.bisect.verdict import ProbeResult, Verdict
from ekka.tracer.capture import capture
from ekka.tracer.localize import threshold_for
from ekka.tracer.output import judge_step
from ekka.tracer.protocol import CaptureSpec
from ekka.tracer.scenario import Scenario
from ekka.tracer.trace import TraceReader


@dataclass(frozen=True)
class OracleConfig:
    """Everything that decides a verdict; its hash keys the verdict cache."""

    model: str
    prompt_ids: tuple[int, ...]
    dtype: str = "float32"
    max_tokens: int = 4
    engine: Mapping[str, Any] = field(default_factory=dict)
    logits_threshold: float | None = None  # None: the dtype's calibrated threshold
    margin_factor: float = 4.0
    # the requests around the traced one in each probe's engine (the reference runs it alone)
    scenario: Scenario = field(default_factory=Scenario)
    framework: str = "vllm"  # the target

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompt_ids"] = list(self.prompt_ids)
        data["engine"] = dict(self.engine)
        if self.framework == "vllm":
            del data["framework"]  # vLLM's verdicts keyed as before SGLang
        if self.scenario.empty and self.scenario.traced_at is None:
            del data["scenario"]  # a lone request keys its verdicts as before scenarios
        else:
            data["scenario"] = self.scenario.to_json()
        return data

    def digest(self) -> str:
        """Hash of the configuration and of the model's files (not of its path)."""
        data = self.to_json()
        data["model"] = _model_digest(Path(self.model))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class OracleSource(Protocol):
    """What a diagnosis's configuration (`DiagnoseConfig`, `FullConfig`) gives its oracle."""

    @property
    def model(self) -> str: ...
    @property
    def prompt_ids(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def engine(self) -> Mapping[str, Any]: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def scenario(self) -> Scenario: ...
    @property
    def framework(self) -> str: ...


def oracle_config(source: OracleSource, *, with_scenario: bool = True) -> OracleConfig:
    """The one way to the oracle's configuration: a diagnosis's request and threshold, its
    scenario too unless `with_scenario` is False (the scenario reduction varies it per run)."""
    return OracleConfig(
        model=source.model,
        prompt_ids=tuple(source.prompt_ids),
        dtype=source.dtype,
        max_tokens=source.max_tokens,
        engine=dict(source.engine),
        logits_threshold=source.threshold,
        scenario=source.scenario if with_scenario else Scenario(),
        framework=source.framework,
    )


def _model_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = folder / name
        if path.is_file():
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _step_logits(trace: TraceReader) -> list[Any]:
    """The last-position logits of each step, in step order."""
    out: dict[int, Any] = {}
    for record in trace.records:
        if record.kind == "logits":
            t = trace.outputs(record)[0]
            if t is None:
                continue
            out[record.step] = (t[-1] if t.dim() > 1 else t).float()
    return [out[s] for s in sorted(out)]


@dataclass(frozen=True)
class OracleReference:
    """What `prepare()` computes, to judge elsewhere without computing it again (a cluster's
    node receives it with its probe): the per-step logits in the serving dtype and in float32,
    and the greedy tokens. A few vectors of the vocabulary's size per step, not a trace."""

    logits: tuple[Any, ...]
    logits32: tuple[Any, ...]
    tokens: tuple[int, ...]


class TracerOracle:
    """Judges target traces against a reference computed once."""

    def __init__(self, config: OracleConfig, workdir: str | Path) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.reference: list[Any] = []
        self.reference32: list[Any] = []
        self.reference_tokens: list[int] = []

    def prepare(self) -> None:
        for dtype in dict.fromkeys([self.config.dtype, "float32"]):
            trace = capture(
                CaptureSpec(
                    framework="transformers",
                    model=self.config.model,
                    prompt_ids=self.config.prompt_ids,
                    out=str(self.workdir / f"oracle-reference-{dtype}"),
                    dtype=dtype,
                    max_tokens=self.config.max_tokens,
                    modules=("lm_head",),
                )
            )
            if dtype == self.config.dtype:
                self.reference = _step_logits(trace)
                self.reference_tokens = trace.generated_ids
            if dtype == "float32":
                self.reference32 = _step_logits(trace)

    @property
    def prepared(self) -> OracleReference:
        """The reference (computed now when it is not yet)."""
        if not self.reference:
            self.prepare()
        return OracleReference(
            tuple(self.reference), tuple(self.reference32), tuple(self.reference_tokens)
        )

    @classmethod
    def with_reference(
        cls, config: OracleConfig, workdir: str | Path, reference: OracleReference
    ) -> TracerOracle:
        """An oracle that judges against `reference` (computed elsewhere for `config`)."""
        oracle = cls(config, workdir)
        oracle.reference = list(reference.logits)
        oracle.reference32 = list(reference.logits32)
        oracle.reference_tokens = list(reference.tokens)
        return oracle

    def spec(self, out: str | Path) -> CaptureSpec:
        """What a probe captures: the target's logits only (cheap), greedy tokens, of the
        traced request in its scenario."""
        return CaptureSpec(
            framework=self.config.framework,
            model=self.config.model,
            prompt_ids=self.config.prompt_ids,
            out=str(out),
            dtype=self.config.dtype,
            max_tokens=self.config.max_tokens,
            engine=dict(self.config.engine),
            logits_only=True,
            before=self.config.scenario.before,
            alongside=self.config.scenario.alongside,
            traced_at=self.config.scenario.traced_at,
        )

    def judge(self, target: TraceReader, seconds: float = 0.0) -> ProbeResult:
        if not self.reference:
            self.prepare()
        logits = _step_logits(target)
        tokens = target.generated_ids
        worst = 0.0
        threshold = self.config.logits_threshold
        if threshold is None:
            threshold = threshold_for(self.config.dtype)
        details: dict[str, Any] = {
            "tokens": tokens,
            "reference_tokens": self.reference_tokens,
            "ratios": [],
        }
        for step, (x, x_r, y_r) in enumerate(zip(logits, self.reference, self.reference32)):
            ratio, reason, near_tie = judge_step(
                step,
                x,
                x_r,
                y_r,
                tokens[step] if step < len(tokens) else None,
                self.reference_tokens[step] if step < len(self.reference_tokens) else None,
                self.config.dtype,
                threshold,
                self.config.margin_factor,
            )
            details["ratios"].append(ratio if math.isfinite(ratio) else "inf")
            worst = max(worst, ratio)
            if reason is not None:
                return ProbeResult(Verdict.BAD, reason, seconds, details)
            if near_tie:
                break  # the sequences part here, later steps are not comparable
        return ProbeResult(
            Verdict.GOOD,
            f"logits match the reference (largest error ratio {worst:.3g})",
            seconds,
            details,
        )
