"""Localize mode of `ekka diagnose`: target and reference runs, alignment, change point, report.

1. The target (vLLM, possibly a patched copy of its sources) generates greedily, traced.
2. The reference (transformers) runs teacher-forced on the prompt plus the tokens the target
   generated, in the serving dtype and in float32, so that every target pass (prefill chunk or
   decode step) is compared at the same token positions with the same inputs. While the
   target's engine starts, the reference is loaded; on four cores or more it also does what
   needs nothing from the target: one traced pass over the prompt, keeping its KV cache, its
   own greedy guess of the target's tokens and one traced pass over the guess (`ahead`
   "guess"). Below four cores the engine's start takes every core, and the prompt's pass
   waits until the target is ready to trace (`ahead` "prompt"). The target waits for it,
   and for the analysis' warm-up on the target's own warm-up trace, before its timed and
   traced requests: those run while this process is idle (on two cores vLLM's two threads
   took twice as long beside a busy process). Once the target has its tokens, one traced
   pass over the tokens from the prompt's cache (none where the guess was right; over the
   prompt and the tokens with `ahead` "off").
3. Each aligned component gets its robust error ratio; the change point names the suspects.
   Meanwhile the target's process replays its leaf modules on the reference's inputs; told
   the suspects, it makes sure they are replayed and stops. The replay's verdict joins them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ekka.errors import CaptureError, TraceFormatError
from ekka.tracer.align import infer_missing, plan_components
from ekka.tracer.capture import CaptureSpec, capture, collector_paused
from ekka.tracer.compare import Comparison, iter_comparisons
from ekka.tracer.localize import DEFAULT_THRESHOLD, Localization, localize
from ekka.tracer.trace import REPLAY_FOLDER, TraceReader

Progress = Callable[[str], None]
AHEAD_MODES = ("off", "prompt", "guess")
AHEAD_MIN_CORES = 4


@dataclass(frozen=True)
class DiagnoseConfig:
    model: str
    prompt_ids: tuple[int, ...]
    workdir: str
    dtype: str = "float32"
    max_tokens: int = 4
    threshold: float = DEFAULT_THRESHOLD
    engine: Mapping[str, Any] = field(default_factory=dict)
    prompt_text: str | None = None
    target_pythonpath: tuple[str, ...] = ()
    timeout: float | None = 900
    # What the reference traces before the target's tokens come, needing nothing from the
    # target: "off" nothing (one pass over the prompt and the tokens once they come);
    # "prompt" the prompt, its KV cache kept, once the target's engine has started and it is
    # ready to trace, while it waits (one pass over the tokens from the cache remains);
    # "guess", while the engine starts, the prompt, then its own greedy guess of the target's
    # tokens and a pass over the guess (nothing left to do after the target's tokens where it
    # is right). None: EKKA_AHEAD if set, else "guess" on four cores or more and "prompt"
    # below. On two cores the engine's start takes both: beside it a 113M model's prompt pass
    # took 0.6 s instead of 0.2, the guess 1.7-2.4 s instead of 0.5, and the whole diagnosis
    # took 0.6-1.7 s longer than with nothing ahead.
    ahead: str | None = None

    @property
    def work_ahead(self) -> str:
        import os

        if self.ahead is not None:
            return self.ahead
        setting = os.environ.get("EKKA_AHEAD", "").strip().lower()
        if setting in AHEAD_MODES:
            return setting
        return "guess" if (os.cpu_count() or 1) >= AHEAD_MIN_CORES else "prompt"


@dataclass
class Diagnosis:
    config: DiagnoseConfig
    localization: Localization
    comparisons: list[Comparison]
    unmapped: dict[str, str]
    target_tokens: list[int]
    reference_tokens: list[int]
    target_framework: dict[str, Any]
    seconds: dict[str, float]
    # full mode (ekka.bisect.full): the root cause statement, and the bisection with its probe log
    root_cause: dict[str, Any] | None = None
    bisection: dict[str, Any] | None = None
    # time.monotonic() readings (comparable with the target's manifests): "ahead_started_at"
    # (the prompt's pass began, ahead "prompt"), "tokens_at" (the target's tokens came),
    # "followed_at" (the references traced), "analysis_started_at", "analysed_at"
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.localization.diverged

    @property
    def verdict(self) -> str:
        if self.root_cause:
            return str(self.root_cause["statement"])
        if not self.diverged:
            return "no divergence"
        top = self.localization.suspects[0]
        return (
            f"divergence: {top.component} ({top.module_class}) is the first component that diverges"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "diverged": self.diverged,
            "threshold": self.localization.threshold,
            "model": self.config.model,
            "dtype": self.config.dtype,
            "prompt": self.config.prompt_text,
            "prompt_ids": list(self.config.prompt_ids),
            "target": self.target_framework,
            "target_tokens": self.target_tokens,
            "reference_tokens": self.reference_tokens,
            "suspects": [s.to_json() for s in self.localization.suspects],
            "unmapped": self.unmapped,
            "comparisons": [c.to_json() for c in self.comparisons],
            "seconds": self.seconds,
            "root_cause": self.root_cause,
            "bisection": self.bisection,
        }


def run_diagnosis(config: DiagnoseConfig, progress: Progress | None = None) -> Diagnosis:
    say = progress or (lambda _msg: None)
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def spec(framework: str, name: str, dtype: str, **fields: Any) -> CaptureSpec:
        return CaptureSpec(
            framework=framework,
            model=config.model,
            prompt_ids=config.prompt_ids,
            out=str(work / name),
            dtype=dtype,
            prompt_text=config.prompt_text,
            **fields,
        )

    # Phases, each overlapping the target's process where it can (see the module doc): while
    # the engine starts, the references are loaded (and on four cores traced on the prompt and
    # a guess of the target's tokens); while the target writes its trace, its tokens known, the
    # references are traced on them (unless the guess was right); once the trace is written,
    # this process analyses the traces while the target's process replays its leaf modules in
    # call order on the serving-dtype reference's inputs (the rows of its first pass), until
    # told the suspects: it then replays those it has not reached and stops.
    from ekka.tracer.adapters.transformers import ForcedReference

    dtypes = [config.dtype] + (["float32"] if config.dtype != "float32" else [])
    pending: dict[str, ForcedReference] = {}
    references: dict[str, TraceReader] = {}
    writing: dict[str, Any] = {}  # PendingTrace of each reference, written by a thread
    found: dict[str, Any] = {}
    marks: dict[str, float] = {}  # time.monotonic() readings, comparable with the target's
    parent = {"busy": 0.0}  # seconds this process spent inside the target's capture

    def timed(phase: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                with collector_paused():  # while the target's process waits
                    return phase(*args)
            finally:
                parent["busy"] += time.perf_counter() - t

        return run

    def warm_analysis(scratch: Path | None) -> None:
        """The analysis' first run in a process costs more (its code and torch's and NumPy's
        operations run cold): one run on the target's scratch trace (a short warm-up request)
        against the references' (a short pass on other tokens), so that the paths the real
        analysis takes (the target's names, fused modules, prefill and decode passes) are
        warm. Made while the target waits, before its timed and traced requests."""
        t = time.perf_counter()
        try:
            if not pending or scratch is None or any(r.scratch is None for r in pending.values()):
                return
            warm = {dtype: TraceReader(reference.scratch) for dtype, reference in pending.items()}
            analyse(TraceReader(scratch), warm, config.dtype, config.threshold)
        except Exception as exc:  # a warm-up: the real analysis reports its own errors
            say(
                f"analysis warm-up failed ({type(exc).__name__}: {exc}); the analysis will run cold"
            )
            return
        finally:
            for reference in pending.values():
                reference.drop_scratch()
        seconds["analysis_warm_up"] = time.perf_counter() - t

    def load_references() -> None:
        for dtype in dtypes:
            say(f"reference: loading the transformers model in {dtype}")
            pending[dtype] = ForcedReference(
                spec("transformers", f"reference-{dtype}", dtype, max_tokens=config.max_tokens)
            )
            pending[dtype].warm_up()
        seconds["reference_load"] = sum(r.timings["load"] for r in pending.values())
        if config.work_ahead != "guess":
            return
        t = time.perf_counter()
        say("reference: tracing the prompt and a guess of the target's tokens")
        # the serving-dtype reference guesses best what the target will choose
        guess = pending[config.dtype].ahead()
        for dtype in dtypes[1:]:
            pending[dtype].ahead(guess)
        seconds["reference_ahead"] = time.perf_counter() - t

    def when_ready(scratch: Path | None) -> None:
        """The target is ready to trace and waits: with ahead "prompt", the references' prompt
        pass (every core is this process's now; during the engine's start both were taken);
        then the analysis' warm-up on the target's scratch trace."""
        if config.work_ahead == "prompt" and pending:
            marks["ahead_started_at"] = time.monotonic()
            t = time.perf_counter()
            say("reference: tracing the prompt")
            for dtype in dtypes:
                pending[dtype].prompt()
            seconds["reference_ahead"] = time.perf_counter() - t
        warm_analysis(scratch)

    def follow(generated: list[int], written: Callable[[], bool] = lambda: True) -> None:
        marks["tokens_at"] = time.monotonic()
        t_ref = time.perf_counter()
        with _threads_beside_writer([r.model for r in pending.values()], written):
            for dtype in dtypes:
                if pending[dtype].follow(generated) is False:
                    say(
                        f"reference {dtype}: the target's tokens are not its guess; traced on the target's"
                    )
                # read from memory while a thread writes it: the analysis need not wait
                writing[dtype] = pending.pop(dtype).close_in_background()
                references[dtype] = writing[dtype].reader
        seconds["reference"] = time.perf_counter() - t_ref
        marks["followed_at"] = time.monotonic()

    def replay_request(generated: list[int]) -> Callable[[], dict[str, Any]]:
        if pending:  # the target did not tell its tokens before writing its trace
            follow(generated)
        # sent once the serving-dtype reference is on disk, while this process analyses
        return lambda: {"replay_reference": str(writing[config.dtype].wait()), "modules": None}

    def analysis() -> list[str]:
        marks["analysis_started_at"] = time.monotonic()
        t_analysis = time.perf_counter()
        say(
            "aligning and measuring (the target replays its modules on the reference's inputs meanwhile)"
        )
        # one core is the target's replay's: a pool of threads over every core would wait at
        # each operation for the one that is not scheduled (the tiny bench case's analysis took
        # 70-90 ms instead of 15 beside the replay)
        with _threads_beside_writer([], lambda: False):
            found.update(
                analyse(TraceReader(work / "target"), references, config.dtype, config.threshold)
            )
        seconds["analysis"] = time.perf_counter() - t_analysis
        marks["analysed_at"] = time.monotonic()
        return [s.component for s in found["localization"].suspects]

    t0 = time.perf_counter()
    say("target: vLLM generates, traced")
    replay_failed = None
    try:
        target = capture(
            spec(
                "vllm",
                "target",
                config.dtype,
                max_tokens=config.max_tokens,
                engine=dict(config.engine),
            ),
            pythonpath=config.target_pythonpath,
            timeout=config.timeout,
            after_generate=timed(replay_request),
            while_replaying=timed(analysis),
            while_starting=timed(load_references),
            when_tracing=timed(when_ready),
            when_tokens=timed(follow),
        )
    except CaptureError as exc:
        if "localization" not in found:
            raise
        # the trace was written and analysed: only the replay, after it, failed
        replay_failed = str(exc).splitlines()[0]
        say(f"target: the replay failed ({replay_failed}); the suspects stand without its verdict")
        target = TraceReader(work / "target")
    finally:
        for reference in pending.values():  # the target failed before its tokens came
            reference.abandon()
    seconds["target"] = time.perf_counter() - t0 - parent["busy"]
    for trace in writing.values():  # every reference on disk before the report names them
        trace.wait()
    if writing:
        seconds["reference_write"] = sum(trace.seconds for trace in writing.values())
    if "localization" not in found:  # the target's process ended without asking
        raise CaptureError("the target's capture ended before the references could be made.")
    t0 = time.perf_counter()
    reference = references[config.dtype]
    reference32 = references.get("float32") if config.dtype != "float32" else None
    mapping, comparisons, localization = (
        found["mapping"],
        found["comparisons"],
        found["localization"],
    )
    replays = target.path / REPLAY_FOLDER
    with collector_paused():  # a full collection here took 0.2 s, as in the phases above
        replayed = _trace_or_none(replays) if replay_failed is None else None
        if replayed is not None:
            confirm_by_replay(localization, replayed, reference, reference32, mapping, config.dtype)
    seconds["confirm"] = time.perf_counter() - t0
    compared = {c.target for c in comparisons}
    unmapped = {name: u.reason for name, u in mapping.unmapped.items()}
    for record in target.records:
        if record.kind == "logits" or record.name in compared or record.name in unmapped:
            continue
        if record.name not in mapping.plans and record.module_class not in (
            "ModuleList",
            "Dropout",
            "Identity",
        ):
            unmapped[record.name] = "no mapping rule and no reference component of that name"
    return Diagnosis(
        config=config,
        localization=localization,
        comparisons=comparisons,
        unmapped=unmapped,
        target_tokens=target.generated_ids,
        reference_tokens=references[config.dtype].generated_ids,
        target_framework={
            "framework": target.framework,
            "version": target.manifest.get("framework_version"),
            "commit": target.manifest.get("framework_commit"),
            "path": target.manifest.get("framework_path"),
        },
        seconds=seconds,
        marks=marks,
    )


def _trace_or_none(path: Path) -> TraceReader | None:
    """The trace in `path`, or None where there is none (read once: no `is_trace` first)."""
    try:
        return TraceReader(path)
    except TraceFormatError:
        return None


@contextmanager
def _threads_beside_writer(models: Sequence[Any], written: Callable[[], bool]) -> Iterator[None]:
    """One core fewer for this process's torch until the target's process has written its
    trace (`written()`, asked before each decoder layer of `models`), every core after. (No
    models and `written` always False: one core fewer throughout, as the analysis beside the
    target's replay needs.)

    A thread pool over every core, one of them busy with the target's writing (one Python
    thread), waits at each operation's barrier for the thread that was not scheduled: on two
    cores a tiny model's reference pass took 20 ms instead of 9 while the target wrote. A large
    model's pass outlasts the writing, and needs every core once it is done (one thread instead
    of two made a 113M model's pass 0.30 s instead of 0.19).
    """
    import os

    import torch

    before = torch.get_num_threads()
    fewer = max(1, min(before, (os.cpu_count() or 2) - 1))
    if fewer == before or written():
        yield
        return
    state = {"restored": False}

    def check(*_: Any) -> None:
        if not state["restored"] and written():
            torch.set_num_threads(before)
            state["restored"] = True

    handles = [
        layer.register_forward_pre_hook(check)
        for model in models
        for layer in _decoder_layers(model)
    ]
    torch.set_num_threads(fewer)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.set_num_threads(before)


def _decoder_layers(model: Any) -> list[Any]:
    """The blocks of the model's first list of modules (its decoder layers)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module):
            return list(module)
    return []


def analyse(
    target: TraceReader, references: Mapping[str, TraceReader], dtype: str, threshold: float
) -> dict[str, Any]:
    """Alignment, ratios and the change point: the mapping, the comparisons, the localization."""
    reference = references[dtype]
    reference32 = references.get("float32") if dtype != "float32" else None
    mapping = infer_missing(plan_components(target, reference), target, reference)
    comparisons = list(iter_comparisons(target, reference, reference32, mapping=mapping))
    return {
        "mapping": mapping,
        "comparisons": comparisons,
        "localization": localize(comparisons, threshold),
    }


def confirm_by_replay(
    localization: Localization,
    replays: TraceReader,
    reference: TraceReader,
    reference32: TraceReader | None,
    mapping: Any,
    dtype: str,
) -> None:
    """Attach the replay verdict to each suspect that was replayed in the target's process
    (`replays`: the target's replay trace)."""
    from dataclasses import replace

    from ekka.tracer.align import Aligner
    from ekka.tracer.compare import compute_error_ratio

    replayed = {r.name: r for r in replays.records if r.kind == "replay"}
    aligner = Aligner(replays, reference, reference32)
    for i, suspect in enumerate(localization.suspects):
        record = replayed.get(suspect.component)
        plan = mapping.plans.get(suspect.component)
        if record is None or plan is None:
            continue
        try:
            x = aligner.target_tensor(record, plan, None)  # type: ignore[arg-type]
        except (RuntimeError, AssertionError, IndexError):
            continue
        positions = list(range(x.shape[0]))
        x_r = aligner.reference_tensor(reference, plan, positions)
        y_r = x_r if reference32 is None else aligner.reference_tensor(reference32, plan, positions)
        if x_r is None or y_r is None or x_r.shape != x.shape:
            continue
        ratio = compute_error_ratio(x, x_r, y_r, dtype)[0]
        confirmed = ratio > localization.threshold
        note = f"; replayed alone on the reference's input it gives ratio {ratio:.3g}: " + (
            "the module itself is wrong" if confirmed else "its error arrives from upstream"
        )
        localization.suspects[i] = replace(
            suspect, confirmed=confirmed, evidence=suspect.evidence + note
        )
    # A suspect that replay clears (its error arrives from upstream) goes behind the others.
    ordered = sorted(localization.suspects, key=lambda s: (s.confirmed is False, s.rank))
    localization.suspects[:] = [replace(s, rank=i + 1) for i, s in enumerate(ordered)]


# --- report files -------------------------------------------------------------------------


def write_reports(diagnosis: Diagnosis, out: str | Path) -> dict[str, Path]:
    """report.json, report.md and report.html (with the error-ratio plot) in `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": folder / "report.json",
        "md": folder / "report.md",
        "html": folder / "report.html",
        "png": folder / "ratios.png",
    }
    paths["json"].write_text(json.dumps(diagnosis.to_json(), indent=1))
    paths["md"].write_text(render_markdown(diagnosis))
    plot_ratios(diagnosis, paths["png"])
    paths["html"].write_text(render_html(diagnosis, paths["png"]))
    return paths


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


def render_markdown(diagnosis: Diagnosis) -> str:
    loc = diagnosis.localization
    lines = [
        "# Ekka diagnosis",
        "",
        f"**Verdict: {diagnosis.verdict}.**",
        "",
        f"- model: `{diagnosis.config.model}`, dtype {diagnosis.config.dtype}, "
        f"{len(diagnosis.config.prompt_ids)} prompt tokens, {diagnosis.config.max_tokens} generated",
        f"- target: {diagnosis.target_framework.get('framework')} {diagnosis.target_framework.get('version')}"
        f" from `{diagnosis.target_framework.get('path')}`",
        f"- greedy tokens: target {diagnosis.target_tokens}, reference (teacher-forced) {diagnosis.reference_tokens}",
        f"- {len(diagnosis.comparisons)} aligned comparisons, threshold {loc.threshold:g}, "
        f"{len(diagnosis.unmapped)} unmapped components",
        "",
    ]
    if diagnosis.bisection:
        lines += _bisection_markdown(diagnosis.bisection, diagnosis.root_cause)
    if loc.suspects:
        lines += [
            "## Suspects",
            "",
            "| rank | component | class | source | ratio | evidence |",
            "|---|---|---|---|---|---|",
        ]
        for s in loc.suspects:
            src = f"{s.source_file}:{s.source_line}" if s.source_file else "-"
            lines.append(
                f"| {s.rank} | `{s.component}` | {s.module_class} | `{src}` | {_fmt(s.ratio)} | {s.evidence} |"
            )
        lines.append("")
    lines += ["## Comparisons (first pass where the error starts, and the logits of each pass)", ""]
    lines += [
        "| pass | step | component | ratio | rel. error | pairing |",
        "|---|---|---|---|---|---|",
    ]
    start_pass = loc.change_point.pass_index if loc.change_point else 0
    for c in diagnosis.comparisons:
        if c.pass_index == start_pass or c.target == "logits_processor":
            lines.append(
                f"| {c.pass_index} | {c.step} | `{c.target}` | {_fmt(c.ratio)} | {c.error:.2e} | {c.plan} |"
            )
    if diagnosis.unmapped:
        lines += ["", "## Unmapped components", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in sorted(diagnosis.unmapped.items())]
    lines += ["", f"Seconds: {', '.join(f'{k} {v:.1f}' for k, v in diagnosis.seconds.items())}", ""]
    return "\n".join(lines)


def _bisection_markdown(bisection: dict[str, Any], root_cause: dict[str, Any] | None) -> list[str]:
    first = bisection.get("first_bad") or {}
    lines = ["## Root cause", ""]
    if root_cause:
        lines += [root_cause["statement"], ""]
    lines += [
        f"- bisection: {bisection['status']}, first bad commit `{str(first.get('sha', '-'))[:12]}` "
        f"{first.get('summary', '')} (PR #{first.get('pr') or '-'}), {bisection['probes']} probes, "
        f"{bisection.get('cached', 0)} verdicts from the cache",
    ]
    touched = (root_cause or {}).get("touched") or []
    if touched:
        lines.append(
            "- the commit changes: "
            + ", ".join(f"`{t['qualname']}` in `{t['file']}`" for t in touched[:8])
        )
    lines += [
        "",
        "### Probe log",
        "",
        "| round | commit | verdict | reason | seconds |",
        "|---|---|---|---|---|",
    ]
    for step in bisection.get("steps", []):
        cached = " (cached)" if step.get("cached") else ""
        lines.append(
            f"| {step['round']} | `{step['commit'][:10]}` {step['summary']} | {step['verdict']}{cached} | "
            f"{step['reason']} | {step['seconds']:.1f} |"
        )
    return lines + [""]


def plot_ratios(diagnosis: Diagnosis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = diagnosis.comparisons
    xs = list(range(len(comps)))
    ys = [min(c.ratio, 1e12) if math.isfinite(c.ratio) else 1e12 for c in comps]
    ys = [max(y, 1e-3) for y in ys]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(xs, ys, marker=".", linewidth=0.8)
    ax.set_yscale("log")
    ax.axhline(diagnosis.localization.threshold, color="red", linestyle="--", label="threshold")
    boundaries = [i for i in range(1, len(comps)) if comps[i].pass_index != comps[i - 1].pass_index]
    for b in boundaries:
        ax.axvline(b - 0.5, color="grey", linewidth=0.5)
    cp = diagnosis.localization.change_point
    if cp is not None:
        ax.axvline(cp.sequence, color="orange", label=f"change point: {cp.target}")
    ax.set_xlabel("aligned component, target call order (grey lines: forward passes)")
    ax.set_ylabel("robust error ratio")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render_html(diagnosis: Diagnosis, png: Path) -> str:
    import base64
    import html

    import markdown_it  # type: ignore[import-not-found]

    body = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(diagnosis))
    image = base64.b64encode(png.read_bytes()).decode()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ekka diagnosis</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"
        f"</head><body><img alt='{html.escape('error ratio along the call sequence')}' "
        f"src='data:image/png;base64,{image}'/>{body}</body></html>"
    )


def suspects_table(diagnosis: Diagnosis, console: Any) -> None:
    from rich.table import Table

    table = Table(title=diagnosis.verdict)
    for col in ("rank", "component", "class", "source", "ratio", "pass/step"):
        table.add_column(col, overflow="fold")
    for s in diagnosis.localization.suspects:
        src = f"{s.source_file}:{s.source_line}" if s.source_file else "-"
        table.add_row(
            str(s.rank), s.component, s.module_class, src, _fmt(s.ratio), f"{s.pass_index}/{s.step}"
        )
    console.print(table)


__all__: Sequence[str] = ["DiagnoseConfig", "Diagnosis", "run_diagnosis", "write_reports"]
