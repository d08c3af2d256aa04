"""Reduce a diverging scenario to the requests it needs (delta debugging).

A scenario diverges: the traced request's output differs from the reference's when other
requests run before it or beside it. Which of them does it need? Each candidate scenario runs
in a fresh engine as a bisection probe does (the traced request's logits and greedy tokens
only, judged by `TracerOracle` against a reference computed once), and:

1. the traced request alone first (with the scenario's engine arguments): a divergence it
   shows alone is reported as such, and nothing else is tried;
2. else ddmin (Zeller and Hildebrandt's delta debugging, as C-Reduce or Polygraphy's debug
   reduce do for inputs) over the other requests: keep one half (one part) alone, drop one
   part, in finer parts down to one request at a time, until no request can be dropped.

The result is said in a sentence ("diverges only when the request before it shares its first
2 blocks (64 tokens)") and written as a scenario file with the command that reproduces it.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ekka.bisect.oracle import TracerOracle, oracle_config
from ekka.bisect.verdict import Verdict
from ekka.report.records import Diagnosis, Reduction
from ekka.scenario import scenario_toml
from ekka.tracer.capture import capture
from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
from ekka.tracer.protocol import ScenarioRequest
from ekka.tracer.scenario import Scenario

DEFAULT_BLOCK_SIZE = 16  # vLLM's KV-cache block size unless the engine arguments set one


def ddmin(items: Sequence[str], fails: Callable[[Sequence[str]], bool]) -> list[str]:
    """A 1-minimal subset of `items` on which `fails` holds (it holds on all of `items`, and
    not on none of them): dropping any one item of the result makes it pass. Subsets keep
    `items`' order."""
    current, parts = list(items), 2
    while len(current) >= 2:
        chunks = _split(current, parts)
        for chunk in chunks:  # one part alone
            if fails(chunk):
                current, parts = chunk, 2
                break
        else:
            for chunk in chunks:  # all but one part
                rest = [x for x in current if x not in chunk]
                if fails(rest):
                    current, parts = rest, max(parts - 1, 2)
                    break
            else:
                if parts >= len(current):
                    break
                parts = min(len(current), parts * 2)
    return current


def _split(items: list[str], parts: int) -> list[list[str]]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            out.append(items[start:end])
        start = end
    return out


def diagnose_and_reduce(
    config: DiagnoseConfig, progress: Callable[[str], None] | None = None
) -> Diagnosis:
    """The localize mode (`ekka.tracer.diagnose.run_diagnosis`) and, when the traced request
    diverges inside a scenario, the scenario reduced to the requests it needs (`reduction`)."""
    say = progress or (lambda _msg: None)
    diagnosis = run_diagnosis(config, progress=say)
    if not diagnosis.diverged or config.scenario.empty:
        return diagnosis
    started = time.perf_counter()
    reduction = reduce_scenario(config, progress=say)
    timings = {**diagnosis.timings, "reduction": time.perf_counter() - started}
    return replace(diagnosis, reduction=reduction, timings=timings)


def reduce_scenario(
    config: DiagnoseConfig, progress: Callable[[str], None] | None = None
) -> Reduction:
    """The smallest scenario (of `config`'s) that still diverges, found by running them."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    work = Path(config.workdir) / "reduce"
    oracle = TracerOracle(oracle_config(config, with_scenario=False), work)
    say("reducing the scenario: reference logits")
    oracle.prepare()
    scenario = config.scenario
    labels = [label for label, _ in scenario.labelled()]
    seen: dict[tuple[str, ...], bool] = {}

    def diverges(kept: Sequence[str]) -> bool:
        key = tuple(kept)
        if key not in seen:
            say(f"reducing the scenario: run {len(seen) + 1}, with {_listing(kept)}")
            candidate = scenario.keeping(set(kept))
            out = work / f"run-{len(seen) + 1}"
            spec = replace(
                oracle.spec(out),
                before=candidate.before,
                alongside=candidate.alongside,
                traced_at=candidate.traced_at,
            )
            trace = capture(spec, pythonpath=config.target_pythonpath, timeout=config.timeout)
            seen[key] = oracle.judge(trace).verdict == Verdict.BAD
            trace.close()
            shutil.rmtree(out, ignore_errors=True)
        return seen[key]

    alone = diverges([])
    kept = [] if alone else ddmin(labels, diverges)
    reduced = scenario.keeping(set(kept))
    traced = ScenarioRequest(config.prompt_ids, config.max_tokens)
    work.mkdir(parents=True, exist_ok=True)
    file = work / "reduced-scenario.toml"
    file.write_text(scenario_toml(traced, reduced, config.engine))
    return Reduction(
        kept=tuple(kept),
        alone=not kept,
        statement=describe(traced, scenario, kept, config.engine),
        command=reproduce_command(config, file),
        scenario_file=str(file),
        runs=len(seen),
        seconds=time.perf_counter() - started,
        requests=len(labels),
    )


def describe(
    traced: ScenarioRequest,
    scenario: Scenario,
    kept: Sequence[str],
    engine: Mapping[str, Any],
) -> str:
    """The reduced scenario in a sentence."""
    settings = ""
    if engine:
        settings = " (engine: " + ", ".join(f"{k}={v}" for k, v in engine.items()) + ")"
    if not kept:
        return "the traced request diverges alone, without any other request" + settings
    requests = dict(scenario.labelled())
    block = DEFAULT_BLOCK_SIZE
    if isinstance(engine.get("block_size"), int):
        block = int(engine["block_size"])
    parts = [_relation(label, requests[label], traced, block) for label in kept]
    return "diverges only when " + " and ".join(parts) + settings


def _relation(label: str, request: ScenarioRequest, traced: ScenarioRequest, block: int) -> str:
    shared = 0
    for a, b in zip(request.prompt_ids, traced.prompt_ids):
        if a != b:
            break
        shared += 1
    blocks = shared // block
    if shared == 0:
        prefix = "shares no prefix with it"
    elif blocks == 0:
        prefix = f"shares no whole KV-cache block with it (its first {shared} tokens)"
    else:
        prefix = f"shares its first {_blocks(blocks)} ({shared} tokens)"
    if label.startswith("before"):
        return f"the request before it ({label}, run first) {prefix}"
    size = f"{len(request.prompt_ids)} prompt tokens, {request.max_tokens} generated"
    shares = f", which {prefix}" if blocks else ""
    return f"it is batched with request {label} ({size}){shares}"


def _blocks(count: int) -> str:
    return "block" if count == 1 else f"{count} blocks"


def _listing(labels: Sequence[str]) -> str:
    return ", ".join(labels) if labels else "the traced request alone"


def reproduce_command(config: DiagnoseConfig, file: Path) -> str:
    parts = ["ekka", "diagnose", "--model", config.model, "--scenario", str(file)]
    if config.dtype != "float32":
        parts += ["--dtype", config.dtype]
    for path in config.target_pythonpath:
        parts += ["--target-path", path]
    return shlex.join(parts)
