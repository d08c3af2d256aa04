"""Localize mode of `ekka diagnose`: the target and the reference, alignment, change point.

1. The target (vLLM or SGLang, possibly a patched copy of its sources) starts in its own process
   (`TargetSession`); meanwhile the reference models (transformers, in the serving dtype and
   in float32) load here.
2. The target generates greedily, traced, and tells its tokens; while it writes its trace,
   the references run teacher-forced on the prompt and those tokens, one pass each, so that
   every target pass (prefill chunk or decode step) is compared at the same positions with
   the same inputs.
3. Each aligned component gets its robust error ratio, each pass's serving metadata its check;
   the change point names the suspects. The output itself (logits, greedy tokens) is checked
   end to end: a diverging output is a divergence whatever the components say.
4. The target replays the suspects alone on the reference's inputs: a module that reproduces
   the error by itself is confirmed, one whose error arrives from upstream goes behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ekka.errors import CaptureError
from ekka.report.records import Comparison, Diagnosis, Latent, Localization, TargetInfo
from ekka.tracer.align import Aligner, ComponentMap, infer_missing, plan_components
from ekka.tracer.capture import resolved, validate
from ekka.tracer.compare import iter_comparisons
from ekka.tracer.coverage import coverage_map
from ekka.tracer.latent import candidates as latent_candidates
from ekka.tracer.latent import judge as judge_latent
from ekka.tracer.localize import localize, threshold_for
from ekka.tracer.metrics import compute_error_ratio
from ekka.tracer.output import check_output
from ekka.tracer.protocol import CaptureSpec
from ekka.tracer.scenario import Scenario
from ekka.tracer.serving import scenario_events
from ekka.tracer.session import TargetSession
from ekka.tracer.trace import TraceReader

Progress = Callable[[str], None]
SKIPPED = ("ModuleList", "Dropout", "Identity")  # containers and no-ops: nothing to compare


FRAMEWORK_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}


@dataclass(frozen=True)
class DiagnoseConfig:
    model: str
    prompt_ids: tuple[int, ...]
    workdir: str
    dtype: str = "float32"
    max_tokens: int = 4
    threshold: float | None = None  # None: the dtype's calibrated one (localize.threshold_for)
    engine: Mapping[str, Any] = field(default_factory=dict)
    prompt_text: str | None = None
    target_pythonpath: tuple[str, ...] = ()
    timeout: float | None = 900
    framework: str = "vllm"  # the target framework (`ekka.frameworks`)
    # the requests around the traced one in the target's engine (the reference runs the
    # traced request alone); empty: the traced request alone
    scenario: Scenario = field(default_factory=Scenario)


@dataclass(frozen=True)
class Analysis:
    """What the analysis of a target trace against its references found."""

    mapping: ComponentMap
    comparisons: tuple[Comparison, ...]
    localization: Localization


def run_diagnosis(config: DiagnoseConfig, progress: Progress | None = None) -> Diagnosis:
    say = progress or (lambda _msg: None)
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    threshold = config.threshold if config.threshold is not None else threshold_for(config.dtype)

    def spec(framework: str, name: str, dtype: str, **fields: Any) -> CaptureSpec:
        return resolved(
            CaptureSpec(
                framework=framework,
                model=config.model,
                prompt_ids=config.prompt_ids,
                out=str(work / name),
                dtype=dtype,
                max_tokens=config.max_tokens,
                prompt_text=config.prompt_text,
                **fields,
            )
        )

    from ekka.tracer.adapters import transformers as reference_adapter

    target_spec = spec(
        config.framework,
        "target",
        config.dtype,
        engine=dict(config.engine),
        before=config.scenario.before,
        alongside=config.scenario.alongside,
        traced_at=config.scenario.traced_at,
    )
    validate(target_spec)
    dtypes = list(dict.fromkeys([config.dtype, "float32"]))
    references: dict[str, TraceReader] = {}
    started = time.perf_counter()
    name = FRAMEWORK_NAMES.get(config.framework, config.framework)
    say(f"target: starting {name}'s engine")
    with TargetSession(
        target_spec, pythonpath=config.target_pythonpath, timeout=config.timeout
    ) as session:
        t = time.perf_counter()
        models = {}
        for dtype in dtypes:  # while the target's engine starts
            say(f"reference: loading the transformers model in {dtype}")
            models[dtype] = reference_adapter.load_model(config.model, dtype)
        timings["reference_load"] = time.perf_counter() - t
        ready = session.wait_ready()
        timings["target_start"] = time.perf_counter() - started
        say(f"target: {name} generates, traced")
        t = time.perf_counter()
        tokens = session.trace().generated_ids
        timings["target_generate"] = time.perf_counter() - t
        t = time.perf_counter()
        for dtype in dtypes:  # while the target writes its trace
            say(f"reference: teacher-forced on the target's tokens ({dtype})")
            forced = spec("transformers", f"reference-{dtype}", dtype, forced_ids=tokens[:-1])
            references[dtype] = TraceReader(reference_adapter.run(forced, model=models[dtype]))
        timings["reference_trace"] = time.perf_counter() - t
        del models
        target = TraceReader(session.wait_written().path)
        timings["target_written"] = time.perf_counter() - started

        say("aligning and measuring")
        t = time.perf_counter()
        found = analyse(target, references, config.dtype, threshold)
        output = check_output(
            target,
            references[config.dtype],
            references.get("float32") if config.dtype != "float32" else None,
            config.dtype,
            threshold,
        )
        timings["analysis"] = time.perf_counter() - t
        localization = found.localization
        # a suspect that consumed wrong metadata is not replayed: alone, on the reference's
        # inputs, it gets the right metadata
        replayable = [s.component for s in localization.suspects if not s.metadata]
        reference32 = references.get("float32") if config.dtype != "float32" else None
        if replayable:
            say("target: replaying the suspects on the reference's inputs")
            t = time.perf_counter()
            try:
                replayed = session.replay(references[config.dtype].path, replayable)
            except CaptureError as exc:
                say(f"target: the replay failed ({str(exc).splitlines()[0]}); no replay verdict")
            else:
                localization = confirm_by_replay(
                    localization,
                    TraceReader(replayed.path),
                    references[config.dtype],
                    reference32,
                    found.mapping,
                    config.dtype,
                )
            timings["replay"] = time.perf_counter() - t
        latent: tuple[Latent, ...] = ()
        modules = latent_candidates(found.comparisons, threshold)
        if not localization.diverged and modules:  # above the threshold, fading: latent?
            say("target: replaying the components whose error fades on the reference's inputs")
            t = time.perf_counter()
            ratios: dict[str, float] = {}
            layouts: dict[str, float] = {}
            try:
                replayed = session.replay(
                    references[config.dtype].path, modules, reference_names(found.mapping, modules)
                )
            except CaptureError as exc:
                say(f"target: the replay failed ({str(exc).splitlines()[0]}); no replay verdict")
            else:
                replay_trace = TraceReader(replayed.path)
                args = (replay_trace, references[config.dtype], reference32, found.mapping)
                ratios = replay_ratios(*args, config.dtype)
                layouts = replay_ratios(*args, config.dtype, sort_rows=True)
            latent = judge_latent(found.comparisons, threshold, ratios, layouts)
            timings["latent_replay"] = time.perf_counter() - t
    diagnosis = Diagnosis(
        model=config.model,
        dtype=config.dtype,
        prompt=config.prompt_text,
        prompt_ids=tuple(config.prompt_ids),
        max_tokens=config.max_tokens,
        threshold=threshold,
        target=TargetInfo(
            framework=ready.framework,
            version=ready.version,
            commit=ready.commit,
            path=ready.path,
            notes=ready.notes,
        ),
        target_tokens=tuple(target.generated_ids),
        reference_tokens=tuple(references[config.dtype].generated_ids),
        localization=localization,
        comparisons=found.comparisons,
        unmapped=unmapped_components(target, found),
        coverage=coverage_map(target, references[config.dtype], found.mapping, found.comparisons),
        engine=dict(config.engine),
        timings=timings,
        output=output,
        scenario=None if config.scenario.empty else config.scenario.to_json(),
        notes=()
        if config.scenario.empty
        else tuple(scenario_events(target.passes, len(config.prompt_ids))),
        latent=latent,
    )
    return diagnosis


def analyse(
    target: TraceReader, references: Mapping[str, TraceReader], dtype: str, threshold: float
) -> Analysis:
    """Alignment, ratios and the change point: the mapping, the comparisons, the localization."""
    reference = references[dtype]
    reference32 = references.get("float32") if dtype != "float32" else None
    mapping = infer_missing(plan_components(target, reference), target, reference)
    comparisons = tuple(iter_comparisons(target, reference, reference32, mapping=mapping))
    modules = target.manifest.modules
    return Analysis(mapping, comparisons, localize(comparisons, threshold, modules))


def unmapped_components(target: TraceReader, found: Analysis) -> tuple[tuple[str, str], ...]:
    """Every target component left out of the comparisons, with the reason."""
    compared = {c.target for c in found.comparisons}
    unmapped = {name: u.reason for name, u in found.mapping.unmapped.items()}
    for record in target.records:
        if record.kind == "logits" or record.name in compared or record.name in unmapped:
            continue
        if record.name not in found.mapping.plans and record.module_class not in SKIPPED:
            unmapped[record.name] = "no mapping rule and no reference component of that name"
    return tuple(sorted(unmapped.items()))


def confirm_by_replay(
    localization: Localization,
    replays: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None,
    mapping: ComponentMap,
    dtype: str,
) -> Localization:
    """The localization with the replay's verdict on each suspect the target replayed alone
    (`replays`: its replay trace); a suspect the replay clears goes behind the others."""
    ratios = replay_ratios(replays, reference, reference32, mapping, dtype)
    suspects = list(localization.suspects)
    for i, suspect in enumerate(suspects):
        if suspect.metadata or suspect.component not in ratios:
            continue
        ratio = ratios[suspect.component]
        confirmed = ratio > localization.threshold
        note = f"; replayed alone on the reference's input it gives ratio {ratio:.3g}: " + (
            "the module itself is wrong" if confirmed else "its error arrives from upstream"
        )
        suspects[i] = replace(suspect, confirmed=confirmed, evidence=suspect.evidence + note)
    ordered = sorted(suspects, key=lambda s: (s.confirmed is False, s.rank))
    ranked = tuple(replace(s, rank=i + 1) for i, s in enumerate(ordered))
    return replace(localization, suspects=ranked)


def reference_names(mapping: ComponentMap, modules: Sequence[str]) -> dict[str, str]:
    """A module's one reference counterpart, where it is named otherwise and computes the same
    output (its input is recorded under that name; not a plan on another module's input)."""
    out = {}
    for name in modules:
        plan = mapping.plans.get(name)
        if (
            plan is not None
            and plan.slot == "out"
            and len(plan.reference) == 1
            and plan.reference[0] != name
        ):
            out[name] = plan.reference[0]
    return out


def replay_ratios(
    replays: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None,
    mapping: ComponentMap,
    dtype: str,
    *,
    sort_rows: bool = False,
) -> dict[str, float]:
    """Each module the target replayed alone (`replays`: its replay trace) -> the error ratio
    of its replay against the reference's output (modules without a plan or whose replay does
    not align are left out). `sort_rows`: each row's values sorted on both sides first, a
    ratio blind to the order of the features (a weight layout one side permutes on load)."""
    aligner = Aligner(replays, reference, reference32)
    out: dict[str, float] = {}
    replayed = {r.name: r for r in replays.records if r.kind == "replay"}
    for record in replayed.values():
        plan = mapping.plans.get(record.name)
        if plan is None:
            continue
        try:
            x = aligner.target_tensor(record, plan, None)
        except (RuntimeError, AssertionError, IndexError):
            continue
        positions = list(range(x.shape[0]))
        x_r = aligner.reference_tensor(reference, plan, positions)
        y_r = x_r if reference32 is None else aligner.reference_tensor(reference32, plan, positions)
        if x_r is None or y_r is None or x_r.shape != x.shape:
            continue
        if sort_rows:
            x, x_r, y_r = (t.sort(dim=-1).values for t in (x, x_r, y_r))
        out[record.name] = compute_error_ratio(x, x_r, y_r, dtype)
    return out


__all__ = [
    "Analysis",
    "DiagnoseConfig",
    "analyse",
    "confirm_by_replay",
    "replay_ratios",
    "run_diagnosis",
]
